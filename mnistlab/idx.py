"""The IDX format of the four canonical MNIST files: encode, decode with clear errors, verify."""

import hashlib
import struct

import numpy as np

from mnistlab.errors import DataError

IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension
IMAGE_SIDE = 28
NUM_CLASSES = 10

# The uncompressed files torchvision.datasets.MNIST reads from <root>/MNIST/raw, and their MD5s.
CANONICAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
CANONICAL_COUNT = {"train": 60_000, "t10k": 10_000}


def encode_idx(array: np.ndarray) -> bytes:
    """A uint8 array as IDX bytes: magic 2051 for (N, 28, 28) images, 2049 for (N,) labels."""
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(f"IDX holds uint8 arrays of 1 or 3 dimensions, got {array.dtype} {array.shape}")
    magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def decode_idx(data: bytes, name: str) -> np.ndarray:
    """IDX bytes as a uint8 array; anything malformed is a DataError naming ``name``."""
    if len(data) < 8:
        raise DataError(f"{name}: truncated, {len(data)} bytes is shorter than an IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise DataError(
            f"{name}: wrong magic number {magic}, expected {IMAGES_MAGIC} (images) or {LABELS_MAGIC} (labels)"
        )
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{name}: truncated, {len(data)} bytes is shorter than its {header_size}-byte header")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    if ndim == 3 and shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{name}: wrong dimensions {shape[1]}x{shape[2]}, expected {IMAGE_SIDE}x{IMAGE_SIDE} images")
    expected = header_size + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "too long"
        raise DataError(f"{name}: {state}, header {shape} needs {expected} bytes, file has {len(data)}")
    array = np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)
    if ndim == 1 and array.size and array.max() >= NUM_CLASSES:
        position = int(np.argmax(array >= NUM_CLASSES))
        raise DataError(f"{name}: label {array[position]} at position {position} is outside 0-9")
    return array


def check_canonical(name: str, data: bytes) -> None:
    """Raise a DataError unless ``data`` is the canonical MNIST file ``name``, byte for byte."""
    array = decode_idx(data, name)
    kind = "images" if "images" in name else "labels"
    if array.ndim != (3 if kind == "images" else 1):
        raise DataError(f"{name}: holds {'images' if array.ndim == 3 else 'labels'}, expected {kind}")
    count = CANONICAL_COUNT[name.split("-")[0]]
    if len(array) != count:
        raise DataError(f"{name}: holds {len(array)} {kind}, expected {count}")
    actual = hashlib.md5(data).hexdigest()
    if actual != CANONICAL_MD5[name]:
        raise DataError(f"{name}: MD5 mismatch, expected {CANONICAL_MD5[name]}, got {actual}")
