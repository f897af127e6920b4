"""`make tune`: the search space and its errors, names, the objective read from `dvc exp show --json`,
the choice of the best run on validation; end to end, studies whose trials are DVC experiments."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mnistlab.dvc_queue import executor_records, queue_fingerprint, queue_states, running_status, worker_threads
from mnistlab.experiments import Run, best_on_validation, read_runs
from mnistlab.space import SPACE_FILE, SpaceError, parse_space
from mnistlab.tune import epoch_accuracies, set_option, trial_name
from tests.conftest import ROOT, ctrl_c_reaches_it, dvc, git, venv_env

# --- the search space -------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["mlp", "mlr"])
def test_the_committed_space_is_valid_and_searches_learning_rate_batch_size_and_epochs(model: str) -> None:
    space = parse_space(yaml.safe_load((ROOT / SPACE_FILE).read_text()), model)
    keys = {key.split(".", 1)[1] for key in space.distributions}
    assert {"learning_rate", "batch_size", "epochs"} <= keys
    assert space.distributions[f"train_{model}.learning_rate"].log
    if model == "mlp":
        assert {"dropout1", "dropout2"} <= keys


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train_mlp": {"learnin_rate": {"low": 0.001, "high": 0.01}}}, "train_mlp.learnin_rate is not a key"),
        ({"train_mlr": {"epochs": {"low": 1, "high": 3}}, "train_mlp": {"epoch": {"choices": [1]}}}, "train_mlp.epoch"),
        ({"train_mlp": {"dropout1": {"low": 0.1, "high": 1.0}}}, "train_mlp.dropout1.high = 1.0 is not allowed"),
        ({"train_mlp": {"epochs": {"low": 1.5, "high": 3}}}, "train_mlp.epochs.low = 1.5 is not allowed"),
        ({"train_mlp": {"batch_size": {"choices": [0, 64]}}}, "train_mlp.batch_size = 0 is not allowed"),
        ({"train_mlp": {"learning_rate": {"low": 0.01, "high": 0.001}}}, "low = 0.01 must be below high"),
        ({"train_mlp": {"learning_rate": {"low": 0.001, "hi": 0.01}}}, "train_mlp.learning_rate.hi is not a known"),
        ({"train_mlp": {"learning_rate": 0.001}}, "train_mlp.learning_rate = 0.001 is not allowed"),
        ({"pruning": {"warmup": 3}, "train_mlp": {}}, "pruning.warmup is not a known key"),
        ({"train_mlp": {}}, "train_mlp is empty"),
        ({"trainmlp": {}}, "trainmlp is not a known key"),
    ],
)
def test_a_bad_space_is_one_error_naming_the_key(space: dict, message: str) -> None:
    with pytest.raises(SpaceError, match=r"^tune\.yaml: ") as error:
        parse_space(space, "mlp")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_bad_space_stops_the_command_with_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "tune.yaml").write_text("train_mlp:\n  learnin_rate: {low: 0.001, high: 0.01}\n")
    env = venv_env() | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "mnistlab.tune", "--model", "mlp", "--trials", "2"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("error: tune.yaml: train_mlp.learnin_rate is not a key of params.yaml's")
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_numbers_in_the_space_may_be_written_as_yaml_reads_them() -> None:
    space = parse_space({"train_mlr": {"learning_rate": {"low": "1e-4", "high": 1.0e-2, "log": True}}}, "mlr")
    distribution = space.distributions["train_mlr.learning_rate"]
    assert (distribution.low, distribution.high) == (1e-4, 1e-2)


# --- names, options, DVC's outputs ---------------------------------------------------------------


def test_trial_names_are_the_study_and_three_digits() -> None:
    assert trial_name("tune-mlp", 7) == "tune-mlp-007"
    assert trial_name("tune-mlr", 123) == "tune-mlr-123"
    assert trial_name("wide", 1234) == "wide-1234"


def test_set_options_read_back_as_the_same_values() -> None:
    for value in [0.0012345678901234567, 1e-05, 3e36, 0.4]:
        _, text = set_option("train_mlp.learning_rate", value).split("=")
        assert float(yaml.safe_load(text)) == value
    assert set_option("train_mlr.batch_size", 128) == "train_mlr.batch_size=128"


def exp_show(experiments: list[tuple[str, str, dict | None]]) -> list[dict]:
    """`dvc exp show --json`'s shape: the workspace, a baseline commit and its experiments (name, state, metrics)."""

    def data(metrics: dict | None, rate: float) -> dict:
        params = {"params.yaml": {"data": {"train_mlr": {"learning_rate": rate, "epochs": 1}}}}
        return {"params": params, "metrics": {"metrics/metrics.json": {"data": metrics}} if metrics else {}}

    return [
        {"rev": "workspace", "name": None, "data": data(None, 0.01), "experiments": None},
        {
            "rev": "a" * 40,
            "name": "main",
            "data": data({"val_acc": {"mlr": 0.5}, "test_acc": {"mlr": 0.5}}, 0.01),
            "experiments": [
                {
                    "name": name,
                    "executor": None if state == "success" else {"state": state, "name": "dvc-task", "local": None},
                    "revs": [{"rev": f"{index:040d}", "name": name, "data": data(metrics, 0.001 * (index + 1))}],
                }
                for index, (name, state, metrics) in enumerate(experiments)
            ],
        },
    ]


