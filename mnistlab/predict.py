"""Predict the digits in your own images with a trained model: the top 3 and their probabilities.

    python -m mnistlab.predict [--model mlp|mlr] [--checkpoint PATH] [--json] [--show DIR]
                               [--max-megapixels N] IMAGE_OR_FOLDER...

Each image is read with Pillow (its header first: one above the pixel limit is refused before
decoding) and normalised the way MNIST itself was made: the ink found (uneven light taken out, the
polarity from the border, an Otsu threshold), cropped to its bounding box, scaled to 20 px on the
longer side and placed in 28x28 by its centre of mass. An image without ink is "no digit found".
``--show DIR`` writes a contact sheet of each image beside its 28x28. Loads the checkpoint without
Lightning.
"""

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn
from torch.nn.functional import pad
from torchvision.transforms.v2.functional import gaussian_blur, resize

from mnistlab.errors import DataError
from mnistlab.evaluation import load_model
from mnistlab.models import MODELS

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")  # the only decoders Pillow may use here
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
MAX_MEGAPIXELS = 50.0  # default limit: a larger image is refused from its header (50 MP decode to <= 150 MB)
WORK_SIDE = 512  # px: a larger image is reduced to this longer side first (a digit needs only 20)
SIDE, BOX = 28, 20  # MNIST: the digit's longer side is 20 px, centred by mass in 28x28
MIN_SIDE = 8  # px: a narrower image (once reduced to WORK_SIDE) has no room for a digit
MIN_CONTRAST = 0.2  # ink vs background, fraction of the full range: below it, no digit (blank paper, noise)
INK_QUANTILE = 0.75  # this share of the ink is at least as dark (light) as what counts as full ink
SOFT_EDGE = 0.25  # a stroke's blurred edge counts as ink this far (0-1) from background to ink
MIN_EXTENT = 0.04  # the ink's longer side, fraction of the image's: below it, no digit (a speck)
MIN_MASS = 4.0  # px of full ink in the 20 px box: below it, no digit (MNIST's faintest test digit has 22)
SHOW_SIDE = 256  # px: inputs are kept at most this large for the contact sheet
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


