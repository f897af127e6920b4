"""`python -m mnistlab.predict`: your own images, read, normalised as MNIST was and predicted.

The images are drawn here (a 0 and a 1, on dark or light paper, in colour, as JPEG), made from MNIST
test digits to look photographed (tests/digit_images.py), blank, damaged or lying about their size.
Fast tests use a checkpoint of an untrained MLP (the command's plumbing does not need a good model);
the slow ones an MLP trained the lab's way for a few epochs on the real training split.
"""

import io
import json
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from torch import Tensor
from torch.nn.functional import max_pool2d
from torchvision.io import decode_image, encode_jpeg, write_jpeg, write_png
from torchvision.transforms.v2.functional import gaussian_blur

from mnistlab.data import Split, save_split, split_indices
from mnistlab.errors import DataError
from mnistlab.evaluation import load_model
from mnistlab.idx import decode_idx
from mnistlab.models import build_model
from mnistlab.params import TrainerParams, TrainParams
from mnistlab.predict import dilated, main, predict_files, read_grayscale, to_lab_input, top_digits
from mnistlab.training import fit, save_checkpoint
from tests.conftest import ROOT, run
from tests.digit_images import photographed_folder

slow = pytest.mark.slow  # needs the real MNIST (the mnist_raw fixture) and trains for seconds
TRAINER = TrainerParams(accelerator="cpu", devices=1, strategy="auto", num_nodes=1, precision="32-true")
PHOTOGRAPHED = 250  # MNIST test digits made to look photographed, scanned or drawn
REQUIRED_TOP1 = 0.90


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


def on_canvas(image: Tensor, height: int, width: int, top: int, left: int) -> Tensor:
    """``image`` (C, h, w) pasted at (top, left) on a black canvas (C, height, width)."""
    canvas = torch.zeros(image.shape[0], height, width, dtype=image.dtype)
    canvas[:, top : top + image.shape[1], left : left + image.shape[2]] = image
    return canvas


def gray(image: Tensor) -> Tensor:
    """uint8 (1, H, W) of a uint8 (1 or 3, H, W) image, converted as the command converts a colour file."""
    if image.shape[0] == 1:
        return image
    return torch.from_numpy(np.array(Image.fromarray(image.permute(1, 2, 0).numpy()).convert("L")))[None]


def via_jpeg(image: Tensor, quality: int) -> Tensor:
    return decode_image(encode_jpeg(image, quality=quality))


def noisy(image: Tensor, sigma: float, seed: int = 0) -> Tensor:
    noise = sigma * torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    return (image.float() + noise).round().clamp(0, 255).to(torch.uint8)