def scores(val: float, test: float) -> dict:
    return {"val_acc": {"mlp": 0.9, "mlr": val}, "test_acc": {"mlp": 0.9, "mlr": test}}


def test_the_objective_is_read_from_exp_show_with_dvc_s_state_of_each_run() -> None:
    shown = {
        run.name: run
        for run in read_runs(
            exp_show(
                [
                    ("tune-mlr-000", "success", scores(0.91, 0.90)),
                    ("tune-mlr-001", "failed", None),
                    ("tune-mlr-002", "running", None),
                ]
            )
        )
    }
    assert sorted(shown) == ["main", "tune-mlr-000", "tune-mlr-001", "tune-mlr-002"]
    assert shown["tune-mlr-000"].state == "success"
    assert shown["tune-mlr-000"].accuracy("val", "mlr") == 0.91
    assert shown["tune-mlr-000"].params["train_mlr.learning_rate"] == 0.001
    assert [shown[name].state for name in ("tune-mlr-001", "tune-mlr-002")] == ["failed", "running"]
    assert shown["tune-mlr-001"].accuracy("val", "mlr") is None


def test_the_best_trial_is_chosen_on_validation_where_test_disagrees() -> None:
    runs = read_runs(
        exp_show(
            [
                ("tune-mlr-000", "success", scores(0.920, 0.930)),  # best on test
                ("tune-mlr-001", "success", scores(0.925, 0.910)),  # best on validation
                ("tune-mlr-002", "failed", None),
                ("tune-mlr-003", "success", scores(0.925, 0.900)),  # a tie on validation: the earlier trial wins
            ]
        )
    )
    trials = [run for run in runs if not run.baseline]
    best = best_on_validation(trials, "mlr")
    assert best is not None and best.name == "tune-mlr-001"
    assert best_on_validation([], "mlr") is None
    assert best_on_validation([Run("t-000", "", "failed")], "mlr") is None


def test_queue_states_from_dvc_queue_status() -> None:
    output = """Task     Name          Created    Status
1f0b1c2  tune-mlp-000  08:12 AM   Success
3e4d5f6  tune-mlp-001  08:12 AM   Failed
a1b2c3d  tune-mlp-002  08:13 AM   Running
0000fff  tune-mlp-003  Nov 30, 2026   Queued

Worker status: 1 active, 1 idle
"""
    assert queue_states(output) == {
        "tune-mlp-000": "Success",
        "tune-mlp-001": "Failed",
        "tune-mlp-002": "Running",
        "tune-mlp-003": "Queued",
    }
    assert queue_states("No experiment tasks in the queue.\n\nWorker status: 0 active, 0 idle\n") == {}


