"""8. One experiment: `dvc exp run -S train_mlr.epochs=1` after a full `dvc repro` (issue 22, item 1).

In a throwaway copy with the committed params and MNIST from a ``dir:`` source, one `dvc repro` and a
git commit give the experiment its baseline. Then, each time from that baseline (`git reset --hard`,
`dvc checkout`) and with DVC's run-cache emptied, so that the stages really run:

- the wall time of `dvc exp run -S train_mlr.epochs=1` (median of the repeats) and its fit's line;
- each stage process under DVC, timed from inside by bench/stage_clock/sitecustomize.py (on
  PYTHONPATH): its start-up (process start to its first read of an input dvc.yaml passes it: the
  imports; params.yaml, read once before them, does not count) and its total; DVC's own cost is the
  wall time less the stage processes;
- the same command once more with the run-cache kept: DVC restores the stages instead of running them;
- the same command under DVC's `--cprofile-dump`: where DVC's own time goes, by function;
- a queued experiment: `dvc exp run --queue`, `dvc queue start`, until its experiment ref exists;
- each stage's import in a fresh ``python -c "import stages.<name>"`` (without DVC), for scale.
"""

import json
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import median, seconds, table, use_local_mnist, wall_seconds
from bench.pipeline import split_by_stage
from bench.stage_clock.sitecustomize import FOLDER_VARIABLE, now
from mnistlab.workspace import copy_project

SETTING = "train_mlr.epochs=1"  # the experiment: one epoch of the MLR
EXPERIMENT_STAGES = ("train_mlr", "evaluate", "plot")  # what a change of train_mlr's params reruns
# The command before the import changes: this item's median of 3 at commit 3ff951b (the bench
# module added on top), on the project's idle 2-core AMD EPYC VM, 2026-11-30 (docs/performance.md);
# issue 22 had 29.5 s on an idle 2-core Zen 3.
BEFORE_WALL_S = 32.3
STAGE_CLOCK = Path(__file__).resolve().parent / "stage_clock"
FIT_LINE = re.compile(r"fit: ([0-9.]+) s in epochs, ([0-9.]+) s in all")
# DVC's functions whose cumulative time the profile table shows (the stages' subprocesses are one).
PROFILED = (
    ("experiment: reproduce (all of `exp run`'s work)", "dvc/repo/experiments/executor/base.py", "reproduce"),
    ("  the stage commands (cmd_run: waiting for them)", "dvc/stage/run.py", "cmd_run"),
    ("  collect the index (read dvc.yaml, dvc.lock)", "dvc/repo/index.py", "from_repo"),
    ("  write dvc.lock", "dvc/dvcfile.py", "dump"),
    ("  save outputs' hashes", "dvc/stage/__init__.py", "save"),
    ("  run-cache restore (look-up)", "dvc/stage/cache.py", "restore"),
    ("  run-cache save", "dvc/stage/cache.py", "save"),
    ("  experiment: commit to git", "dvc/repo/experiments/executor/base.py", "commit"),
)


def package_of(path: str) -> str:
    """The package a profiled function's file belongs to: its folder under site-packages, else stdlib/built-in."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    return "built-in" if path == "~" else "stdlib"


def own_time_by_package(stats: dict) -> dict[str, float]:
    """Seconds of own time (tottime) per package, largest first; waiting for a child process apart."""
    totals: dict[str, float] = {}
    for (path, _, name), value in stats.items():
        package = "waiting for the stages (waitpid)" if name == "<built-in method posix.waitpid>" else package_of(path)
        totals[package] = totals.get(package, 0.0) + value[2]
    return dict(sorted(totals.items(), key=lambda item: item[1], reverse=True))


def fit_seconds(output: str) -> dict[str, float] | None:
    """A training stage's ``fit:`` line: seconds in its epochs and in all, or None without one."""
    found = FIT_LINE.findall(output)
    return {"epochs_s": float(found[-1][0]), "all_s": float(found[-1][1])} if found else None


def process_times(records: Sequence[dict]) -> dict[str, dict]:
    """Per stage, from stage clock records: start-up (start to its first read, None if none) and total."""
    return {
        record["stage"]: {
            "startup_s": None if record["first_read"] is None else record["first_read"] - record["start"],
            "process_s": record["end"] - record["start"],
            "start": record["start"],
            "end": record["end"],
        }
        for record in sorted(records, key=lambda record: record["start"])
    }


