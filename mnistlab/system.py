"""The Lightning side: one LightningModule that trains any of the networks, and the data module.

Metrics are torchmetrics objects logged once per epoch, all four in one row of the CSV history:
a per-step ``self.log`` costs more than a whole MLR step on a CPU. For the same reason one
``training_step`` runs a chunk of consecutive batches, each with its own optimizer step (manual
optimization): what is computed is the same as one batch per call, Lightning's per-call overhead
is paid once per chunk.

On a CUDA device a chunk's steps are recorded once as a CUDA graph and replayed for every later
chunk of the same shape (``mnistlab.graphs``): the same kernels, launched by one call instead of
thousands. Where recording is not possible (several processes, mixed precision, a failed capture)
the same steps run eagerly.
"""

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnistlab.data import Chunk, Chunks, TensorBatches, gather, load_split
from mnistlab.errors import TrainingError
from mnistlab.graphs import StepGraph
from mnistlab.models import NUM_CLASSES, build_model

STEPS_PER_CALL = 16  # optimizer steps per training_step; changes speed, not results
log = logging.getLogger(__name__)


class Classifier(pl.LightningModule):
    """Cross-entropy, multiclass accuracy and RMSprop around one of ``mnistlab.models``.

    ``cuda_graphs``: None records the training steps as CUDA graphs where that is possible, False
    never does. True on a CPU runs the graph path's static buffers without recording (what the
    tests check against the eager path).
    """

    def __init__(
        self,
        model_name: str,
        learning_rate: float,
        cuda_graphs: bool | None = None,
        model_options: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["cuda_graphs"])
        self.model = build_model(model_name, **(model_options or {}))
        self.loss = nn.CrossEntropyLoss()
        self.learning_rate = learning_rate
        self.cuda_graphs = cuda_graphs
        self.graphs: dict[tuple[int, ...], StepGraph] | None = None  # by batch sizes; None: eager
        # not nan_strategy="disable": torchmetrics 1.9 then drops the weights (an unweighted mean of batches)
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

    def on_train_start(self) -> None:
        self.graphs = {} if self._graphs_possible() else None

    def _graphs_possible(self) -> bool:
        if self.cuda_graphs is False:
            return False
        on_cuda = self.device.type == "cuda"
        single = self.trainer.world_size == 1 and self.trainer.precision in ("32-true", "32")
        if self.cuda_graphs is None:
            return on_cuda and single
        return single

    def training_step(self, chunk: Chunk, chunk_idx: int) -> None:
        steps = self._graphed_steps(chunk) if self.graphs is not None else None
        if steps is None:
            steps = [self._eager_step(chunk, batch) for batch in chunk.batches]
        # one update per step, in step order: the sum is the same whatever the chunk size or CPU
        for (loss, _, _), batch in zip(steps, chunk.batches, strict=True):
            self.train_loss.update(loss, weight=len(batch))
        self.train_accuracy.update(torch.cat([s[1] for s in steps]), torch.cat([s[2] for s in steps]))

    def _eager_step(self, chunk: Chunk, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        images, labels = gather(chunk.images, chunk.labels, batch)
        loss, logits = self._loss((images, labels))
        self.manual_backward(loss)
        optimizer.step()
        return loss.detach(), logits.detach(), labels

    def _graph_step(self, images: Tensor, labels: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step as the graph records it: plain backward and optimizer, gradients zeroed in place."""
        optimizer = self.optimizers().optimizer
        optimizer.zero_grad(set_to_none=False)  # the gradients stay the tensors the graph wrote
        images, labels = gather(images, labels, batch)
        loss, logits = self._loss((images, labels))
        loss.backward()
        optimizer.step()
        return loss.detach(), logits.detach(), labels

    def _graphed_steps(self, chunk: Chunk) -> list[tuple[Tensor, Tensor, Tensor]] | None:
        """The chunk's steps replayed from its graph, recorded on first use; None: run it eagerly."""
        capture = self.device.type == "cuda"
        if capture and self.global_step == 0:
            return None  # the first chunk runs eagerly: it sets up cuBLAS and the optimizer's state
        sizes = tuple(len(batch) for batch in chunk.batches)
        if sizes not in self.graphs:
            images, labels = chunk.images, chunk.labels  # resident: the same tensors in every chunk
            try:
                self.graphs[sizes] = StepGraph(
                    lambda batches: [self._graph_step(images, labels, batch) for batch in batches],
                    sizes,
                    self.device,
                    capture,
                )
            except Exception as error:  # an op that cannot be captured: train eagerly from here on
                log.warning("CUDA graph capture failed, training eagerly: %s", error)
                self.graphs = None
                return None
        steps = self.graphs[sizes].replay(chunk.batches)
        optimizer = self.optimizers()
        for _ in steps:  # Lightning counts the optimizer steps it sees; these bypassed it
            optimizer._on_before_step()
            optimizer._on_after_step()
        return steps

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
        # A diverged fit fails the stage instead of saving its weights. The validation loss shows it
        # first: MeanMetric drops NaN steps from train_loss (nan_strategy="warn") until all are NaN.
        for name in ("valid_loss", "train_loss"):
            if name in values and not torch.isfinite(values[name]):
                raise TrainingError(
                    f"training diverged: {name} is {float(values[name])} in epoch {self.current_epoch + 1} "
                    f"with learning_rate {self.learning_rate:g}: lower the learning rate"
                )
        self.log_dict(values, logger=False, sync_dist=True)
        if self.trainer.is_global_zero:  # shown by the stage where no progress bar is (mnistlab.training)
            numbers = "  ".join(f"{name} {float(value):.4f}" for name, value in values.items())
            log.info("epoch %d/%d: %s", self.current_epoch + 1, self.trainer.max_epochs, numbers)
        if self.logger:  # written here so that the row's step counts optimizer steps, not chunks
            self.logger.log_metrics(values | {"epoch": self.current_epoch}, step=self.global_step - 1)
        for metric in metrics.values():
            metric.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # foreach: one dispatch for all parameters instead of one per tensor; the same arithmetic,
        # bit for bit (tests/test_models.py), and 5-20% faster per MLP step on a CPU (bench/).
        # capturable: the step count lives on the GPU, so that a CUDA graph can replay the step.
        capturable = self.device.type == "cuda" and self.cuda_graphs is not False
        return torch.optim.RMSprop(self.parameters(), lr=self.learning_rate, foreach=True, capturable=capturable)


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
        split = load_split(self.split_dir / name)
        return split.images.to(device), split.labels.to(device)

    def _batches(self, tensors: tuple[Tensor, Tensor], batch_size: int, shuffle: bool) -> TensorBatches:
        rank, world_size = self.trainer.global_rank, self.trainer.world_size
        return TensorBatches(*tensors, batch_size, shuffle, seed=self.seed, rank=rank, world_size=world_size)

    def train_dataloader(self) -> Chunks:
        return Chunks(self._batches(self.train, self.batch_size, shuffle=True), STEPS_PER_CALL)

    def val_dataloader(self) -> TensorBatches:
        return self._batches(self.validation, self.eval_batch_size, shuffle=False)