def test_the_queue_s_fingerprint_changes_with_a_task_s_state_not_with_dvc_s_own_messages(tmp_path: Path) -> None:
    """The tuner asks `dvc queue status` only when this changes (or once a minute)."""
    exps = tmp_path / ".dvc/tmp/exps"
    record = exps / "run/task1/task1.run"
    record.parent.mkdir(parents=True)
    record.write_text('{"name": "tune-mlr-000", "status": 2}')
    (exps / "celery/broker/processed").mkdir(parents=True)
    first = queue_fingerprint(tmp_path)
    assert first and queue_fingerprint(tmp_path) == first
    (exps / "celery/broker/processed/1.reply.celery.pidbox.msg").write_text("{}")  # what `dvc queue status` sends
    assert queue_fingerprint(tmp_path) == first
    record.write_text('{"name": "tune-mlr-000", "status": 3}')  # the task succeeded
    assert queue_fingerprint(tmp_path) != first
    second = queue_fingerprint(tmp_path)
    (exps / "celery/result").mkdir()
    (exps / "celery/result/celery-task-meta-1").write_text("{}")
    assert queue_fingerprint(tmp_path) != second
    third = queue_fingerprint(tmp_path)
    record.unlink()  # DVC cleaned the task up
    assert queue_fingerprint(tmp_path) != third


def test_epoch_accuracies_read_a_growing_history(tmp_path: Path) -> None:
    history = tmp_path / "metrics.csv"
    assert epoch_accuracies(history) == []
    history.write_text("epoch,step,train_accuracy,valid_accuracy\n")
    assert epoch_accuracies(history) == []
    history.write_text("epoch,step,train_accuracy,valid_accuracy\n0,187,0.8,0.85\n1,375,0.9,0.9\n")
    assert epoch_accuracies(history) == [0.85, 0.9]


# --- end to end: studies of the real pipeline on tiny params ----------------------------------------


def trained_project(copy_trained, space: dict) -> Path:
    """A copy of the session's committed, trained tiny project, with ``space`` as its tune.yaml (committed)."""
    project = copy_trained()
    (project / "tune.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    git(project, "commit", "-qam", "the search space")
    return project


def tune(project: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "mnistlab.tune", "--model", "mlr", *args]
    return subprocess.Popen(
        command,
        cwd=project,
        env=venv_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_reaches_it,
    )


def finish(process: subprocess.Popen, timeout_s: float = 1200) -> str:
    stdout, stderr = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, f"{stdout}\n{stderr}"
    return stdout


def journal_trials(project: Path, study: str) -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(project / f"experiments/studies/{study}.journal")))
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def shown_experiments(project: Path) -> dict[str, Run]:
    return {run.name: run for run in read_runs(json.loads(dvc(project, "exp", "show", "--json").stdout))}


def executor_running(project: Path, name: str) -> bool:
    """Whether DVC's executor record of the queued experiment ``name`` says it is running (its stages are
    being reproduced)."""
    return any(
        info and info.get("name") == name and info.get("status") == running_status()
        for info in executor_records(project).values()
    )


def kill_when_running(project: Path, name: str, tuner: subprocess.Popen) -> None:
    """`dvc queue kill` the trial ``name`` once it trains, as the OOM killer would."""
    deadline, status = time.monotonic() + 600, ""
    while not (executor_running(project, name) and queue_states(status).get(name) == "Running"):
        assert time.monotonic() < deadline and tuner.poll() is None, status
        time.sleep(1)
        if executor_running(project, name):  # then DVC is asked: each `dvc queue status` is ~2 s of CPU
            status = dvc(project, "queue", "status").stdout
    dvc(project, "queue", "kill", name)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # several experiments, on a shared 2-core machine
