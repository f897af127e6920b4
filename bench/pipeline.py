"""The pipeline, stage by stage: under one `dvc repro -f` (item 2) or each dvc.yaml command alone (item 4).

A stage runs from DVC's "Running stage" line to the next, so its share includes DVC's work after the command
(hashing, caching, dvc.lock). MNIST comes from a ``dir:`` source, so that no stage times the network; a
training stage's "fit: <s> s in epochs" line gives its fit's epochs, and the rest is "non-training" time.
"""

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import extrapolate, ratio, seconds, stage_env, table
from mnistlab.params import MODEL_NAMES, train_section
from mnistlab.workspace import ROOT, copy_project

# The line DVC's stage runner logs (dvc/stage/run.py) before each stage's command.
RUNNING_STAGE = re.compile(r"Running stage '([^']+)'")
# The line a training stage prints after its fit: the seconds spent in the fit's epochs.
FIT_LINE = re.compile(r"fit: ([0-9.]+) s in epochs")
STAND_INS = Path(__file__).resolve().parent / "stand_ins"


def stage_commands(project: Path = ROOT) -> dict[str, str]:
    """Each stage's command line, in dvc.yaml's order (an order in which each stage's inputs exist)."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    return {name: " ".join(str(stage["cmd"]).split()) for name, stage in stages.items()}


def stage_argv(command: str) -> list[str]:
    """A dvc.yaml command as argv for this interpreter (``python`` is whichever runs the bench)."""
    argv = shlex.split(command)
    return [sys.executable, *argv[1:]] if argv and argv[0] in ("python", "python3") else argv


def fit_epoch_seconds(output: str) -> float | None:
    """The seconds a training stage reports for its fit's epochs, or None if it prints no such line."""
    found = FIT_LINE.findall(output)
    return float(found[-1]) if found else None


def use_local_mnist(project: Path, raw_dir: Path, accelerator: str, epochs: int | None) -> dict:
    """Point ``project``'s params.yaml at ``raw_dir`` (a `dir:` source), ``accelerator`` and, if given, ``epochs``
    per model; the params it wrote."""
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["download"]["sources"] = [f"dir:{raw_dir.resolve()}"]
    params["trainer"]["accelerator"] = accelerator
    if epochs is not None:
        for name in MODEL_NAMES:
            params[train_section(name)]["epochs"] = epochs
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def stage_summary(stages: dict[str, dict]) -> dict:
    """The stages' total, their fits' epochs and everything else ("non-training": None if a fit is unknown)."""
    total = sum(stage["wall_s"] for stage in stages.values())
    fits = [stage["fit_epochs_s"] for name, stage in stages.items() if name.startswith("train_")]
    fit_total = None if None in fits else sum(fits)
    return {
        "stages_total_s": total,
        "fit_epochs_total_s": fit_total,
        "non_training_s": None if fit_total is None else total - fit_total,
    }


def split_by_stage(lines: list[tuple[float, str]], end: float) -> dict[str, dict]:
    """Each stage's wall time and output, from timed lines of `dvc repro`'s output."""
    marks = [
        (match.group(1), at, index) for index, (at, line) in enumerate(lines) if (match := RUNNING_STAGE.search(line))
    ]
    stages = {}
    for position, (name, at, index) in enumerate(marks):
        until, until_index = marks[position + 1][1:] if position + 1 < len(marks) else (end, len(lines))
        stages[name] = {"wall_s": until - at, "output": "".join(line for _, line in lines[index:until_index])}
    return stages


