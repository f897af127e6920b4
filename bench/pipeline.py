"""4. The whole pipeline: one ``dvc repro -f`` in a throwaway copy, each stage timed from DVC's own log lines.

A stage runs from its "Running stage" line to the next one (or the end), so its share includes
what DVC does after the command (hashing and caching the outputs, dvc.lock). A training stage's
"fit: <s> s in epochs" line gives the seconds of its fit's epochs; everything else, summed over
the six stages, is the pipeline's "non-training" time.
"""

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    fit_epoch_seconds,
    ratio,
    seconds,
    stage_names,
    stage_rows,
    stage_summary,
    table,
    use_local_mnist,
)
from mnistlab.params import MODEL_NAMES, train_section
from mnistlab.workspace import copy_project

RUNNING_STAGE = re.compile(r"Running stage '([^']+)'")
TARGETS = (7, 10)  # the lab's two fits and test steps / our whole pipeline, at least


def split_by_stage(lines: list[tuple[float, str]], end: float) -> dict[str, dict]:
    """Each stage's wall time and output, from timed lines of `dvc repro`'s output."""
    marks = [
        (match.group(1), at, index) for index, (at, line) in enumerate(lines) if (match := RUNNING_STAGE.search(line))
    ]
    stages = {}
    for position, (name, at, index) in enumerate(marks):
        stop, stop_index = marks[position + 1][1:] if position + 1 < len(marks) else (end, len(lines))
        stages[name] = {"wall_s": stop - at, "output": "".join(line for _, line in lines[index:stop_index])}
    return stages


def measure(raw_dir: Path, accelerator: str, epochs: int | None, env: dict[str, str]) -> dict:
    """One `dvc repro -f` of a fresh copy; the data comes from a `dir:` source, so no stage times the network."""
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-") as folder:
        project = copy_project(Path(folder))
        params = use_local_mnist(project, raw_dir, accelerator, epochs)
        subprocess.run(["git", "add", "-A"], cwd=project, check=True)
        subprocess.run(["git", "commit", "-qm", "bench"], cwd=project, capture_output=True, check=True)
        command = [sys.executable, "-m", "dvc", "repro", "-f"]
        lines = []
        start = time.perf_counter()
        with subprocess.Popen(
            command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            for line in process.stdout:
                lines.append((time.perf_counter(), line))
                if match := RUNNING_STAGE.search(line):
                    print(f"  {lines[-1][0] - start:6.1f} s  stage {match.group(1)}", flush=True)
        end = time.perf_counter()
    stages = split_by_stage(lines, end)
    if process.returncode != 0 or sorted(stages) != sorted(stage_names()):
        output = "".join(line for _, line in lines)
        raise SystemExit(f"bench: {' '.join(command)} failed ({process.returncode}):\n{output}")
    stages = {
        name: {"wall_s": stage["wall_s"], "fit_epochs_s": fit_epoch_seconds(stage["output"])}
        for name, stage in stages.items()
    }
    first = min(at for at, line in lines if RUNNING_STAGE.search(line))
    return {
        "command": "dvc repro -f",
        "stages": stages,
        "dvc_startup_s": first - start,
        "total_s": end - start,
        "epochs": {name: params[train_section(name)]["epochs"] for name in MODEL_NAMES},
        "accelerator": accelerator,
    } | stage_summary(stages)


def render(result: dict) -> str:
    rows = [["DVC start-up, until the first stage", seconds(result["dvc_startup_s"]), ""]]
    rows += stage_rows(result["stages"])
    rows.append(["the six stages", seconds(result["stages_total_s"]), seconds(result["fit_epochs_total_s"])])
    rows.append(["non-training: the stages less their fits' epochs", seconds(result["non_training_s"]), ""])
    rows.append(["total: `dvc repro -f`", seconds(result["total_s"]), ""])
    if "lab_s" in result:
        lab = result["lab_s"]
        rows.append([f"the lab's code: both fits + tests ({result['lab_note']})", seconds(lab), ""])
        rows.append(["lab / our whole pipeline", ratio(lab / result["total_s"]), ""])
        rows += [[f"{target}x target: the whole pipeline in at most", seconds(lab / target), ""] for target in TARGETS]
    if "plain_fits_s" in result:
        rows.append(["floor: both fits' steps in a plain loop (extrapolated)", seconds(result["plain_fits_s"]), ""])
    epochs = ", ".join(f"{name} {count}" for name, count in result["epochs"].items())
    return (
        f"4. The whole pipeline: one `dvc repro -f`, accelerator {result['accelerator']}, epochs: {epochs}; a stage "
        "runs from its 'Running stage' line to the next\n" + table(["stage", "wall s", "fit epochs s"], rows)
    )
