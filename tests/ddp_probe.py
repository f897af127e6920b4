"""Run by tests/test_ddp.py: fit the MLR under Lightning DDP and record what each rank saw.

Each synthetic image carries its sample index in its first two pixels (its label is the index
mod 10), so every rank can write down exactly which samples it trained and validated on, with
the summed loss and the correct count of each forward pass, and its final weights. Lightning
starts rank 1 by running this module again with the same arguments.
"""

import argparse
import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor

from mnistlab.params import TrainerParams, TrainParams
from mnistlab.system import Classifier, InMemoryMNIST
from mnistlab.training import build_trainer, save_checkpoint

DDP_CPU = TrainerParams(accelerator="cpu", devices=2, strategy="ddp", num_nodes=1, precision="32-true")


def sample_ids(images: Tensor) -> Tensor:
    """The index written into pixels (0, 0) and (0, 1) of each image: low and high byte."""
    pixels = (images[:, 0, 0, :2] * 255).round().long()
    return pixels[:, 0] + 256 * pixels[:, 1]


class Probe(Classifier):
    """The project's Classifier, noting the samples, summed loss and correct count of each forward."""

    def __init__(self, learning_rate: float) -> None:
        super().__init__("mlr", learning_rate)
        self.record: dict[str, list[dict]] = {"train": [], "valid": []}

    def forward(self, images: Tensor) -> Tensor:
        logits = super().forward(images)
        ids = sample_ids(images)
        labels = ids % 10
        self.record["train" if self.training else "valid"].append(
            {
                "epoch": self.current_epoch,
                "ids": ids.tolist(),
                "loss_sum": float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum")),
                "correct": int((logits.argmax(dim=1) == labels).sum()),
            }
        )
        return logits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=4)
    args = parser.parse_args()
    params = TrainParams(
        epochs=args.epochs, learning_rate=0.01, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size
    )
    pl.seed_everything(0, workers=True, verbose=False)  # as training.fit does
    probe = Probe(params.learning_rate)
    data = InMemoryMNIST(args.split_dir, params.batch_size, params.eval_batch_size, seed=0)
    trainer = build_trainer(params, DDP_CPU, args.out_dir / "history")
    trainer.fit(probe, datamodule=data)
    save_checkpoint(trainer, args.out_dir / "model.ckpt")
    rank = trainer.global_rank
    torch.save(probe.model.state_dict(), args.out_dir / f"rank{rank}.pt")
    (args.out_dir / f"rank{rank}.json").write_text(json.dumps({"world_size": trainer.world_size, **probe.record}))


if __name__ == "__main__":
    main()
