"""The bench still runs and measures what it says: its parsers, and short runs of each of its tables."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bench.cli import parse_args
from bench.common import (
    Run,
    extrapolate,
    fit_epoch_seconds,
    stage_argv,
    stage_commands,
    stage_names,
    stage_summary,
    summarize_runs,
)
from bench.experiment import dvc_own_seconds, fit_seconds, own_time_by_package, process_times, summarize
from bench.gpu import largest_difference
from bench.lab import DEPS, lab_seconds
from bench.pipeline import RUNNING_STAGE, split_by_stage
from bench.stage_clock.sitecustomize import is_stage_input, stage_of, started_at
from mnistlab.workspace import ROOT, venv_env
from stages import split as split_stage
from tests.conftest import sitecustomize_env

# A machine without DVC and torchinfo, as `make bench-gpu` must work on: an import hook, loaded at
# start-up through PYTHONPATH, that finds neither in site-packages (bench/stand_ins/ still counts).
HIDE_DVC_AND_TORCHINFO = """
import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import PathFinder


class HideInstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in ("dvc", "torchinfo"):
            return None
        spec = PathFinder.find_spec(name, [entry for entry in (path or sys.path) if "site-packages" not in entry])
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by tests/test_bench.py)", name=name)
        return spec


sys.meta_path.insert(0, HideInstalled())
"""


def without_dvc_and_torchinfo(folder: Path) -> dict[str, str]:
    """The stages' environment, with dvc and torchinfo hidden in every Python started from it."""
    return sitecustomize_env(folder, HIDE_DVC_AND_TORCHINFO, ROOT)


def data_root_with_raw(tmp_path: Path, mnist_raw: Path) -> Path:
    data = tmp_path / "data"
    (data / "MNIST").mkdir(parents=True)
    (data / "MNIST" / "raw").symlink_to(mnist_raw)
    return data


def test_running_stage_matches_dvcs_log_line() -> None:
    # The line DVC's stage runner logs (dvc/stage/run.py) before each command.
    assert RUNNING_STAGE.search("Running stage 'train_mlp':").group(1) == "train_mlp"
    assert RUNNING_STAGE.search("Updating lock file 'dvc.lock'") is None


def test_one_repro_splits_into_stages_at_the_running_stage_lines() -> None:
    lines = [
        (1.0, "Running stage 'split':\n"),
        (1.5, "> python -m stages.split data data/split data/description.json\n"),
        (2.5, "Running stage 'train_mlp':\n"),
        (9.0, "epoch 1/1: train_loss 0.5\n"),
        (9.5, "fit: 6.25 s in epochs, 7.00 s in all\n"),
    ]
    stages = split_by_stage(lines, end=12.0)
    assert {name: stage["wall_s"] for name, stage in stages.items()} == {"split": 1.5, "train_mlp": 9.5}
    assert fit_epoch_seconds(stages["train_mlp"]["output"]) == 6.25
    assert fit_epoch_seconds(stages["split"]["output"]) is None


def test_non_training_time_is_the_stages_less_their_fits_epochs() -> None:
    stages = {
        "split": {"wall_s": 2.0, "fit_epochs_s": None},
        "train_mlp": {"wall_s": 10.0, "fit_epochs_s": 7.0},
        "train_mlr": {"wall_s": 5.0, "fit_epochs_s": 3.0},
    }
    assert stage_summary(stages) == {"stages_total_s": 17.0, "fit_epochs_total_s": 10.0, "non_training_s": 7.0}
    stages["train_mlr"]["fit_epochs_s"] = None  # a stage that prints no fit line: n/a, not a wrong number
    assert stage_summary(stages)["non_training_s"] is None


def test_stage_commands_are_dvc_yamls_run_by_this_python() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    commands = stage_commands()
    assert stage_names() == list(stages)
    argv = stage_argv(commands["train_mlp"])
    assert argv[0] == sys.executable
    assert argv[1:] == stages["train_mlp"]["cmd"].split()[1:]


def test_lab_extrapolation_adds_median_epochs_to_what_was_measured() -> None:
    summary = summarize_runs([Run(10.0, [4.0, 3.0, 2.0])], epochs=3)
    assert extrapolate(summary, 30) == pytest.approx(10.0 + 27 * 3.0)
    lab = {"data_s": 1.0, "models": {"mlp": summary | {"test_s": 0.5}}}
    assert lab_seconds(lab, {"mlp": 30}) == pytest.approx(1.0 + 91.0 + 0.5)


def test_stage_clock_knows_a_stage_process_and_its_start() -> None:
    assert stage_of(["/venv/bin/python", "-m", "stages.train_mlr", "data/split", "models/mlr"]) == "train_mlr"
    assert stage_of(["/venv/bin/python", "-m", "dvc", "exp", "run"]) is None
    assert stage_of(["python", "-c", "pass"]) is None
    assert stage_of(["python", "-m"]) is None
    # /proc/<pid>/stat: the name in parentheses may hold spaces and ")"; field 22 is the start in ticks
    stat = "4242 (python (a) b) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 123450 99 0"
    assert started_at(stat, 100) == pytest.approx(1234.5)
    assert is_stage_input(Path("data/split/test/images.npy")) and is_stage_input(b"models/mlp/model.ckpt")
    assert not is_stage_input("/venv/lib/python3.11/site-packages/torch/__init__.py") and not is_stage_input(3)
    assert not is_stage_input("params.yaml")  # read before the imports, to check it: not the start of the work


