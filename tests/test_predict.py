"""`python -m mnistlab.predict`: your own images, read, converted to the lab's input and predicted.

The images are drawn here: a digit on a dark background, its light-background twin (as JPEG), a
colour one, and files that are not images. The model is the MLP trained for one epoch on part of
the real MNIST, so that a clearly drawn digit is also predicted right.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor
from torchvision.io import write_jpeg, write_png

from mnistlab.data import Split, save_split
from mnistlab.errors import DataError
from mnistlab.evaluation import load_model
from mnistlab.idx import decode_idx
from mnistlab.params import TrainerParams, TrainParams
from mnistlab.predict import predict_files, read_grayscale, to_lab_input, top_digits
from mnistlab.training import fit, save_checkpoint
from tests.conftest import ROOT, run

slow = pytest.mark.slow  # needs the real MNIST (the mnist_raw fixture) and trains for seconds
TRAINER = TrainerParams(accelerator="cpu", devices=1, strategy="auto", num_nodes=1, precision="32-true")


def drawn_digit(digit: int, height: int = 200, width: int = 160) -> Tensor:
    """A white 0 (an ellipse) or 1 (a bar) on black, uint8 (1, H, W), roughly as MNIST centres one."""
    y, x = torch.meshgrid(torch.arange(height) - height / 2, torch.arange(width) - width / 2, indexing="ij")
    if digit == 0:
        radius = (x / (0.3 * width)) ** 2 + (y / (0.33 * height)) ** 2
        stroke = (radius > 0.55) & (radius < 1.0)
    else:
        stroke = (x.abs() < 0.06 * width) & (y.abs() < 0.33 * height)
    return (stroke.to(torch.uint8) * 255).unsqueeze(0)


def coloured(image: Tensor, ink: tuple[int, int, int], paper: tuple[int, int, int]) -> Tensor:
    """The stroke of a white-on-black ``image`` in ``ink`` on ``paper``: uint8 (3, H, W)."""
    stroke = image.float() / 255
    ink_rgb, paper_rgb = torch.tensor(ink).view(3, 1, 1), torch.tensor(paper).view(3, 1, 1)
    return (stroke * ink_rgb + (1 - stroke) * paper_rgb).round().to(torch.uint8)


@pytest.fixture(scope="module")
def checkpoint(mnist_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab's MLP after one epoch on 12,000 real training images (a few seconds on a CPU)."""
    images = torch.from_numpy(decode_idx((mnist_raw / "train-images-idx3-ubyte").read_bytes(), "images").copy())
    labels = torch.from_numpy(decode_idx((mnist_raw / "train-labels-idx1-ubyte").read_bytes(), "labels").copy())
    split_dir = tmp_path_factory.mktemp("split")
    for name, part in {"train": slice(0, 12_000), "validation": slice(12_000, 14_000)}.items():
        indices = torch.arange(60_000)[part]
        save_split(Split(images[part].clone(), labels[part].long(), indices), split_dir / f"{name}.pt")
    params = TrainParams(epochs=1, learning_rate=0.01, batch_size=128, eval_batch_size=2_000)
    trainer, _ = fit("mlp", params, TRAINER, 0, split_dir, None)
    path = split_dir.parent / "mlp.ckpt"
    save_checkpoint(trainer, path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """The test's own image files, each kind the command must handle."""
    folder = tmp_path / "digits"
    folder.mkdir()
    files = {
        "dark_one": folder / "one.png",
        "light_zero": folder / "zero_on_paper.jpg",
        "colour_one": folder / "one_in_blue_ink.png",
        "not_an_image": folder / "fake.png",
        "text": tmp_path / "notes.txt",
    }
    write_png(drawn_digit(1), str(files["dark_one"]))
    write_jpeg(255 - drawn_digit(0), str(files["light_zero"]), quality=95)
    write_png(coloured(drawn_digit(1), ink=(20, 40, 160), paper=(245, 235, 200)), str(files["colour_one"]))
    files["not_an_image"].write_text("this is text, not a PNG\n")
    files["text"].write_text("a note\n")
    (folder / "README.txt").write_text("ignored: a folder gives only its image files\n")
    (tmp_path / "empty").mkdir()
    return files


def test_a_light_background_is_inverted_to_the_dark_twin() -> None:
    dark = drawn_digit(0)
    converted = to_lab_input(dark)
    assert converted.shape == (1, 28, 28) and converted.dtype == torch.float32
    assert converted.min() == 0 and converted.max() == 1
    assert converted[0, 0].max() == 0 and converted[0, 14, 4:9].max() > 0.5  # dark border, bright stroke
    torch.testing.assert_close(to_lab_input(255 - dark), converted, atol=1 / 255, rtol=0)


def test_a_colour_image_is_read_as_grayscale(images: dict[str, Path]) -> None:
    gray = read_grayscale(images["colour_one"])
    assert gray.shape == (1, 200, 160) and gray.dtype == torch.uint8
    converted = to_lab_input(gray)  # paper is light, ink dark: inverted to a light digit on black
    torch.testing.assert_close(converted, to_lab_input(drawn_digit(1)), atol=2 / 255, rtol=0)


@pytest.mark.parametrize("name", ["not_an_image", "text"])
def test_a_file_that_is_not_an_image_is_one_clear_error(images: dict[str, Path], name: str) -> None:
    with pytest.raises(DataError, match="not an image this command reads") as error:
        read_grayscale(images[name])
    assert "cpp" not in str(error.value)  # not torchvision's C++ location


@slow
def test_probabilities_are_a_distribution_and_top_3_is_sorted(checkpoint: Path) -> None:
    model = load_model(checkpoint)
    inputs = torch.stack([to_lab_input(drawn_digit(0)), to_lab_input(drawn_digit(1))])
    probabilities, digits = top_digits(model, inputs, top=10)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(2))
    top3, top3_digits = top_digits(model, inputs)
    assert top3.shape == (2, 3) and torch.equal(top3, probabilities[:, :3]) and torch.equal(top3_digits, digits[:, :3])
    assert (top3[:, :-1] >= top3[:, 1:]).all()
    assert digits[:, 0].tolist() == [0, 1]  # clearly drawn digits are read right


