"""MNIST test digits made to look like people's own images: photographed, scanned or drawn.

A ``Look`` says how: the canvas, where the digit is and how large, how bold its strokes, the ink and
paper colours (dark ink on light paper, or a light digit on a dark background), uneven light, blur,
noise, and PNG or a JPEG quality. ``random_look`` draws one; ``render`` applies it to a digit. Only
MNIST *test* digits are to be used.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.functional import max_pool2d
from torchvision.io import encode_jpeg, encode_png
from torchvision.transforms.v2.functional import gaussian_blur, resize

Colour = tuple[int, int, int]
PAPERS = [(245, 238, 215), (252, 252, 250), (225, 226, 220), (240, 232, 200)]  # cream, white, grey, yellowish
DARK_INKS = [(20, 40, 160), (25, 25, 30), (140, 25, 25), (85, 85, 95)]  # blue, black, red, pencil
DARK_BACKGROUNDS = [(30, 30, 35), (20, 50, 35), (55, 45, 40), (10, 10, 10)]  # photo, board green, brown, black
LIGHT_INKS = [(240, 240, 235), (250, 225, 110), (190, 215, 255), (255, 255, 255)]  # chalk, yellow, light blue


@dataclass(frozen=True)
class Look:
    height: int  # px: the canvas
    width: int
    size: int  # px: the side of the digit's 28x28 field, enlarged
    top: int  # px: where the field goes on the canvas
    left: int
    cut: float  # 0.2 (a bold pen) to 0.6 (a fine one): where the enlarged digit's grey becomes ink
    bolder: int  # px: the strokes grown by this much on each side (0: not)
    ink: Colour
    paper: Colour
    light: float  # uneven light: this much brighter on one side than in the middle, towards ``light_angle``
    light_angle: float  # radians
    blur: float  # px: the Gaussian's sigma
    noise: float  # grey levels: the noise's standard deviation
    jpeg_quality: int | None  # None: PNG


def random_look(generator: torch.Generator) -> Look:
    """A look as people photograph, scan and draw digits: 200-900 px canvases, any ink, mild noise and blur."""

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    def integer(low: int, high: int) -> int:  # low..high inclusive
        return int(torch.randint(low, high + 1, (), generator=generator))

    height, width = integer(200, 900), integer(200, 900)
    size = max(40, round(uniform(0.3, 0.95) * min(height, width)))
    dark_on_light = uniform(0, 1) < 0.5
    papers, inks = (PAPERS, DARK_INKS) if dark_on_light else (DARK_BACKGROUNDS, LIGHT_INKS)
    return Look(
        height=height,
        width=width,
        size=size,
        top=integer(0, height - size),
        left=integer(0, width - size),
        cut=uniform(0.2, 0.6),
        bolder=max(1, round(size / 60)) if uniform(0, 1) < 0.25 else 0,
        ink=inks[integer(0, len(inks) - 1)],
        paper=papers[integer(0, len(papers) - 1)],
        light=uniform(0, 0.15),
        light_angle=uniform(0, 2 * math.pi),
        blur=uniform(0.1, 2.0),
        noise=uniform(0, 12),
        jpeg_quality=integer(30, 95) if uniform(0, 1) < 0.5 else None,
    )


def render(digit: Tensor, look: Look, generator: torch.Generator) -> Tensor:
    """A uint8 (28, 28) MNIST digit as an RGB uint8 (3, H, W) image with ``look`` (the noise from ``generator``)."""
    enlarged = resize(digit[None].float() / 255, [look.size, look.size], antialias=True)
    stroke = ((enlarged - look.cut) / 0.2 + 0.5).clamp(0, 1)
    if look.bolder:
        stroke = max_pool2d(stroke[None], 2 * look.bolder + 1, stride=1, padding=look.bolder)[0]
    stroke = gaussian_blur(stroke, [2 * round(2 * look.blur) + 1] * 2, [look.blur, look.blur])
    ink_share = torch.zeros(1, look.height, look.width)
    ink_share[:, look.top : look.top + look.size, look.left : look.left + look.size] = stroke

    paper, ink = torch.tensor(look.paper).view(3, 1, 1).float(), torch.tensor(look.ink).view(3, 1, 1).float()
    image = paper * (1 - ink_share) + ink * ink_share
    y, x = torch.meshgrid(torch.linspace(-1, 1, look.height), torch.linspace(-1, 1, look.width), indexing="ij")
    image = image * (1 + look.light * (math.cos(look.light_angle) * x + math.sin(look.light_angle) * y))
    image = image + look.noise * torch.randn(image.shape, generator=generator)
    return image.round().clamp(0, 255).to(torch.uint8)


def save(image: Tensor, look: Look, stem: Path) -> Path:
    """``image`` written as ``stem``.png, or as ``stem``.jpg when ``look`` says JPEG."""
    if look.jpeg_quality is None:
        path, data = stem.with_suffix(".png"), encode_png(image, compression_level=1)
    else:
        path, data = stem.with_suffix(".jpg"), encode_jpeg(image, quality=look.jpeg_quality)
    path.write_bytes(data.numpy().tobytes())
    return path


def photographed_folder(images: Tensor, labels: Tensor, folder: Path, seed: int = 0) -> dict[Path, int]:
    """One file per digit in ``folder``, each with a random look; each file's path and its true digit."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    truth: dict[Path, int] = {}
    for index, (digit, label) in enumerate(zip(images, labels, strict=True)):
        look = random_look(generator)
        truth[save(render(digit, look, generator), look, folder / f"{index:04d}_digit{int(label)}")] = int(label)
    return truth
