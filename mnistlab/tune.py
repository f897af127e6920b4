"""`make tune`: a hyperparameter search whose every trial is a DVC experiment of the real pipeline.

Optuna proposes, DVC runs, and what DVC recorded is the result:

- Optuna's ask-and-tell (seeded TPE) proposes params from the search space (``tune.yaml``,
  :mod:`mnistlab.space`);
- each trial is queued as ``dvc exp run --queue -n <name> -S key=value ...`` and run by DVC's queue
  workers (``dvc queue start -j JOBS``), each in its own temporary copy of the repository
  (:mod:`mnistlab.dvc_queue`, the only module that knows DVC's queue files);
- the objective, the model's validation accuracy (``val_acc.<model>``), is read back from
  ``dvc exp show --json`` (:mod:`mnistlab.experiments`); each trial's commit carries the study and
  trial number as trailers, so any clone tells a study's trials apart;
- the study lives in Optuna's storage: a journal file by default (``experiments/studies/<study>.journal``,
  git-ignored, one machine, no server), or a database (``--storage postgresql://...``) that several
  machines share, with heartbeats: a trial whose machine stops beating is failed after a grace period.

A trial is finished when it is COMPLETE (its experiment succeeded), PRUNED (stopped early: its best
validation accuracy so far fell below the median of the completed trials' at that epoch) or FAIL
(its experiment failed, stalled, or its machine stopped beating): ``--trials N`` runs until the
study has N finished trials, and asks for no more than N across every machine. On a restart, a
trial the storage holds as RUNNING, queued by this project (user attribute ``queue``: host and
folder), is resolved from DVC's record: finished there, it is told its result; queued or running
there, it is waited for; unknown to DVC, it is queued again with the params it was given.

    python -m mnistlab.tune --model mlp --trials 12 --jobs 2 [--space tune.yaml] [--study NAME]
                            [--storage PATH|URL] [--push GIT_REMOTE] [--stall-timeout S] [--grace-period S]
"""

import argparse
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mnistlab import dvc_queue as queue
from mnistlab.errors import PipelineError
from mnistlab.experiments import RETRY_S, Run, best_on_validation, read_runs, show, trial_message
from mnistlab.params import MODEL_NAMES, parse_section, read_params, train_params, train_section
from mnistlab.space import SPACE_FILE, Space, load_space
from mnistlab.stage import HISTORY, run_stage
from mnistlab.study import Heartbeat, is_url, open_storage, open_study, owner_of

STUDIES = Path("experiments/studies")  # git-ignored: each study's journal
POLL_S = 5.0  # between two looks at the queue's files (and the running trials' histories)
STATUS_EVERY_S = 60.0  # `dvc queue status` at least this often, even when the queue's files did not change
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a study's name: part of a git ref


def trial_name(study: str, number: int) -> str:
    """The experiment of trial ``number``: ``tune-mlp-007``."""
    return f"{study}-{number:03d}"


def set_option(key: str, value: Any) -> str:
    """``-S``'s argument for one param; floats as repr, which reads back as the same float."""
    text = repr(value) if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)
    return f"{key}={text}"


def epoch_accuracies(history_csv: Path) -> list[float]:
    """Validation accuracy per finished epoch in a training history as it grows (empty while none).

    Only whole lines count: a row still being written (no newline yet) is read on the next look, so the
    pruner, which keeps the first value reported for an epoch, never gets a truncated number.
    """
    try:
        text = history_csv.read_text()
    except OSError:
        return []
    text = text[: text.rfind("\n") + 1]
    try:
        history = pd.read_csv(pd.io.common.StringIO(text))
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return []
    if "valid_accuracy" not in history:
        return []
    rows = history.dropna(subset=["valid_accuracy"]).sort_values("epoch", kind="stable")
    return [float(value) for value in rows.valid_accuracy]


@dataclass
class Active:
    """A trial of this machine whose experiment is queued or running."""

    trial: Any  # optuna.trial.Trial
    trial_id: int  # the storage's id of it, for its heartbeats
    name: str
    params: dict[str, Any]
    reported: int = 0  # epochs already reported to the pruner
    progress: tuple = ()  # what was last seen of it: epochs, log size, process
    progress_at: float = field(default_factory=time.monotonic)  # when that last changed


