"""The one reader of ``dvc exp show --json``, and the one chooser of the best run on validation.

`make tune` and `make report` (and the tests) read DVC's record of the experiments here, into one
record type, :class:`Run`, and choose the best run for a model with :func:`best_on_validation`. What
counts as a result is decided once, here:

- a run's **state** is DVC's: ``queued``, ``running``, ``failed`` or ``success``; a run with an error
  (or an executor that says it failed) is ``failed``;
- a **metric** that is missing or not finite (NaN, inf) is no result: ``accuracy`` gives None;
- the **best** run has the highest validation accuracy among successful runs with one; the test
  accuracy is never looked at. Ties go to the baseline commit, then to the lower trial number, then
  to the name in sorting order, so the choice does not depend on the order DVC lists runs in.

A run that belongs to a tuning study says so in its git commit, with the trailers the tuner writes
(``Tuning-Study: tune-mlp``, ``Tuning-Trial: 7``, see :func:`trial_message`): it travels with the
experiment (`dvc exp push` / `dvc exp pull`), so any clone tells a study's trials from other
experiments by the tuner's own record, not by a name pattern.
"""

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from mnistlab.errors import PipelineError
from mnistlab.stage import METRICS_FILE
from mnistlab.workspace import venv_env

STATES = ("queued", "running", "failed", "success")
STUDY_TRAILER, TRIAL_TRAILER = "Tuning-Study", "Tuning-Trial"
RETRY_S = 5.0  # between two tries of `dvc exp show` while DVC's queue is mid-change
TIMEOUT_S = 300.0  # one try of `dvc exp show` (it takes seconds) before it is killed and tried again


@dataclass(frozen=True)
class Run:
    """One run of ``dvc exp show``: the baseline commit or one of its experiments."""

    name: str
    rev: str
    state: str = "success"  # one of STATES
    params: dict[str, Any] = field(default_factory=dict)  # params.yaml, flattened: train_mlr.learning_rate
    metrics: dict[str, float] = field(default_factory=dict)  # the metrics file, flattened: val_acc.mlp, ...
    baseline: bool = False
    study: str | None = None  # the tuning study it is a trial of (its commit's trailers), else None
    trial: int | None = None  # its trial number in that study

    def accuracy(self, split: str, model: str) -> float | None:
        """``val`` or ``test`` accuracy of ``model``; None where the run has none, or a value that is not finite."""
        return self.metric(f"{split}_acc.{model}")

    def metric(self, key: str) -> float | None:
        value = self.metrics.get(key)
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None


def flatten(tree: dict | None) -> dict:
    """Nested keys joined by dots, as DVC names its columns (``train_mlr.learning_rate``, ``val_acc.mlp``)."""
    return pd.json_normalize(tree).iloc[0].to_dict() if tree else {}


def _file_data(data: dict, kind: str, path: str) -> dict:
    return ((data.get(kind) or {}).get(path) or {}).get("data") or {}


def _run(entry: dict, name: str, state: str | None, baseline: bool = False) -> Run:
    data = entry.get("data") or {}
    metrics = flatten(_file_data(data, "metrics", METRICS_FILE))
    if state is None:
        state = "failed" if entry.get("error") else "success"
    if entry.get("error") and state == "success":
        state = "failed"
    params = flatten(_file_data(data, "params", "params.yaml"))
    return Run(name, entry.get("rev") or "", state, params, metrics, baseline)


def read_runs(exp_show: list[dict]) -> list[Run]:
    """Every commit of ``dvc exp show --json`` (the workspace row left out) and its experiments, as DVC lists them.

    An experiment's name is DVC's experiment name, else its revision's name, else its short revision.
    """
    runs = []
    for commit in exp_show:
        if commit.get("rev") == "workspace":
            continue
        runs.append(_run(commit, commit.get("name") or commit["rev"][:7], None, baseline=True))
        for experiment in commit.get("experiments") or []:
            revision = (experiment.get("revs") or [{}])[0]
            name = experiment.get("name") or revision.get("name") or (revision.get("rev") or "")[:7]
            state = (experiment.get("executor") or {}).get("state")
            runs.append(_run(revision, name, state if state in STATES else None))
    return runs


def show(*args: str, cwd: Path | None = None, attempts: int = 6) -> list[dict]:
    """``dvc exp show --json [args]``, asked again while it fails (DVC's queue mid-change); a PipelineError with
    DVC's last line when every try failed.

    DVC 3.67 lists a queued task as active before its worker has written the task's record, and
    ``dvc exp show`` fails for the moment it takes the worker to write it.
    """
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json", *args]
    for attempt in range(attempts):
        try:
            result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=venv_env(), timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:  # a DVC process has been seen to wait on a lock for ever
            result = subprocess.CompletedProcess(command, -9, "", f"did not end in {TIMEOUT_S:.0f} s: killed")
        if result.returncode == 0:
            return json.loads(result.stdout)
        if attempt < attempts - 1:
            time.sleep(RETRY_S)
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines() or ["(no output)"]
    raise ExpShowError(f"dvc exp show failed: {lines[-1]}", result.stderr)


class ExpShowError(PipelineError):
    """``dvc exp show`` failed every try; ``stderr`` is what DVC printed the last time."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def trial_message(study: str, number: int, experiment: str) -> str:
    """The commit message of a trial's experiment: a subject, then the trailers :func:`tag_trials` reads."""
    return f"{experiment}: trial {number} of study {study}\n\n{STUDY_TRAILER}: {study}\n{TRIAL_TRAILER}: {number}\n"


def tag_trials(runs: Sequence[Run], cwd: Path | None = None) -> list[Run]:
    """``runs`` with ``study`` and ``trial`` set from their commits' trailers (one git call for all of them)."""
    revs = [run.rev for run in runs if run.rev and not run.baseline]
    if not revs:
        return list(runs)
    form = f"%H%x1f%(trailers:key={STUDY_TRAILER},valueonly)%x1f%(trailers:key={TRIAL_TRAILER},valueonly)%x1e"
    shown = subprocess.run(
        ["git", "log", "--no-walk=unsorted", f"--format={form}", *revs], cwd=cwd, capture_output=True, text=True
    )
    tags = {}
    for record in shown.stdout.split("\x1e") if shown.returncode == 0 else []:
        parts = [part.strip() for part in record.strip().split("\x1f")]
        if len(parts) == 3 and parts[1] and parts[2].isdigit():
            tags[parts[0]] = (parts[1], int(parts[2]))
    tagged = []
    for run in runs:
        study, trial = tags.get(run.rev, (None, None))
        tagged.append(replace(run, study=study, trial=trial) if study else run)
    return tagged


def _order(run: Run) -> tuple:
    """Ties on validation: the baseline, then the lower trial number, then the name."""
    return (not run.baseline, run.trial if run.trial is not None else math.inf, run.name)


def best_on_validation(runs: Iterable[Run], model: str) -> Run | None:
    """The successful run with the highest validation accuracy of ``model`` (ties: ``_order``); None if none has one.

    Never the test accuracy: that is reported for the run chosen here, once.
    """
    scored = [run for run in runs if run.state == "success" and run.accuracy("val", model) is not None]
    return min(scored, key=lambda run: (-run.accuracy("val", model), *_order(run)), default=None)
