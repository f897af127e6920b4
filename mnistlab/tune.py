"""`make tune`: a hyperparameter search whose every trial is a DVC experiment of the real pipeline.

Optuna proposes, DVC runs, and what DVC recorded is the result:

- Optuna's ask-and-tell (seeded TPE) proposes params from the search space in ``tune.yaml``;
- each trial is queued as ``dvc exp run --queue -n <name> -S key=value ...`` and run by DVC's queue
  workers (``dvc queue start -j JOBS``), each in its own temporary copy of the repository;
- the objective, the model's validation accuracy (``val_acc.<model>`` of metrics/metrics.json), is
  read back from ``dvc exp show --json``; nothing else is kept on the side but Optuna's study;
- the study lives in a journal file (default ``experiments/studies/<study>.journal``, git-ignored):
  no server, and Ctrl-C then the same command again continues it.

Names: experiment ``<study>-<trial number, 3 digits>``, the study named ``tune-<model>`` unless
``--study`` says otherwise: ``tune-mlp-007`` is trial 7 of study ``tune-mlp``. `dvc exp show` and
`make report` find a study's trials by that prefix; the trial's user attribute ``experiment`` says it too.

A trial is finished when it is COMPLETE (its experiment succeeded), PRUNED (stopped early: its
validation accuracy per epoch, read from the running experiment's history, fell below the median of
earlier trials at that epoch) or FAIL (its experiment failed): ``--trials N`` runs until the study
has N finished trials. On a restart, a trial the journal holds as RUNNING, queued by this project
(user attribute ``queue``: host and folder), is resolved from DVC's record: finished there, it is
told its result; queued or running there, it is waited for; unknown to DVC, it is queued again with
the params it was given. So no trial runs twice. Another machine's running trials are left to it.

    python -m mnistlab.tune --model mlp --trials 12 --jobs 2 [--space tune.yaml] [--study NAME] [--storage PATH]
"""

import argparse
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from mnistlab.errors import PipelineError
from mnistlab.params import MODEL_NAMES, TrainParams, parse_section, read_params, train_params, train_section
from mnistlab.report import TRIAL_NAME, flatten
from mnistlab.stage import HISTORY, METRICS_FILE, run_stage
from mnistlab.workspace import venv_env

SPACE_FILE = Path("tune.yaml")
STUDIES = Path("experiments/studies")  # git-ignored: each study's journal
EXPS_DIR = Path(".dvc/tmp/exps")  # DVC's queue: run/ (executors), celery/ (broker messages, workers' records)
EXEC_RUN_DIR = EXPS_DIR / "run"  # <task>/<task>.run (executor info), <task>.out (its log)
POLL_S = 5.0  # between two looks at the queue's files (and the running trials' histories)
STATUS_EVERY_S = 60.0  # `dvc queue status` at least this often, even when the queue's files did not change
# DVC's TaskStatus (dvc/repo/experiments/executor/base.py), as an executor record stores it; ENDED: FAILED,
# CANCELED, FINISHED (the experiment collected and cleaned up)
RUNNING, ENDED = 2, (4, 5, 6)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a study's name: part of a git ref


class SpaceError(PipelineError):
    """The search space file is missing, malformed, or names params that do not exist."""


_NUMBER = BeforeValidator(lambda v: yaml.safe_load(v) if isinstance(v, str) else v)  # '1e-4' is a number too
Number = Annotated[int | float, _NUMBER]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Range(_Strict):
    """Numbers from ``low`` to ``high``; integers where the param is one; ``log``: uniform in log space."""

    low: Number
    high: Number
    log: bool = False


class Choices(_Strict):
    """One of a list of values (batch sizes, say)."""

    choices: tuple[Any, ...] = Field(min_length=1)


class Pruning(_Strict):
    """Optuna's MedianPruner, fed each epoch's validation accuracy of the running experiment."""

    startup_trials: int = Field(4, ge=0, description="trials finished before any trial is pruned")
    warmup_epochs: int = Field(3, ge=0, description="epochs every trial trains before it may be pruned")


