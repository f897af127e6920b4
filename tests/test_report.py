"""`make report`'s choices, on fabricated ``dvc exp show --json`` output (no pipeline run): the best run
per model by validation accuracy with its test accuracy beside it, and the tuning studies' trial charts."""

import dataclasses
import json
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from mnistlab import report
from mnistlab.errors import DataError, PipelineError
from mnistlab.experiments import read_runs, tag_trials, trial_message
from mnistlab.report import (
    best_run,
    best_so_far,
    chosen_runs,
    collect_runs,
    default_sort,
    experiment_table,
    study_section,
    study_trials,
    trial_chart,
)
from mnistlab.stage import METRICS_FILE

PARAMS = {"seed": 0, "train_mlp": {"learning_rate": 0.01}, "train_mlr": {"learning_rate": 0.01}}


def metrics(val_mlp: float, val_mlr: float, test_mlp: float, test_mlr: float) -> dict:
    """The metrics file's content, in its order (mnistlab.evaluation.compared_metrics)."""
    return {
        "val_acc": {"mlp": val_mlp, "mlr": val_mlr},
        "test_acc": {"mlp": test_mlp, "mlr": test_mlr},
        "val_loss": {"mlp": 1 - val_mlp, "mlr": 1 - val_mlr},
        "test_loss": {"mlp": 1 - test_mlp, "mlr": 1 - test_mlr},
    }


def revision(rev: str, name: str | None, values: dict | None, params: dict = PARAMS) -> dict:
    """One row of ``dvc exp show --json``: a commit or an experiment's revision; no metrics when it failed."""
    data = {"rev": rev, "timestamp": "2026-11-30T08:00:00", "params": {"params.yaml": {"data": params}}}
    if values is not None:
        data["metrics"] = {METRICS_FILE: {"data": values}}
    error = None if values is not None else {"msg": "experiment failed", "type": "FailedExperiment"}
    return {"rev": rev, "name": name, "data": data, "error": error, "experiments": None}


def exp_show(baseline: dict, experiments: dict[str, dict | None]) -> list[dict]:
    """``dvc exp show --json``'s shape: the workspace, then the commit with its experiments."""
    rows = [
        {"rev": f"{number:07x}" + "0" * 33, "name": name, "revs": [revision(f"{number:07x}" + "0" * 33, name, values)]}
        for number, (name, values) in enumerate(experiments.items(), 1)
    ]
    commit = revision("b" * 40, "main", baseline) | {"experiments": rows}
    return [revision("workspace", None, baseline), commit]


def runs_of(shown: list[dict], trials: dict[str, tuple[str, int]] | None = None) -> list:
    """The runs the one reader makes of ``shown``; ``trials``: name -> (study, number), as the tuner's commit
    trailers tag them."""
    runs = read_runs(shown)
    tags = trials or {}
    return [
        dataclasses.replace(run, study=tags[run.name][0], trial=tags[run.name][1]) if run.name in tags else run
        for run in runs
    ]


# Validation and test disagree: "lucky-test" has the best MLR test accuracy, "steady" the best
# validation accuracy. The MLP: "deep" is best on validation, "lucky-test" again on test.
DISAGREE = exp_show(
    metrics(0.960, 0.920, 0.965, 0.918),
    {
        "lucky-test": metrics(0.955, 0.921, 0.975, 0.930),
        "steady": metrics(0.958, 0.927, 0.960, 0.924),
        "deep": metrics(0.981, 0.919, 0.970, 0.917),
        "broken": None,  # a failed experiment: no metrics, left out
    },
)


def test_the_best_run_per_model_is_chosen_on_validation_not_test() -> None:
    runs = collect_runs(runs_of(DISAGREE))
    assert [run.name for run in runs] == ["main", "lucky-test", "steady", "deep"]
    assert best_run(runs, "mlr").name == "steady"  # not lucky-test, the best on test
    assert best_run(runs, "mlp").name == "deep"
    assert max(runs, key=lambda run: run.metrics["test_acc.mlr"]).name == "lucky-test"  # they do disagree