@contextmanager
def pillow_size_check_off() -> Iterator[None]:
    """Pillow's own decompression-bomb check off while our limit, which names the size, applies."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_grayscale(path: Path, max_megapixels: float = MAX_MEGAPIXELS) -> Tensor:
    """The image at ``path`` as uint8 (1, H, W), read with Pillow once its header is within the limit.

    Raises DataError for anything else: not an image, too large, truncated or damaged. Pillow is used
    rather than ``torchvision.io``, whose PNG decoder crashes the process on damaged image data.
    """
    if not path.is_file():
        raise DataError("not a file")
    if path.stat().st_size == 0:
        raise DataError("empty file")
    try:
        with pillow_size_check_off(), Image.open(path, formats=IMAGE_FORMATS) as image:
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > max_megapixels * 1e6:
                raise DataError(
                    f"{width}x{height} pixels ({width * height / 1e6:,.0f} megapixels) is above the limit of "
                    f"{max_megapixels:g} megapixels: give --max-megapixels to raise it"
                )
            image.draft("L", (WORK_SIDE, WORK_SIDE))  # JPEG only: decoded at 1/2, 1/4 or 1/8 when that is enough
            return grayscale(ImageOps.exif_transpose(image))  # a phone photo's EXIF orientation applied
    except UnidentifiedImageError:
        raise DataError("not an image this command reads (PNG, JPEG, GIF or WEBP)") from None
    except OSError as error:
        if error.errno is not None:  # the file system, not the image: permission denied, ...
            raise DataError(f"cannot read: {error.strerror or error}") from None
        raise DataError(f"damaged image: {error}") from None
    except DataError:
        raise
    except MemoryError:
        raise DataError("too large to decode in this machine's memory") from None
    except Exception as error:  # a damaged file can make a decoder raise almost anything: SyntaxError, ValueError, ...
        raise DataError(f"damaged image: {error or type(error).__name__}") from None


def thumbnail(path: Path, gray: Tensor, side: int = SHOW_SIDE) -> Tensor:
    """The image ``read_grayscale`` read from ``path``, for people to look at: at most ``side`` px, in colour
    (uint8 (3, h, w)), or its ``gray`` (1, h, w) where it has transparent pixels or fails a second reading.
    """
    try:
        with pillow_size_check_off(), Image.open(path, formats=IMAGE_FORMATS) as image:
            if not image.has_transparency_data:
                image.draft("RGB", (side, side))
                colour = ImageOps.exif_transpose(image).convert("RGB")
                colour.thumbnail((side, side))
                return torch.from_numpy(np.array(colour)).permute(2, 0, 1)
    except Exception:  # read once already: the gray will do
        pass
    return reduced(gray, side)


def grayscale(image: Image.Image) -> Tensor:
    """uint8 (1, H, W) of a Pillow image; transparent pixels become paper that contrasts with the ink."""
    if image.mode.startswith("I"):  # 16- or 32-bit grayscale: scaled to 8 bits, not clipped
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray((values * (255 / max(values.max(), 1))).astype(np.uint8))
    if not image.has_transparency_data:
        return torch.from_numpy(np.array(image.convert("L"))).unsqueeze(0)
    gray, alpha = torch.from_numpy(np.array(image.convert("LA"))).float().div(255).unbind(-1)
    ink_is_dark = (gray * alpha).sum() < 0.5 * alpha.sum()  # as drawn on a transparent canvas
    paper = 1.0 if ink_is_dark else 0.0
    composed = gray * alpha + paper * (1 - alpha)
    return composed.mul(255).round().to(torch.uint8).unsqueeze(0)


def otsu(histogram: Tensor) -> tuple[int, Tensor, Tensor]:
    """Otsu's threshold of a 256-bin histogram: levels <= it are one class; both classes' pixel counts and means."""
    counts = histogram.double()
    levels = torch.arange(256, dtype=torch.float64)
    count_low = counts.cumsum(0)
    count_high = counts.sum() - count_low
    mass_low = (counts * levels).cumsum(0)
    mean_low = mass_low / count_low
    mean_high = (mass_low[-1] - mass_low) / count_high
    between = (count_low * count_high * (mean_low - mean_high) ** 2).nan_to_num(0.0)  # the between-class variance
    threshold = int(between.argmax())
    return (
        threshold,
        torch.stack([count_low[threshold], count_high[threshold]]),
        torch.stack([mean_low[threshold], mean_high[threshold]]),
    )


def reduced(image: Tensor, longest: int) -> Tensor:
    """``image`` (C, H, W) shrunk, antialiased, to at most ``longest`` px on its longer side."""
    height, width = image.shape[-2:]
    if max(height, width) <= longest:
        return image
    scale = longest / max(height, width)
    return resize(image, [max(1, round(height * scale)), max(1, round(width * scale))], antialias=True)


def quadratic_terms(height: int, width: int) -> Tensor:
    """(height * width, 6): 1, x, y, x², xy, y² at each pixel, x and y from -1 to 1."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y], -1).reshape(-1, 6)


def evenly_lit(gray: Tensor) -> Tensor:
    """``gray`` (H, W) with uneven light taken out: a quadratic surface fitted to the background, subtracted.

    Fitted on a 64 px copy to the pixels near the median (the background: most of the image), then
    twice more to those near the last surface, so that Otsu's threshold below splits ink from paper
    rather than the brighter side of the paper from the darker.
    """
    coarse = reduced(gray[None], 64)[0]
    terms, values = quadratic_terms(*coarse.shape), coarse.reshape(-1, 1)
    distance = (values - values.median()).abs()[:, 0]
    background = distance <= 3 * distance.median() + 2  # grey levels
    for _ in range(3):
        surface = torch.linalg.lstsq(terms[background], values[background]).solution
        distance = (values - terms @ surface).abs()[:, 0]
        background = distance <= 3 * distance[background].median() + 2  # grey levels
    light = (quadratic_terms(*gray.shape) @ surface).reshape(gray.shape)
    return (gray - light + light.mean()).clamp(0, 255)


def dilated(mask: Tensor, reach: int) -> Tensor:
    """``mask`` (H, W, bool) grown by a ``reach`` x ``reach`` square (odd ``reach``): a pixel is set where any
    pixel of the square around it is, as a max-pool of that square would give. Counted with an integral
    image (two cumulative sums, four lookups a pixel): 2 ms for a 512 x 384 photo, against 15 ms for the
    max-pool (docs/predict.md)."""
    half = reach // 2
    sums = pad(mask.to(torch.int32), (half + 1, half, half + 1, half)).cumsum(0).cumsum(1)
    return (sums[reach:, reach:] - sums[:-reach, reach:] - sums[reach:, :-reach] + sums[:-reach, :-reach]) > 0


