"""What the measured items share: timed runs, the machine, our fit() with a clock, stage commands, tables."""

import dataclasses
import inspect
import logging
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml

from mnistlab.params import MODEL_NAMES, TrainerParams, TrainParams, train_section
from mnistlab.training import fit
from mnistlab.workspace import ROOT, venv_env

# The line a training stage prints after its fit: the seconds spent in the fit's epochs.
FIT_LINE = re.compile(r"fit: ([0-9.]+) s in epochs")
# What the history's last row holds: the metrics of the last epoch.
HISTORY_METRICS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy")


@dataclasses.dataclass
class Run:
    """One timed fit: its wall time, each epoch's (training + validation), and the final history row."""

    seconds: float
    epoch_seconds: list[float]
    final: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def setup_seconds(self) -> float:
        return self.seconds - sum(self.epoch_seconds)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def summarize_runs(runs: list[Run], epochs: int) -> dict:
    """Medians of repeated fits: per epoch (wall / epochs), of one epoch, and of the set-up."""
    return {
        "per_epoch_s": median([run.seconds for run in runs]) / epochs,
        "epoch_median_s": median([second for run in runs for second in run.epoch_seconds]),
        "setup_s": median([run.setup_seconds for run in runs]),
        "fit_s": median([run.seconds for run in runs]),
        "runs": [dataclasses.asdict(run) for run in runs],
    }


def extrapolate(summary: dict, epochs: int) -> float:
    """Seconds of a fit of ``epochs`` epochs: the measured fit, plus the median epoch per epoch not run."""
    measured = len(summary["runs"][0]["epoch_seconds"])
    return summary["fit_s"] + (epochs - measured) * summary["epoch_median_s"]


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(accelerator: str) -> torch.device:
    """The device Lightning's ``accelerator`` picks for a single-device run."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


def machine(device: torch.device) -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device": str(device),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def quiet_lightning() -> None:
    """Keep the report readable: no 'GPU available' banners or advice about DataLoader workers."""
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is an invalid value for `log_every_n_steps`.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


class EpochClock(pl.Callback):
    """Wall time of each epoch; Lightning validates before ``on_train_epoch_end``, so it is included."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self._start = device, [], 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._start)


def fit_has_cuda_graphs() -> bool:
    """Whether ``mnistlab.training.fit`` takes ``cuda_graphs`` (None: automatic, False: eager, True: graphs)."""
    return "cuda_graphs" in inspect.signature(fit).parameters


def project_fit(
    model_name: str,
    params: TrainParams,
    trainer: TrainerParams,
    run_seed: int,
    split_dir: Path,
    device: torch.device,
    **fit_options: object,
) -> Run:
    """``mnistlab.training.fit`` as the training stage calls it, its CSV history in a temporary folder."""
    clock = EpochClock(device)
    with tempfile.TemporaryDirectory() as history:
        start = time.perf_counter()
        lightning, _ = fit(
            model_name,
            params,
            trainer,
            run_seed,
            split_dir,
            Path(history) / model_name,
            callbacks=[clock],
            enable_progress_bar=False,
            **fit_options,
        )
        synchronize(device)
        seconds = time.perf_counter() - start
    logged = lightning.callback_metrics  # the values of the history's last row
    final = {name: float(logged[name]) for name in HISTORY_METRICS if name in logged}
    return Run(seconds, clock.seconds, final)


# Stages, as dvc.yaml runs them ---------------------------------------------------------------------


def stage_commands(project: Path = ROOT) -> dict[str, str]:
    """Each stage's command line, in dvc.yaml's order (an order in which each stage's inputs exist)."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    return {name: " ".join(str(stage["cmd"]).split()) for name, stage in stages.items()}


def stage_names() -> list[str]:
    return list(stage_commands())


def stage_argv(command: str) -> list[str]:
    """A dvc.yaml command as argv for this interpreter (``python`` is whichever runs the bench)."""
    argv = shlex.split(command)
    return [sys.executable, *argv[1:]] if argv and argv[0] in ("python", "python3") else argv


def fit_epoch_seconds(output: str) -> float | None:
    """The seconds a training stage reports for its fit's epochs, or None if it prints no such line."""
    found = FIT_LINE.findall(output)
    return float(found[-1]) if found else None


def stage_summary(stages: dict[str, dict]) -> dict:
    """The stages' total, their fits' epochs and everything else ("non-training": None if a fit is unknown)."""
    total = sum(stage["wall_s"] for stage in stages.values())
    training = [name for name in stages if name.startswith("train_")]
    fits = [stages[name]["fit_epochs_s"] for name in training]
    fit_total = None if any(value is None for value in fits) else sum(fits)
    return {
        "stages_total_s": total,
        "fit_epochs_total_s": fit_total,
        "non_training_s": None if fit_total is None else total - fit_total,
    }


def stage_rows(stages: dict[str, dict]) -> list[list[str]]:
    """A table row per stage: its wall time and, for a training stage, its fit's epochs."""
    return [
        [name, seconds(stage["wall_s"]), seconds(stage["fit_epochs_s"]) if name.startswith("train_") else "-"]
        for name, stage in stages.items()
    ]


def stage_env(threads: int | None = None, extra_path: Sequence[Path] = ()) -> dict[str, str]:
    """The environment `make` gives a stage; torch's threads fixed if asked; ``extra_path`` on PYTHONPATH."""
    env = venv_env() | {"PYTHONUNBUFFERED": "1"}  # output lines arrive when written
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, extra_path), *filter(None, [env.get("PYTHONPATH")])])
    return env


def wall_seconds(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of a command and its output (stdout and stderr); a failure stops the bench."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"bench: {shlex.join(command)} failed ({result.returncode}) in {cwd}:\n{result.stdout}")
    return seconds, result.stdout


# The report -----------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: list[Sequence[object]]) -> str:
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def divide(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def use_local_mnist(project: Path, raw_dir: Path, accelerator: str, epochs: int | None) -> dict:
    """Point ``project``'s params.yaml at ``raw_dir`` (a `dir:` source), ``accelerator`` and, if given, ``epochs``;
    the params it wrote."""
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["download"]["sources"] = [f"dir:{raw_dir.resolve()}"]
    params["trainer"]["accelerator"] = accelerator
    for name in MODEL_NAMES:
        if epochs is not None:
            params[train_section(name)]["epochs"] = epochs
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    return params
