"""The one reader of `dvc exp show --json` (mnistlab/experiments.py) and its one chooser on validation, which
`make tune` and `make report` share: NaN, failed runs, ties and names decided once."""

import math

from mnistlab.experiments import Run, best_on_validation, read_runs


def entry(rev: str, name: str | None, val: float | None, error: bool = False) -> dict:
    data = {"params": {"params.yaml": {"data": {"train_mlr": {"learning_rate": 0.01}}}}}
    if val is not None:
        data["metrics"] = {"metrics/metrics.json": {"data": {"val_acc": {"mlr": val}, "test_acc": {"mlr": 1 - val}}}}
    return {"rev": rev, "name": name, "data": data, "error": {"msg": "failed"} if error else None}


def shown(*experiments: dict, baseline: float = 0.90) -> list[dict]:
    commit = entry("b" * 40, "main", baseline) | {"experiments": list(experiments)}
    return [entry("workspace", None, baseline), commit]


def experiment(name: str | None, val: float | None, state: str | None = None, rev_name: str | None = None) -> dict:
    rev = entry(f"{abs(hash(name)) % 10**9:040d}", rev_name, val, error=state == "failed")
    return {"name": name, "executor": {"state": state} if state else None, "revs": [rev]}


def test_a_nan_listed_first_is_no_result_and_is_never_the_best() -> None:
    runs = read_runs(shown(experiment("diverged", math.nan), experiment("fine", 0.92), baseline=0.91))
    assert [run.name for run in runs] == ["main", "diverged", "fine"]
    assert runs[1].accuracy("val", "mlr") is None and runs[1].state == "success"
    assert best_on_validation(runs, "mlr").name == "fine"
    assert best_on_validation(read_runs(shown(experiment("inf", math.inf), baseline=0.5)), "mlr").baseline


def test_failed_queued_and_running_runs_are_never_chosen() -> None:
    runs = read_runs(
        shown(
            experiment("failed-with-metrics", 0.99, state="failed"),
            experiment("running", 0.99, state="running"),
            experiment("queued", None, state="queued"),
            experiment("error", 0.99, state=None) | {"revs": [entry("c" * 40, None, 0.99, error=True)]},
        )
    )
    assert [(run.name, run.state) for run in runs] == [
        ("main", "success"),
        ("failed-with-metrics", "failed"),
        ("running", "running"),
        ("queued", "queued"),
        ("error", "failed"),
    ]
    assert best_on_validation(runs, "mlr").name == "main"


def test_ties_go_to_the_baseline_then_the_lower_trial_then_the_name_whatever_the_listing() -> None:
    base = Run("main", "b", metrics={"val_acc.mlr": 0.9}, baseline=True)
    trials = [Run(f"t-{n:03d}", str(n), metrics={"val_acc.mlr": 0.95}, study="t", trial=n) for n in (12, 3, 1000)]
    named = [Run(name, name, metrics={"val_acc.mlr": 0.95}) for name in ("zeta", "alpha")]
    assert best_on_validation([*trials, base], "mlr").name == "t-003"
    assert best_on_validation([*named, *trials], "mlr").name == "t-003"  # a trial number before a name
    assert best_on_validation(named, "mlr").name == "alpha"
    assert best_on_validation(named[::-1], "mlr").name == "alpha"
    tied_base = Run("main", "b", metrics={"val_acc.mlr": 0.95}, baseline=True)
    assert best_on_validation([*trials, tied_base], "mlr").baseline


def test_the_name_is_dvc_s_experiment_name_then_the_revision_s_then_the_short_rev() -> None:
    runs = read_runs(
        shown(
            experiment("by-entry", 0.9, rev_name="by-rev"),
            experiment(None, 0.9, rev_name="by-rev"),
            experiment(None, 0.9),
        )
    )
    assert [run.name for run in runs[1:3]] == ["by-entry", "by-rev"]
    assert runs[3].name == runs[3].rev[:7]
    assert runs[1].params == {"train_mlr.learning_rate": 0.01}
    assert runs[1].metrics == {"val_acc.mlr": 0.9, "test_acc.mlr": 1 - 0.9}
