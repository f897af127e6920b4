"""The bench still runs and measures what it says: its parsers, and short runs of each of its four items."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.cli import parse_args
from bench.common import Run, extrapolate, summarize_runs
from bench.experiment import EXPERIMENT_STAGES, dvc_own_seconds, process_times
from bench.gpu import largest_difference
from bench.lab import DEPS
from bench.pipeline import (
    RUNNING_STAGE,
    fit_epoch_seconds,
    lab_seconds,
    split_by_stage,
    stage_argv,
    stage_commands,
    stage_summary,
)
from bench.stage_clock.sitecustomize import stage_of
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


def data_root_with_raw(folder: Path, mnist_raw: Path) -> Path:
    data = folder / "data"
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
    assert list(commands) == list(stages)
    argv = stage_argv(commands["train_mlp"])
    assert argv[0] == sys.executable
    assert argv[1:] == stages["train_mlp"]["cmd"].split()[1:]


def test_lab_extrapolation_adds_median_epochs_to_what_was_measured() -> None:
    summary = summarize_runs([Run(10.0, [4.0, 3.0, 2.0])], epochs=3)
    assert extrapolate(summary, 30) == pytest.approx(10.0 + 27 * 3.0)
    lab = {"data_s": 1.0, "models": {"mlp": summary | {"test_s": 0.5}}}
    assert lab_seconds(lab, {"mlp": 30}) == pytest.approx(1.0 + 91.0 + 0.5)


def test_stage_clock_knows_a_stage_process() -> None:
    assert stage_of(["/venv/bin/python", "-m", "stages.train_mlr", "data/split", "models/mlr"]) == "train_mlr"
    assert stage_of(["/venv/bin/python", "-m", "dvc", "exp", "run"]) is None
    assert stage_of(["python", "-c", "pass"]) is None
    assert stage_of(["python", "-m"]) is None


def test_experiment_times_stage_processes_and_what_dvc_adds() -> None:
    records = [
        {"stage": "evaluate", "start": 20.0, "end": 25.0},
        {"stage": "train_mlr", "start": 2.0, "end": 14.0},
        {"stage": "plot", "start": 27.0, "end": 28.0},
    ]
    processes = process_times(records)
    assert list(processes) == ["train_mlr", "evaluate", "plot"]  # in the order they ran
    assert processes["train_mlr"] == {"process_s": 12.0}
    assert dvc_own_seconds(30.0, processes) == pytest.approx(30.0 - 12.0 - 5.0 - 1.0)


def test_largest_difference_of_final_history_rows() -> None:
    eager = {"train_loss": 0.5, "valid_accuracy": 0.9}
    assert largest_difference(eager, {"train_loss": 0.25, "valid_accuracy": 0.95}) == 0.25
    assert largest_difference(eager, {}) is None


def test_bench_help_prints_its_usage(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--help"])
    assert exited.value.code == 0 and "usage: python -m bench [-h] [--quick]" in capsys.readouterr().out


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory: pytest.TempPathFactory, mnist_raw: Path) -> tuple[dict, str]:
    """`python -m bench --quick` (the lab's way left out: item 1's test runs it), once for items 1 to 3: its
    JSON report and what it printed."""
    folder = tmp_path_factory.mktemp("quick-bench")
    data = data_root_with_raw(folder, mnist_raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # the split stage in this process: params.yaml's split, as in the project
        split_stage.main([str(data), str(data / "split"), str(folder / "data.json")])
    report_path = folder / "results.json"
    bench = [sys.executable, "-m", "bench", "--quick", "--skip-lab"]
    bench += ["--data-root", str(data), "--json", str(report_path)]
    result = subprocess.run(bench, cwd=ROOT, env=venv_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(report_path.read_text()), result.stdout


@pytest.mark.slow
def test_quick_bench_times_our_fits_and_every_stage(quick_bench: tuple[dict, str]) -> None:
    """Item 1's half that is ours, and item 2: the pipeline stage by stage, with its floor."""
    report, printed = quick_bench
    for name in ("mlp", "mlr"):
        for way in ("project", "plain"):  # our fit(), and the same steps in a plain loop
            assert len(report["fits"][name][way]["runs"][0]["epoch_seconds"]) == 1
    assert "lab" not in report and "1. The lab's way (a: the lab's code, real ISLP; skipped)" in printed
    pipeline = report["pipeline"]
    assert list(pipeline["stages"]) == list(stage_commands())
    assert all(stage["wall_s"] > 0 for stage in pipeline["stages"].values())
    assert pipeline["total_s"] >= pipeline["dvc_startup_s"] + pipeline["stages_total_s"] - 1e-6
    # The training stages' "fit: ... s in epochs" lines were found, and are part of their stage's time.
    for name in ("train_mlp", "train_mlr"):
        stage = pipeline["stages"][name]
        assert 0 < stage["fit_epochs_s"] < stage["wall_s"]
    assert 0 < pipeline["non_training_s"] < pipeline["stages_total_s"]
    assert pipeline["epochs"] == {"mlp": 1, "mlr": 1}
    assert pipeline["plain_fits_s"] > 0
    assert "2. The whole pipeline" in printed


@pytest.mark.slow
def test_quick_bench_times_one_experiment(quick_bench: tuple[dict, str]) -> None:
    """Item 3: `dvc exp run -S train_mlr.epochs=1` from a 2-epoch baseline; its three stages ran each time, and
    DVC's own share is what the stage processes leave of the wall time."""
    report, printed = quick_bench
    experiment = report["experiment"]
    assert experiment["command"] == "dvc exp run -S train_mlr.epochs=1"
    assert experiment["baseline_epochs"] == {"train_mlp": 2, "train_mlr": 2}
    (run,) = experiment["runs"]
    assert run["ran"] == list(EXPERIMENT_STAGES)
    assert 0 < run["dvc_own_s"] < run["wall_s"] == experiment["summary"]["wall_s"]
    assert experiment["run_cache"]["ran"] == ["evaluate", "plot"]  # train_mlr restored from the run-cache
    queued = experiment["queued"]
    assert list(queued["processes"]) == list(EXPERIMENT_STAGES)
    assert 0 < queued["dvc_own_s"] < queued["wall_s"]
    assert "3. One experiment" in printed


@pytest.mark.slow
def test_gpu_table_runs_on_a_cpu_without_dvc_torchinfo_or_a_split(tmp_path: Path, mnist_raw: Path, imports_of) -> None:
    """`make bench-gpu` on a machine without DVC and torchinfo: its process imports bench.cli, and with it every
    bench module, and neither of them; and it runs where both are hidden."""
    imported = {name.partition(".")[0] for name in imports_of("bench.cli").modules}
    assert not imported & {"dvc", "torchinfo"}
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
    assert list(stages["stages"]) == list(stage_commands())
    assert stages["torchinfo"].startswith("stand-in")
    for name in ("train_mlp", "train_mlr"):
        assert 0 < stages["stages"][name]["fit_epochs_s"] < stages["stages"][name]["wall_s"]
    assert 0 < stages["non_training_s"] < stages["stages_total_s"]
    fits = report["gpu"]["models"]["mlr"]
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
