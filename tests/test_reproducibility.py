"""Reproducible results: the same bits at any thread count, MKL's mode pinned in every stage, and
`make verify`'s verdicts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnistlab.data import Split, save_split
from mnistlab.idx import decode_idx
from mnistlab.machine import cpu_flags, has_avx2
from mnistlab.verify import compare, describe
from tests.conftest import ROOT, venv_env

STAGE_MODULES = ["download", "split", "evaluate", "plot"]  # the training stages: tests/test_pipeline.py


@pytest.fixture(scope="module")
def real_split(mnist_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6,144 real training images (24 steps of 256) and 2,000 for validation."""
    images = torch.from_numpy(decode_idx((mnist_raw / "train-images-idx3-ubyte").read_bytes(), "images").copy())
    labels = torch.from_numpy(decode_idx((mnist_raw / "train-labels-idx1-ubyte").read_bytes(), "labels").copy())
    folder = tmp_path_factory.mktemp("split")
    for name, part in {"train": slice(0, 6144), "validation": slice(6144, 8144)}.items():
        indices = torch.arange(60_000)[part]
        save_split(Split(images[part].clone(), labels[part].long(), indices), folder / name)
    return folder


def thread_probe(split: Path, out_dir: Path, threads: int, models: list[str], env: dict[str, str]) -> dict:
    """tests/thread_probe.py in a fresh process: its JSON line."""
    command = [sys.executable, "-m", "tests.thread_probe", str(split), str(out_dir), "--threads", str(threads)]
    out = subprocess.run([*command, "--models", *models], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fits_by_threads(real_split: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict]]:
    """Each thread count in a fresh process, as a stage would run on a 1-, 2- or 4-core machine; both models
    fit in each (their fits at OUT/t<threads>/<model>/)."""
    folder = tmp_path_factory.mktemp("threads")
    runs = {}
    for threads in (1, 2, 4):
        runs[threads] = thread_probe(real_split, folder / f"t{threads}", threads, ["mlp", "mlr"], venv_env())
    return folder, runs


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "mlr"])
def test_a_fit_gives_the_same_bits_at_1_2_and_4_threads(model: str, fits_by_threads: tuple[Path, dict]) -> None:
    folder, runs = fits_by_threads
    assert [run["threads"] for run in runs.values()] == [1, 2, 4]
    assert len({(run["models"][model]["weights"], run["models"][model]["history"]) for run in runs.values()}) == 1, runs
    if torch.backends.mkl.is_available():
        assert all(run["mkl"].endswith(",STRICT") for run in runs.values())
    checkpoints = {(folder / f"t{threads}" / model / "model.ckpt").read_bytes() for threads in runs}
    assert len(checkpoints) == 1  # the checkpoint files themselves, byte for byte


@pytest.mark.slow  # fresh Python processes that import torch: seconds each
@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch's BLAS here is not MKL")
@pytest.mark.parametrize("stage", STAGE_MODULES)
def test_every_stage_runs_mkl_in_strict_mode_unless_the_user_says_otherwise(stage: str, imports_of) -> None:
    assert imports_of(f"stages.{stage}").mkl.endswith(",STRICT")
    # docs/reproducibility.md, how to turn it off: the user's value wins. One process imports all four stages
    # (each probe costs seconds): a stage that set its own value would show.
    every_stage = ", ".join(f"stages.{name}" for name in STAGE_MODULES)
    assert imports_of(every_stage, {"MKL_CBWR": ""}).mkl == "OFF"


# ------------------------------------------------------------------ a quick exit: no collector's passes at the end

CYCLE_AT_EXIT = """import sys
{first}

class Cycle:
    def __del__(self):
        print("collected at exit")

held = Cycle()
held.itself = held  # garbage only once __main__ is torn down: the collector's passes at exit would find it
"""


def test_a_process_that_imported_mnistlab_ends_without_the_collectors_last_passes() -> None:
    """mnistlab/__init__.py freezes the collector as its process ends: seconds of CPU after torch. The control,
    without the import, shows that Python would otherwise run the cycle's finalizer at exit."""
    outputs = {}
    for first in ("import mnistlab", "pass"):
        code = CYCLE_AT_EXIT.format(first=first)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=venv_env(), capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        outputs[first] = out.stdout
    assert outputs == {"import mnistlab": "", "pass": "collected at exit\n"}


# ------------------------------------------------------------------ ATen's AVX2 kernels by default

CPU_FLAGS = cpu_flags()
X86_AVX2 = has_avx2()


def dispatched(imports_of, entry: str, env: dict[str, str] | None = None) -> tuple[str | None, str]:
    """In a fresh process after importing ``entry``: ATEN_CPU_CAPABILITY and the kernels ATen dispatches to."""
    imported = imports_of(entry, env)
    return imported.aten_variable, imported.capability


ENTRY_POINTS = [*(f"stages.{name}" for name in [*STAGE_MODULES, "train_mlp"]), "mnistlab.predict", "mnistlab.verify"]
ENTRY_POINTS += ["mnistlab.report", "bench.cli", "tests.conftest"]


@pytest.mark.slow  # fresh Python processes that import torch: seconds each
@pytest.mark.skipif(not X86_AVX2, reason="not an x86-64 CPU with AVX2: nothing is set, see the test below")
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_runs_atens_avx2_kernels_on_x86(entry: str, imports_of) -> None:
    assert dispatched(imports_of, entry) == ("avx2", "AVX2")


