"""Fit one network with Lightning, deterministically, and write checkpoint and history."""

import argparse
import ctypes
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.strategies import DDPStrategy

from mnistlab.errors import TrainingError
from mnistlab.machine import arithmetic_record, machine_record
from mnistlab.models import build_model, summarize
from mnistlab.params import TrainerParams, TrainParams, parse_section, read_params, seed, train_params, train_section
from mnistlab.stage import CHECKPOINT, MACHINE, SUMMARY, write_json
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


class EpochClock(pl.Callback):
    """The seconds each training epoch took (validation included): the fit's time in epochs."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, system: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, system: pl.LightningModule) -> None:
        self.epoch_seconds.append(time.perf_counter() - self.started)


def show_epoch_lines() -> None:
    """Where no progress bar is shown (CI, a pipe, DVC's log), the system's line per epoch on stdout."""
    logger = logging.getLogger("mnistlab.system")
    if not show_progress() and not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def strategy(trainer: TrainerParams) -> str | DDPStrategy:
    """``trainer.strategy``, with DDP's join timeout where the strategy is plain ``ddp``."""
    if trainer.strategy == "ddp":
        return DDPStrategy(timeout=timedelta(seconds=trainer.join_timeout_s))
    return trainer.strategy


def build_trainer(params: TrainParams, trainer: TrainerParams, history_dir: Path | None, **overrides) -> pl.Trainer:
    """A Trainer with the params' settings; ``history_dir`` gets the CSV history (None: no logger)."""
    # flushed every epoch (one row each): the history grows on disk while training runs (`make tune` reads it)
    logger = (
        CSVLogger(save_dir=history_dir.parent, name=history_dir.name, version="", flush_logs_every_n_steps=1)
        if history_dir
        else False
    )
    options = dict(
        max_epochs=params.epochs,
        accelerator=trainer.accelerator,
        devices=list(trainer.devices) if isinstance(trainer.devices, tuple) else trainer.devices,
        strategy=strategy(trainer),
        num_nodes=trainer.num_nodes,
        precision=trainer.precision,
        deterministic=True,
        logger=logger,
        log_every_n_steps=1,  # only epoch-level values are logged, so nothing is written per step
        enable_checkpointing=False,  # the stage saves the one checkpoint DVC tracks
        enable_model_summary=False,  # the stage prints torchinfo's summary instead
        enable_progress_bar=show_progress(),
        num_sanity_val_steps=0,
        callbacks=[EpochClock()],
    )
    return pl.Trainer(**(options | overrides))


def fit(
    model_name: str,
    params: TrainParams,
    trainer_params: TrainerParams,
    seed: int,
    split_dir: Path,
    history_dir: Path | None,
    cuda_graphs: bool | None = None,
    **trainer_overrides,
) -> tuple[pl.Trainer, Classifier]:
    """Seed everything, then fit ``model_name`` on the split in ``split_dir``.

    ``cuda_graphs``: None follows ``params.cuda_graphs`` (auto: graphs on a GPU where possible).
    """
    skip_nvml_probe_without_driver()
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cuda_graphs is None and params.cuda_graphs == "off":
        cuda_graphs = False
    system = Classifier(model_name, params.learning_rate, cuda_graphs, params.model_options())
    data = InMemoryMNIST(split_dir, params.batch_size, params.eval_batch_size, seed)
    trainer = build_trainer(params, trainer_params, history_dir, **trainer_overrides)
    try:
        trainer.fit(system, datamodule=data)
    except torch.distributed.DistError as error:  # a node that never joined, or left
        raise TrainingError(
            f"the {trainer.world_size} DDP processes did not all join within trainer.join_timeout_s = "
            f"{trainer_params.join_timeout_s:g} s (num_nodes {trainer_params.num_nodes}, this node's rank "
            f"{os.environ.get('NODE_RANK', '0')}, MASTER_ADDR {os.environ.get('MASTER_ADDR', '?')}, MASTER_PORT "
            f"{os.environ.get('MASTER_PORT', '?')}): start the stage on every node with the same MASTER_ADDR and "
            f"MASTER_PORT and NODE_RANK 0..{trainer_params.num_nodes - 1}. {type(error).__name__}: "
            f"{str(error).splitlines()[0]}"
        ) from None
    return trainer, system


def save_checkpoint(trainer: pl.Trainer, path: Path) -> None:
    """Lightning's checkpoint, written beside ``path`` and renamed into place when complete."""
    if trainer.is_global_zero:  # the processes of other nodes write nothing
        path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    trainer.save_checkpoint(partial, weights_only=False)  # full: weights, optimizer, loop state
    if trainer.is_global_zero:
        os.replace(partial, path)


def stage_main(model_name: str, argv: Sequence[str]) -> None:
    """What ``stages/train_<model>.py`` does: fit, then checkpoint, history, summary and machine record."""
    quiet_lightning()
    show_epoch_lines()
    parser = argparse.ArgumentParser(description=f"Stage train_{model_name}: fit the lab's {model_name.upper()}.")
    parser.add_argument("split_dir", type=Path, help="the split stage's output")
    parser.add_argument(
        "out_dir", type=Path, help="output: model.ckpt, metrics.csv (history), summary.txt, machine.json"
    )
    args = parser.parse_args(argv)
    raw = read_params()
    params = parse_section(train_params(model_name), raw, train_section(model_name))
    trainer_params = parse_section(TrainerParams, raw, "trainer")

    summary = summarize(
        build_model(model_name, **params.model_options()), params.batch_size
    )  # before seeding: it draws a random input
    print(summary)
    started = time.perf_counter()
    trainer, system = fit(model_name, params, trainer_params, seed(raw), args.split_dir, args.out_dir)
    save_checkpoint(trainer, args.out_dir / CHECKPOINT)
    if trainer.is_global_zero:  # the other nodes' processes write nothing
        (args.out_dir / SUMMARY).write_text(summary + "\n")
        record = machine_record(str(system.device)) | {"world_size": trainer.world_size}
        print(f"machine: {record}")  # the full record, CPU model included, in the log: nothing hashes it
        # the cached folder keeps what decides the bits only: a clone on another CPU model gets the same hash
        write_json(args.out_dir / MACHINE, arithmetic_record(record))
        epochs = next(c for c in trainer.callbacks if isinstance(c, EpochClock)).epoch_seconds
        print(f"fit: {sum(epochs):.2f} s in epochs, {time.perf_counter() - started:.2f} s in all")
