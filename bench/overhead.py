"""2. Lightning's overhead: our ``fit`` vs the same optimizer steps and metrics in a plain PyTorch loop."""

import time
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from bench.common import Run, divide, project_fit, ratio, seconds, summarize_runs, synchronize, table
from mnistlab.data import TensorBatches, load_split
from mnistlab.models import NUM_CLASSES, build_model
from mnistlab.params import TrainerParams, TrainParams


def plain_step_parts(
    model_name: str, learning_rate: float, device: torch.device
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """The network, loss and optimizer of the system's step, for a hand loop (RMSprop as the system builds it)."""
    model = build_model(model_name).to(device)
    return model, nn.CrossEntropyLoss(), torch.optim.RMSprop(model.parameters(), lr=learning_rate, foreach=True)


def plain_fit(model_name: str, params: TrainParams, run_seed: int, split_dir: Path, device: torch.device) -> Run:
    """The same arithmetic without Lightning: a hand loop over the same batches, metrics as the system keeps."""
    pl.seed_everything(run_seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    start = time.perf_counter()
    model, loss_function, optimizer = plain_step_parts(model_name, params.learning_rate, device)
    train, validation = (load_split(split_dir / name) for name in ("train", "validation"))
    train_batches = TensorBatches(
        train.images.to(device), train.labels.to(device), params.batch_size, shuffle=True, seed=run_seed
    )
    validation_batches = TensorBatches(
        validation.images.to(device), validation.labels.to(device), params.eval_batch_size, shuffle=False
    )
    metrics = {
        part: (
            MeanMetric().to(device),
            MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False).to(device),
        )
        for part in ("train", "valid")
    }
    epoch_seconds, final = [], {}
    for _ in range(params.epochs):
        synchronize(device)
        epoch_start = time.perf_counter()
        model.train()
        mean_loss, accuracy = metrics["train"]
        for images, labels in train_batches:
            optimizer.zero_grad()
            logits = model(images)
            loss = loss_function(logits, labels)
            loss.backward()
            optimizer.step()
            mean_loss.update(loss.detach(), weight=len(labels))
            accuracy.update(logits.detach(), labels)
        model.eval()
        mean_loss, accuracy = metrics["valid"]
        with torch.inference_mode():  # as Lightning validates
            for images, labels in validation_batches:
                logits = model(images)
                mean_loss.update(loss_function(logits, labels), weight=len(labels))
                accuracy.update(logits, labels)
        final = {}  # the epoch's row of the history
        for part, (mean_loss, accuracy) in metrics.items():
            final |= {f"{part}_loss": float(mean_loss.compute()), f"{part}_accuracy": float(accuracy.compute())}
            mean_loss.reset()
            accuracy.reset()
        synchronize(device)
        epoch_seconds.append(time.perf_counter() - epoch_start)
    return Run(time.perf_counter() - start, epoch_seconds, final)


def measure(
    model_names: Sequence[str],
    params: dict[str, TrainParams],
    trainer: TrainerParams,
    run_seed: int,
    split_dir: Path,
    device: torch.device,
    repeats: int,
) -> dict:
    """Per model, ``repeats`` fits each way, interleaved so that a busy moment hits both alike."""
    fits = {}
    for name in model_names:
        project, plain = [], []
        for _ in range(repeats):
            project.append(project_fit(name, params[name], trainer, run_seed, split_dir, device))
            plain.append(plain_fit(name, params[name], run_seed, split_dir, device))
            print(f"  {name} ours: fit {project[-1].seconds:.1f} s, plain loop {plain[-1].seconds:.1f} s", flush=True)
        epochs = params[name].epochs
        fits[name] = {"project": summarize_runs(project, epochs), "plain": summarize_runs(plain, epochs)}
    return fits


def render(fits: dict, repeats: int) -> str:
    rows = []
    for name, figures in fits.items():
        ours, plain = figures["project"], figures["plain"]
        rows.append(
            [
                name,
                seconds(ours["per_epoch_s"]),
                seconds(plain["per_epoch_s"]),
                ratio(divide(ours["per_epoch_s"], plain["per_epoch_s"])),
                ratio(divide(ours["epoch_median_s"], plain["epoch_median_s"])),
            ]
        )
    return (
        f"2. Lightning overhead: Trainer.fit vs the same steps in a plain loop, median of {repeats} "
        "(target: MLP <= 1.3x)\n" + table(["model", "fit s/epoch", "plain s/epoch", "fit/plain", "one epoch"], rows)
    )
