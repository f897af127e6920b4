"""3. Stage start-up: a fresh ``python`` importing each stage and running its ``--help``; libraries for scale."""

import sys

from bench.common import ROOT, median, seconds, stage_names, table, wall_seconds

LIBRARIES = ("torch", "torchvision", "torchmetrics", "pytorch_lightning")
# What every training process pays before its first step, Lightning or not: torch 2.14's optimizers import
# torch._dynamo when constructed (torch/optim/optimizer.py), seconds on a laptop-class CPU.
OPTIMIZER = "import torch; torch.optim.RMSprop([torch.zeros(1, requires_grad=True)])"


def measure(repeats: int, env: dict[str, str]) -> dict:
    """Median wall times of importing each stage and of its ``--help``, and of Python and its libraries."""
    python = sys.executable

    def timed(command: list[str]) -> float:
        return median([wall_seconds(command, ROOT, env)[0] for _ in range(repeats)])

    reference = {"python -c pass": timed([python, "-c", "pass"])}
    reference |= {f"import {library}": timed([python, "-c", f"import {library}"]) for library in LIBRARIES}
    reference["import torch, then an optimizer"] = timed([python, "-c", OPTIMIZER])
    stages = {
        name: {
            "import_s": timed([python, "-c", f"import stages.{name}"]),
            "help_s": timed([python, "-m", f"stages.{name}", "--help"]),
        }
        for name in stage_names()
    }
    return {"reference_s": reference, "stages": stages, "repeats": repeats}


def render(startup: dict) -> str:
    rows = [[label, seconds(value)] for label, value in startup["reference_s"].items()]
    rows += [
        [f"stages.{name}: import / --help", f"{seconds(s['import_s'])} / {seconds(s['help_s'])}"]
        for name, s in startup["stages"].items()
    ]
    return f"3. Start-up: wall seconds of a fresh python, median of {startup['repeats']}\n" + table(
        ["command", "s"], rows
    )