class SpaceFile(_Strict):
    seed: int = Field(0, ge=0, description="the sampler's seed")
    pruning: Pruning | None = Pruning()
    train_mlp: dict[str, dict] = {}
    train_mlr: dict[str, dict] = {}


@dataclass(frozen=True)
class Space:
    """The validated search space of one model: Optuna's distributions by params key, in file order."""

    model: str
    seed: int
    pruning: Pruning | None
    distributions: dict[str, Any]  # "train_mlp.learning_rate" -> optuna.distributions.*


def _problems(error: ValidationError, prefix: str, known: Sequence[str]) -> list[str]:
    problems = []
    for item in error.errors():
        where = prefix + ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            nested = SpaceFile.model_fields[item["loc"][0]].default if len(item["loc"]) > 1 else None
            allowed = list(type(nested).model_fields) if isinstance(nested, BaseModel) else known
            problems.append(f"{where} is not a known key (allowed: {', '.join(allowed)})")
        elif item["type"] == "missing":
            problems.append(f"{where} is missing")
        else:
            problems.append(f"{where} = {item['input']!r} is not allowed: {item['msg']}")
    return problems


def _value_problem(params_cls: type[TrainParams], key: str, value: Any, where: str) -> str | None:
    """Why params.yaml would refuse ``value`` for ``key`` (its own bounds and type), or None."""
    info = params_cls.model_fields[key]
    adapter = TypeAdapter(Annotated[(info.annotation, *info.metadata)], config=ConfigDict(strict=True))
    try:
        adapter.validate_python(value)
    except ValidationError:
        allowed = next((str(item) for item in info.metadata if type(item).__name__ == "Allowed"), "a valid value")
        return f"{where} = {value!r} is not allowed: params.yaml's {key} expects {allowed}"
    return None


def _distribution(params_cls: type[TrainParams], key: str, spec: dict, where: str) -> tuple[Any, list[str]]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind = Choices if "choices" in spec else Range
    try:
        dimension = kind.model_validate(spec)
    except ValidationError as error:
        return None, _problems(error, f"{where}.", list(kind.model_fields))
    if isinstance(dimension, Choices):
        problems = [p for value in dimension.choices if (p := _value_problem(params_cls, key, value, where))]
        return CategoricalDistribution(dimension.choices), problems
    integer = params_cls.model_fields[key].annotation is int
    problems = [
        p
        for bound in ("low", "high")
        if (p := _value_problem(params_cls, key, getattr(dimension, bound), f"{where}.{bound}"))
    ]
    if problems:
        return None, problems
    low, high = dimension.low, dimension.high
    if not low < high:
        return None, [f"{where}: low = {low!r} must be below high = {high!r}"]
    if dimension.log and low <= 0:
        return None, [f"{where}: log = true needs low > 0, got {low!r}"]
    if integer:
        return IntDistribution(low, high, log=dimension.log), []
    return FloatDistribution(float(low), float(high), log=dimension.log), []


def parse_space(raw: Any, model: str, source: str = str(SPACE_FILE)) -> Space:
    """The search space of ``model`` from the content of tune.yaml; every problem in one SpaceError."""
    section = train_section(model)
    if not isinstance(raw, dict):
        raise SpaceError(f"{source} must be a mapping (seed, pruning, train_mlp, train_mlr), got {raw!r}")
    try:
        space = SpaceFile.model_validate(raw)
    except ValidationError as error:
        raise SpaceError(f"{source}: " + "; ".join(_problems(error, "", list(SpaceFile.model_fields)))) from None
    params_cls = train_params(model)
    problems, distributions = [], {}
    for name in MODEL_NAMES:
        for key in getattr(space, train_section(name)):
            if key not in train_params(name).model_fields:
                known = ", ".join(train_params(name).model_fields)
                problems.append(
                    f"{train_section(name)}.{key} is not a key of params.yaml's {train_section(name)}"
                    f" (allowed: {known})"
                )
    for key, spec in getattr(space, section).items():
        where = f"{section}.{key}"
        if key not in params_cls.model_fields:
            continue  # reported above
        if not isinstance(spec, dict):
            problems.append(
                f"{where} = {spec!r} is not allowed: expected {{low: ..., high: ...}} or {{choices: [...]}}"
            )
            continue
        distribution, found = _distribution(params_cls, key, spec, where)
        problems += found
        if distribution is not None and not found:
            distributions[where] = distribution
    if not problems and not distributions:
        problems.append(f"{section} is empty: nothing to search for {model}")
    if problems:
        raise SpaceError(f"{source}: " + "; ".join(problems))
    return Space(model, space.seed, space.pruning, distributions)


