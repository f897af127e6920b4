"""Stage times without DVC: each stage as ``python -m stages.<name> ...``, its command line taken from dvc.yaml.

The stages run one after the other in a scratch copy of the code and params (no git, no DVC), the
data from a ``dir:`` source, so that the download stage copies and checks files instead of timing
the network. Where torchinfo is not installed, the training stages get bench/stand_ins/torchinfo.py.
"""

import importlib.util
import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml

from bench.common import (
    ROOT,
    fit_epoch_seconds,
    seconds,
    stage_argv,
    stage_commands,
    stage_env,
    stage_rows,
    stage_summary,
    table,
    use_local_mnist,
    wall_seconds,
)
from mnistlab.params import MODEL_NAMES, train_section

CODE = ("mnistlab", "stages")  # what the stages import
FILES = ("params.yaml", "dvc.yaml")
STAND_INS = Path(__file__).resolve().parent / "stand_ins"


def scratch_project(destination: Path, raw_dir: Path, accelerator: str, epochs: int | None) -> Path:
    """The stages' code, dvc.yaml and params.yaml in ``destination``; MNIST from ``raw_dir``, the given settings."""
    for folder in CODE:
        shutil.copytree(ROOT / folder, destination / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in FILES:
        shutil.copy2(ROOT / name, destination / name)
    use_local_mnist(destination, raw_dir, accelerator, epochs)
    return destination


def has_torchinfo() -> bool:
    """Whether the stages can import torchinfo (found, not imported: the bench never imports it)."""
    try:
        return importlib.util.find_spec("torchinfo") is not None
    except ImportError:  # an import hook that hides it
        return False


def measure(project: Path, names: Sequence[str], threads: int | None = None) -> dict:
    """Wall time of each stage in ``names`` (in dvc.yaml's order), run in ``project``; fit epochs where printed."""
    commands = stage_commands(project)
    unknown = sorted(set(names) - set(commands))
    if unknown:
        raise SystemExit(f"bench: no stage {', '.join(unknown)} in dvc.yaml: expected some of {', '.join(commands)}")
    env = stage_env(threads, extra_path=[] if has_torchinfo() else [STAND_INS])
    stages = {}
    for name, command in commands.items():
        if name in names:
            wall, output = wall_seconds(stage_argv(command), project, env)
            stages[name] = {"command": command, "wall_s": wall, "fit_epochs_s": fit_epoch_seconds(output)}
            print(f"  stage {name}: {wall:.1f} s", flush=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    return {
        "stages": stages,
        "epochs": {name: params[train_section(name)]["epochs"] for name in MODEL_NAMES},
        "accelerator": params["trainer"]["accelerator"],
        "torchinfo": "installed" if has_torchinfo() else "stand-in (bench/stand_ins)",
    } | stage_summary(stages)


def render(result: dict, title: str) -> str:
    rows = stage_rows(result["stages"])
    rows.append(["the stages", seconds(result["stages_total_s"]), seconds(result["fit_epochs_total_s"])])
    rows.append(["non-training: the stages less their fits' epochs", seconds(result["non_training_s"]), ""])
    epochs = ", ".join(f"{name} {count}" for name, count in result["epochs"].items())
    return (
        f"{title}: each `python -m stages.<name>` (dvc.yaml's command, no DVC), accelerator {result['accelerator']},"
        f" epochs: {epochs}, torchinfo {result['torchinfo']}\n" + table(["stage", "wall s", "fit epochs s"], rows)
    )