def difference_up_to_1_px(image: Tensor, reference: Tensor) -> float:
    """The mean absolute difference of two (1, 28, 28) inputs, ``image`` moved by at most 1 px to fit best.

    Placing by the centre of mass rounds to whole pixels, so the same digit may land 1 px apart.
    """
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return min(float((image.roll(shift, dims=(1, 2)) - reference).abs().mean()) for shift in shifts)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` gray pixels, holding a few bytes of image data.

    With torchvision 0.29's decoder this file kills the process (SIGSEGV): libpng reports "Not enough
    image data" by longjmp into decode_png after its output tensor exists, and the compiled clean-up
    path then releases that tensor through a pointer it assumed still null (a non-volatile local
    changed after setjmp), reading address 8.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale, not interlaced
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    )


def lab_checkpoint(path: Path, model_name: str = "mlp") -> Path:
    """A checkpoint of an untrained network, in the layout ``load_model`` reads."""
    state = {f"model.{key}": value for key, value in build_model(model_name).state_dict().items()}
    torch.save({"hyper_parameters": {"model_name": model_name}, "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(mnist_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab's MLP after 5 epochs on the lab's 48,000 training images (seconds on a CPU)."""
    images = torch.from_numpy(decode_idx((mnist_raw / "train-images-idx3-ubyte").read_bytes(), "images").copy())
    labels = torch.from_numpy(decode_idx((mnist_raw / "train-labels-idx1-ubyte").read_bytes(), "labels").copy())
    split_dir = tmp_path_factory.mktemp("split")
    train, validation = split_indices(len(labels), 0.2, seed=0)
    for name, indices in {"train": train, "validation": validation}.items():
        save_split(Split(images[indices].clone(), labels[indices].long(), indices), split_dir / name)
    params = TrainParams(epochs=5, learning_rate=0.01, batch_size=256, eval_batch_size=12_000)
    trainer, _ = fit("mlp", params, TRAINER, 0, split_dir, None)
    path = split_dir.parent / "mlp.ckpt"
    save_checkpoint(trainer, path)
    return path


@pytest.fixture(scope="module")
def mnist_test(mnist_raw: Path) -> tuple[Tensor, Tensor]:
    """MNIST's 10,000 test images (uint8) and labels: the only digits the generated images are made from."""
    images = decode_idx((mnist_raw / "t10k-images-idx3-ubyte").read_bytes(), "images")
    labels = decode_idx((mnist_raw / "t10k-labels-idx1-ubyte").read_bytes(), "labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()).long()


@pytest.fixture
def untrained(tmp_path: Path) -> Path:
    return lab_checkpoint(tmp_path / "untrained.ckpt")


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


@pytest.fixture
def blank(tmp_path: Path) -> Path:
    """Slightly grey, noisy paper with nothing on it, as a JPEG."""
    path = tmp_path / "blank_page.jpg"
    write_jpeg(noisy(torch.full((3, 300, 400), 235, dtype=torch.uint8), 6), str(path), quality=60)
    return path


# --- MNIST's normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("reach", [1, 3, 7, 11])
def test_the_ink_grows_as_a_square_max_pool_would_grow_it(reach: int) -> None:
    generator = torch.Generator().manual_seed(reach)
    for shape, density in [((512, 384), 0.002), ((37, 53), 0.05), ((5, 5), 0.5), ((1, 9), 0.2)]:
        mask = torch.rand(shape, generator=generator) < density
        square = max_pool2d(mask[None, None].float(), reach, stride=1, padding=reach // 2)[0, 0] > 0
        assert torch.equal(dilated(mask, reach), square), (shape, density)
    assert dilated(torch.zeros(4, 4, dtype=torch.bool), reach).sum() == 0


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


def test_the_digit_is_20_px_on_its_longer_side_centred_by_mass_in_28x28() -> None:
    wide = drawn_digit(0, height=100, width=300)  # a 3:1 ellipse
    converted = to_lab_input(wide)[0]
    rows, columns = (converted > 0.05).any(1).nonzero()[:, 0], (converted > 0.05).any(0).nonzero()[:, 0]
    assert 19 <= len(columns) <= 21 and 5 <= len(rows) <= 9  # the aspect ratio kept
    mass = converted.sum()
    centre = [float((converted.sum(axis) * torch.arange(28)).sum() / mass) for axis in (1, 0)]
    assert all(abs(c - 14) <= 0.5 for c in centre), centre


def test_normalising_a_normalised_digit_changes_nearly_nothing() -> None:
    once = to_lab_input(drawn_digit(0))
    twice = to_lab_input((once * 255).round().to(torch.uint8))
    assert difference_up_to_1_px(twice, once) < 0.02


@pytest.mark.parametrize(
    "variant",
    ["off-centre", "small on a large canvas", "dark ink on paper", "blue ink on cream, JPEG 40", "noisy, blurred"],
)
def test_the_same_digit_anywhere_and_in_any_ink_gives_nearly_the_same_input(variant: str) -> None:
    """The scan of a centred digit (the reference) against the same digit as people photograph it."""
    digit = drawn_digit(0, height=140, width=110)
    reference = to_lab_input(digit)
    image = {
        "off-centre": lambda: on_canvas(digit, 400, 600, 230, 450),
        "small on a large canvas": lambda: on_canvas(drawn_digit(0, height=70, width=55), 700, 900, 40, 600),
        "dark ink on paper": lambda: 255 - on_canvas(digit, 300, 500, 100, 20),
        "blue ink on cream, JPEG 40": lambda: via_jpeg(
            coloured(on_canvas(digit, 320, 480, 150, 300), ink=(20, 40, 160), paper=(245, 238, 215)), 40
        ),
        "noisy, blurred": lambda: noisy(gaussian_blur(on_canvas(digit, 360, 360, 100, 120), [7, 7], [1.5, 1.5]), 12),
    }[variant]()
    converted = to_lab_input(gray(image))
    assert converted is not None
    assert difference_up_to_1_px(converted, reference) < 0.06  # another digit (a 1) differs by 0.16


def saved_seven(kind: str, path: Path) -> Path:
    """A black 7 on white, 200x200, saved as apps and cameras save images."""
    seven = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(seven).line([(60, 40), (140, 40), (90, 170)], fill=0, width=14)
    if kind == "PNG":
        seven.save(path)
    elif kind.startswith("transparent canvas"):  # a drawing app: only the strokes are opaque
        ink = (0, 0, 0, 255) if kind.endswith("black ink") else (255, 255, 255, 255)
        drawing = Image.new("RGBA", seven.size, (0, 0, 0, 0))
        drawing.paste(ink, mask=Image.eval(seven, lambda value: 255 - value))
        drawing.save(path, format="PNG")
    elif kind == "16-bit PNG":
        Image.fromarray(np.array(seven, dtype=np.uint16) * 257).save(path, format="PNG")
    elif kind == "palette GIF":
        seven.convert("P").save(path, format="GIF")
    elif kind == "WEBP":
        seven.convert("RGB").save(path, format="WEBP", lossless=True)
    elif kind == "JPEG turned by its EXIF orientation":  # a phone held sideways
        exif = Image.Exif()
        exif[0x0112] = 6  # to be shown turned 90 degrees clockwise
        seven.rotate(90, expand=True).convert("RGB").save(path, format="JPEG", quality=95, exif=exif)
    return path


@pytest.mark.parametrize(
    "kind",
    [
        "transparent canvas, black ink",
        "transparent canvas, white ink",
        "16-bit PNG",
        "palette GIF",
        "WEBP",
        "JPEG turned by its EXIF orientation",
    ],
)
def test_images_as_apps_and_cameras_save_them_are_read_as_drawn(kind: str, tmp_path: Path) -> None:
    reference = to_lab_input(read_grayscale(saved_seven("PNG", tmp_path / "seven.png")))
    converted = to_lab_input(read_grayscale(saved_seven(kind, tmp_path / "seven.image")))
    assert converted is not None and (converted - reference).abs().mean() < 0.01


@slow
def test_a_centred_mnist_digit_comes_out_as_it_went_in(mnist_test: tuple[Tensor, Tensor]) -> None:
    digits = mnist_test[0][:500]
    converted = torch.stack([to_lab_input(digit[None]) for digit in digits])[:, 0]
    original = digits.float() / 255
    difference = (converted - original).abs().mean((1, 2))
    assert difference.median() < 0.01 and (difference < 0.05).float().mean() > 0.95, difference.quantile(0.95)
    ink, ink_in = converted > 0.5, original > 0.5
    assert (ink & ink_in).sum() / (ink | ink_in).sum() > 0.95  # the same strokes, in the same place


@slow
def test_photographed_digits_are_read_right(
    checkpoint: Path, mnist_test: tuple[Tensor, Tensor], tmp_path: Path, capsys
) -> None:
    """MNIST test digits placed, scaled, inked, lit, blurred, noised and compressed as people's images are."""
    chosen = torch.randperm(10_000, generator=torch.Generator().manual_seed(12))[:PHOTOGRAPHED]
    truth = photographed_folder(mnist_test[0][chosen], mnist_test[1][chosen], tmp_path / "photos")
    assert main(["--checkpoint", str(checkpoint), "--json", str(tmp_path / "photos")]) == 0  # make predict IMAGES=
    records = json.loads(capsys.readouterr().out)["images"]
    assert len(records) == PHOTOGRAPHED
    right = sum(
        not record["no_digit"] and record["top"][0]["digit"] == truth[Path(record["path"])] for record in records
    )
    assert right / PHOTOGRAPHED >= REQUIRED_TOP1, f"top-1 {right}/{PHOTOGRAPHED}"


# --- No digit ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["white", "black", "noisy grey", "uneven light", "a speck", "two specks"])
def test_a_blank_or_nearly_blank_image_has_no_digit(name: str) -> None:
    height, width = 300, 400
    paper = torch.full((1, height, width), 240, dtype=torch.uint8)
    speck, specks = paper.clone(), paper.clone()
    speck[0, 100:104, 200:204] = 20
    specks[0, 50:54, 30:34], specks[0, 250:253, 370:373] = 20, 30
    light = torch.linspace(0.8, 1.0, width).expand(1, height, width)
    image = {
        "white": torch.full((1, height, width), 255, dtype=torch.uint8),
        "black": torch.zeros((1, height, width), dtype=torch.uint8),
        "noisy grey": noisy(torch.full((1, height, width), 128, dtype=torch.uint8), 25),
        "uneven light": via_jpeg((paper * light).to(torch.uint8), 30),
        "a speck": speck,
        "two specks": specks,
    }[name]
    assert to_lab_input(image) is None


def test_no_digit_is_said_for_that_file_and_is_not_an_error(
    untrained: Path, images: dict[str, Path], blank: Path, capsys
) -> None:
    assert main(["--checkpoint", str(untrained), str(blank), str(images["dark_one"])]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == f"{blank}: no digit found" and lines[1].startswith(f"{images['dark_one']}: ")
    assert captured.err == ""

    assert main(["--checkpoint", str(untrained), "--json", str(blank), str(images["dark_one"])]) == 0
    no_digit, digit = json.loads(capsys.readouterr().out)["images"]
    assert no_digit == {"path": str(blank), "no_digit": True}
    assert digit["no_digit"] is False and len(digit["top"]) == 3


# --- Files that are not images, damaged, or too large --------------------------------------------------


@pytest.mark.parametrize("name", ["not_an_image", "text"])
def test_a_file_that_is_not_an_image_is_one_clear_error(images: dict[str, Path], name: str) -> None:
    with pytest.raises(DataError, match="not an image this command reads") as error:
        read_grayscale(images[name])
    assert "cpp" not in str(error.value)  # not a decoder's C++ location


def test_an_image_above_the_pixel_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_claiming(100_000, 100_000))  # 68 bytes claiming 10 gigapixels
    with pytest.raises(DataError) as error:
        read_grayscale(huge)
    assert str(error.value) == (
        "100000x100000 pixels (10,000 megapixels) is above the limit of 50 megapixels: "
        "give --max-megapixels to raise it"
    )

    large = tmp_path / "large.png"
    large.write_bytes(png_claiming(8_000, 8_000))  # 64 megapixels claimed, a few bytes of data
    with pytest.raises(DataError, match="above the limit of 50 megapixels"):
        read_grayscale(large)
    with pytest.raises(DataError, match=r"^damaged image: "):  # within a raised limit: decoded, found short
        read_grayscale(large, max_megapixels=100)
    small = tmp_path / "small.png"
    write_png(drawn_digit(0, height=1_000, width=800), str(small))  # 0.8 megapixels
    with pytest.raises(DataError, match=r"above the limit of 0\.5 megapixels"):
        read_grayscale(small, max_megapixels=0.5)
    assert read_grayscale(small).shape == (1, 1_000, 800)


IMAGE_FORMATS = {"png": {"format": "PNG"}, "jpeg": {"format": "JPEG", "quality": 80}, "gif": {"format": "GIF"}}


def valid_image_bytes(kind: str) -> bytes:
    """A small blue 1 on cream paper in ``kind``'s format."""
    image = coloured(drawn_digit(1, height=40, width=32), ink=(20, 40, 160), paper=(245, 235, 200))
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, **IMAGE_FORMATS[kind])
    return buffer.getvalue()


VALID = {kind: valid_image_bytes(kind) for kind in IMAGE_FORMATS}
EDITS = st.lists(
    st.one_of(
        st.tuples(st.just("truncate"), st.floats(0, 1)),
        st.tuples(st.just("set"), st.floats(0, 1), st.integers(0, 255)),
        st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 16)),
        st.tuples(st.just("big number"), st.floats(0, 0.2), st.integers(0, 2**32 - 1)),  # sizes in the header
    ),
    min_size=1,
    max_size=6,
)


def edited(data: bytes, edits: list[tuple]) -> bytes:
    out = bytearray(data)
    for edit in edits:
        at = min(int(edit[1] * len(out)), max(len(out) - 1, 0))
        if edit[0] == "truncate":
            del out[at:]
        elif edit[0] == "set" and out:
            out[at] = edit[2]
        elif edit[0] == "insert":
            out[at:at] = edit[2]
        elif edit[0] == "delete":
            del out[at : at + edit[2]]
        elif edit[0] == "big number":
            out[at : at + 4] = struct.pack(">I", edit[2])
    return bytes(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(VALID)), edits=EDITS)
def test_truncated_and_mutated_images_give_an_error_or_a_prediction_never_a_crash(kind: str, edits: list) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzzed.{kind}"
        path.write_bytes(edited(VALID[kind], edits))
        try:
            image = read_grayscale(path)
        except DataError as error:
            assert str(error) and "\n" not in str(error)  # one line
            return
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 1
        converted = to_lab_input(image)
        assert converted is None or (converted.shape == (1, 28, 28) and 0 <= converted.min() <= converted.max() <= 1)


# --- The command -----------------------------------------------------------------------------------------


def test_show_writes_one_contact_sheet_of_each_image_beside_its_28x28(
    untrained: Path, images: dict[str, Path], blank: Path, tmp_path: Path, capsys
) -> None:
    show = tmp_path / "show"
    argv = ["--checkpoint", str(untrained), "--json", "--show", str(show), str(images["dark_one"].parent), str(blank)]
    assert main(argv) == 1  # fake.png is not an image: it has its error line and no place on the sheet
    output = json.loads(capsys.readouterr().out)
    assert output["contact_sheet"] == str(show / "contact_sheet.png") and sorted(show.iterdir()) == [
        show / "contact_sheet.png"
    ]
    with Image.open(show / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.size == (1440, 190)  # one row of 4: three digits and the blank page


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
def test_predict_command_json_reports_every_file_and_survives_damaged_and_lying_ones(
    checkpoint: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    """`make predict IMAGES=...` on good, bad and missing paths, in a child process: a crash in a decoder (the
    files that crashed torchvision's) would show in its status. (Two tests, each with its process, before.)"""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "lying_100000x100000.png").write_bytes(png_claiming(100_000, 100_000))
    (bad / "lying_1000x1000.png").write_bytes(png_claiming(1_000, 1_000))  # torchvision: SIGSEGV
    valid = images["dark_one"].read_bytes()
    (bad / "truncated.png").write_bytes(valid[: len(valid) // 2])
    (bad / "truncated.jpg").write_bytes(images["light_zero"].read_bytes()[:300])
    args = [str(bad), str(images["dark_one"].parent), str(images["text"]), str(tmp_path / "empty")]
    args += [str(tmp_path / "gone.png"), "--max-megapixels", "200"]
    # -X importtime lists every module imported: the command must not need Lightning.
    cmd = [sys.executable, "-X", "importtime", "-m", "mnistlab.predict", "--checkpoint", str(checkpoint), "--json"]
    result = run([*cmd, *args], ROOT, check=False)
    assert result.returncode == 1, result.stderr  # not -11: the process survived; some files failed
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "torch" in imported and not imported & {"pytorch_lightning", "lightning"}

    output = json.loads(result.stdout)
    assert output["checkpoint"] == str(checkpoint)
    records = {Path(record["path"]).name: record for record in output["images"]}
    damaged = sorted(path.name for path in bad.iterdir())  # a folder gives its images in name order
    folder = ["fake.png", "one.png", "one_in_blue_ink.png", "zero_on_paper.jpg"]  # sorted; README.txt left out
    assert list(records) == [*damaged, *folder, "notes.txt", "empty", "gone.png"]  # in the order given
    for name, digit in {"one.png": 1, "one_in_blue_ink.png": 1, "zero_on_paper.jpg": 0}.items():  # after the bad
        top = records[name]["top"]
        assert top[0]["digit"] == digit, (name, top)
        assert len(top) == 3 and len({entry["digit"] for entry in top}) == 3
        probabilities = [entry["probability"] for entry in top]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    assert "not an image" in records["fake.png"]["error"] and "not an image" in records["notes.txt"]["error"]
    assert "no images" in records["empty"]["error"] and records["gone.png"]["error"] == "not found"

    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 8 and "Traceback" not in result.stderr  # one line per bad input
    damaged_errors = {name: [line for line in errors if line.startswith(f"error: {bad / name}")] for name in damaged}
    assert all(len(lines) == 1 for lines in damaged_errors.values()), errors
    assert "above the limit of 200 megapixels" in damaged_errors.pop("lying_100000x100000.png")[0]
    assert all("damaged image" in lines[0] for lines in damaged_errors.values()), errors
    for name in ["fake.png", "notes.txt", "empty", "gone.png"]:
        assert sum(name in line for line in errors) == 1, errors


@slow
def test_predict_command_text_output(checkpoint: Path, images: dict[str, Path], capsys) -> None:
    assert main(["--checkpoint", str(checkpoint), str(images["dark_one"]), str(images["light_zero"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{images['dark_one']}: 1 (") and lines[0].count("%)") == 3
    assert lines[1].startswith(f"{images['light_zero']}: 0 (")


def test_a_missing_checkpoint_is_one_clear_error(images: dict[str, Path], tmp_path: Path, capsys, monkeypatch) -> None:
    assert main(["--checkpoint", str(tmp_path / "none.ckpt"), str(images["dark_one"])]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err.strip()
        == f"error: {tmp_path / 'none.ckpt'} not found: run `make repro` (or `dvc pull`) to get the trained models"
    )

    monkeypatch.chdir(tmp_path)  # no models/ here: the default checkpoint is models/<model>/model.ckpt
    assert main(["--model", "mlr", str(images["dark_one"])]) == 2
    assert capsys.readouterr().err.startswith(f"error: {Path('models/mlr/model.ckpt')} not found: run `make repro`")

    not_a_checkpoint = tmp_path / "bad.ckpt"
    not_a_checkpoint.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    assert main(["--checkpoint", str(not_a_checkpoint), str(images["dark_one"])]) == 2
    assert "not a checkpoint of this project's models" in capsys.readouterr().err


def test_make_predict_passes_images_model_json_and_show() -> None:
    result = run(["make", "-n", "predict", "IMAGES=a.png digits/", "MODEL=mlr", "JSON=1", "SHOW=sheet/"], ROOT)
    assert "-m mnistlab.predict --model mlr --json --show sheet/ a.png digits/" in result.stdout


@slow
def test_predict_files_keeps_going_after_a_bad_file(checkpoint: Path, images: dict[str, Path]) -> None:
    records = predict_files(load_model(checkpoint), [images["not_an_image"], images["dark_one"]])
    assert "error" in records[0] and "top" not in records[0]
    assert records[1]["top"][0]["digit"] == 1