def test_experiment_times_stage_processes_and_what_dvc_adds() -> None:
    records = [
        {"stage": "evaluate", "start": 20.0, "first_read": 23.0, "end": 25.0},
        {"stage": "train_mlr", "start": 2.0, "first_read": 10.0, "end": 14.0},
        {"stage": "plot", "start": 27.0, "first_read": None, "end": 28.0},  # read nothing
    ]
    processes = process_times(records)
    assert list(processes) == ["train_mlr", "evaluate", "plot"]  # in the order they ran
    assert processes["train_mlr"]["startup_s"] == 8.0 and processes["train_mlr"]["process_s"] == 12.0
    assert processes["plot"]["startup_s"] is None
    assert dvc_own_seconds(30.0, processes) == pytest.approx(30.0 - 12.0 - 5.0 - 1.0)
    assert fit_seconds("epoch 1/1\nfit: 1.25 s in epochs, 2.50 s in all\n") == {"epochs_s": 1.25, "all_s": 2.5}
    assert fit_seconds("no fit here") is None
    runs = [
        {"wall_s": wall, "fit": {"epochs_s": 1.0, "all_s": 2.0}, "processes": processes, "dvc_own_s": wall - 18.0}
        for wall in (30.0, 40.0, 31.0)
    ]
    summary = summarize(runs)
    assert summary["wall_s"] == 31.0 and summary["dvc_own_s"] == 13.0 and summary["fit_all_s"] == 2.0
    assert summary["stages"]["evaluate"] == {"startup_s": 3.0, "process_s": 5.0}
    assert summary["stages"]["plot"]["startup_s"] is None


def test_dvcs_profile_is_own_time_per_package_with_the_wait_apart() -> None:
    site = "/venv/lib/python3.11/site-packages"
    stats = {  # pstats' (file, line, function) -> (calls, primitive calls, tottime, cumtime, callers)
        (f"{site}/dvc/repo/index.py", 1, "from_repo"): (1, 1, 0.5, 3.0, {}),
        (f"{site}/dvc/dvcfile.py", 9, "dump"): (1, 1, 0.25, 1.0, {}),
        (f"{site}/yaml/scanner.py", 5, "scan_plain"): (9, 9, 2.0, 2.0, {}),
        ("~", 0, "<built-in method posix.waitpid>"): (3, 3, 20.0, 20.0, {}),
        ("~", 0, "<built-in method io.open>"): (3, 3, 0.125, 0.125, {}),
        ("/usr/lib/python3.11/json/decoder.py", 3, "decode"): (1, 1, 0.0625, 0.0625, {}),
    }
    assert own_time_by_package(stats) == {
        "waiting for the stages (waitpid)": 20.0,
        "yaml": 2.0,
        "dvc": 0.75,
        "built-in": 0.125,
        "stdlib": 0.0625,
    }


def test_largest_difference_of_final_history_rows() -> None:
    eager = {"train_loss": 0.5, "valid_accuracy": 0.9}
    assert largest_difference(eager, {"train_loss": 0.25, "valid_accuracy": 0.95}) == 0.25
    assert largest_difference(eager, {}) is None