def load_space(path: Path, model: str) -> Space:
    """``parse_space`` of a file; a missing or malformed one is a SpaceError naming it."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpaceError(f"{path} not found: the search space (see tune.yaml in the repository)") from None
    except yaml.YAMLError as error:
        raise SpaceError(f"{path} is not valid YAML: {error}") from None
    return parse_space(raw, model, str(path))


def trial_name(study: str, number: int) -> str:
    """The experiment of trial ``number``: ``tune-mlp-007``."""
    return f"{study}-{number:03d}"


def set_option(key: str, value: Any) -> str:
    """``-S``'s argument for one param; floats as repr, which reads back as the same float."""
    text = repr(value) if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)
    return f"{key}={text}"


@dataclass(frozen=True)
class Experiment:
    """One experiment as ``dvc exp show --json`` gives it: state, params and metrics flattened."""

    name: str
    state: str  # success, queued, running, failed
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def number(self) -> int:
        """The trial's number, from the name's last part."""
        return int(self.name.rsplit("-", 1)[1])

    def accuracy(self, split: str, model: str) -> float | None:
        """``val``/``test`` accuracy of ``model``, None where the experiment has no metrics."""
        value = self.metrics.get(f"{split}_acc.{model}")
        return float(value) if value is not None and math.isfinite(value) else None


def study_experiments(exp_show: list[dict], study: str) -> dict[str, Experiment]:
    """The experiments named ``<study>-NNN`` in ``dvc exp show --json``'s output, by name."""
    found = {}
    for commit in exp_show:
        for entry in commit.get("experiments") or []:
            revs = entry.get("revs") or [{}]
            name = entry.get("name") or revs[0].get("name")
            trial = TRIAL_NAME.fullmatch(name or "")
            if not trial or trial["study"] != study:
                continue
            data = revs[0].get("data") or {}
            params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
            metrics = ((data.get("metrics") or {}).get(METRICS_FILE) or {}).get("data") or {}
            state = (entry.get("executor") or {}).get("state") or ("failed" if revs[0].get("error") else "success")
            found[name] = Experiment(name, state, flatten(params), flatten(metrics))
    return found


def best_experiment(experiments: Mapping[str, Experiment], model: str) -> Experiment | None:
    """The experiment with the highest validation accuracy (test accuracy is never looked at); ties: lower number."""
    scored = [e for e in experiments.values() if e.state == "success" and e.accuracy("val", model) is not None]
    return max(scored, key=lambda e: (e.accuracy("val", model), -e.number), default=None)


def queue_states(status_output: str) -> dict[str, str]:
    """Experiment name -> Queued, Running, Success or Failed, from `dvc queue status`'s table."""
    states = {}
    for line in status_output.splitlines():
        words = line.split()
        if len(words) >= 4 and re.fullmatch(r"[0-9a-f]{7}", words[0]):
            states[words[1]] = words[-1]
    return states


def epoch_accuracies(history_csv: Path) -> list[float]:
    """Validation accuracy per finished epoch in a training history as it grows (empty while none)."""
    try:
        history = pd.read_csv(history_csv)
    except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return []
    if "valid_accuracy" not in history:
        return []
    rows = history.dropna(subset=["valid_accuracy"]).sort_values("epoch", kind="stable")
    return [float(value) for value in rows.valid_accuracy]


def running_histories(root: Path, model: str) -> dict[str, Path]:
    """Experiment name -> the history its training stage is writing, for the queue's running experiments.

    DVC writes an executor record (``<task>.run``: name, root_dir) and the task's log (``<task>.out``)
    for each queued experiment; the history is read once the log says the training stage started,
    after DVC removed the outputs it checked out from the baseline.
    """
    found = {}
    for info_file, info in executor_records(root).items():
        if info is None:
            continue
        try:
            log = info_file.with_suffix(".out").read_text(errors="replace")
        except OSError:
            continue  # being written
        if info.get("name") and info.get("root_dir") and f"Running stage '{train_section(model)}'" in log:
            found[info["name"]] = Path(info["root_dir"]) / "models" / model / HISTORY
    return found


