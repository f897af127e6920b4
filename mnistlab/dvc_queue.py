"""The adapter to DVC's experiment queue: the only module of the project that knows DVC's internal files.

`make tune` runs each trial with DVC's own commands (``dvc exp run --queue``, ``dvc queue start``,
``dvc queue status``, ``dvc queue kill``, ``dvc queue remove``). To watch its trials without a DVC
process every few seconds (each costs about 2 s of CPU, taken from the trials), it also reads the
files DVC's queue keeps under ``.dvc/tmp/exps/``. Their layouts are not a DVC API; each was read from
DVC's code at version ``READ_FROM``, and :func:`check_layout` says, naming the file, when an upgrade
of DVC no longer writes what is read here (a test runs it on a real queued experiment):

======================================  ==============================================================
``run/<task>/<task>.run``               the executor's record, JSON: ``name``, ``root_dir`` (the task's
                                        temporary copy), ``status`` (a ``TaskStatus``);
                                        ``dvc/repo/experiments/executor/base.py``, ``ExecutorInfo``
``run/<task>/<task>.out``               the task's log, the output of ``dvc exp exec-run``: lines
                                        ``Running stage '<stage>':``; ``dvc_task/proc/process.py``
``run/<task>/<task>.json``              the task's process, JSON: ``pid``, ``returncode`` (None while
                                        it runs); ``dvc_task/proc/process.py``, ``ProcessInfo``
``celery/broker/in/*.msg``              a queued task's message, kombu's JSON: ``headers.task`` (DVC's
                                        ``run_exp``), ``headers.id`` (celery's id), ``body`` (base64 of
                                        ``[args, kwargs, embed]``, whose entry has ``stash_rev`` and
                                        ``name``); ``kombu/transport/filesystem.py``, DVC's
                                        ``LocalCeleryQueue.put`` (``queue/celery.py``)
``celery/broker/processed/*.msg``       the same, once a worker took it
``celery/result/celery-task-meta-<id>`` a task's result, JSON: ``status``; none while it runs;
                                        ``celery/backends/filesystem.py``
``celery/dvc-exp-worker-<n>.json``      a queue worker's process, as ``<task>.json``; an idle worker
                                        stops at its next 10 s look at an empty queue
                                        (``dvc_task/worker/temporary.py``, ``monitor``)
======================================  ==============================================================

``<task>`` is DVC's task id: the 40 hex digits of the experiment's stash entry, whose first 7 are
the ``Task`` column of ``dvc queue status``.

A **stuck task** is one DVC lists as active (its message in ``broker/processed/``, no ready result)
with no executor record: a queue worker took its message and stopped before it wrote the record
(``dvc queue kill`` interrupts the trial's process group, and the worker shares it). No worker will
ever run it, and every ``dvc exp show`` fails on it (``LocalCeleryQueue.collect_active_data`` loads
the record unguarded) until DVC's remedy (treeverse/dvc#8461): ``dvc queue kill`` marks it failed,
``dvc queue remove`` drops its stash entry, and a second ``dvc queue remove`` its message.
"""

import base64
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mnistlab.errors import PipelineError
from mnistlab.workspace import venv_env

READ_FROM = "3.67.1"  # the DVC version whose code the layouts above were read from
TIMEOUT_S = 300.0  # the longest a DVC command of the tuner may take (`dvc exp show` takes seconds)
EXPS_DIR = Path(".dvc/tmp/exps")
RUN_DIR = EXPS_DIR / "run"
# ``TaskStatus`` (dvc/repo/experiments/executor/base.py) by name, so that a renumbering fails check_layout
STATUS_NAMES = ("PENDING", "PREPARING", "RUNNING", "SUCCESS", "FAILED", "CANCELED", "FINISHED")
ENDED_NAMES = ("FAILED", "CANCELED", "FINISHED")  # FINISHED: the experiment collected and its copy cleaned up
RECORD_KEYS = ("name", "root_dir", "status")  # of <task>.run
PROCESS_KEYS = ("pid", "returncode")  # of <task>.json
RUN_EXP = "dvc.repo.experiments.queue.tasks.run_exp"  # the celery task of a queued experiment (queue/tasks.py)
READY = ("SUCCESS", "FAILURE", "REVOKED")  # celery.states.READY_STATES: the result of an ended task


class LayoutError(PipelineError):
    """One of DVC's queue files is not as ``READ_FROM`` wrote it."""


def task_status() -> dict[str, int]:
    """DVC's ``TaskStatus``, name -> value, from the installed DVC."""
    from dvc.repo.experiments.executor.base import TaskStatus

    return {status.name: int(status) for status in TaskStatus}