def dvc_own_seconds(wall: float, processes: dict[str, dict]) -> float:
    """What DVC adds to a run: its wall time less the stage processes' (they run one after the other)."""
    return wall - sum(process["process_s"] for process in processes.values())


def experiment_refs(project: Path) -> set[str]:
    """The finished experiments' git refs (refs/exps/<baseline>/<name>; not the queue's own refs)."""
    listed = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {ref for ref in listed if not ref.startswith(("refs/exps/celery", "refs/exps/exec", "refs/exps/temp"))}


class Project:
    """A throwaway project with a committed, reproduced baseline; runs DVC in it with the stage clock."""

    def __init__(self, folder: Path, raw_dir: Path, accelerator: str, epochs: int | None, env: dict) -> None:
        self.path = copy_project(folder / "project")
        self.clock = folder / "clock"
        self.clock.mkdir()
        self.env = env | {FOLDER_VARIABLE: str(self.clock)}
        self.env["PYTHONPATH"] = ":".join(filter(None, [str(STAGE_CLOCK), env.get("PYTHONPATH")]))
        self.params = use_local_mnist(self.path, raw_dir, accelerator, epochs)
        if f"{self.params['train_mlr']['epochs']}" == SETTING.partition("=")[2]:
            raise SystemExit(f"bench: the baseline already has {SETTING}: the experiment would change nothing")

    def git(self, *args: str) -> None:
        subprocess.run(["git", *args], cwd=self.path, capture_output=True, check=True)

    def dvc(self, *args: str) -> tuple[float, list[tuple[float, str]]]:
        """Wall seconds of ``dvc <args>`` and its output lines, each with its time on the stage clock."""
        command = [sys.executable, "-m", "dvc", *args]
        lines = []
        start = now()
        with subprocess.Popen(
            command, cwd=self.path, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            lines = [(now(), line) for line in process.stdout]
        if process.returncode != 0:
            output = "".join(line for _, line in lines)
            raise SystemExit(f"bench: {' '.join(command)} failed ({process.returncode}) in {self.path}:\n{output}")
        return now() - start, lines

    def baseline(self) -> float:
        """`dvc repro` of the committed params, then a commit: the experiment's baseline; the repro's wall time."""
        self.git("add", "-A")
        self.git("commit", "-qm", "bench: the project")
        wall, _ = self.dvc("repro")
        self.git("add", "-A")
        self.git("commit", "-qm", "bench: the baseline")
        return wall

    def reset(self, run_cache: bool) -> None:
        """Back to the baseline: its files and outputs, no stage records; the run-cache emptied unless kept."""
        self.git("reset", "-q", "--hard", "HEAD")
        self.dvc("checkout", "-q", "--force")
        if not run_cache:
            shutil.rmtree(self.path / ".dvc" / "cache" / "runs", ignore_errors=True)
        for record in self.clock.iterdir():
            record.unlink()

    def records(self) -> list[dict]:
        return [json.loads(path.read_text()) for path in sorted(self.clock.iterdir())]


def exp_run(project: Project, run_cache: bool = False) -> dict:
    """One `dvc exp run -S <SETTING>` from the baseline: wall time, fit, stage processes, DVC's share."""
    project.reset(run_cache)
    wall, lines = project.dvc("exp", "run", "-S", SETTING)
    output = "".join(line for _, line in lines)
    logged = split_by_stage(lines, lines[-1][0] if lines else 0.0)
    processes = process_times(project.records())
    return {
        "wall_s": wall,
        "fit": fit_seconds(output),
        "ran": list(processes),
        "logged_stages": sorted(logged),
        "processes": processes,
        "dvc_own_s": dvc_own_seconds(wall, processes),
        "restored": len(re.findall(r"is cached - skipping|Restored stage", output)),
    }


def profile(project: Project, dump: Path, top: int = 8) -> dict:
    """`dvc exp run` under DVC's own cProfile: chosen functions' cumulative seconds, own time per package."""
    project.reset(run_cache=False)
    wall, _ = project.dvc("exp", "run", "--cprofile-dump", str(dump), "-S", SETTING)
    stats = pstats.Stats(str(dump)).stats  # (file, line, function) -> (calls, primitive, tottime, cumtime, callers)
    chosen = {
        label: max(
            (value[3] for (path, _, name), value in stats.items() if path.endswith(file) and name == function),
            default=None,
        )
        for label, file, function in PROFILED
    }
    packages = own_time_by_package(stats)
    return {
        "wall_s": wall,
        "profiled_s": sum(packages.values()),
        "cumulative_s": chosen,
        "own_by_package_s": dict(list(packages.items())[:top]),
    }


def queued(project: Project, timeout_s: float = 900.0) -> dict:
    """`dvc exp run --queue`, then `dvc queue start`, until the experiment's ref exists (polling git)."""
    project.reset(run_cache=False)
    before = experiment_refs(project.path)
    start = now()
    queue_s, _ = project.dvc("exp", "run", "--queue", "-S", SETTING)
    started = now()  # not through a pipe: the worker it starts keeps its output open until it exits
    command = [sys.executable, "-m", "dvc", "queue", "start"]
    subprocess.run(command, cwd=project.path, env=project.env, stdout=subprocess.DEVNULL, check=True)
    start_s = now() - started
    while not experiment_refs(project.path) - before:
        if now() - start > timeout_s:
            _, lines = project.dvc("queue", "status")
            raise SystemExit("bench: the queued experiment did not finish:\n" + "".join(line for _, line in lines))
        time.sleep(0.1)
    finished = now()
    processes = process_times(project.records())
    first = min((process["start"] for process in processes.values()), default=finished)
    last = max((process["end"] for process in processes.values()), default=finished)
    _, status = project.dvc("queue", "status")
    project.dvc("queue", "stop")
    return {
        "wall_s": finished - start,
        "queue_s": queue_s,
        "start_s": start_s,
        "until_first_stage_s": first - start,
        "after_last_stage_s": finished - last,
        "processes": processes,
        "dvc_own_s": dvc_own_seconds(finished - start, processes),
        "status": "".join(line for _, line in status),
    }


def stage_imports(project: Path, env: dict, repeats: int) -> dict[str, float]:
    """Median wall seconds of a fresh ``python -c "import stages.<name>"`` per stage, and of ``-c pass``."""

    def timed(code: str) -> float:
        return median([wall_seconds([sys.executable, "-c", code], project, env)[0] for _ in range(repeats)])

    return {"python -c pass": timed("pass")} | {name: timed(f"import stages.{name}") for name in EXPERIMENT_STAGES}


def summarize(runs: list[dict]) -> dict:
    """Medians over the repeated runs: wall, fit, each stage's start-up and process, DVC's own share."""

    def of_stage(name: str, key: str) -> float | None:
        values = [run["processes"][name][key] for run in runs if run["processes"].get(name, {}).get(key) is not None]
        return median(values) if values else None

    fits = [run["fit"] for run in runs if run["fit"]]
    return {
        "wall_s": median([run["wall_s"] for run in runs]),
        "fit_epochs_s": median([fit["epochs_s"] for fit in fits]) if fits else None,
        "fit_all_s": median([fit["all_s"] for fit in fits]) if fits else None,
        "stages": {
            name: {"startup_s": of_stage(name, "startup_s"), "process_s": of_stage(name, "process_s")}
            for name in EXPERIMENT_STAGES
        },
        "dvc_own_s": median([run["dvc_own_s"] for run in runs]),
    }


def measure(
    raw_dir: Path, accelerator: str, env: dict, repeats: int, epochs: int | None = None, queue: bool = True
) -> dict:
    """The baseline, ``repeats`` real runs of the experiment, one restored from the run-cache, one profiled, one
    queued; ``epochs`` for the baseline's models (None: the committed params')."""
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-exp-") as folder:
        project = Project(Path(folder), raw_dir, accelerator, epochs, env)
        print("  baseline: dvc repro", flush=True)
        baseline_s = project.baseline()
        runs = []
        for repeat in range(repeats):
            runs.append(exp_run(project))
            print(f"  dvc exp run -S {SETTING} ({repeat + 1}/{repeats}): {runs[-1]['wall_s']:.1f} s", flush=True)
        if any(run["ran"] != list(EXPERIMENT_STAGES) for run in runs):
            raise SystemExit(f"bench: expected the stages {EXPERIMENT_STAGES} to run, got {[r['ran'] for r in runs]}")
        cached = exp_run(project, run_cache=True)
        print(f"  the same, restored from the run-cache: {cached['wall_s']:.1f} s", flush=True)
        profiled = profile(project, Path(folder) / "dvc.prof")
        print(f"  the same under --cprofile-dump: {profiled['wall_s']:.1f} s", flush=True)
        queue_result = queued(project) if queue else None
        if queue_result:
            print(f"  queued: {queue_result['wall_s']:.1f} s from queueing to its ref", flush=True)
        imports = stage_imports(project.path, env, repeats)
    return {
        "command": f"dvc exp run -S {SETTING}",
        "baseline_epochs": {name: project.params[name]["epochs"] for name in ("train_mlp", "train_mlr")},
        "accelerator": accelerator,
        "repeats": repeats,
        "baseline_repro_s": baseline_s,
        "before_wall_s": BEFORE_WALL_S or None,
        "goal_s": BEFORE_WALL_S / 2 or None,
        "summary": summarize(runs),
        "runs": runs,
        "run_cache": cached,
        "profile": profiled,
        "queued": queue_result,
        "imports_s": imports,
    }


def render(result: dict) -> str:
    summary = result["summary"]
    goal = f"goal <= {seconds(result['goal_s'])} (half of {seconds(result['before_wall_s'])})"
    rows = [[f"`{result['command']}`, wall (median of {result['repeats']})", seconds(summary["wall_s"]), goal]]
    rows.append(
        ["  fit: in epochs / in all (its `fit:` line)", seconds(summary["fit_epochs_s"]), seconds(summary["fit_all_s"])]
    )
    for name, stage in summary["stages"].items():
        rows.append(
            [
                f"  stage {name}: start-up (to its 1st input) / process",
                seconds(stage["startup_s"]),
                seconds(stage["process_s"]),
            ]
        )
    rows.append(["  DVC's own: wall less the stage processes", seconds(summary["dvc_own_s"]), ""])
    cached = result["run_cache"]
    rows.append([f"the same, from the run-cache ({cached['restored']} stages restored)", seconds(cached["wall_s"]), ""])
    if queued := result["queued"]:
        rows.append(["queued: `exp run --queue` + `queue start` until its ref", seconds(queued["wall_s"]), ""])
        rows.append(
            ["  `dvc exp run --queue` / `dvc queue start`", seconds(queued["queue_s"]), seconds(queued["start_s"])]
        )
        rows.append(
            [
                "  queueing to first stage / last stage to ref",
                seconds(queued["until_first_stage_s"]),
                seconds(queued["after_last_stage_s"]),
            ]
        )
        rows.append(["  DVC's own: wall less the stage processes", seconds(queued["dvc_own_s"]), ""])
    for label, value in result["imports_s"].items():
        rows.append(
            [
                f"fresh python, without DVC: {label if 'python' in label else 'import stages.' + label}",
                seconds(value),
                "",
            ]
        )
    rows.append(["baseline: `dvc repro` (not part of the goal)", seconds(result["baseline_repro_s"]), ""])
    profiled = result["profile"]
    profile_rows = [[label, seconds(value)] for label, value in profiled["cumulative_s"].items()]
    profile_rows.append([f"own time, all of the process ({seconds(profiled['profiled_s'])} s), by package:", ""])
    profile_rows += [[f"  {package}", seconds(value)] for package, value in profiled["own_by_package_s"].items()]
    epochs = ", ".join(f"{name} {count}" for name, count in result["baseline_epochs"].items())
    return (
        f"8. One experiment: `{result['command']}` from a reproduced baseline (epochs: {epochs}), run-cache emptied, "
        f"accelerator {result['accelerator']}\n"
        + table(["what", "s", ""], rows)
        + f"\n\nWhere DVC's time goes: `dvc exp run --cprofile-dump` ({seconds(result['profile']['wall_s'])} s wall), "
        "cumulative seconds in the DVC process\n" + table(["function", "s"], profile_rows)
    )