def executor_records(root: Path) -> dict[Path, dict | None]:
    """DVC's executor record of each queued task (``run/<task>/<task>.run``: name, root_dir, status), by file
    in name order; None for one being written."""
    records: dict[Path, dict | None] = {}
    for info_file in sorted((root / EXEC_RUN_DIR).glob("*/*.run")):
        try:
            records[info_file] = json.loads(info_file.read_text())
        except (OSError, ValueError):
            records[info_file] = None
    return records


def queue_fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes whenever DVC's queue does: its executors' records (a task's status), the broker's queued
    messages, the tasks' results and the workers' records. Listing them costs microseconds; `dvc queue status` costs a
    process and about 2 s of CPU, taken from the trials it watches."""
    exps = root / EXPS_DIR
    found = []
    records = ("run/*/*.run", "celery/broker/in/*", "celery/result/*", "celery/*.json")
    for path in sorted(path for pattern in records for path in exps.glob(pattern)):
        try:
            stat = path.stat()
        except OSError:
            continue  # removed in between: the next look sees it gone
        found.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(found)


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A DVC command in the project; a failure is a PipelineError with DVC's own message."""
    result = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=venv_env())
    if check and result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip()).splitlines() or ["(no output)"]
        raise PipelineError(f"dvc {' '.join(args[:3])} ... failed: {message[-1]}")
    return result


