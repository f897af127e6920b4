"""Where a study lives: Optuna's storage, opened from ``--storage``, and the study in it.

- A path: Optuna's journal file (the default, ``experiments/studies/<study>.journal``): one machine,
  no server. Its locks are files, which Optuna's own docs say may not work on NFS: not for sharing.
- A URL: Optuna's RDBStorage on a database (PostgreSQL: ``postgresql+psycopg://user@host/db``), which
  several machines share. Heartbeats are on: each tuner beats for its running trials from a thread,
  four times per grace period (at most every ``HEARTBEAT_S``), and a trial whose machine stopped
  beating for the grace period is failed by whichever tuner looks next
  (``optuna.storages.fail_stale_trials``).

A bad URL, a server that does not answer, and a study made with another search space are each one
``StudyError`` line, before anything is queued.
"""

import re
import socket
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

from mnistlab.errors import PipelineError
from mnistlab.space import Space, describe

HEARTBEAT_S = 10  # a database study: the longest interval between two heartbeats of a running trial
TABLE_RACE_TRIES = 4  # opening an empty database that other machines are opening too
CONNECT_TIMEOUT_S = 10  # a PostgreSQL server that does not answer: an error after this, not a hang


def owner_of(root: Path) -> str:
    """Whose DVC queue runs a trial: this host's project folder."""
    return f"{socket.gethostname()}:{root}"


class StudyError(PipelineError):
    """The study's storage cannot be opened, or holds a study made with another search space."""


class Heartbeat(threading.Thread):
    """Beats for the tuner's running trials every ``interval_s``, whatever its main loop is waiting for."""

    def __init__(self, tuner: Any, interval_s: float) -> None:
        super().__init__(name="optuna-heartbeat", daemon=True)
        self.tuner, self.interval_s, self.stopped = tuner, interval_s, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.tuner.beat()
            except Exception as error:  # a lost connection: the next beat tries again
                print(f"heartbeat: {type(error).__name__}: {error}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self.stopped.set()


def is_url(storage: str) -> bool:
    return "://" in storage


def heartbeat_interval(grace_period_s: float) -> int:
    """Seconds between two heartbeats: four per grace period, so that one late beat fails nothing."""
    return max(1, min(HEARTBEAT_S, int(grace_period_s // 4)))


def open_storage(storage: str, grace_period_s: float) -> Any:
    """A journal file (a path), or Optuna's RDBStorage (a SQLAlchemy URL) with heartbeats on."""
    import optuna

    if not is_url(storage):
        from optuna.storages.journal import JournalFileBackend

        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(storage))
    import sqlalchemy.exc

    options = {"pool_pre_ping": True}
    if storage.startswith("postgresql"):
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}

    def failed(study: Any, trial: Any) -> None:
        print(
            f"{trial.user_attrs.get('experiment', trial.number)}: failed: no heartbeat from "
            f"{trial.user_attrs.get('queue', 'its machine')} for {grace_period_s:.0f} s",
            flush=True,
        )

    for attempt in range(TABLE_RACE_TRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeats are experimental in Optuna's API
                return optuna.storages.RDBStorage(
                    storage,
                    engine_kwargs=options,
                    heartbeat_interval=heartbeat_interval(grace_period_s),
                    grace_period=int(grace_period_s),
                    failed_trial_callback=failed,
                )
        except (sqlalchemy.exc.ArgumentError, ImportError, ValueError) as error:
            raise StudyError(
                f"--storage {redacted(storage)}: not a database URL SQLAlchemy can use ({error})"
            ) from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as error:
            # machines that start together on an empty database create Optuna's tables at once: one wins, the
            # others fail on its tables; opened again, they find them
            if attempt == TABLE_RACE_TRIES - 1:
                raise StudyError(f"--storage {redacted(storage)}: Optuna's tables: {_reason(error)}") from None
            time.sleep(1 + attempt)
        except sqlalchemy.exc.SQLAlchemyError as error:
            raise StudyError(f"--storage {redacted(storage)}: the database did not answer: {_reason(error)}") from None
    raise AssertionError("unreachable")


def _reason(error: Exception) -> str:
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


def redacted(url: str) -> str:
    """The URL without its password, for an error line."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_study(name: str, storage: Any, space: Space, owner: str, shared: bool) -> Any:
    """The study, created or continued; refused if it was made with another search space. The sampler is seeded
    past the trials it has, and apart for each machine of a shared study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=space.pruning.startup_trials, n_warmup_steps=space.pruning.warmup_epochs
        )
        if space.pruning
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", pruner=pruner, load_if_exists=True
    )
    searched = describe(space)
    made_with = study.user_attrs.get("space")
    if made_with is None:
        study.set_user_attr("space", searched)
    elif made_with != searched:
        raise StudyError(
            f"study {name} was made with another search space than {space.model}'s in the space file: "
            f"keep that space, or start a new study (--study {name}-2)"
        )
    # a restarted sampler with the same seed would propose the first trials' params again; machines that
    # start together on one database would propose the same ones
    seed = space.seed + len(study.trials) + (zlib.crc32(owner.encode()) if shared else 0)
    study.sampler = optuna.samplers.TPESampler(seed=seed % 2**32, constant_liar=shared)
    return study
