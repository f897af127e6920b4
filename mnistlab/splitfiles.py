"""A part of the split on disk, as numpy ``.npy`` files: no torch needed to read it.

``data/split/<part>/`` holds ``images.npy`` (uint8, N x 28 x 28), ``labels.npy`` (int64, N) and
``indices.npy`` (int64, N: each row's index in the canonical file). The plot stage reads them with
numpy alone (importing torch would cost it seconds); ``mnistlab.data.load_split`` wraps the same
arrays as tensors without copying them (``torch.from_numpy``).
"""

from pathlib import Path

import numpy as np

from mnistlab.errors import DataError

PARTS = ("train", "validation", "test")
ARRAYS = ("images", "labels", "indices")


def save_arrays(folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    """One part of the split as three ``.npy`` files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(ARRAYS, (images, labels, indices), strict=True):
        np.save(folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)


def load_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images, labels, indices)`` of a part written by ``save_arrays``, checked for shape and type."""
    try:
        images, labels, indices = (np.load(folder / f"{name}.npy", allow_pickle=False) for name in ARRAYS)
    except FileNotFoundError as error:
        raise DataError(f"{error.filename} not found: run the split stage first") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{folder}: not a split written by the split stage ({error})") from None
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or not len(images) == len(labels) == len(indices):
        raise DataError(f"{folder}: expected uint8 images of shape (N, 28, 28) matching N labels and indices")
    return images, labels.astype(np.int64, copy=False), indices.astype(np.int64, copy=False)


def training_sample(split_dir: Path, index: int) -> tuple[np.ndarray, int]:
    """What the lab's ``mnist_train[index]`` shows (image, label), from the part that holds it."""
    for part in ("train", "validation"):
        images, labels, indices = load_arrays(split_dir / part)
        (positions,) = np.nonzero(indices == index)
        if len(positions):
            return images[positions[0]], int(labels[positions[0]])
    raise DataError(f"{split_dir}: no training image with index {index}")
