"""Predict the digits in your own images with a trained model: the top 3 and their probabilities.

    python -m mnistlab.predict [--model mlp|mlr] [--checkpoint PATH] [--json] IMAGE_OR_FOLDER...

Each image becomes the lab's input: grayscale, a light digit on a dark background (a light
background is inverted), resized and centre-cropped to 28x28, contrast stretched to the full
range, values in [0, 1]. Loads the checkpoint without Lightning.
"""

import argparse
import json
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.io import ImageReadMode, read_image
from torchvision.transforms.v2.functional import autocontrast, center_crop, resize

from mnistlab.errors import DataError
from mnistlab.evaluation import load_model
from mnistlab.models import MODELS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")  # what torchvision.io decodes
SIDE = 28
TOP = 3


def image_files(paths: Sequence[Path]) -> list[tuple[Path, str | None]]:
    """Each file given, and the images in each folder given, in order; an error instead of a bad path."""
    found: list[tuple[Path, str | None]] = []
    for path in paths:
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(image, None) for image in images]
            if not images:
                found.append((path, f"folder has no images ({', '.join(IMAGE_SUFFIXES)})"))
        elif not path.exists():
            found.append((path, "not found"))
        else:
            found.append((path, None))
    return found


def read_grayscale(path: Path) -> Tensor:
    """The image at ``path`` as uint8 (1, H, W), via ``torchvision.io.read_image``; DataError if unreadable."""
    if not path.is_file():
        raise DataError("not a file")
    if path.stat().st_size == 0:
        raise DataError("empty file")
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            image = read_image(str(path), mode=ImageReadMode.GRAY)
    except RuntimeError as error:
        detail = re.sub(r"^\w+, \S+:\d+, ", "", str(error)).split(". ")[0]  # drop torchvision's C++ location
        raise DataError(f"not an image this command reads (PNG, JPEG, GIF or WEBP): {detail}") from None
    except OSError as error:
        raise DataError(f"cannot read: {error.strerror or error}") from None
    return image[0] if image.ndim == 4 else image  # an animated GIF: its first frame


def to_lab_input(image: Tensor) -> Tensor:
    """uint8 grayscale (1, H, W) -> float32 (1, 28, 28) in [0, 1], a light digit on a dark background."""
    border = torch.cat([image[0, 0], image[0, -1], image[0, :, 0], image[0, :, -1]])
    if border.float().median() > 127:  # a light background, as in a scan or a drawing app: invert
        image = 255 - image
    image = center_crop(resize(image, [SIDE], antialias=True), [SIDE, SIDE])  # shorter side to 28, then the centre
    image = autocontrast(image)  # faint ink or grey paper: stretched to black 0 and white 255, as in MNIST
    return image.to(torch.float32).div(255)


@torch.inference_mode()
def top_digits(model: nn.Module, inputs: Tensor, top: int = TOP) -> tuple[Tensor, Tensor]:
    """The ``top`` most probable digits per input (N, 1, 28, 28) and their probabilities, most probable first."""
    probabilities = model(inputs).softmax(1)
    return probabilities.topk(top, dim=1)  # (values, indices), sorted


def predict_files(model: nn.Module, paths: Sequence[Path]) -> list[dict]:
    """One record per image, in order: ``top`` (digit, probability) pairs or an ``error``."""
    records: list[dict] = []
    inputs: list[Tensor] = []
    for path, error in image_files(paths):
        record: dict = {"path": str(path)}
        if error is None:
            try:
                inputs.append(to_lab_input(read_grayscale(path)))
            except DataError as read_error:
                error = str(read_error)
        if error is not None:
            record["error"] = error
        records.append(record)
    if inputs:
        probabilities, digits = top_digits(model, torch.stack(inputs))
        readable = (record for record in records if "error" not in record)
        for record, row_digits, row_probabilities in zip(readable, digits, probabilities, strict=True):
            record["top"] = [
                {"digit": int(digit), "probability": round(float(p), 6)}
                for digit, p in zip(row_digits, row_probabilities, strict=True)
            ]
    return records


def describe(record: dict) -> str:
    """``path: 7 (98.1%)  1 (1.2%)  2 (0.4%)``"""
    return f"{record['path']}: " + "  ".join(f"{t['digit']} ({t['probability']:.1%})" for t in record["top"])


def main(argv: Sequence[str]) -> int:
    """Exit status 0: every image predicted; 1: some could not be read; 2: no usable checkpoint."""
    parser = argparse.ArgumentParser(description="Top-3 digits for your own images, from a trained model.")
    parser.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, GIF, WEBP) or folders of them")
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp", help="which model (default: mlp)")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint to use (default: models/<model>.ckpt)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of one line per image")
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or Path("models") / f"{args.model}.ckpt"
    if not checkpoint.is_file():
        print(
            f"error: {checkpoint} not found: run `make repro` (or `dvc pull`) to get the trained models",
            file=sys.stderr,
        )
        return 2
    try:
        model = load_model(checkpoint)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    records = predict_files(model, args.images)
    for record in records:
        if "error" in record:
            print(f"error: {record['path']}: {record['error']}", file=sys.stderr)
        elif not args.json:
            print(describe(record))
    if args.json:
        print(json.dumps({"checkpoint": str(checkpoint), "images": records}, indent=2))
    return 1 if any("error" in record for record in records) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