def worker_threads(jobs: int, cores: int | None = None) -> int:
    """Threads per trial: the cores shared out among the workers, at least one each."""
    return max(1, (cores or os.cpu_count() or 1) // jobs)


def start_workers(jobs: int, root: Path | None = None) -> None:
    """``dvc queue start -j JOBS`` (in ``root``, default the current folder): its workers outlive it and
    inherit its output, so they get no pipe of ours to hold open (given one, the call would return only
    when they stop, 10 s after the queue is empty).

    Each trial gets its share of the cores (``OMP_NUM_THREADS``, unless set): two trainings of two
    threads each on 2 cores spend their time waiting for each other. In MKL's strict mode the thread
    count does not change the bits (docs/reproducibility.md), so a trial gives the result it would alone.
    """
    command = [sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)]
    env = {"OMP_NUM_THREADS": str(worker_threads(jobs))} | venv_env()  # the user's own setting wins
    started = subprocess.run(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    if started.returncode != 0:
        raise PipelineError(f"dvc queue start -j {jobs} failed (exit {started.returncode}): run it to see why")


def show_experiments(study: str, attempts: int = 6) -> dict[str, Experiment]:
    """The study's experiments from ``dvc exp show --json``, asked again while DVC's queue is mid-change.

    DVC 3.67 lists a task as active before its worker has written the task's info file, and
    ``dvc exp show`` then fails (FileNotFoundError on ``.dvc/tmp/exps/run/<task>/<task>.run``)
    for the moment it takes the worker to write it.
    """
    for attempt in range(attempts):
        try:
            return study_experiments(json.loads(dvc("exp", "show", "--json").stdout), study)
        except PipelineError:
            if attempt == attempts - 1:
                raise
            time.sleep(POLL_S)
    raise AssertionError("unreachable")


@dataclass
class Active:
    """A trial whose experiment is queued or running."""

    trial: Any  # optuna.trial.Trial
    name: str
    params: dict[str, Any]
    reported: int = 0  # epochs already reported to the pruner


class Tuner:
    """Ask, queue, watch and tell, until the study has the trials asked for."""

    def __init__(self, study: Any, space: Space, jobs: int) -> None:
        self.study, self.space, self.jobs = study, space, jobs
        self.owner = f"{socket.gethostname()}:{Path.cwd()}"  # whose DVC queue runs a trial (a shared journal)
        self.active: dict[int, Active] = {}

    def finished(self) -> list[Any]:
        from optuna.trial import TrialState

        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))

    def queue(self, active: Active) -> None:
        options = [part for key, value in active.params.items() for part in ("-S", set_option(key, value))]
        dvc("exp", "run", "--queue", "-n", active.name, *options)
        self.active[active.trial.number] = active
        print(f"{active.name}: queued {' '.join(options[1::2])}", flush=True)

    def ask(self) -> None:
        trial = self.study.ask(self.space.distributions)
        name = trial_name(self.study.study_name, trial.number)
        trial.set_user_attr("experiment", name)
        trial.set_user_attr("queue", self.owner)
        self.queue(Active(trial, name, dict(trial.params)))

    def resume(self) -> None:
        """Trials left RUNNING by an earlier run: told, waited for, or queued again (see the module's docstring)."""
        from optuna.trial import Trial, TrialState

        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not any(t.user_attrs.get("queue", self.owner) == self.owner for t in running):
            return
        states = queue_states(dvc("queue", "status").stdout)
        shown = show_experiments(self.study.study_name)
        for frozen in running:
            name = frozen.user_attrs.get("experiment") or trial_name(self.study.study_name, frozen.number)
            if frozen.user_attrs.get("queue", self.owner) != self.owner:
                print(f"{name}: queued by {frozen.user_attrs['queue']}, left to it", flush=True)
                continue
            active = Active(Trial(self.study, frozen._trial_id), name, dict(frozen.params))
            active.reported = len(frozen.intermediate_values)
            if name not in states and name not in shown:
                self.queue(active)  # DVC never got it: the same params again
                states[name] = "Queued"
            else:
                self.active[frozen.number] = active
                print(f"{name}: resumed ({states.get(name, 'done').lower()} in DVC)", flush=True)
        self.settle(states)

    def settle(self, states: dict[str, str]) -> None:
        """Tell Optuna about every active trial whose experiment finished (or left DVC's queue)."""
        from optuna.trial import TrialState

        done = {n: a for n, a in self.active.items() if states.get(a.name) not in ("Queued", "Running")}
        shown = show_experiments(self.study.study_name) if done else {}
        for number, active in done.items():
            experiment = shown.get(active.name)
            accuracy = experiment.accuracy("val", self.space.model) if experiment else None
            if experiment and experiment.state == "success" and accuracy is not None:
                self.study.tell(number, accuracy)
                print(f"{active.name}: validation accuracy {accuracy:.4f}", flush=True)
            elif active.trial.user_attrs.get("pruned"):
                self.study.tell(number, state=TrialState.PRUNED)
                print(f"{active.name}: pruned after {active.reported} epochs", flush=True)
            else:
                self.study.tell(number, state=TrialState.FAIL)
                print(f"{active.name}: failed: see `dvc queue logs {active.name}`", flush=True)
            del self.active[number]

    def watch(self, root: Path) -> None:
        """Report each running trial's new epochs to the pruner; stop those it prunes (`dvc queue kill`)."""
        if self.space.pruning is None:
            return
        histories = running_histories(root, self.space.model)
        for active in self.active.values():
            if active.name not in histories or active.trial.user_attrs.get("pruned"):
                continue
            accuracies = epoch_accuracies(histories[active.name])
            for epoch in range(active.reported, len(accuracies)):
                active.trial.report(accuracies[epoch], step=epoch + 1)
            active.reported = max(active.reported, len(accuracies))
            if accuracies and active.trial.should_prune():
                active.trial.set_user_attr("pruned", True)
                dvc("queue", "kill", active.name, check=False)
                print(f"{active.name}: pruning after {active.reported} epochs: {accuracies[-1]:.4f}", flush=True)

    def run(self, trials: int, root: Path) -> None:
        self.resume()
        queued = True  # workers may be gone (a reboot): start them once, then whenever a trial is queued
        seen: tuple | None = None  # the queue's files when `dvc queue status` was last asked
        asked = time.monotonic()
        while len(self.finished()) < trials:
            while len(self.active) < self.jobs and len(self.finished()) + len(self.active) < trials:
                self.ask()
                queued = True
            if queued:
                start_workers(self.jobs)
                queued, seen = False, None
            time.sleep(POLL_S)
            self.watch(root)
            fingerprint = queue_fingerprint(root)  # before asking: a change during the call is seen next time
            if fingerprint != seen or time.monotonic() - asked > STATUS_EVERY_S:
                self.settle(queue_states(dvc("queue", "status").stdout))
                seen, asked = fingerprint, time.monotonic()