def ink_box(gray: Tensor) -> tuple[Tensor, tuple[int, int, int, int]] | None:
    """The ink of a float grayscale (H, W) image in [0, 1] (0: background, 1: full ink) and its box
    (top, bottom, left, right); None when there is no ink.

    The ink is found on the image smoothed by a Gaussian, so that noise and JPEG blocks do not count:
    Otsu's threshold splits it in two classes, the class most of the border is in is the background
    (light or dark), and the ink must differ from it by ``MIN_CONTRAST``. The box holds the pixels past
    the threshold and, within a few px of them, the stroke's soft edge.
    """
    gray = evenly_lit(gray)
    sigma = max(0.5, max(gray.shape) / 400)  # px
    reach = 2 * math.ceil(2 * sigma) + 1  # px: the Gaussian's kernel, and how far a soft edge may go
    smooth = gaussian_blur(gray[None], [reach, reach], [sigma, sigma])[0]
    threshold, counts, means = otsu(torch.histc(smooth, bins=256, min=0, max=255))
    dark = smooth <= threshold + 0.5  # the lower class: histc's bins are centred on the integer levels
    border = torch.cat([dark[0], dark[-1], dark[:, 0], dark[:, -1]])
    light_ink = bool(border.float().mean() >= 0.5)  # MNIST's polarity; otherwise dark ink on light paper
    background, ink_mean = (means[0], means[1]) if light_ink else (means[1], means[0])
    if counts.min() == 0 or abs(float(ink_mean - background)) < MIN_CONTRAST * 255:
        return None

    strong = ~dark if light_ink else dark
    ink_values = gray[strong] if light_ink else 255 - gray[strong]
    full = float(ink_values.quantile(INK_QUANTILE))  # a quarter of the ink is darker (lighter): all full ink
    full_ink = full if light_ink else 255 - full
    ink = ((gray - background) / (full_ink - background)).clamp(0, 1).float()
    near = dilated(strong, reach)
    inked = strong | near & ((smooth - background) / (full_ink - background) >= SOFT_EDGE)
    rows, columns = inked.any(1).nonzero()[:, 0], inked.any(0).nonzero()[:, 0]
    box = int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1
    if max(box[1] - box[0], box[3] - box[2]) < MIN_EXTENT * max(gray.shape):
        return None  # a speck
    return ink, box


def to_lab_input(image: Tensor) -> Tensor | None:
    """uint8 grayscale (1, H, W) -> float32 (1, 28, 28) in [0, 1], normalised as MNIST was; None: no digit.

    MNIST's normalisation: the ink (``ink_box``), cropped to its bounding box, scaled to 20 px on its
    longer side keeping the aspect ratio, placed in 28x28 with its centre of mass at the centre.
    """
    gray = reduced(image, WORK_SIDE)[0].float()
    found = ink_box(gray) if min(gray.shape) >= MIN_SIDE else None
    if found is None:
        return None
    ink, (top, bottom, left, right) = found
    crop = ink[top:bottom, left:right]
    scale = BOX / max(crop.shape)
    height, width = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    digit = resize(crop[None], [height, width], antialias=True).clamp(0, 1)[0]
    mass = digit.sum()
    if mass < MIN_MASS:
        return None  # specks far apart: their box is nearly empty
    centre_row = float((digit.sum(1) * torch.arange(height)).sum() / mass)
    centre_column = float((digit.sum(0) * torch.arange(width)).sum() / mass)
    row = min(max(round(SIDE / 2 - centre_row), 0), SIDE - height)  # MNIST's centre: (14, 14) in pixel indices
    column = min(max(round(SIDE / 2 - centre_column), 0), SIDE - width)
    digit = (digit * 255).round() / 255  # 8 bits, as MNIST's
    return pad(digit, (column, SIDE - width - column, row, SIDE - height - row))[None]


@torch.inference_mode()
def top_digits(model: nn.Module, inputs: Tensor, top: int = TOP) -> tuple[Tensor, Tensor]:
    """The ``top`` most probable digits per input (N, 1, 28, 28) and their probabilities, most probable first."""
    probabilities = model(inputs).softmax(1)
    return probabilities.topk(top, dim=1)  # (values, indices), sorted


def read_inputs(
    paths: Sequence[Path], max_megapixels: float = MAX_MEGAPIXELS, keep_images: bool = False
) -> list[tuple[dict, Tensor | None, Tensor | None]]:
    """Per image, in order: its record (an ``error``, or ``no_digit``), the image (kept small) and its lab input."""
    inputs: list[tuple[dict, Tensor | None, Tensor | None]] = []
    for path, error in image_files(paths):
        record: dict = {"path": str(path)}
        image = lab_input = None
        if error is None:
            try:
                image = read_grayscale(path, max_megapixels)
            except DataError as read_error:
                error = str(read_error)
        if error is not None:
            record["error"] = error
        else:
            lab_input = to_lab_input(image)
            record["no_digit"] = lab_input is None
            image = thumbnail(path, image) if keep_images else None
        inputs.append((record, image, lab_input))
    return inputs