@pytest.mark.slow
def test_quick_bench_times_every_stage_and_profiles_the_step(tmp_path: Path, mnist_raw: Path, monkeypatch) -> None:
    data = data_root_with_raw(tmp_path, mnist_raw)
    env = venv_env()
    monkeypatch.chdir(ROOT)  # the split stage in this process: params.yaml's split, as in the project
    split_stage.main([str(data), str(data / "split"), str(tmp_path / "data.json")])
    report_path = tmp_path / "results.json"
    bench = [sys.executable, "-m", "bench", "--quick", "--skip-lab", "--skip-startup"]
    bench += ["--data-root", str(data), "--json", str(report_path)]
    result = subprocess.run(bench, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr

    report = json.loads(report_path.read_text())
    pipeline = report["pipeline"]
    assert list(pipeline["stages"]) == stage_names()
    assert all(stage["wall_s"] > 0 for stage in pipeline["stages"].values())
    assert pipeline["total_s"] >= pipeline["dvc_startup_s"] + pipeline["stages_total_s"] - 1e-6
    # The training stages' "fit: ... s in epochs" lines were found, and are part of their stage's time.
    for name in ("train_mlp", "train_mlr"):
        stage = pipeline["stages"][name]
        assert 0 < stage["fit_epochs_s"] < stage["wall_s"]
    assert 0 < pipeline["non_training_s"] < pipeline["stages_total_s"]
    assert pipeline["epochs"] == {"mlp": 1, "mlr": 1}
    assert pipeline["plain_fits_s"] > 0
    # The profile finds the ops it names in this torch: both models multiply and step RMSprop,
    # only the MLP draws dropout masks.
    profile = report["step_profile"]
    for name in ("mlp", "mlr"):
        parts = profile[name]["parts_ms"]
        assert parts["matrix products"] > 0 and parts["optimizer step"] > 0, parts
        assert sum(parts.values()) == pytest.approx(profile[name]["profiled_step_ms"])
    assert profile["mlp"]["parts_ms"]["dropout masks"] > 0
    assert profile["mlr"]["parts_ms"]["dropout masks"] == 0
    assert "5. What bounds a CPU step" in result.stdout
    # Item 6: each setting really ran in MKL's mode it names (fresh processes), and was timed.
    strict = report["strict_mode"]["models"]
    for name in ("mlp", "mlr"):
        assert (
            strict[name]["strict (default)"]["s_per_epoch"] > 0 and strict[name]["off (MKL_CBWR=)"]["s_per_epoch"] > 0
        )
        if torch.backends.mkl.is_available():
            assert all(mode.endswith(",STRICT") for mode in strict[name]["strict (default)"]["mkl"])
            assert strict[name]["off (MKL_CBWR=)"]["mkl"] == ["OFF"]
    assert "6. MKL's strict mode" in result.stdout
    # Item 7: on an AVX-512 CPU, each setting dispatched the kernels it names; elsewhere it says why not.
    kernels = report["kernels"]
    if "skipped" in kernels:
        assert "no AVX-512" in kernels["skipped"] and "AVX-512" not in torch.backends.cpu.get_cpu_capability()
    else:
        for name in ("mlp", "mlr"):
            assert kernels["models"][name]["AVX2 (default)"]["kernels"] == ["AVX2"]
            assert kernels["models"][name]["AVX-512 (ATEN_CPU_CAPABILITY=avx512)"]["kernels"] == ["AVX512"]
    assert "7. ATen's kernels" in result.stdout


def test_bench_help_prints_its_usage(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--help"])
    assert exited.value.code == 0 and "usage: python -m bench [-h] [--quick]" in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_table_runs_on_a_cpu_without_dvc_torchinfo_or_a_split(tmp_path: Path, mnist_raw: Path) -> None:
    """`make bench-gpu` on a machine without DVC and torchinfo: the bench imports every one of its modules
    (bench.cli imports them all) and runs. (This test used to import them again in a process of its own.)"""
    data = data_root_with_raw(tmp_path, mnist_raw)  # MNIST/raw only: the bench makes its own split
    report_path = tmp_path / "results_gpu.json"
    bench = [sys.executable, "-m", "bench", "--gpu", "--accelerator", "cpu", "--quick", "--models", "mlr"]
    bench += ["--data-root", str(data), "--json", str(report_path)]
    env = without_dvc_and_torchinfo(tmp_path / "hide")
    result = subprocess.run(bench, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for hidden in ("dvc", "torchinfo"):  # the hook works, so the run above means something
        probe = subprocess.run([sys.executable, "-c", f"import {hidden}"], cwd=ROOT, env=env, capture_output=True)
        assert probe.returncode != 0, hidden

    report = json.loads(report_path.read_text())
    stages = report["stage_times"]
    assert list(stages["stages"]) == stage_names()
    assert stages["torchinfo"].startswith("stand-in")
    for name in ("train_mlp", "train_mlr"):
        assert 0 < stages["stages"][name]["fit_epochs_s"] < stages["stages"][name]["wall_s"]
    assert 0 < stages["non_training_s"] < stages["stages_total_s"]
    fits = report["gpu"]["models"]["mlr"]
    assert report["gpu"]["graph_path"] is True
    for label in ("fit", "plain", "eager", "graphs"):
        assert len(fits[label]["runs"][0]["epoch_seconds"]) == 1
    # On a CPU the graph path runs the same arithmetic through static buffers: the same history.
    assert fits["final_row_max_abs_difference"] < 1e-6
    assert "GPU table" in result.stdout and "Stage times" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (DEPS / "ISLP").is_dir(), reason="ISLP for the lab's way not installed: run `make bench`")
def test_lab_way_runs_the_real_islp(tmp_path: Path, mnist_raw: Path) -> None:
    data = data_root_with_raw(tmp_path, mnist_raw)
    report_path = tmp_path / "lab.json"
    lab = [sys.executable, "-m", "bench.lab", "--models", "mlr", "--epochs", "1"]
    lab += ["--data-root", str(data), "--json", str(report_path)]
    env = venv_env() | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run(lab, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr

    figures = json.loads(report_path.read_text())["models"]["mlr"]
    assert len(figures["fit"]["epoch_seconds"]) == 1 and figures["test_s"] > 0
    assert figures["test_accuracy"] > 0.85  # the lab's MLR after one epoch
    # ISLP's SimpleModule and ErrorTracker wrote the lab's own history columns.
    (history,) = (tmp_path / "logs" / "MNIST_MLR").glob("version_*/metrics.csv")
    header = history.read_text().splitlines()[0].split(",")
    assert {"train_accuracy_epoch", "train_loss", "valid_accuracy", "valid_loss"} <= set(header)
