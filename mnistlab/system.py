"""The Lightning side: one LightningModule that trains any of the networks, and the data module.

Metrics are torchmetrics objects logged once per epoch, all four in one row of the CSV history:
a per-step ``self.log`` costs more than a whole MLR step on a CPU. For the same reason one
``training_step`` runs a chunk of consecutive batches, each with its own optimizer step (manual
optimization): what is computed is the same as one batch per call, Lightning's per-call overhead
is paid once per chunk.
"""

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnistlab.data import Chunks, TensorBatches, load_split
from mnistlab.models import NUM_CLASSES, build_model

STEPS_PER_CALL = 16  # optimizer steps per training_step; changes speed, not results


class Classifier(pl.LightningModule):
    """Cross-entropy, multiclass accuracy and RMSprop around one of ``mnistlab.models``."""

    def __init__(self, model_name: str, learning_rate: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model_name)
        self.loss = nn.CrossEntropyLoss()
        self.learning_rate = learning_rate
        self.train_loss, self.valid_loss = MeanMetric(), MeanMetric()
        self.train_accuracy = MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False)
        self.valid_accuracy = MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False)
        self.automatic_optimization = False  # training_step steps the optimizer once per batch of its chunk

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def _loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        images, labels = batch
        logits = self(images)
        return self.loss(logits, labels), logits

    def training_step(self, chunk: list[tuple[Tensor, Tensor]], chunk_idx: int) -> None:
        optimizer = self.optimizers()
        losses, logits = [], []
        for batch in chunk:
            optimizer.zero_grad()
            loss, batch_logits = self._loss(batch)
            self.manual_backward(loss)
            optimizer.step()
            losses.append(loss.detach())
            logits.append(batch_logits.detach())
        labels = [labels for _, labels in chunk]
        sizes = torch.tensor([len(batch_labels) for batch_labels in labels], device=self.device)
        self.train_loss.update(torch.stack(losses), weight=sizes)
        self.train_accuracy.update(torch.cat(logits), torch.cat(labels))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, logits = self._loss(batch)
        self.valid_loss.update(loss, weight=len(batch[1]))
        self.valid_accuracy.update(logits, batch[1])

    def on_train_epoch_end(self) -> None:
        # Lightning runs validation before this hook, so one row holds the whole epoch. compute()
        # already reduces across DDP ranks: sync_dist only averages identical values (exactly).
        metrics = {"train_loss": self.train_loss, "train_accuracy": self.train_accuracy}
        if self.valid_accuracy.update_count:
            metrics |= {"valid_loss": self.valid_loss, "valid_accuracy": self.valid_accuracy}
        values = {name: metric.compute() for name, metric in metrics.items()}
        self.log_dict(values, logger=False, sync_dist=True)
        if self.logger:  # written here so that the row's step counts optimizer steps, not chunks
            self.logger.log_metrics(values | {"epoch": self.current_epoch}, step=self.global_step - 1)
        for metric in metrics.values():
            metric.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # foreach: one dispatch for all parameters instead of one per tensor; the same arithmetic,
        # bit for bit (tests/test_models.py), and 5-20% faster per MLP step on a CPU (bench/).
        return torch.optim.RMSprop(self.parameters(), lr=self.learning_rate, foreach=True)


class InMemoryMNIST(pl.LightningDataModule):
    """The split stage's tensors, moved once to the training device and batched there."""

    def __init__(self, split_dir: Path, batch_size: int, eval_batch_size: int, seed: int) -> None:
        super().__init__()
        self.split_dir = split_dir
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device
        self.train = self._load("train", device)
        self.validation = self._load("validation", device)

    def _load(self, name: str, device: torch.device) -> tuple[Tensor, Tensor]:
        split = load_split(self.split_dir / f"{name}.pt")
        return split.images.to(device), split.labels.to(device)

    def _batches(self, tensors: tuple[Tensor, Tensor], batch_size: int, shuffle: bool) -> TensorBatches:
        rank, world_size = self.trainer.global_rank, self.trainer.world_size
        return TensorBatches(*tensors, batch_size, shuffle, seed=self.seed, rank=rank, world_size=world_size)

    def train_dataloader(self) -> Chunks:
        return Chunks(self._batches(self.train, self.batch_size, shuffle=True), STEPS_PER_CALL)

    def val_dataloader(self) -> TensorBatches:
        return self._batches(self.validation, self.eval_batch_size, shuffle=False)