def test_a_study_is_dvc_experiments_resumes_to_exactly_n_trials_and_goes_on_past_a_failing_one(copy_trained) -> None:
    """3 trials; the tuner (1 worker) interrupted (Ctrl-C) once its first trial is queued, and one trial
    left RUNNING in the journal that DVC never got: the rerun (2 workers) waits for the first, queues the
    orphan, asks the rest. The orphan's experiment then dies while it trains (killed, as by the OOM killer):
    a FAIL, and the search goes on.

    (A diverged fit fails a trial too, with its own error line: docs/experiments.md, failures. The kill is
    the failure with no line of the stage's own. This test was two: the resume, and a failing trial in a
    study of its own; then 4 trials, interrupted after two were queued.)"""
    space = {"seed": 0, "pruning": None, "train_mlr": {"learning_rate": {"low": 0.0005, "high": 0.005, "log": True}}}
    project = trained_project(copy_trained, space)
    first = tune(project, "--trials", "3", "--jobs", "1")
    queued = []
    while len(queued) < 1:
        line = first.stdout.readline()
        assert line, first.stderr.read()
        queued += [line.split(":")[0]] if ": queued" in line else []
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    assert first.returncode == 130
    assert queued == ["tune-mlr-000"]

    # a trial asked, then the tuner killed before `dvc exp run --queue`: RUNNING, unknown to DVC
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from mnistlab.space import load_space

    storage = JournalStorage(JournalFileBackend(str(project / "experiments/studies/tune-mlr.journal")))
    study = optuna.load_study(study_name="tune-mlr", storage=storage)
    orphan = study.ask(load_space(project / "tune.yaml", "mlr").distributions)
    orphan.set_user_attr("experiment", "tune-mlr-001")

    started = time.monotonic()
    resumed = tune(project, "--trials", "3", "--jobs", "2")
    kill_when_running(project, "tune-mlr-001", resumed)  # the orphan, queued again by the resumed tuner
    output = finish(resumed)
    print(f"the resumed study took {time.monotonic() - started:.0f} s\n{output}")
    trials = journal_trials(project, "tune-mlr")
    assert [t.number for t in trials] == [0, 1, 2]
    complete, fail = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    assert [t.state for t in trials] == [complete, fail, complete], trials
    assert "tune-mlr-001: failed: see `dvc queue logs tune-mlr-001`" in output
    assert trials[2].datetime_complete > trials[1].datetime_complete  # the search went on past the failure
    assert "study tune-mlr: 3 trials, 2 complete, 0 pruned, 1 failed" in output
    shown = shown_experiments(project)
    for trial in (t for t in trials if t.state == complete):
        experiment = shown[trial_name("tune-mlr", trial.number)]
        assert experiment.state == "success"
        assert float(experiment.params["train_mlr.learning_rate"]) == trial.params["train_mlr.learning_rate"]
        assert experiment.accuracy("val", "mlr") == trial.value  # the objective is what DVC recorded
    rates = [t.params["train_mlr.learning_rate"] for t in trials]
    assert len(set(rates)) == 3  # no duplicate params after the restart
    assert trials[1].params == orphan.params  # queued again with the params it was given

    best = max((t for t in trials if t.state == complete), key=lambda t: (t.value, -t.number))
    name = trial_name("tune-mlr", best.number)
    assert f"best trial (validation accuracy): {name}" in output
    assert f"dvc exp apply {name}" in output and f"dvc exp branch {name} " in output
    failed = [line for line in dvc(project, "queue", "status").stdout.splitlines() if "Failed" in line]
    assert len(failed) == 1 and "tune-mlr-001 " in failed[0], failed  # the trial killed, and only it


def test_each_trial_gets_its_share_of_the_cores() -> None:
    assert [worker_threads(jobs, cores=2) for jobs in (1, 2, 3)] == [2, 1, 1]
    assert worker_threads(2, cores=16) == 8


def test_a_half_written_last_row_is_not_read_until_its_line_ends(tmp_path: Path) -> None:
    """The pruner keeps the first value reported for an epoch: a truncated 0.8 of 0.85 must never reach it."""
    history = tmp_path / "metrics.csv"
    history.write_text("epoch,step,train_accuracy,valid_accuracy\n0,187,0.8,0.85\n1,375,0.9,0.8")
    assert epoch_accuracies(history) == [0.85]
    history.write_text("epoch,step,train_accuracy,valid_accuracy\n0,187,0.8,0.85\n1,375,0.9,0.875\n")
    assert epoch_accuracies(history) == [0.85, 0.875]


# --- the study: its storage, its summary, a stalled trial -----------------------------------------


def memory_study(space: dict | None = None):
    import optuna

    from mnistlab.space import parse_space
    from mnistlab.study import open_study

    storage = optuna.storages.InMemoryStorage()
    parsed = parse_space(space or {"train_mlr": {"learning_rate": {"low": 0.001, "high": 0.1, "log": True}}}, "mlr")
    return open_study("tune-mlr", storage, parsed, "host:/project", shared=False), storage, parsed