def measure(raw_dir: Path, accelerator: str, epochs: int | None) -> dict:
    """Item 2: one `dvc repro -f` of a fresh copy of the project."""
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-") as folder:
        project = copy_project(Path(folder))
        params = use_local_mnist(project, raw_dir, accelerator, epochs)
        subprocess.run(["git", "add", "-A"], cwd=project, check=True)
        subprocess.run(["git", "commit", "-qm", "bench"], cwd=project, capture_output=True, check=True)
        command = [sys.executable, "-m", "dvc", "repro", "-f"]
        lines = []
        start = time.perf_counter()
        with subprocess.Popen(
            command, cwd=project, env=stage_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            for line in process.stdout:
                lines.append((time.perf_counter(), line))
                if match := RUNNING_STAGE.search(line):
                    print(f"  {lines[-1][0] - start:6.1f} s  stage {match.group(1)}", flush=True)
        end = time.perf_counter()
    stages = split_by_stage(lines, end)
    if process.returncode != 0 or sorted(stages) != sorted(stage_commands()):
        output = "".join(line for _, line in lines)
        raise SystemExit(f"bench: {' '.join(command)} failed ({process.returncode}):\n{output}")
    stages = {
        name: {"wall_s": stage["wall_s"], "fit_epochs_s": fit_epoch_seconds(stage["output"])}
        for name, stage in stages.items()
    }
    return {
        "command": "dvc repro -f",
        "stages": stages,
        "dvc_startup_s": min(at for at, line in lines if RUNNING_STAGE.search(line)) - start,
        "total_s": end - start,
        "epochs": {name: params[train_section(name)]["epochs"] for name in MODEL_NAMES},
        "accelerator": accelerator,
    } | stage_summary(stages)


def has_torchinfo() -> bool:
    """Whether the stages can import torchinfo (found, not imported: the bench never imports it)."""
    try:
        return importlib.util.find_spec("torchinfo") is not None
    except ImportError:  # an import hook that hides it
        return False


def measure_without_dvc(project: Path, raw_dir: Path, accelerator: str, epochs: int | None) -> dict:
    """Item 4's stage times: each stage's command in dvc.yaml's order, in ``project``, where this first copies what
    the stages read (their code, dvc.yaml, params.yaml), without git or DVC."""
    for folder in ("mnistlab", "stages"):
        shutil.copytree(ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy2(ROOT / name, project / name)
    params = use_local_mnist(project, raw_dir, accelerator, epochs)
    env = stage_env([] if has_torchinfo() else [STAND_INS])
    stages = {}
    for name, command in stage_commands(project).items():
        start = time.perf_counter()
        result = subprocess.run(stage_argv(command), cwd=project, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"bench: {command} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        stages[name] = {"command": command, "wall_s": wall, "fit_epochs_s": fit_epoch_seconds(result.stdout)}
        print(f"  stage {name}: {wall:.1f} s", flush=True)
    return {
        "stages": stages,
        "epochs": {name: params[train_section(name)]["epochs"] for name in MODEL_NAMES},
        "accelerator": params["trainer"]["accelerator"],
        "torchinfo": "installed" if has_torchinfo() else "stand-in (bench/stand_ins)",
    } | stage_summary(stages)


def lab_seconds(lab: dict, epochs: dict[str, int]) -> float:
    """The lab's data module, fits of ``epochs[model]`` epochs (extrapolated) and test steps, summed."""
    return lab["data_s"] + sum(
        extrapolate(lab["models"][name], count) + lab["models"][name]["test_s"] for name, count in epochs.items()
    )


def render(result: dict, title: str) -> str:
    """A row per stage (its wall time and, for a training stage, its fit's epochs), their total, the rest."""
    rows = [
        [name, seconds(stage["wall_s"]), seconds(stage["fit_epochs_s"]) if name.startswith("train_") else "-"]
        for name, stage in result["stages"].items()
    ]
    rows.append(["the stages", seconds(result["stages_total_s"]), seconds(result["fit_epochs_total_s"])])
    rows.append(["non-training: the stages less their fits' epochs", seconds(result["non_training_s"]), ""])
    if "total_s" in result:
        rows.insert(0, ["DVC start-up, until the first stage", seconds(result["dvc_startup_s"]), ""])
        rows.append(["total: `dvc repro -f`", seconds(result["total_s"]), ""])
    if "lab_s" in result:
        rows.append([f"the lab's code: both fits + tests ({result['lab_note']})", seconds(result["lab_s"]), ""])
        rows.append(["lab / our whole pipeline", ratio(result["lab_s"], result["total_s"]), ""])
    if "plain_fits_s" in result:
        rows.append(["floor: both fits' steps in a plain loop (extrapolated)", seconds(result["plain_fits_s"]), ""])
    epochs = ", ".join(f"{name} {count}" for name, count in result["epochs"].items())
    return f"{title}, accelerator {result['accelerator']}, epochs: {epochs}\n" + table(
        ["stage", "wall s", "fit epochs s"], rows
    )