@slow
def test_predict_command_json_reports_every_file(checkpoint: Path, images: dict[str, Path], tmp_path: Path) -> None:
    args = [str(images["dark_one"].parent), str(images["text"]), str(tmp_path / "empty"), str(tmp_path / "gone.png")]
    # -X importtime lists every module imported: the command must not need Lightning.
    cmd = [sys.executable, "-X", "importtime", "-m", "mnistlab.predict", "--checkpoint", str(checkpoint), "--json"]
    result = run([*cmd, *args], ROOT, check=False)
    assert result.returncode == 1, result.stderr  # some files failed; the others were still predicted
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "torch" in imported and not imported & {"pytorch_lightning", "lightning"}

    output = json.loads(result.stdout)
    assert output["checkpoint"] == str(checkpoint)
    records = {Path(record["path"]).name: record for record in output["images"]}
    folder = ["fake.png", "one.png", "one_in_blue_ink.png", "zero_on_paper.jpg"]  # sorted; README.txt left out
    assert list(records) == [*folder, "notes.txt", "empty", "gone.png"]  # in the order given
    for name, digit in {"one.png": 1, "one_in_blue_ink.png": 1, "zero_on_paper.jpg": 0}.items():
        top = records[name]["top"]
        assert top[0]["digit"] == digit, (name, top)
        assert len(top) == 3 and len({entry["digit"] for entry in top}) == 3
        probabilities = [entry["probability"] for entry in top]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    assert "not an image" in records["fake.png"]["error"] and "not an image" in records["notes.txt"]["error"]
    assert "no images" in records["empty"]["error"] and records["gone.png"]["error"] == "not found"

    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4 and "Traceback" not in result.stderr  # one line per bad input
    for name in ["fake.png", "notes.txt", "empty", "gone.png"]:
        assert sum(name in line for line in errors) == 1, errors


@slow
def test_predict_command_text_output(checkpoint: Path, images: dict[str, Path], capsys) -> None:
    from mnistlab.predict import main

    assert main(["--checkpoint", str(checkpoint), str(images["dark_one"]), str(images["light_zero"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{images['dark_one']}: 1 (") and lines[0].count("%)") == 3
    assert lines[1].startswith(f"{images['light_zero']}: 0 (")


def test_a_missing_checkpoint_is_one_clear_error(images: dict[str, Path], tmp_path: Path, capsys) -> None:
    from mnistlab.predict import main

    assert main(["--checkpoint", str(tmp_path / "none.ckpt"), str(images["dark_one"])]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err.strip()
        == f"error: {tmp_path / 'none.ckpt'} not found: run `make repro` (or `dvc pull`) to get the trained models"
    )

    not_a_checkpoint = tmp_path / "bad.ckpt"
    not_a_checkpoint.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    assert main(["--checkpoint", str(not_a_checkpoint), str(images["dark_one"])]) == 2
    assert "not a checkpoint of this project's models" in capsys.readouterr().err


def test_make_predict_passes_images_model_and_json() -> None:
    result = run(["make", "-n", "predict", "IMAGES=a.png digits/", "MODEL=mlr", "JSON=1"], ROOT)
    assert "-m mnistlab.predict --model mlr --json a.png digits/" in result.stdout


@slow
def test_predict_files_keeps_going_after_a_bad_file(checkpoint: Path, images: dict[str, Path]) -> None:
    records = predict_files(load_model(checkpoint), [images["not_an_image"], images["dark_one"]])
    assert "error" in records[0] and "top" not in records[0]
    assert records[1]["top"][0]["digit"] == 1