def test_the_summary_names_the_best_on_validation_and_survives_a_missing_test_accuracy() -> None:
    from mnistlab.tune import summary

    study, _, space = memory_study()
    for value, test in ((0.91, 0.95), (0.93, None), (0.92, 0.99)):
        trial = study.ask(space.distributions)
        trial.set_user_attr("experiment", trial_name("tune-mlr", trial.number))
        if test is not None:
            trial.set_user_attr("test_accuracy", test)
        study.tell(trial, value)
    text = summary(study, "mlr", list(space.distributions), {0: 1, 1: 1, 2: 1})
    assert "study tune-mlr: 3 trials, 3 complete, 0 pruned, 0 failed" in text
    assert "best trial (validation accuracy): tune-mlr-001" in text  # not tune-mlr-002, the best on test
    assert "validation accuracy 0.9300, test accuracy not recorded" in text


def test_a_trial_without_progress_for_the_stall_timeout_is_killed_and_failed(monkeypatch, capsys) -> None:
    """No new epoch and no new log line for --stall-timeout: DVC's `queue kill` and `queue remove`, a FAIL."""
    import optuna

    from mnistlab import dvc_queue, tune

    study, storage, space = memory_study()
    tuner = tune.Tuner(study, storage, space, jobs=1, root=Path("/nonexistent"), stall_timeout_s=60)
    killed = []
    monkeypatch.setattr(dvc_queue, "kill_and_remove", lambda task, cwd=None: killed.append(task) or "killed")
    clock = [1000.0]
    monkeypatch.setattr(tune.time, "monotonic", lambda: clock[0])
    trial = study.ask(space.distributions)
    tuner.active[0] = tune.Active(trial, tuner.trial_id(0), "tune-mlr-000", dict(trial.params))
    tuner.watch()  # first look: the progress clock starts
    clock[0] += 59
    tuner.watch()
    assert killed == [] and 0 in tuner.active
    clock[0] += 2
    tuner.watch()
    assert killed == ["tune-mlr-000"] and tuner.active == {}
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert (
        "tune-mlr-000: no progress for 60 s (no live process): killed and removed (killed)" in capsys.readouterr().out
    )


def run_tune(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (cwd / "tune.yaml").exists() or (cwd / "tune.yaml").write_text((ROOT / "tune.yaml").read_text())
    command = [sys.executable, "-m", "mnistlab.tune", "--model", "mlr", "--trials", "2", *args]
    return subprocess.run(command, cwd=cwd, env=venv_env() | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (
            "postgresql+nosuchdriver://u@127.0.0.1/db",
            "error: --storage postgresql+nosuchdriver://u@127.0.0.1/db: not a",
        ),
        ("nosuchdb://u:secret@host/db", "error: --storage nosuchdb://u:***@host/db: not a database URL"),
        (
            "postgresql+psycopg://u@127.0.0.1:9/db",
            "error: --storage postgresql+psycopg://u@127.0.0.1:9/db: the database",
        ),
    ],
)
def test_a_bad_storage_is_one_error_line_and_nothing_is_queued(tmp_path: Path, storage: str, message: str) -> None:
    """No DVC project here: a tuner that got as far as queueing would fail with DVC's error instead."""
    started = time.monotonic()
    result = run_tune(tmp_path, "--storage", storage)
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "secret" not in result.stderr
    assert time.monotonic() - started < 60  # a server that does not answer is an error, not a hang


