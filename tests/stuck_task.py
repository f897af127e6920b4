"""Build, for real, the stuck DVC queue task that ``make tune`` once met, and find such tasks (a helper for tests).

The state (DVC 3.67.1): a ``run_exp`` message in ``.dvc/tmp/exps/celery/broker/processed/`` (a worker took it),
no ready result for it in ``celery/result/``, so DVC lists it as active (``dvc queue status``: ``Running``), and
no executor record ``run/<task>/<task>.run`` (no ``run/<task>/`` at all). No worker runs it, and none ever will:
kombu moved the message out of ``broker/in/`` when the worker took it, and DVC turns off the restore of unacked
messages at shutdown (``LocalCeleryQueue.celery``, celery.py:74). From then on every ``dvc exp show`` fails:
``LocalCeleryQueue.collect_active_data`` (celery.py:515) loads the record with no guard, so the command ends
"ERROR: unexpected error - [Errno 2] No such file or directory: '.../run/<task>/<task>.run'" (exit 255).
``dvc queue status`` still works (``BaseStashQueue.status`` never reads the record for an active task).

How users get there: ``dvc queue kill`` interrupts the trial's *process group* (``ProcessManager.interrupt``,
``group=True``), and ``dvc exp exec-run`` shares its group with the queue worker (dvc_task's ``_DaemonProcess``
calls ``setpgid(0, 0)``; the task's process is started without a new session). The worker so gets the SIGINT
too and does a warm shutdown: it may still take the next queued trial's message and then exit without running
it. The stuck task is then the trial queued *after* the killed one, its stash entry still in
``refs/exps/celery/stash`` (4 times in 5 here: queue A, B[, C], ``dvc queue start -j 1``, kill A while it runs).
Stuck or not, the killed trial's worker shuts down (at most one trial later): what is queued then waits for
the next ``dvc queue start``.
That race is not deterministic, so :func:`make_stuck_task` builds the same files
another way: DVC's own queue worker (``dvc exp queue-worker``, with DVC's name for worker 1) takes the task's
message, and dies (SIGKILL) where the task's setup would begin (``BaseStashQueue.init_executor``), before it
drops the stash entry or writes anything under ``run/``.

DVC's remedy (treeverse/dvc#8461, #8580) works in that state, given the task id (the 40 hex digits, or the first
7 as ``dvc queue status`` shows) or the experiment name, *not* the celery task id (a UUID): ``dvc queue kill``
(prints nothing, exit 0: it finds no process and marks the task failed), then ``dvc queue remove`` *twice*: the
first only drops the stash entry (it prints "Removed tasks in queue: <x>" but the task stays listed as Failed),
the second purges the message and the result; a third fails ("'<x>' is not a valid experiment name", exit 255).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from mnistlab.dvc_queue import kill_and_remove, messages, stuck_tasks
from mnistlab.workspace import venv_env

EXPS = Path(".dvc/tmp/exps")

# DVC's own queue worker, as `dvc queue start` spawns worker 1 (LocalCeleryQueue._spawn_worker, celery.py:120-144),
# but stopping where its task's setup begins: after kombu moved the message to broker/processed/, before
# BaseStashQueue.init_executor drops the stash entry and TempDirExecutor.init_git writes run/<task>/<task>.run.
# There it dies (SIGKILL: the task is stuck), or, given "hold", waits (a live worker setting the task up).
CRASHING_WORKER = """
import hashlib, os, signal, sys, time
from dvc.cli import main
from dvc.repo import Repo
from dvc.repo.experiments.queue.base import BaseStashQueue

def die(*args, **kwargs):
    if sys.argv[1:] == ["hold"]:
        time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)

BaseStashQueue.init_executor = classmethod(die)
with Repo() as repo:
    wdir = repo.experiments.celery_queue.wdir