def test_the_chosen_run_s_test_accuracy_is_shown_beside_its_validation_accuracy() -> None:
    chosen = chosen_runs(collect_runs(runs_of(DISAGREE)))
    assert chosen.to_dict("records") == [
        {
            "model": "mlp",
            "best run (by validation accuracy)": "deep",
            "validation accuracy": 0.981,
            "test accuracy": 0.970,
        },
        {
            "model": "mlr",
            "best run (by validation accuracy)": "steady",
            "validation accuracy": 0.927,
            "test accuracy": 0.924,
        },
    ]


def test_the_table_is_sorted_by_validation_and_marks_the_runs_chosen_on_validation() -> None:
    runs = collect_runs(runs_of(DISAGREE))
    assert default_sort(runs) == "val_acc.mlp"  # the MLP's validation accuracy varies most (0.026)
    table = experiment_table(runs, "val_acc.mlr")
    assert list(table.experiment) == ["steady ★ best mlr", "lucky-test", "main (baseline)", "deep ★ best mlp"]
    metric_columns = [column for column in table.columns if column != "experiment"][:8]
    assert metric_columns[:4] == ["val_acc.mlp", "val_acc.mlr", "test_acc.mlp", "test_acc.mlr"]  # the file's order
    assert experiment_table(runs, "val_loss.mlr").experiment.iloc[0] == "steady ★ best mlr"  # losses: lowest first
    with pytest.raises(PipelineError, match=r"--sort-by acc\.mlr: not a metric or param here"):
        experiment_table(runs, "acc.mlr")


def test_a_tie_on_validation_keeps_the_baseline_then_the_first_by_name() -> None:
    tied = exp_show(
        metrics(0.96, 0.92, 0.96, 0.92), {"a": metrics(0.96, 0.93, 0.99, 0.93), "b": metrics(0.96, 0.93, 0.96, 0.95)}
    )
    runs = collect_runs(runs_of(tied))
    assert best_run(runs, "mlp").baseline  # nothing beats the baseline on validation, whatever the test says
    assert best_run(runs, "mlr").name == "a"  # a and b tie on validation: the first by name, not b's better test
    assert best_run(runs[::-1], "mlr").name == "a"  # whatever order DVC lists them in


def test_the_page_says_why_in_one_sentence() -> None:
    sentence = report.WHY_VALIDATION
    assert sentence.count(". ") == 0 and sentence.endswith(".")
    assert "validation accuracy" in sentence and "test" in sentence and "ISLP" in sentence


def test_without_a_committed_baseline_the_report_says_what_to_do() -> None:
    with pytest.raises(DataError, match="make repro"):
        collect_runs(runs_of([revision("workspace", None, None)]))


STUDY_SHOWN = exp_show(
    metrics(0.96, 0.92, 0.96, 0.92),
    {
        "tune-mlp-000": metrics(0.950, 0.92, 0.95, 0.92),
        "tune-mlp-002": metrics(0.970, 0.92, 0.96, 0.92),
        "tune-mlp-001": metrics(0.940, 0.92, 0.99, 0.92),
        "tune-mlp-003": None,  # pruned or failed
        "tune-mlp-004": metrics(0.965, 0.92, 0.97, 0.92),
        "wide-lr-010": metrics(0.96, 0.931, 0.96, 0.93),  # another study: the MLR varies in it
        "wide-lr-011": metrics(0.96, 0.925, 0.96, 0.94),
        "bs-128": metrics(0.99, 0.99, 0.99, 0.99),  # named like a trial, but no tuner made it
        "glare-hate": metrics(0.99, 0.99, 0.99, 0.99),  # not a trial
    },
)
TAGS = {f"tune-mlp-{n:03d}": ("tune-mlp", n) for n in range(5)} | {f"wide-lr-{n:03d}": ("wide-lr", n) for n in (10, 11)}
STUDY = runs_of(STUDY_SHOWN, TAGS)


