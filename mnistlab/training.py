"""Fit one network with Lightning, deterministically, and write checkpoint and history."""

import argparse
import ctypes
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from mnistlab.models import build_model, summarize
from mnistlab.params import TrainerParams, TrainParams, parse_section, read_params, seed, train_section
from mnistlab.system import Classifier, InMemoryMNIST


def show_progress() -> bool:
    """A progress bar in a terminal; none in CI or when the output goes to a pipe or a file."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def quiet_lightning() -> None:
    """Drop Lightning's advertising tip and a deprecation warning it raises against its own code."""
    logging.getLogger("pytorch_lightning.trainer.connectors.logger_connector.logger_connector").setLevel(
        logging.WARNING
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def skip_nvml_probe_without_driver() -> None:
    """Undo Lightning's PYTORCH_NVML_BASED_CUDA_CHECK=1 on a machine without an NVIDIA driver.

    With it set, every ``optimizer.step()`` asks whether CUDA is available by trying to load
    libnvidia-ml again: ~0.25 ms per step with a CUDA build of torch and no driver (10% of an
    MLP step). The variable protects forked processes from an initialised CUDA driver; without
    a driver there is nothing to protect, and torch's own check answers in microseconds.
    """
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


def build_trainer(params: TrainParams, trainer: TrainerParams, history_dir: Path | None, **overrides) -> pl.Trainer:
    """A Trainer with the params' settings; ``history_dir`` gets the CSV history (None: no logger)."""
    logger = CSVLogger(save_dir=history_dir.parent, name=history_dir.name, version="") if history_dir else False
    options = dict(
        max_epochs=params.epochs,
        accelerator=trainer.accelerator,
        devices=list(trainer.devices) if isinstance(trainer.devices, tuple) else trainer.devices,
        strategy=trainer.strategy,
        num_nodes=trainer.num_nodes,
        precision=trainer.precision,
        deterministic=True,
        logger=logger,
        log_every_n_steps=1,  # only epoch-level values are logged, so nothing is written per step
        enable_checkpointing=False,  # the stage saves the one checkpoint DVC tracks
        enable_model_summary=False,  # the stage prints torchinfo's summary instead
        enable_progress_bar=show_progress(),
        num_sanity_val_steps=0,
    )
    return pl.Trainer(**(options | overrides))


def fit(
    model_name: str,
    params: TrainParams,
    trainer_params: TrainerParams,
    seed: int,
    split_dir: Path,
    history_dir: Path | None,
    **trainer_overrides,
) -> tuple[pl.Trainer, Classifier]:
    """Seed everything, then fit ``model_name`` on the split in ``split_dir``."""
    skip_nvml_probe_without_driver()
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    system = Classifier(model_name, params.learning_rate)
    data = InMemoryMNIST(split_dir, params.batch_size, params.eval_batch_size, seed)
    trainer = build_trainer(params, trainer_params, history_dir, **trainer_overrides)
    trainer.fit(system, datamodule=data)
    return trainer, system


def save_checkpoint(trainer: pl.Trainer, path: Path) -> None:
    """Lightning's checkpoint, written beside ``path`` and renamed into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    trainer.save_checkpoint(partial, weights_only=False)  # full: weights, optimizer, loop state
    if trainer.is_global_zero:
        os.replace(partial, path)


def stage_main(model_name: str, argv: Sequence[str]) -> None:
    """What ``stages/train_<model>.py`` does: summary, fit, checkpoint, CSV history."""
    quiet_lightning()
    parser = argparse.ArgumentParser(description=f"Stage train_{model_name}: fit the lab's {model_name.upper()}.")
    parser.add_argument("split_dir", type=Path, help="the split stage's output")
    parser.add_argument("checkpoint", type=Path, help="output: the Lightning checkpoint")
    parser.add_argument("history_dir", type=Path, help="output: CSVLogger's metrics.csv, one row per epoch")
    parser.add_argument("summary", type=Path, help="output: torchinfo's summary of the network")
    args = parser.parse_args(argv)
    raw = read_params()
    params = parse_section(TrainParams, raw, train_section(model_name))
    trainer_params = parse_section(TrainerParams, raw, "trainer")

    summary = summarize(build_model(model_name), params.batch_size)  # before seeding: it draws a random input
    print(summary)
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(summary + "\n")

    trainer, _ = fit(model_name, params, trainer_params, seed(raw), args.split_dir, args.history_dir)
    save_checkpoint(trainer, args.checkpoint)
