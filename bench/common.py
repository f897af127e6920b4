"""What the items share: our fit and the same steps in a plain loop, timed; the machine; the stages' env; tables."""

import dataclasses
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnistlab.data import TensorBatches, load_split
from mnistlab.models import NUM_CLASSES, build_model
from mnistlab.params import TrainerParams, TrainParams
from mnistlab.training import fit
from mnistlab.workspace import venv_env


@dataclasses.dataclass
class Run:
    """One timed fit: its wall time, each epoch's (training + validation), and the final history row."""

    seconds: float
    epoch_seconds: list[float]
    final: dict[str, float] = dataclasses.field(default_factory=dict)


def summarize_runs(runs: list[Run], epochs: int) -> dict:
    """Medians of repeated fits: per epoch (wall / epochs), of one epoch, and of the whole fit."""
    return {
        "per_epoch_s": median([run.seconds for run in runs]) / epochs,
        "epoch_median_s": median([second for run in runs for second in run.epoch_seconds]),
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


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """What the bench's fits share: each model's params (the bench's epochs), the trainer's, the seed, the device."""

    params: dict[str, TrainParams]
    trainer: TrainerParams
    run_seed: int
    device: torch.device


def project_fit(model_name: str, settings: FitSettings, split_dir: Path, **fit_options: object) -> Run:
    """``mnistlab.training.fit`` as the training stage calls it, its CSV history in a temporary folder."""
    clock = EpochClock(settings.device)
    with tempfile.TemporaryDirectory() as history:
        start = time.perf_counter()
        lightning, _ = fit(
            model_name,
            settings.params[model_name],
            settings.trainer,
            settings.run_seed,
            split_dir,
            Path(history) / model_name,
            callbacks=[clock],
            enable_progress_bar=False,
            **fit_options,
        )
        synchronize(settings.device)
        seconds = time.perf_counter() - start
    final = {name: float(value) for name, value in lightning.callback_metrics.items()}  # the history's last row
    return Run(seconds, clock.seconds, final)


def plain_fit(model_name: str, settings: FitSettings, split_dir: Path) -> Run:
    """The same arithmetic without Lightning: a hand loop over the same batches, metrics as the system keeps."""
    params, run_seed, device = settings.params[model_name], settings.run_seed, settings.device
    pl.seed_everything(run_seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    start = time.perf_counter()
    model = build_model(model_name).to(device)
    loss_function = nn.CrossEntropyLoss()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=params.learning_rate, foreach=True)  # as the system's
    train, validation = (load_split(split_dir / name) for name in ("train", "validation"))
    train_batches = TensorBatches(
        train.images.to(device), train.labels.to(device), params.batch_size, shuffle=True, seed=run_seed
    )
    validation_batches = TensorBatches(
        validation.images.to(device), validation.labels.to(device), params.eval_batch_size, shuffle=False
    )
    mean_loss = MeanMetric().to(device)
    accuracy = MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False).to(device)
    epoch_seconds, final = [], {}
    for _ in range(params.epochs):
        synchronize(device)
        epoch_start = time.perf_counter()
        model.train()
        for images, labels in train_batches:
            optimizer.zero_grad()
            logits = model(images)
            loss = loss_function(logits, labels)
            loss.backward()
            optimizer.step()
            mean_loss.update(loss.detach(), weight=len(labels))
            accuracy.update(logits.detach(), labels)
        final = {"train_loss": float(mean_loss.compute()), "train_accuracy": float(accuracy.compute())}
        mean_loss.reset()
        accuracy.reset()
        model.eval()
        with torch.inference_mode():  # as Lightning validates
            for images, labels in validation_batches:
                logits = model(images)
                mean_loss.update(loss_function(logits, labels), weight=len(labels))
                accuracy.update(logits, labels)
        final |= {"valid_loss": float(mean_loss.compute()), "valid_accuracy": float(accuracy.compute())}
        mean_loss.reset()
        accuracy.reset()
        synchronize(device)
        epoch_seconds.append(time.perf_counter() - epoch_start)
    return Run(time.perf_counter() - start, epoch_seconds, final)


def measure_ours(settings: FitSettings, split_dir: Path, repeats: int) -> dict:
    """Per model, ``repeats`` of our fit and of the same steps in a plain loop (item 2's floor), interleaved so that
    a busy moment hits both alike; in this process, the imports done, as the lab's are not timed either."""
    fits = {}
    for name, params in settings.params.items():
        project, plain = [], []
        for _ in range(repeats):
            project.append(project_fit(name, settings, split_dir))
            plain.append(plain_fit(name, settings, split_dir))
            print(f"  {name} ours: fit {project[-1].seconds:.1f} s, plain loop {plain[-1].seconds:.1f} s", flush=True)
        fits[name] = {"project": summarize_runs(project, params.epochs), "plain": summarize_runs(plain, params.epochs)}
    return fits


def stage_env(extra_path: Sequence[Path] = ()) -> dict[str, str]:
    """The environment `make` gives a stage, with ``extra_path`` first on PYTHONPATH."""
    env = venv_env() | {"PYTHONUNBUFFERED": "1"}  # output lines arrive when written
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, extra_path), *filter(None, [env.get("PYTHONPATH")])])
    return env


def table(headers: Sequence[str], rows: list[Sequence[object]]) -> str:
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def ratio(numerator: float | None, denominator: float | None) -> str:
    """``numerator / denominator`` as ``1.23x``; n/a where either is missing."""
    return "n/a" if numerator is None or not denominator else f"{numerator / denominator:.2f}x"