node = f"dvc-exp-{hashlib.sha256(wdir.encode('utf-8')).hexdigest()[:6]}-1@localhost"
sys.exit(main(["exp", "queue-worker", node]))
"""


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m dvc ARGS`` in ``project``, with this interpreter's bin folder first on PATH."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, env=venv_env(), capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def queue_one(project: Path, name: str, *set_params: str) -> str:
    """``dvc exp run --queue -n NAME -S P ...`` (``set_params``: ``key=value`` strings) in a project with nothing
    else queued (a worker takes the oldest message: kombu's file names sort by time); its task id."""
    if messages(project, "in"):
        raise ValueError(f"{project}: other experiments are queued; the worker would take the oldest")
    options = [part for param in set_params for part in ("-S", param)]
    dvc(project, "exp", "run", "--queue", "-n", name, *options)
    queued, *_ = messages(project, "in")
    assert queued.name == name, (queued, name)
    return queued.task


def make_stuck_task(project: Path, name: str, *set_params: str, timeout_s: float = 120) -> str:
    """Queue experiment ``name`` in ``project`` (a git repository with DVC and a pipeline) and leave it stuck: listed
    by DVC as running, with no executor record. Returns its DVC task id (the stash entry's 40 hex digits, the
    folder name under ``run/``). Nothing else may be queued or running in the project (``dvc exp queue-worker``
    does nothing while DVC's worker 1 answers a ping)."""
    task = queue_one(project, name, *set_params)
    worker = subprocess.run(
        [sys.executable, "-c", CRASHING_WORKER],
        cwd=project,
        env=venv_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if worker.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the worker exited {worker.returncode}, not killed at the task's setup:\n{worker.stderr}")
    if (task, name) not in [(m.task, m.name) for m in stuck_tasks(project)]:
        raise RuntimeError(f"{name} ({task}) is not stuck: {stuck_tasks(project)}")
    return task


def hold_task(project: Path, name: str, *set_params: str, timeout_s: float = 120) -> tuple[str, subprocess.Popen]:
    """Queue experiment ``name`` and have a live worker take it and stop in its setup: from DVC's files alone it
    looks stuck (active, no executor record), but a worker has it. The task id and that worker (kill it to make
    the task stuck for real)."""
    import time

    task = queue_one(project, name, *set_params)
    worker = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WORKER, "hold"],
        cwd=project,
        env=venv_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_s
    while task not in [m.task for m in stuck_tasks(project)]:
        if time.monotonic() > deadline or worker.poll() is not None:
            worker.kill()
            raise RuntimeError(f"no worker took {name} ({task}): {worker.returncode}")
        time.sleep(0.2)
    return task, worker


def missing_record(project: Path) -> str | None:
    """The path ``dvc exp show --json`` names when it fails for a missing executor record; None if it works."""
    shown = dvc(project, "exp", "show", "--json", check=False)
    if shown.returncode == 0:
        return None
    marker = "No such file or directory: '"
    if marker not in shown.stderr:
        raise RuntimeError(f"dvc exp show failed otherwise ({shown.returncode}):\n{shown.stderr}")
    return shown.stderr.split(marker, 1)[1].split("'", 1)[0]


def tiny_project(folder: Path, sleep_s: float = 2) -> Path:
    """A git repository with DVC and a one-stage pipeline of param ``p`` (no torch): seconds per experiment."""
    project = folder / "project"
    project.mkdir(parents=True)
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"]):
        subprocess.run(command, cwd=project, check=True)
    dvc(project, "init", "-q")
    (project / "params.yaml").write_text("p: 0\n")
    write = "open('out.txt', 'w').write(str(yaml.safe_load(open('params.yaml'))))"
    stage = f"import time, yaml; print('sleeping'); time.sleep({sleep_s}); {write}"
    (project / "dvc.yaml").write_text(
        f'stages:\n  s:\n    cmd: python -c "{stage}"\n    params: [p]\n    outs: [out.txt]\n'
    )
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=project, check=True)
    return project


def demo(folder: Path) -> None:
    """Build the state in a throwaway DVC project in ``folder``, show what DVC does with it, unstick it, and run
    a new experiment through the queue."""
    import time

    project = tiny_project(folder)
    task = make_stuck_task(project, "stuck", "p=1")
    print("stuck task:", task, stuck_tasks(project))
    print("dvc queue status:\n" + dvc(project, "queue", "status").stdout)
    print("dvc exp show --json fails on:", missing_record(project))
    print("dvc queue kill, dvc queue remove:", kill_and_remove(task, cwd=project))
    print("after: stuck", stuck_tasks(project), "| exp show fails on:", missing_record(project))
    dvc(project, "exp", "run", "--queue", "-n", "after", "-S", "p=2")
    # the workers outlive `dvc queue start` and inherit its output: give it none of ours to wait on
    subprocess.run(
        [sys.executable, "-m", "dvc", "queue", "start", "-j", "1"],
        cwd=project,
        env=venv_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    for _ in range(120):
        status = dvc(project, "queue", "status").stdout
        if "Success" in status or "Failed" in status:
            break
        time.sleep(2)
    print("a new experiment afterwards:\n" + status)
    worker = json.loads((project / EXPS / "celery" / "dvc-exp-worker-1.json").read_text())["pid"]
    for _ in range(60):  # it stops 10 s after the queue is empty: let it, before its folder goes
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(1)


if __name__ == "__main__":  # python -m tests.stuck_task [FOLDER] (a new folder; default a temporary one)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        demo(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp))
