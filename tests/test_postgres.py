"""Studies on PostgreSQL (Optuna's RDBStorage), against a real server: tests/conftest.py's ``postgres_url``, a
throwaway cluster started for the session. A trial whose heartbeat stops is failed after the grace period, by any
process; a server that is not there fails at once, one that does not answer within connect_timeout. And CI, which
installs PostgreSQL, fails where a machine without it skips."""

import socket
import threading
import time
from collections.abc import Iterator

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import TrialState

from tests import conftest

# Heartbeats are experimental in Optuna 5 and meant for Study.optimize: each use warns.
pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]

HEARTBEAT_S, GRACE_S = 1, 2  # seconds: RDBStorage takes whole seconds


def storage(url: str) -> RDBStorage:
    """The storage as a tuning process opens it: heartbeats on, trials silent for the grace period fail."""
    return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)


def state(study: optuna.Study, trial: optuna.Trial) -> TrialState:
    """The trial's state in the database, as ``study`` reads it now."""
    return study.get_trials(deepcopy=False)[trial.number].state


@pytest.fixture
def beating(postgres_url: str) -> Iterator[list[optuna.Trial]]:
    """The trials appended here get a heartbeat each second, as from a live worker, until the test ends."""
    trials: list[optuna.Trial] = []
    heart, stop = storage(postgres_url), threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            for trial in list(trials):
                heart.record_heartbeat(trial._trial_id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    yield trials
    stop.set()
    thread.join()


@pytest.mark.slow  # the grace period: seconds
def test_a_trial_whose_heartbeat_stopped_fails_after_the_grace_period(
    postgres_url: str, beating: list[optuna.Trial]
) -> None:
    tuner = storage(postgres_url)
    study = optuna.create_study(study_name="heartbeats", storage=tuner, direction="maximize")
    stopped, alive, silent, finished = (study.ask() for _ in range(4))
    tuner.record_heartbeat(stopped._trial_id)  # one beat, then its worker dies
    tuner.record_heartbeat(alive._trial_id)
    beating.append(alive)
    study.tell(finished, 0.5)

    # Another process (another machine's tuner) fails what went silent, once the grace period is over.
    watcher = optuna.load_study(study_name="heartbeats", storage=storage(postgres_url))
    fail_stale_trials(watcher)
    assert state(watcher, stopped) == TrialState.RUNNING, "within the grace period"
    deadline = time.monotonic() + 10 * GRACE_S
    while state(watcher, stopped) == TrialState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.25)
        fail_stale_trials(watcher)
    assert state(watcher, stopped) == TrialState.FAIL
    assert state(watcher, alive) == TrialState.RUNNING, "its heartbeat goes on"
    assert state(watcher, finished) == TrialState.COMPLETE
    # Optuna fails only a trial that had a heartbeat: one never recorded (ask() records none) stays RUNNING.
    assert state(watcher, silent) == TrialState.RUNNING


@pytest.mark.slow  # the cluster's start
def test_a_database_that_does_not_exist_fails_at_once(postgres_url: str) -> None:
    missing = postgres_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(sqlalchemy.exc.OperationalError, match='database "no_such_database" does not exist'):
        storage(missing)


def test_a_server_that_is_not_there_fails_at_once() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{conftest.free_port()}/optuna"
    with pytest.raises(sqlalchemy.exc.OperationalError, match="Connection refused"):
        storage(url)


@pytest.mark.slow  # connect_timeout: 2 s here, libpq's and psycopg's least
@pytest.mark.timeout(60)  # without connect_timeout psycopg waits 130 s
def test_a_server_that_does_not_answer_is_one_error_after_the_connect_timeout(monkeypatch) -> None:
    """`make tune --storage URL` gives up on a hung server after mnistlab.study.CONNECT_TIMEOUT_S (10 s; 2 here),
    with one StudyError: no URL option needed."""
    from mnistlab import study

    assert study.CONNECT_TIMEOUT_S == 10  # what docs/scaling.md says
    monkeypatch.setattr(study, "CONNECT_TIMEOUT_S", 2)
    with socket.socket() as listener:  # accepts connections, never answers: a hung server or network
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"postgresql+psycopg://postgres:secret@127.0.0.1:{listener.getsockname()[1]}/optuna"
        started = time.monotonic()
        with pytest.raises(
            study.StudyError, match=r"postgres:\*\*\*@127\.0\.0\.1:\d+/optuna: the database did not answer"
        ):
            study.open_storage(url, 120)
        assert 2 <= time.monotonic() - started < 30


@pytest.mark.parametrize(("ci", "outcome"), [(None, pytest.skip.Exception), ("true", pytest.fail.Exception)])
def test_without_postgresql_a_test_skips_but_fails_in_ci(ci: str | None, outcome: type, monkeypatch) -> None:
    monkeypatch.setattr(conftest, "postgres_binaries", lambda: None)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="PostgreSQL is not installed"), conftest.throwaway_postgres():
        pass


@pytest.mark.slow  # a new database and three processes
def test_machines_that_open_an_empty_database_at_once_all_get_the_study(postgres_url: str, tmp_path) -> None:
    """The first open of a database creates Optuna's tables; machines starting together race to create them
    (PostgreSQL: duplicate key on pg_type). mnistlab.study opens it again, and each machine gets the study."""
    import subprocess
    import sys

    from mnistlab.workspace import venv_env

    engine = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("CREATE DATABASE race"))
    engine.dispose()
    url = postgres_url.rsplit("/", 1)[0] + "/race"
    go = tmp_path / "go"  # each process imports first, then all open the database at once
    script = (
        "import os, sys, time; from mnistlab.space import parse_space; "
        "from mnistlab.study import open_storage, open_study; "
        "space = parse_space({'train_mlr': {'epochs': {'low': 1, 'high': 3}}}, 'mlr'); "
        f"open({str(tmp_path)!r} + '/ready-' + sys.argv[1][:2], 'w').close(); "
        f"[time.sleep(0.01) for _ in iter(lambda: os.path.exists({str(go)!r}), True)]; "
        f"open_study('tune-mlr', open_storage({url!r}, 8), space, sys.argv[1], shared=True); print('opened')"
    )
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"h{n}:/p"],
            env=venv_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 4:  # their imports done
        assert time.monotonic() < deadline and all(process.poll() is None for process in starts)
        time.sleep(0.05)
    go.touch()
    results = [process.communicate(timeout=120) for process in starts]
    assert [process.returncode for process in starts] == [0] * 4, results
    assert [out for out, _ in results] == ["opened\n"] * 4
    assert len(optuna.get_all_study_names(url)) == 1
