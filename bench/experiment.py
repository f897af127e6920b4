"""3. One experiment: `dvc exp run -S train_mlr.epochs=1` from a reproduced baseline (`dvc repro`, committed).

In a throwaway copy, each time from the baseline: the command with DVC's run-cache emptied, so that its three
stages really run, and DVC's own share (the wall time less the stage processes, which bench/stage_clock/ times
from inside); the same with the run-cache kept; and queued (`dvc exp run --queue`, `dvc queue start`).
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import median, seconds, stage_env, table
from bench.pipeline import use_local_mnist
from bench.stage_clock.sitecustomize import FOLDER_VARIABLE
from mnistlab.workspace import copy_project

SETTING = "train_mlr.epochs=1"
EXPERIMENT_STAGES = ("train_mlr", "evaluate", "plot")  # what a change of train_mlr's params reruns
STAGE_CLOCK = Path(__file__).resolve().parent / "stage_clock"


def process_times(records: list[dict]) -> dict[str, dict]:
    """Each stage process's seconds, from the stage clock's records, in the order the stages ran."""
    ordered = sorted(records, key=lambda record: record["start"])
    return {record["stage"]: {"process_s": record["end"] - record["start"]} for record in ordered}


def dvc_own_seconds(wall: float, processes: dict[str, dict]) -> float:
    """What DVC adds to a run: its wall time less the stage processes' (they run one after the other)."""
    return wall - sum(process["process_s"] for process in processes.values())


