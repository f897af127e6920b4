"""End to end: the real pipeline in a temporary git repo, on the real data, with 1 epoch (the test session's
trained project, then a copy of it)."""

import json

import pytest
import torch

from tests.conftest import dvc, git

pytestmark = pytest.mark.slow
STAGES = ["download", "split", "train_mlp", "train_mlr", "evaluate", "plot"]


def ran(output: str) -> list[str]:
    """The stages a `dvc repro` output says it ran."""
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


def test_repro_a_rerun_that_runs_nothing_and_the_plots(trained_project, copy_trained) -> None:
    """A changed param, the stages it reruns and `dvc metrics diff` / `dvc params diff`: tests/test_experiments.py
    (branches)."""
    assert ran(trained_project.repro_output) == STAGES  # its one `dvc repro`, from nothing
    project = copy_trained()  # the same files, in a folder of this test's own
    assert sorted(p.name for p in (project / "data/MNIST/raw").iterdir()) == sorted(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    )
    metrics = json.loads((project / "metrics/metrics.json").read_text())
    for model in ["mlp", "mlr"]:
        for part in ("val", "test"):
            assert 0.5 < metrics[f"{part}_acc"][model] <= 1 and metrics[f"{part}_loss"][model] > 0
    assert json.loads((project / "data/description.json").read_text())["train"]["samples"] == 48_000
    for model in ["mlp", "mlr"]:  # the machine record: run by DVC, MKL in its strict mode; copied for git
        machine = json.loads((project / f"plots/history/{model}/machine.json").read_text())
        full = json.loads((project / f"models/{model}/machine.json").read_text())
        assert machine == {key: value for key, value in full.items() if key not in ("cpu", "cpu_family_model")}
        assert machine["mkl"].endswith(",STRICT") and machine["threads"] == "any (MKL strict mode)", machine
        assert machine["torch"] == torch.__version__ and machine["cpu_capability"] in {"AVX2", "AVX512", "DEFAULT"}
        assert (project / f"models/{model}/metrics.csv").read_bytes() == (
            project / f"plots/history/{model}/metrics.csv"
        ).read_bytes()
    for figure in ["accuracy", "sample_digit", "misclassified_mlp", "per_class_accuracy", "confusion_matrix"]:
        assert (project / f"plots/figures/{figure}.png").stat().st_size > 1000

    second = dvc(project, "repro").stdout
    assert ran(second) == [], second
    assert "up to date" in dvc(project, "status").stdout

    # Everything DVC does not cache is committed to git (`git add -A` after the first repro): metrics,
    # histories, predictions, figures; the rerun changed none of it.
    assert git(project, "log", "-1", "--format=%s").strip() == "baseline"
    assert git(project, "status", "--porcelain") == ""

    dvc(project, "plots", "show", "--json")  # the plot definitions resolve
    dvc(project, "plots", "show", "-o", "dvc_plots")
    html = (project / "dvc_plots/index.html").read_text()
    for model in ["mlp", "mlr"]:  # DVC names each curve by the shortest distinct path
        for curve in ["train_accuracy", "valid_accuracy"]:
            assert f"{model}/metrics.csv::{curve}" in html
    assert "confusion_mlp" in html and "confusion_mlr" in html