@pytest.mark.slow  # fresh Python processes that import torch: seconds each
@pytest.mark.skipif("avx512f" not in CPU_FLAGS, reason="this CPU has no AVX-512: it runs AVX2 kernels anyway")
def test_on_an_avx512_cpu_the_default_is_what_changes_the_kernels(imports_of) -> None:
    """The contrast: without the default ATen picks AVX-512 here; a value the user sets wins."""
    assert dispatched(imports_of, "mnistlab", {"ATEN_CPU_CAPABILITY": "avx512"}) == ("avx512", "AVX512")
    assert dispatched(imports_of, "torch")[1] == "AVX512"


@pytest.mark.slow  # fresh Python processes that import torch: seconds each
@pytest.mark.skipif(not X86_AVX2 or "avx512f" in CPU_FLAGS, reason="needs an AVX2-only x86-64 CPU (a laptop)")
def test_on_an_avx2_only_cpu_the_same_kernels_run(imports_of) -> None:
    assert dispatched(imports_of, "mnistlab") == ("avx2", "AVX2") == ("avx2", dispatched(imports_of, "torch")[1])


def test_avx2_is_asked_for_only_where_the_cpu_runs_it() -> None:
    """ATen does not check the variable against the CPU: an AVX2 request elsewhere would crash."""
    assert has_avx2("x86_64", "flags : fpu sse2 avx avx2 fma")
    assert has_avx2("AMD64", "AVX1.0 AVX2 BMI1")  # macOS sysctl's spelling, Windows' machine name
    assert not has_avx2("x86_64", "flags : fpu sse2 avx")  # an old x86 CPU: ATen's own choice
    assert not has_avx2("arm64", "avx2")  # Apple silicon, aarch64 servers: never
    assert not has_avx2("aarch64", "")


# ------------------------------------------------------------------ make verify's verdicts

MACHINE = {
    "cpu_vendor": "AuthenticAMD",
    "cpu_capability": "AVX2",
    "device": "cpu",
    "torch": "2.14.1",
    "mkl": "AUTO,STRICT",
}
SPREAD = {
    "models": {
        "mlp": {
            "max_abs_delta": {"test_accuracy": 0.002, "test_loss": 0.01, "valid_accuracy": 0.002, "valid_loss": 0.01}
        }
    }
}


def results(accuracy: float, machine: dict, train_loss: float = 1.0) -> dict[str, str]:
    metrics = {"test_acc": {"mlp": accuracy, "mlr": 0.92}, "test_loss": {"mlp": 0.15, "mlr": 0.3}}
    history = f"epoch,train_loss,valid_accuracy,valid_loss\n0,{train_loss},0.97,0.12\n"
    return {
        "metrics/metrics.json": json.dumps(metrics),
        "plots/history/mlp/metrics.csv": history,
        "plots/predictions/mlp.csv": f"index,predicted\n0,{int(accuracy * 1e4)}\n",
        "plots/history/mlp/machine.json": json.dumps(machine),
    }


def test_verify_says_identical_when_every_file_is() -> None:
    ok, line = compare("mlp", results(0.9656, MACHINE), results(0.9656, MACHINE), SPREAD)
    assert ok and line.startswith("mlp: identical to the committed result")


def test_verify_names_both_machines_and_the_difference_within_the_spread() -> None:
    intel = MACHINE | {"cpu_vendor": "GenuineIntel"}
    ok, line = compare("mlp", results(0.9656, MACHINE), results(0.9650, intel, 0.9), SPREAD)
    assert ok, line
    assert (
        "another machine: Intel CPU (AVX2 kernels)" in line and "against the committed AMD CPU (AVX2 kernels)" in line
    )
    assert "within the expected spread" in line and "test_accuracy 0.9656 -> 0.9650 (-0.0006, spread 0.0020)" in line


def test_verify_fails_beyond_the_spread_and_on_the_same_machine() -> None:
    gpu = MACHINE | {"device": "cuda:0", "gpu": "NVIDIA H200"}
    ok, line = compare("mlp", results(0.9656, MACHINE), results(0.9606, gpu, 0.9), SPREAD)
    assert not ok and "NVIDIA H200" in line and "BEYOND the expected spread" in line
    ok, line = compare("mlp", results(0.9656, MACHINE), results(0.9655, MACHINE, 0.9), SPREAD)
    assert not ok and "NOT reproduced on the same machine" in line
    assert describe({}) == "unknown machine (no machine record committed)"


def test_the_committed_spread_was_measured_for_every_model() -> None:
    spread = json.loads((ROOT / "experiments/spread.json").read_text())
    assert {run["name"] for run in spread["runs"]} >= {"seed 1", "seed 2"}
    for model in ("mlp", "mlr"):
        deltas = [
            abs(run["metrics"][model]["test_accuracy"] - spread["models"][model]["reference"]["test_accuracy"])
            for run in spread["runs"]
        ]
        assert spread["models"][model]["max_abs_delta"]["test_accuracy"] == pytest.approx(max(deltas), abs=1e-6)
        assert spread["models"][model]["max_abs_delta"]["test_accuracy"] > 0  # measured, not a zero placeholder
