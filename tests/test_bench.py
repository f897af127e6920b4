"""`make bench` still runs and measures what it says: a --quick run on real MNIST, and its parts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import RUNNING_STAGE, stage_names, stage_seconds
from mnistlab.workspace import ROOT, venv_env


def test_running_stage_matches_dvcs_log_line() -> None:
    # The line DVC's stage runner logs (dvc/stage/run.py) before each command.
    assert RUNNING_STAGE.search("Running stage 'train_mlp':").group(1) == "train_mlp"
    assert RUNNING_STAGE.search("Updating lock file 'dvc.lock'") is None


def test_stage_seconds_split_one_repro_at_the_running_stage_lines() -> None:
    marks = [("download", 1.0), ("split", 2.5), ("train_mlp", 10.0)]
    assert stage_seconds(marks, end=12.0) == {"download": 1.5, "split": 7.5, "train_mlp": 2.0}


@pytest.mark.slow
def test_quick_bench_times_every_stage_and_profiles_the_step(tmp_path: Path, mnist_raw: Path) -> None:
    data = tmp_path / "data"
    (data / "MNIST").mkdir(parents=True)
    (data / "MNIST" / "raw").symlink_to(mnist_raw)
    env = venv_env()
    split = [sys.executable, "-m", "stages.split", str(data), str(data / "split"), str(tmp_path / "data.json")]
    subprocess.run(split, cwd=ROOT, env=env, check=True, capture_output=True)
    report_path = tmp_path / "results.json"
    bench = [sys.executable, "-m", "bench.run", "--quick", "--skip-lab", "--skip-startup"]
    bench += ["--data-root", str(data), "--json", str(report_path)]
    result = subprocess.run(bench, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr

    report = json.loads(report_path.read_text())
    pipeline = report["pipeline"]
    assert set(pipeline["stages_s"]) == set(stage_names())
    assert all(seconds > 0 for seconds in pipeline["stages_s"].values())
    assert pipeline["total_s"] >= pipeline["dvc_startup_s"] + sum(pipeline["stages_s"].values()) - 1e-6
    assert pipeline["epochs"] == {"mlp": 1, "mlr": 1}
    assert pipeline["plain_fits_extrapolated_s"] > 0
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