class Project:
    """A throwaway project with a committed, reproduced baseline; runs DVC in it with the stage clock."""

    def __init__(self, folder: Path, raw_dir: Path, accelerator: str, epochs: int | None) -> None:
        self.path = copy_project(folder / "project")
        self.clock = folder / "clock"
        self.clock.mkdir()
        self.env = stage_env([STAGE_CLOCK]) | {FOLDER_VARIABLE: str(self.clock)}
        self.params = use_local_mnist(self.path, raw_dir, accelerator, epochs)
        if f"{self.params['train_mlr']['epochs']}" == SETTING.partition("=")[2]:
            raise SystemExit(f"bench: the baseline already has {SETTING}: the experiment would change nothing")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.path, capture_output=True, text=True, check=True).stdout

    def dvc(self, *args: str) -> tuple[float, str]:
        """Wall seconds of ``dvc <args>`` and its output; a failure is an error that shows it."""
        command = [sys.executable, "-m", "dvc", *args]
        start = time.perf_counter()
        result = subprocess.run(command, cwd=self.path, env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            output = result.stdout + result.stderr
            raise SystemExit(f"bench: {' '.join(command)} failed ({result.returncode}) in {self.path}:\n{output}")
        return time.perf_counter() - start, result.stdout + result.stderr

    def baseline(self) -> None:
        """`dvc repro` of the committed params, then a commit: the experiment's baseline."""
        self.git("add", "-A")
        self.git("commit", "-qm", "bench: the project")
        self.dvc("repro")
        self.git("add", "-A")
        self.git("commit", "-qm", "bench: the baseline")

    def reset(self, run_cache: bool) -> None:
        """Back to the baseline: its files and outputs, no stage records; the run-cache emptied unless kept."""
        self.git("reset", "-q", "--hard", "HEAD")
        self.dvc("checkout", "-q", "--force")
        if not run_cache:
            shutil.rmtree(self.path / ".dvc" / "cache" / "runs", ignore_errors=True)
        for record in self.clock.iterdir():
            record.unlink()

    def processes(self) -> dict[str, dict]:
        return process_times([json.loads(path.read_text()) for path in self.clock.iterdir()])

    def experiment_refs(self) -> set[str]:
        """The finished experiments' git refs (refs/exps/<baseline>/<name>; not the queue's own refs)."""
        refs = self.git("for-each-ref", "--format=%(refname)", "refs/exps").split()
        return {ref for ref in refs if not ref.startswith(("refs/exps/celery", "refs/exps/exec", "refs/exps/temp"))}


def exp_run(project: Project, run_cache: bool = False) -> dict:
    """One `dvc exp run -S <SETTING>` from the baseline: wall time, the stages that ran, DVC's share."""
    project.reset(run_cache)
    wall, _ = project.dvc("exp", "run", "-S", SETTING)
    processes = project.processes()
    return {
        "wall_s": wall,
        "ran": list(processes),
        "processes": processes,
        "dvc_own_s": dvc_own_seconds(wall, processes),
    }


def queued(project: Project, timeout_s: float = 900.0) -> dict:
    """`dvc exp run --queue`, then `dvc queue start`, until the experiment's ref exists (polling git)."""
    project.reset(run_cache=False)
    before = project.experiment_refs()
    start = time.perf_counter()
    project.dvc("exp", "run", "--queue", "-S", SETTING)
    # Not through a pipe: the worker it starts keeps its output open until it exits.
    command = [sys.executable, "-m", "dvc", "queue", "start"]
    subprocess.run(command, cwd=project.path, env=project.env, stdout=subprocess.DEVNULL, check=True)
    while not project.experiment_refs() - before:
        if time.perf_counter() - start > timeout_s:
            raise SystemExit("bench: the queued experiment did not finish:\n" + project.dvc("queue", "status")[1])
        time.sleep(0.1)
    wall = time.perf_counter() - start
    processes = project.processes()
    project.dvc("queue", "stop")  # its worker would otherwise wait 10 s for more work
    wait_for_processes_in(project.path)
    return {"wall_s": wall, "processes": processes, "dvc_own_s": dvc_own_seconds(wall, processes)}


def wait_for_processes_in(folder: Path, timeout_s: float = 60.0) -> None:
    """Wait until no process works in ``folder``: DVC's queue worker, and the process that watches it, write their
    records there for a moment after `dvc queue stop` returns, recreating what a removal of ``folder`` took."""
    import psutil  # DVC's own dependency: here, not at the top, as the GPU table runs without DVC

    def works_in(process: psutil.Process) -> bool:
        try:
            return Path(process.cwd()).is_relative_to(folder)
        except psutil.Error:  # ended meanwhile, or another user's
            return False

    deadline = time.monotonic() + timeout_s
    while any(works_in(process) for process in psutil.process_iter()) and time.monotonic() < deadline:
        time.sleep(0.1)


def measure(raw_dir: Path, accelerator: str, repeats: int, epochs: int | None = None) -> dict:
    """The baseline, ``repeats`` real runs of the experiment, one restored from the run-cache and one queued;
    ``epochs`` for the baseline's models (None: the committed params')."""
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-exp-") as folder:
        project = Project(Path(folder), raw_dir, accelerator, epochs)
        print("  baseline: dvc repro", flush=True)
        project.baseline()
        runs = []
        for repeat in range(repeats):
            runs.append(exp_run(project))
            print(f"  dvc exp run -S {SETTING} ({repeat + 1}/{repeats}): {runs[-1]['wall_s']:.1f} s", flush=True)
        if any(run["ran"] != list(EXPERIMENT_STAGES) for run in runs):
            raise SystemExit(f"bench: expected the stages {EXPERIMENT_STAGES} to run, got {[r['ran'] for r in runs]}")
        cached = exp_run(project, run_cache=True)
        print(f"  the same, restored from the run-cache: {cached['wall_s']:.1f} s", flush=True)
        queue = queued(project)
        print(f"  queued: {queue['wall_s']:.1f} s from queueing to its ref", flush=True)
    return {
        "command": f"dvc exp run -S {SETTING}",
        "baseline_epochs": {name: project.params[name]["epochs"] for name in ("train_mlp", "train_mlr")},
        "accelerator": accelerator,
        "repeats": repeats,
        "summary": {
            "wall_s": median([run["wall_s"] for run in runs]),
            "dvc_own_s": median([run["dvc_own_s"] for run in runs]),
        },
        "runs": runs,
        "run_cache": cached,
        "queued": queue,
    }


def render(result: dict) -> str:
    summary, cached, queue = result["summary"], result["run_cache"], result["queued"]
    rows = [[f"`{result['command']}`, wall (median of {result['repeats']})", seconds(summary["wall_s"])]]
    rows.append(["  DVC's own: wall less the stage processes", seconds(summary["dvc_own_s"])])
    rows.append([f"the same, from the run-cache (ran: {', '.join(cached['ran'])})", seconds(cached["wall_s"])])
    rows.append(["queued: `exp run --queue` + `queue start` until its ref", seconds(queue["wall_s"])])
    rows.append(["  DVC's own: wall less the stage processes", seconds(queue["dvc_own_s"])])
    epochs = ", ".join(f"{name} {count}" for name, count in result["baseline_epochs"].items())
    return (
        f"3. One experiment: `{result['command']}` from a reproduced baseline (epochs: {epochs}), run-cache emptied, "
        f"accelerator {result['accelerator']}\n" + table(["what", "s"], rows)
    )