def open_study(name: str, storage: Path, space: Space) -> Any:
    """The study in its journal file, created or continued; the sampler seeded past the trials it has."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage.parent.mkdir(parents=True, exist_ok=True)
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=space.pruning.startup_trials, n_warmup_steps=space.pruning.warmup_epochs
        )
        if space.pruning
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=name,
        storage=JournalStorage(JournalFileBackend(str(storage))),
        direction="maximize",
        pruner=pruner,
        load_if_exists=True,
    )
    # a restarted sampler with the same seed would propose the first trials' params again
    study.sampler = optuna.samplers.TPESampler(seed=space.seed + len(study.trials))
    return study


def summary(study: Any, model: str, searched: Sequence[str], planned_epochs: Mapping[int, int]) -> str:
    """The study's outcome: counts, what pruning saved, the best experiment on validation and how to use it."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {
        state: sum(t.state == state for t in trials)
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    lines = [
        f"study {study.study_name}: {len(trials)} trials, {counts[TrialState.COMPLETE]} complete, "
        f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed"
    ]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if pruned:
        trained = sum(len(t.intermediate_values) for t in pruned)
        planned = sum(planned_epochs[t.number] for t in pruned)
        lines.append(f"pruning: {len(pruned)} trials stopped after {trained} of their {planned} epochs")
    best = best_experiment(show_experiments(study.study_name), model)
    if best is None:
        lines.append("no trial has finished with a validation accuracy: see `dvc queue logs <name>`")
        return "\n".join(lines)
    changed = " ".join(f"{key}={best.params.get(key)}" for key in searched)
    lines += [
        f"best trial (validation accuracy): {best.name}",
        f"  validation accuracy {best.accuracy('val', model):.4f}, test accuracy {best.accuracy('test', model):.4f}",
        f"  {changed}",
        f"  dvc exp apply {best.name}   # the workspace becomes it",
        f"  dvc exp branch {best.name} {best.name}-best   # or a branch of it",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mnistlab.tune", description="A hyperparameter search whose trials are DVC experiments."
    )
    parser.add_argument("--model", choices=MODEL_NAMES, required=True, help="the network to tune")
    parser.add_argument("--trials", type=int, default=12, help="finished trials to reach (complete, pruned, failed)")
    parser.add_argument("--jobs", type=int, default=2, help="DVC queue workers: experiments run at once")
    parser.add_argument("--space", type=Path, default=SPACE_FILE, help="the search space (default tune.yaml)")
    parser.add_argument("--study", help="the study's name and its experiments' prefix (default tune-<model>)")
    parser.add_argument("--storage", type=Path, help="the journal file (default experiments/studies/<study>.journal)")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.jobs < 1:
        raise PipelineError(f"--trials {args.trials} --jobs {args.jobs}: both must be at least 1")
    name = args.study or f"tune-{args.model}"
    if not NAME.fullmatch(name):
        raise PipelineError(f"--study {name!r}: letters, digits, '.', '_' and '-' only (it names experiments)")
    space = load_space(args.space, args.model)
    base = parse_section(train_params(args.model), read_params(), train_section(args.model))
    study = open_study(name, args.storage or STUDIES / f"{name}.journal", space)
    epochs_key = f"{train_section(args.model)}.epochs"
    tuner = Tuner(study, space, args.jobs)
    try:
        tuner.run(args.trials, Path.cwd())
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {len(tuner.finished())} of {args.trials} trials finished; those queued go on in DVC's "
            f"queue (`dvc queue status`). The same command continues the study.",
            file=sys.stderr,
        )
        sys.exit(130)
    planned = {t.number: int(t.params.get(epochs_key, base.epochs)) for t in study.get_trials(deepcopy=False)}
    print(summary(study, args.model, list(space.distributions), planned))


if __name__ == "__main__":
    run_stage(main)