def add_predictions(model: nn.Module, inputs: Sequence[tuple[dict, Tensor | None, Tensor | None]]) -> list[dict]:
    """The records, each with a digit found given its ``top`` (digit, probability) pairs."""
    found = [(record, lab_input) for record, _, lab_input in inputs if lab_input is not None]
    if found:
        probabilities, digits = top_digits(model, torch.stack([lab_input for _, lab_input in found]))
        for (record, _), row_digits, row_probabilities in zip(found, digits, probabilities, strict=True):
            record["top"] = [
                {"digit": int(digit), "probability": round(float(p), 6)}
                for digit, p in zip(row_digits, row_probabilities, strict=True)
            ]
    return [record for record, _, _ in inputs]


def predict_files(model: nn.Module, paths: Sequence[Path], max_megapixels: float = MAX_MEGAPIXELS) -> list[dict]:
    """One record per image, in order: ``top`` (digit, probability) pairs, ``no_digit`` or an ``error``."""
    return add_predictions(model, read_inputs(paths, max_megapixels))


def describe(record: dict) -> str:
    """``path: 7 (98.1%)  1 (1.2%)  2 (0.4%)`` or ``path: no digit found``"""
    if record["no_digit"]:
        return f"{record['path']}: no digit found"
    return f"{record['path']}: " + "  ".join(f"{t['digit']} ({t['probability']:.1%})" for t in record["top"])


def contact_sheet(inputs: Sequence[tuple[dict, Tensor | None, Tensor | None]], path: Path, columns: int = 4) -> None:
    """One PNG: each readable image beside the 28x28 the model saw, with the prediction above it."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    shown = [(record, image, lab_input) for record, image, lab_input in inputs if image is not None]
    pairs = max(1, min(columns, len(shown)))
    rows = max(1, math.ceil(len(shown) / pairs))
    fig, axes = plt.subplots(rows, 2 * pairs, figsize=(3.6 * pairs, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index, (record, image, lab_input) in enumerate(shown):
        left, right = axes[index // pairs, 2 * (index % pairs)], axes[index // pairs, 2 * (index % pairs) + 1]
        name = Path(record["path"]).name
        left.imshow(image.permute(1, 2, 0) if len(image) == 3 else image[0], cmap="gray", vmin=0, vmax=255)
        left.set_title(name if len(name) <= 26 else name[:12] + "..." + name[-11:], fontsize=8)
        shown = torch.zeros(SIDE, SIDE) if lab_input is None else lab_input[0]
        right.imshow(shown, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        right.set_title("no digit found" if lab_input is None else describe(record).split(": ", 1)[1], fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def main(argv: Sequence[str]) -> int:
    """Exit status 0: every image read (predicted or no digit found); 1: some could not be read; 2: no checkpoint."""
    parser = argparse.ArgumentParser(
        prog="python -m mnistlab.predict", description="Top-3 digits for your own images, from a trained model."
    )
    parser.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, GIF, WEBP) or folders of them")
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp", help="which model (default: mlp)")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint to use (default: models/<model>/model.ckpt)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of one line per image")
    parser.add_argument(
        "--show", type=Path, metavar="DIR", help="write DIR/contact_sheet.png: each image beside its 28x28"
    )
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=MAX_MEGAPIXELS,
        help=f"refuse larger images before decoding them (default: {MAX_MEGAPIXELS:g})",
    )
    args = parser.parse_args(argv)
    if args.max_megapixels <= 0:
        parser.error("--max-megapixels must be positive")
    checkpoint = args.checkpoint or Path("models") / args.model / "model.ckpt"
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

    inputs = read_inputs(args.images, args.max_megapixels, keep_images=args.show is not None)
    records = add_predictions(model, inputs)
    for record in records:
        if "error" in record:
            print(f"error: {record['path']}: {record['error']}", file=sys.stderr)
        elif not args.json:
            print(describe(record))
    output: dict = {"checkpoint": str(checkpoint), "images": records}
    if args.show is not None:
        sheet = args.show / "contact_sheet.png"
        contact_sheet(inputs, sheet)
        output["contact_sheet"] = str(sheet)
        print(f"contact sheet: {sheet}", file=sys.stderr)
    if args.json:
        print(json.dumps(output, indent=2))
    return 1 if any("error" in record for record in records) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
