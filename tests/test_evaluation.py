"""The evaluate stage's scores agree with torchmetrics and the lab's definitions."""

import torch
from torchmetrics.functional.classification import multiclass_accuracy

from mnistlab.evaluation import per_class_accuracy, score


def test_scores_match_torchmetrics_and_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, 10, generator=generator)
    labels = torch.randint(0, 10, (1000,), generator=generator)
    logits[labels == 3, 3] += 5  # make one class easy, so per-class values differ
    metrics = score(logits, labels)
    expected = multiclass_accuracy(logits, labels, 10, average="micro").item()
    assert abs(metrics["test_accuracy"] - expected) < 1e-6
    assert abs(metrics["test_loss"] - torch.nn.functional.cross_entropy(logits, labels).item()) < 1e-6
    assert metrics["test_errors"] == int((logits.argmax(1) != labels).sum())
    expected_per_class = multiclass_accuracy(logits, labels, 10, average=None)
    ours = torch.tensor(per_class_accuracy(logits, labels), dtype=torch.float32)
    torch.testing.assert_close(ours, expected_per_class)
    assert per_class_accuracy(logits, labels)[3] > 0.9
