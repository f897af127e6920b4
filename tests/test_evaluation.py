"""The evaluate stage's scores agree with torchmetrics and the lab's definitions."""

import pytest
import torch
from torchmetrics.functional.classification import multiclass_accuracy

from mnistlab.evaluation import compared_metrics, per_class_accuracy, score


def test_scores_match_torchmetrics_and_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, 10, generator=generator)
    labels = torch.randint(0, 10, (1000,), generator=generator)
    logits[labels == 3, 3] += 5  # make one class easy, so per-class values differ
    metrics = score(logits, labels)
    expected = multiclass_accuracy(logits, labels, 10, average="micro").item()
    assert abs(metrics["accuracy"] - expected) < 1e-6
    assert abs(metrics["loss"] - torch.nn.functional.cross_entropy(logits, labels).item()) < 1e-6
    assert metrics["errors"] == int((logits.argmax(1) != labels).sum())
    expected_per_class = multiclass_accuracy(logits, labels, 10, average=None)
    ours = torch.tensor(per_class_accuracy(logits, labels), dtype=torch.float32)
    torch.testing.assert_close(ours, expected_per_class)
    assert per_class_accuracy(logits, labels)[3] > 0.9


def test_the_metrics_file_puts_what_runs_are_chosen_by_first() -> None:
    """`dvc exp show` keeps the file's order: validation accuracy, then test accuracy, then the losses."""
    scores = {
        model: {part: {"accuracy": accuracy, "loss": 1 - accuracy, "errors": 0} for part, accuracy in parts.items()}
        for model, parts in {
            "mlr": {"validation": 0.91, "test": 0.92},
            "mlp": {"validation": 0.97, "test": 0.96},
        }.items()
    }
    metrics = compared_metrics(scores)
    assert list(metrics) == ["val_acc", "test_acc", "val_loss", "test_loss"]
    assert metrics["val_acc"] == {"mlp": 0.97, "mlr": 0.91} and list(metrics["val_acc"]) == ["mlp", "mlr"]
    assert metrics["test_acc"] == {"mlp": 0.96, "mlr": 0.92}
    assert metrics["test_loss"]["mlr"] == pytest.approx(0.08)