def running_status() -> int:
    return task_status()["RUNNING"]


def ended_statuses() -> tuple[int, ...]:
    statuses = task_status()
    return tuple(statuses[name] for name in ENDED_NAMES)


def executor_records(root: Path) -> dict[Path, dict | None]:
    """Each task's executor record (``run/<task>/<task>.run``) by file, in name order; None for one being written."""
    records: dict[Path, dict | None] = {}
    for info_file in sorted((root / RUN_DIR).glob("*/*.run")):
        try:
            records[info_file] = json.loads(info_file.read_text())
        except (OSError, ValueError):
            records[info_file] = None
    return records


@dataclass(frozen=True)
class Task:
    """What DVC's files say of one queued or running experiment."""

    task: str  # DVC's task id
    name: str  # the experiment's name
    root_dir: Path  # its temporary copy of the repository
    log: Path  # its task log (<task>.out)
    started: list[str]  # the stages its log says were started, in order
    pid: int | None  # its `dvc exp exec-run` process, while that runs


def tasks(root: Path) -> dict[str, Task]:
    """Experiment name -> what DVC's files say of its task, for every task with a complete executor record."""
    found = {}
    for info_file, info in executor_records(root).items():
        if not info or not info.get("name") or not info.get("root_dir"):
            continue
        log = info_file.with_suffix(".out")
        try:
            text = log.read_text(errors="replace")
        except OSError:
            text = ""  # being written
        try:
            process = json.loads(info_file.with_suffix(".json").read_text())
        except (OSError, ValueError):
            process = {}
        pid = process.get("pid") if process.get("returncode") is None else None
        stages = re.findall(r"Running stage '([^']+)'", text)
        found[info["name"]] = Task(info_file.parent.name, info["name"], Path(info["root_dir"]), log, stages, pid)
    return found


def alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_workers(root: Path) -> int:
    """DVC's queue workers alive in ``root`` (``celery/dvc-exp-worker-<n>.json``: no returncode, the process there)."""
    count = 0
    for record in (root / EXPS_DIR / "celery").glob("dvc-exp-worker-*.json"):
        try:
            process = json.loads(record.read_text())
        except (OSError, ValueError):
            count += 1  # being written: a worker starting
            continue
        count += process.get("returncode") is None and alive(process.get("pid"))
    return count


def running_tasks(root: Path) -> int:
    """The queue's tasks whose `dvc exp exec-run` process is alive."""
    return sum(alive(task.pid) for task in tasks(root).values())


def log_size(task: Task) -> int:
    try:
        return task.log.stat().st_size
    except OSError:
        return 0