def test_the_trials_of_each_study_are_the_runs_the_tuner_tagged_in_trial_order() -> None:
    trials = study_trials(STUDY)
    assert list(zip(trials.study, trials.trial, strict=True)) == [
        ("tune-mlp", 0),
        ("tune-mlp", 1),
        ("tune-mlp", 2),
        ("tune-mlp", 3),
        ("tune-mlp", 4),
        ("wide-lr", 10),
        ("wide-lr", 11),
    ]
    assert "bs-128" not in set(trials.experiment)  # a name is no study: only the tuner's record is
    assert math.isnan(trials.loc[3, "val_acc.mlp"])


def test_the_tuner_s_trailers_tag_an_experiment_s_commit_and_nothing_else(tmp_path: Path) -> None:
    """The trailers travel with the experiment's commit: read back by one git call, in a real repository."""

    def commit(message: str) -> str:
        subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", message], cwd=tmp_path, check=True)
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    for key, value in (("user.email", "t@example.com"), ("user.name", "t")):
        subprocess.run(["git", "config", key, value], cwd=tmp_path, check=True)
    base = commit("baseline")
    trial = commit(trial_message("tune-mlr", 7, "tune-mlr-007"))
    other = commit("bs-128: Tuning-Study: nope")
    runs = [report.Run("main", base, baseline=True), report.Run("tune-mlr-007", trial), report.Run("bs-128", other)]
    tagged = tag_trials(runs, cwd=tmp_path)
    assert [(run.study, run.trial) for run in tagged] == [(None, None), ("tune-mlr", 7), (None, None)]


def test_the_trial_chart_shows_each_trial_and_the_best_so_far() -> None:
    trials = study_trials(STUDY)
    mlp = trials[trials.study == "tune-mlp"]
    progress = best_so_far(mlp, "mlp")
    assert progress.trial.tolist() == [0, 1, 2, 3, 4]
    assert progress.val_acc.tolist()[:3] == [0.950, 0.940, 0.970] and math.isnan(progress.val_acc[3])
    assert progress.best_so_far.tolist() == [0.950, 0.950, 0.970, 0.970, 0.970]  # never the test accuracy

    spec = trial_chart("tune-mlp", mlp)
    assert spec["title"]["text"] == "tune-mlp: MLP validation accuracy by trial"
    assert "no metrics (failed or pruned): trial 3" in spec["title"]["subtitle"]
    values = spec["data"]["values"]
    assert values[3] == {"trial": 3, "experiment": "tune-mlp-003", "val_acc": None, "best_so_far": 0.970}
    json.dumps(spec, allow_nan=False)  # no NaN: the page embeds it as JSON
    marks = [layer["mark"] for layer in spec["layer"]]
    assert {"type": "line", "interpolate": "step-after", "color": "#d62728"} in marks
    assert [layer["encoding"]["y"]["field"] for layer in spec["layer"]] == ["best_so_far", "val_acc"]

    other = trial_chart("wide-lr", trials[trials.study == "wide-lr"])  # no model in its name: the one that varies
    assert other["title"]["text"] == "wide-lr: MLR validation accuracy by trial"
    assert [row["best_so_far"] for row in other["data"]["values"]] == [0.931, 0.931]


def test_one_trial_chart_per_study_and_none_without_a_study() -> None:
    html, specs = study_section(STUDY)
    assert list(specs) == ["trials_0", "trials_1"] and 'id="trials_0"' in html and 'id="trials_1"' in html
    assert study_section(runs_of(DISAGREE)) == ("", {})
    assert study_trials(runs_of(DISAGREE)).empty and isinstance(study_trials(runs_of(DISAGREE)), pd.DataFrame)