class Tuner:
    """Ask, queue, watch and tell, until the study has the trials asked for."""

    def __init__(
        self, study: Any, storage: Any, space: Space, jobs: int, root: Path, stall_timeout_s: float = 900.0
    ) -> None:
        self.study, self.storage, self.space, self.jobs, self.root = study, storage, space, jobs, root
        self.shared = hasattr(storage, "record_heartbeat")  # a database: other machines may use it too
        self.stall_timeout_s = stall_timeout_s
        self.owner = owner_of(root)
        self.active: dict[int, Active] = {}
        self.restart_workers = True  # workers may be gone (a reboot, a killed trial): start them on the next look
        self.suspects: set[str] = set()  # tasks that looked stuck on the last look

    # --- the study -----------------------------------------------------------------------------

    def trials(self, *states: Any) -> list[Any]:
        return self.study.get_trials(deepcopy=False, states=states or None)

    def finished(self) -> list[Any]:
        from optuna.trial import TrialState

        return self.trials(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

    def mine(self, frozen: Any) -> bool:
        """Whether this machine queued the trial. One without a ``queue`` (stopped between ask and its first
        attribute) is this machine's in a journal, which one machine uses; in a shared database its
        heartbeat decides."""
        owner = frozen.user_attrs.get("queue")
        return owner == self.owner or (owner is None and not self.shared)

    def trial_id(self, number: int) -> int:
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def beat(self) -> None:
        """Record a heartbeat for each of this machine's running trials (a database study only)."""
        if not self.shared:
            return
        for active in list(self.active.values()):
            self.storage.record_heartbeat(active.trial_id)

    def fail_stale(self) -> None:
        """Fail the trials whose machine stopped beating (another machine's, or this one's before a restart)."""
        if self.shared:
            from optuna.storages import fail_stale_trials

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental since Optuna 2.9, and the only API for it
                fail_stale_trials(self.study)

    # --- DVC -----------------------------------------------------------------------------------

    def clear_stuck(self) -> None:
        """DVC's remedy for each stuck task seen on two looks in a row: one DVC lists as active with no executor
        record (its worker took it and stopped), which no worker will run and which makes every `dvc exp show`
        fail (:mod:`mnistlab.dvc_queue`). DVC refuses the kill while a live worker still sets a task up; then
        nothing is done. The trial it was is failed."""
        stuck = queue.stuck_tasks(self.root)
        for message in (m for m in stuck if m.task in self.suspects):
            said = queue.kill_and_remove(message.task, cwd=self.root)
            if said is None:
                continue
            name = message.name or message.task[:7]
            print(
                f"{name}: stuck in DVC's queue (task {message.task[:7]} active, no executor record): "
                f"dvc queue kill, dvc queue remove: {said}",
                flush=True,
            )
            self.fail(name, "stuck in DVC's queue")
            self.restart_workers = True
        self.suspects = {m.task for m in stuck}

    def recovering(self, read: Callable[[], Any], attempts: int = 6) -> Any:
        """``read()`` (a DVC command), asked again while it fails (DVC's queue mid-change, or a stuck task, which
        is cleared on the next look)."""
        for attempt in range(attempts):
            try:
                return read()
            except PipelineError:
                if attempt == attempts - 1:
                    raise
            self.clear_stuck()
            time.sleep(RETRY_S)
        raise AssertionError("unreachable")

    def shown(self) -> dict[str, Run]:
        return {run.name: run for run in self.recovering(lambda: read_runs(show(cwd=self.root, attempts=1)))}

    def queue_states(self) -> dict[str, str]:
        return self.recovering(lambda: queue.queue_states(queue.dvc("queue", "status", cwd=self.root).stdout))

    def fail(self, name: str, why: str) -> None:
        """Tell the active trial of experiment ``name`` it failed."""
        from optuna.trial import TrialState

        for number, active in list(self.active.items()):
            if active.name == name:
                self.study.tell(number, state=TrialState.FAIL)
                print(f"{name}: failed: {why}", flush=True)
                del self.active[number]

    # --- the search ----------------------------------------------------------------------------

    def queue(self, active: Active) -> None:
        options = [part for key, value in active.params.items() for part in ("-S", set_option(key, value))]
        message = trial_message(self.study.study_name, active.trial.number, active.name)
        queue.dvc("exp", "run", "--queue", "-n", active.name, "-m", message, *options, cwd=self.root)
        self.active[active.trial.number] = active
        print(f"{active.name}: queued {' '.join(options[1::2])}", flush=True)

    def ask(self) -> None:
        with warnings.catch_warnings():  # "Heartbeat ... supposed to be used with Study.optimize": ours beats
            warnings.simplefilter("ignore")
            trial = self.study.ask(self.space.distributions)
        name = trial_name(self.study.study_name, trial.number)
        active = Active(trial, self.trial_id(trial.number), name, dict(trial.params))
        self.active[trial.number] = active  # beating from now on
        self.beat()
        trial.set_user_attr("queue", self.owner)
        trial.set_user_attr("experiment", active.name)
        self.queue(active)

    def resume(self) -> None:
        """Trials left RUNNING by an earlier run: told, waited for, or queued again (see the module's docstring)."""
        from optuna.trial import Trial, TrialState

        self.fail_stale()
        running = [t for t in self.trials(TrialState.RUNNING) if self.mine(t)]
        for frozen in self.trials(TrialState.RUNNING):
            if not self.mine(frozen):
                owner = frozen.user_attrs.get("queue", "another machine")
                print(f"{trial_name(self.study.study_name, frozen.number)}: queued by {owner}, left to it", flush=True)
        if not running:
            return
        for frozen in running:
            name = frozen.user_attrs.get("experiment") or trial_name(self.study.study_name, frozen.number)
            trial_id = self.trial_id(frozen.number)
            self.active[frozen.number] = Active(Trial(self.study, trial_id), trial_id, name, dict(frozen.params))
            self.active[frozen.number].reported = len(frozen.intermediate_values)
        self.beat()
        states, shown = self.queue_states(), self.shown()
        for number, active in list(self.active.items()):
            if active.name not in states and active.name not in shown:
                del self.active[number]
                self.queue(active)  # DVC never got it: the same params again
                states[active.name] = "Queued"
            else:
                print(f"{active.name}: resumed ({states.get(active.name, 'done').lower()} in DVC)", flush=True)
        self.settle(states)

    def settle(self, states: dict[str, str]) -> None:
        """Tell Optuna about every active trial whose experiment finished (or left DVC's queue)."""
        from optuna.trial import TrialState

        done = {n: a for n, a in self.active.items() if states.get(a.name) not in ("Queued", "Running")}
        shown = self.shown() if done else {}
        model = self.space.model
        for number, active in done.items():
            if number not in self.active:
                continue  # failed while DVC was read
            run = shown.get(active.name)
            accuracy = run.accuracy("val", model) if run and run.state == "success" else None
            if active.trial.user_attrs.get("pruned"):
                self.study.tell(number, state=TrialState.PRUNED)
                print(f"{active.name}: pruned after {active.reported} epochs", flush=True)
            elif accuracy is not None:
                test = run.accuracy("test", model)
                if test is not None:  # kept for the summary on every machine; never used to choose
                    active.trial.set_user_attr("test_accuracy", test)
                self.study.tell(number, accuracy)
                print(f"{active.name}: validation accuracy {accuracy:.4f}", flush=True)
            else:
                self.study.tell(number, state=TrialState.FAIL)
                print(f"{active.name}: failed: see `dvc queue logs {active.name}`", flush=True)
            del self.active[number]

    def watch(self) -> None:
        """Clear stuck tasks; report each running trial's new epochs to the pruner, stop those it prunes
        (`dvc queue kill`), and kill and fail those that showed no progress (no new epoch, no new line in their
        log) for the stall timeout."""
        self.clear_stuck()
        tasks = queue.tasks(self.root)
        now = time.monotonic()
        section = train_section(self.space.model)
        for active in list(self.active.values()):
            task = tasks.get(active.name)
            if task and section in task.started and not active.trial.user_attrs.get("pruned"):
                self.report(active, task.root_dir / "models" / self.space.model / HISTORY)
            seen = (active.reported, queue.log_size(task) if task else -1, task.pid if task else None)
            if seen != active.progress:
                active.progress, active.progress_at = seen, now
            elif now - active.progress_at > self.stall_timeout_s:
                process = "its process alive" if task and queue.alive(task.pid) else "no live process"
                said = queue.kill_and_remove(active.name, cwd=self.root)
                if said is None:  # DVC refused: a live worker still sets it up; look again after another timeout
                    active.progress_at = now
                    continue
                self.restart_workers = True
                stalled = f"no progress for {self.stall_timeout_s:.0f} s ({process})"
                print(f"{active.name}: {stalled}: killed and removed ({said})", flush=True)
                self.fail(active.name, f"stalled for {self.stall_timeout_s:.0f} s")

    def report(self, active: Active, history: Path) -> None:
        if self.space.pruning is None:
            return
        accuracies = epoch_accuracies(history)
        for epoch in range(active.reported, len(accuracies)):
            active.trial.report(accuracies[epoch], step=epoch + 1)
        active.reported = max(active.reported, len(accuracies))
        if accuracies and active.trial.should_prune():
            active.trial.set_user_attr("pruned", True)
            queue.dvc("queue", "kill", active.name, check=False, cwd=self.root)
            self.restart_workers = True  # the kill reaches the trial's worker too: it shuts down
            print(f"{active.name}: pruning after {active.reported} epochs: {accuracies[-1]:.4f}", flush=True)

    def idle_workers_gone(self, timeout_s: float = 15.0) -> None:
        """Wait (at most ``timeout_s``) until no DVC queue worker here is idle. An idle worker stops at its next look
        at an empty queue, every 10 s, and one that is stopping can take a message queued then and drop it: the
        trial would be stuck. Queued once the idle ones are gone, a trial goes to a worker started for it."""
        deadline = time.monotonic() + timeout_s
        while queue.live_workers(self.root) > queue.running_tasks(self.root) and time.monotonic() < deadline:
            time.sleep(0.5)

    def asked(self) -> int:
        """Trials finished or running anywhere: what counts against ``--trials`` before asking for another."""
        from optuna.trial import TrialState

        return len(self.finished()) + len(self.trials(TrialState.RUNNING))

    def run(self, trials: int) -> None:
        heartbeat = Heartbeat(self, self.storage.get_heartbeat_interval()) if self.shared else None
        self.resume()
        seen: tuple | None = None  # the queue's files when `dvc queue status` was last asked
        asked = time.monotonic()
        while len(self.finished()) < trials or self.active:
            while len(self.active) < self.jobs and self.asked() < trials:
                self.idle_workers_gone()
                self.ask()
                self.restart_workers = True
            if self.restart_workers and self.active:
                queue.start_workers(self.jobs, self.root)
                self.restart_workers, seen = False, None
            time.sleep(POLL_S)
            self.fail_stale()
            self.watch()
            fingerprint = queue.queue_fingerprint(self.root)  # before asking: a change during the call is seen next
            if self.active and (fingerprint != seen or time.monotonic() - asked > STATUS_EVERY_S):
                self.settle(self.queue_states())
                seen, asked = fingerprint, time.monotonic()
        if heartbeat:
            heartbeat.stop()


def study_runs(study: Any, model: str) -> list[Run]:
    """The study's trials as runs (its own record, the same on every machine): the value is the validation
    accuracy; the test accuracy kept when it was told."""
    from optuna.trial import TrialState

    states = {TrialState.COMPLETE: "success", TrialState.FAIL: "failed", TrialState.RUNNING: "running"}
    runs = []
    for trial in study.get_trials(deepcopy=False):
        metrics = {f"val_acc.{model}": trial.value} if trial.value is not None else {}
        if "test_accuracy" in trial.user_attrs:
            metrics[f"test_acc.{model}"] = trial.user_attrs["test_accuracy"]
        name = trial.user_attrs.get("experiment") or trial_name(study.study_name, trial.number)
        state = states.get(trial.state, "failed")
        runs.append(Run(name, "", state, dict(trial.params), metrics, study=study.study_name, trial=trial.number))
    return runs


def summary(study: Any, model: str, searched: Sequence[str], planned_epochs: dict[int, int]) -> str:
    """The study's outcome: counts, what pruning saved, the best trial on validation and how to use it."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    lines = [
        f"study {study.study_name}: {len(trials)} trials, {counts[TrialState.COMPLETE]} complete, "
        f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed"
        + (f", {counts[TrialState.RUNNING]} running" if counts[TrialState.RUNNING] else "")
    ]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if pruned:
        trained = sum(len(t.intermediate_values) for t in pruned)
        planned = sum(planned_epochs[t.number] for t in pruned)
        lines.append(f"pruning: {len(pruned)} trials stopped after {trained} of their {planned} epochs")
    best = best_on_validation(study_runs(study, model), model)
    if best is None:
        lines.append("no trial has finished with a validation accuracy: see `dvc queue logs <name>`")
        return "\n".join(lines)
    test = best.accuracy("test", model)
    queued_by = next(t for t in trials if t.number == best.trial).user_attrs.get("queue", "this machine")
    lines += [
        f"best trial (validation accuracy): {best.name}",
        f"  validation accuracy {best.accuracy('val', model):.4f}, "
        + (f"test accuracy {test:.4f}" if test is not None else "test accuracy not recorded"),
        f"  {' '.join(f'{key}={best.params.get(key)}' for key in searched)}",
        f"  run by {queued_by}",
        f"  dvc exp apply {best.name}   # the workspace becomes it",
        f"  dvc exp branch {best.name} {best.name}-best   # or a branch of it",
    ]
    return "\n".join(lines)


def push(study: Any, owner: str, remote: str, root: Path) -> str:
    """`dvc exp push REMOTE` of this machine's finished trials that DVC has (git refs to the git remote, their
    outputs to the DVC remote): what was pushed, in one line."""
    from optuna.trial import TrialState

    ours = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("queue") == owner
    ]
    names = [t.user_attrs["experiment"] for t in ours if "experiment" in t.user_attrs]
    if not names:
        return f"push: no complete trial of this machine to push to {remote}"
    queue.dvc("exp", "push", remote, *names, cwd=root, timeout_s=None)  # a network transfer: as long as it takes
    return f"push: {len(names)} experiments to {remote} (dvc exp push {remote}): {', '.join(names)}"


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mnistlab.tune", description="A hyperparameter search whose trials are DVC experiments."
    )
    parser.add_argument("--model", choices=MODEL_NAMES, required=True, help="the network to tune")
    parser.add_argument("--trials", type=int, default=12, help="finished trials to reach (complete, pruned, failed)")
    parser.add_argument("--jobs", type=int, default=2, help="DVC queue workers: experiments run at once")
    parser.add_argument("--space", type=Path, default=SPACE_FILE, help="the search space (default tune.yaml)")
    parser.add_argument("--study", help="the study's name and its experiments' prefix (default tune-<model>)")
    parser.add_argument(
        "--storage",
        help="a journal file (default experiments/studies/<study>.journal), or a database URL shared by several "
        "machines: postgresql+psycopg://user@host/db",
    )
    parser.add_argument("--push", metavar="GIT_REMOTE", help="at the end, dvc exp push this machine's trials there")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=900.0,
        help="seconds without a new epoch or log line before a trial is killed and failed (default 900)",
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        default=120.0,
        help="a database study: seconds without a heartbeat before another machine's trial is failed (default 120)",
    )
    args = parser.parse_args(argv)
    if args.trials < 1 or args.jobs < 1:
        raise PipelineError(f"--trials {args.trials} --jobs {args.jobs}: both must be at least 1")
    if args.grace_period < 4 or args.stall_timeout <= POLL_S:
        raise PipelineError(
            f"--grace-period {args.grace_period:g} must be at least 4 s (four heartbeats), "
            f"--stall-timeout {args.stall_timeout:g} above the poll ({POLL_S:g} s)"
        )
    name = args.study or f"tune-{args.model}"
    if not NAME.fullmatch(name):
        raise PipelineError(f"--study {name!r}: letters, digits, '.', '_' and '-' only (it names experiments)")
    space = load_space(args.space, args.model)
    base = parse_section(train_params(args.model), read_params(), train_section(args.model))
    storage_spec = args.storage or str(STUDIES / f"{name}.journal")
    storage = open_storage(storage_spec, args.grace_period)
    root = Path.cwd()
    study = open_study(name, storage, space, owner_of(root), is_url(storage_spec))
    tuner = Tuner(study, storage, space, args.jobs, root, args.stall_timeout)
    try:
        tuner.run(args.trials)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {len(tuner.finished())} of {args.trials} trials finished; those queued go on in DVC's "
            f"queue (`dvc queue status`). The same command continues the study.",
            file=sys.stderr,
        )
        sys.exit(130)
    epochs_key = f"{train_section(args.model)}.epochs"
    planned = {t.number: int(t.params.get(epochs_key, base.epochs)) for t in study.get_trials(deepcopy=False)}
    print(summary(study, args.model, list(space.distributions), planned))
    if args.push:
        print(push(study, owner_of(root), args.push, root))


if __name__ == "__main__":
    run_stage(main)