def queue_fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes whenever DVC's queue does: its executors' records (a task's status), the broker's queued
    messages, the tasks' results and the workers' records. Listing them costs microseconds; `dvc queue status`
    costs a process and about 2 s of CPU, taken from the trials it watches."""
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


def check_layout(root: Path) -> list[Path]:
    """Check every queue file this module reads against ``READ_FROM``'s layout; the files checked. A file that
    differs is a LayoutError naming it and what was expected."""
    statuses = task_status()
    if tuple(statuses) != STATUS_NAMES or list(statuses.values()) != list(range(len(STATUS_NAMES))):
        raise LayoutError(f"DVC's TaskStatus is {statuses}; read from DVC {READ_FROM}: {STATUS_NAMES} from 0")
    checked = []
    for info_file, info in executor_records(root).items():
        missing = [key for key in RECORD_KEYS if not isinstance(info, dict) or key not in info]
        if missing or info["status"] not in statuses.values():
            raise LayoutError(f"{info_file}: expected JSON with {RECORD_KEYS} (DVC {READ_FROM}), got {info!r}")
        process_file = info_file.with_suffix(".json")
        process = json.loads(process_file.read_text()) if process_file.is_file() else None
        if process is not None and any(key not in process for key in PROCESS_KEYS):
            raise LayoutError(f"{process_file}: expected JSON with {PROCESS_KEYS} (DVC {READ_FROM}), got {process!r}")
        log = info_file.with_suffix(".out")
        if info["status"] >= statuses["RUNNING"] and "Running stage '" not in log.read_text(errors="replace"):
            raise LayoutError(f"{log}: expected lines \"Running stage '<stage>':\" (DVC {READ_FROM})")
        checked += [info_file, log] + ([process_file] if process is not None else [])
    return checked


def queue_states(status_output: str) -> dict[str, str]:
    """Experiment name -> Queued, Running, Success or Failed, from `dvc queue status`'s table."""
    states = {}
    for line in status_output.splitlines():
        words = line.split()
        if len(words) >= 4 and re.fullmatch(r"[0-9a-f]{7}", words[0]):
            states[words[1]] = words[-1]
    return states


def dvc(
    *args: str, check: bool = True, cwd: Path | None = None, timeout_s: float | None = TIMEOUT_S
) -> subprocess.CompletedProcess:
    """A DVC command in the project; a failure is a DvcError with DVC's own message. One that has not ended after
    ``timeout_s`` is killed and is a DvcError too: a DVC process has been seen to wait on a lock for ever."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "dvc", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=venv_env(),
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise DvcError(f"dvc {' '.join(args[:3])} ... did not end in {timeout_s:.0f} s: killed") from None
    if check and result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip()).splitlines() or ["(no output)"]
        raise DvcError(f"dvc {' '.join(args[:3])} ... failed: {message[-1]}", result.stderr)
    return result


class DvcError(PipelineError):
    """A DVC command failed; ``stderr`` is what it printed."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


@dataclass(frozen=True)
class Message:
    """A ``run_exp`` message of DVC's queue: one queued experiment."""

    celery_id: str
    task: str  # DVC's task id (the stash entry)
    name: str | None  # the experiment's name


def messages(root: Path, folder: str) -> list[Message]:
    """The ``run_exp`` messages in ``celery/broker/<folder>/`` (``in``: queued, ``processed``: taken by a worker),
    oldest first; celery's own control messages left out. DVC reads the entry as ``kwargs.get("entry_dict",
    args[0])`` (``LocalCeleryQueue._iter_processed``)."""
    found = []
    for path in sorted((root / EXPS_DIR / "celery" / "broker" / folder).glob("*.msg")):
        if "pidbox" in path.name:
            continue  # celery's control messages (each `dvc queue status` leaves some): not read
        try:
            message = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # taken or purged in between
        headers = message.get("headers") or {}
        if headers.get("task") != RUN_EXP:
            continue
        body = message.get("body")
        try:
            if (message.get("properties") or {}).get("body_encoding") == "base64":
                body = base64.b64decode(body).decode("utf-8")
            args, kwargs, _embed = json.loads(body)
            entry = kwargs.get("entry_dict", args[0] if args else {})
            found.append(Message(headers["id"], entry["stash_rev"], entry.get("name")))
        except (TypeError, ValueError, KeyError) as error:
            raise LayoutError(f"{path}: a run_exp message not as DVC {READ_FROM} wrote it ({error!r})") from None
    return found


def result_status(root: Path, celery_id: str) -> str | None:
    """The status of a task's celery result (``SUCCESS``, ``FAILURE``, ...), None while it has none."""
    try:
        return json.loads((root / EXPS_DIR / "celery" / "result" / f"celery-task-meta-{celery_id}").read_text())[
            "status"
        ]
    except (OSError, ValueError, KeyError):
        return None


def stuck_tasks(root: Path) -> list[Message]:
    """The tasks DVC lists as active that have no executor record (see the module's docstring).

    A task a live worker is still setting up looks the same for a second or two: act on one only after a DVC
    command failed on it for longer (:func:`mnistlab.experiments.show` tries for half a minute), and DVC's
    ``queue kill`` refuses a task still initializing.
    """
    return [
        message
        for message in messages(root, "processed")
        if result_status(root, message.celery_id) not in READY
        and not (root / RUN_DIR / message.task / f"{message.task}.run").exists()
    ]


def kill_and_remove(task: str, cwd: Path | None = None) -> str | None:
    """DVC's remedy for a stuck or stalled task (treeverse/dvc#8461), given its name or task id: `dvc queue kill`
    marks it failed, `dvc queue remove` drops it (twice where its stash entry was never dropped). What DVC
    said, in one line; None where DVC refused the kill because a live worker still has the task (it is being
    set up: not stuck), and nothing was removed. Killing a trial stops its queue worker too: start the
    workers again after it."""
    root = cwd or Path.cwd()
    killed = dvc("queue", "kill", task, check=False, cwd=cwd)
    if killed.returncode != 0:
        return None
    said = [killed]
    for _ in range(2):
        said.append(dvc("queue", "remove", task, check=False, cwd=cwd))
        if not any(task in (message.task, message.name) for message in messages(root, "processed")):
            break
    lines = [line.strip() for result in said for line in (result.stdout + result.stderr).splitlines()]
    return "; ".join(dict.fromkeys(line for line in lines if line)) or "done"


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