def test_a_study_made_with_another_search_space_is_refused(tmp_path: Path) -> None:
    first = {"train_mlr": {"learning_rate": {"low": 0.001, "high": 0.1, "log": True}}}
    journal = tmp_path / "study.journal"
    import optuna

    from mnistlab.space import parse_space
    from mnistlab.study import open_storage, open_study

    open_study("tune-mlr", open_storage(str(journal), 120), parse_space(first, "mlr"), "h:/p", shared=False)
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump({"train_mlr": {"epochs": {"low": 1, "high": 3}}}))
    result = run_tune(tmp_path, "--storage", str(journal))
    assert result.returncode == 1
    assert result.stderr.startswith("error: study tune-mlr was made with another search space"), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    storage = open_storage(str(journal), 120)
    assert optuna.load_study(study_name="tune-mlr", storage=storage).trials == []  # nothing asked


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_stuck_dvc_task_is_killed_removed_and_failed_and_a_pruned_trial_is_never_complete(copy_trained) -> None:
    """A trial left RUNNING whose DVC task is stuck (listed as active, no executor record, so every
    `dvc exp show` fails; built for real by tests/stuck_task.py), then pruning against DVC: the tuner runs DVC's
    remedy on the stuck task, fails its trial with one line, completes the next trial, and prunes the one after
    (its learning rate 1e-7 trails the completed trial's accuracy at the same epoch): killed in DVC's queue,
    recorded with the epochs it trained, never told a result."""
    import optuna

    from mnistlab.space import load_space
    from mnistlab.study import open_storage, owner_of
    from tests.stuck_task import make_stuck_task

    space = {  # seed 9: the sampler's next two draws are 0.003, then 1e-7 (Optuna 5.0's RandomSampler)
        "seed": 9,
        "pruning": {"startup_trials": 1, "warmup_epochs": 0},
        "train_mlr": {"learning_rate": {"choices": [0.003, 1e-07]}, "epochs": {"choices": [60]}},  # ~12 s of epochs
    }
    project = trained_project(copy_trained, space)
    storage = open_storage(str(project / "experiments/studies/tune-mlr.journal"), 120)
    study = optuna.create_study(study_name="tune-mlr", storage=storage, direction="maximize")
    stuck = study.ask(load_space(project / "tune.yaml", "mlr").distributions)
    stuck.set_user_attr("queue", owner_of(project))
    stuck.set_user_attr("experiment", "tune-mlr-000")
    task = make_stuck_task(project, "tune-mlr-000", *(set_option(k, v) for k, v in stuck.params.items()))
    assert dvc(project, "exp", "show", "--json", check=False).returncode != 0  # the state users met

    output = finish(tune(project, "--trials", "3", "--jobs", "1"))
    print(output)
    assert (
        f"tune-mlr-000: stuck in DVC's queue (task {task[:7]} active, no executor record): dvc queue kill, "
        "dvc queue remove: " in output
    )
    assert "tune-mlr-000: failed: stuck in DVC's queue" in output
    trials = journal_trials(project, "tune-mlr")
    states = optuna.trial.TrialState
    assert [t.state for t in trials] == [states.FAIL, states.COMPLETE, states.PRUNED], trials
    assert [t.params["train_mlr.learning_rate"] for t in trials[1:]] == [0.003, 1e-07]
    pruned = trials[2]
    assert 1 <= len(pruned.intermediate_values) < 60  # stopped while it trained
    last_epoch = pruned.intermediate_values[max(pruned.intermediate_values)]
    assert pruned.value == last_epoch  # Optuna's value for a pruned trial: its last epoch, not a told result
    epochs = len(pruned.intermediate_values)
    assert f"tune-mlr-002: pruned after {epochs} epochs" in output
    assert "tune-mlr-002: validation accuracy" not in output
    assert max(pruned.intermediate_values.values()) < trials[1].intermediate_values[1]  # why it was pruned
    assert "study tune-mlr: 3 trials, 1 complete, 1 pruned, 1 failed" in output
    assert f"pruning: 1 trials stopped after {epochs} of their 60 epochs" in output
    shown = shown_experiments(project)  # DVC works again, and has no result for the pruned trial
    assert shown["tune-mlr-001"].state == "success"
    assert "tune-mlr-002" not in shown or shown["tune-mlr-002"].state == "failed"
    assert "tune-mlr-000" not in shown
    assert "best trial (validation accuracy): tune-mlr-001" in output


def test_a_dvc_command_that_never_ends_is_killed_and_is_an_error(tmp_path: Path, monkeypatch) -> None:
    """A `dvc exp show` was seen waiting on a lock for ever: the tuner's DVC commands end by a timeout, as a failure
    its loop tries again."""
    from mnistlab import dvc_queue, experiments
    from mnistlab.errors import PipelineError

    hang = tmp_path / "python"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(0o755)
    monkeypatch.setattr(dvc_queue.sys, "executable", str(hang))
    started = time.monotonic()
    with pytest.raises(dvc_queue.DvcError, match=r"dvc queue status \.\.\. did not end in 1 s: killed"):
        dvc_queue.dvc("queue", "status", timeout_s=1)
    monkeypatch.setattr(experiments, "TIMEOUT_S", 1)
    with pytest.raises(PipelineError, match="dvc exp show failed: did not end in 1 s: killed"):
        experiments.show(attempts=1)
    assert time.monotonic() - started < 10
