"""Test-set evaluation without Lightning: load a checkpoint, predict in large batches, score.

Accuracy here is two lines of torch rather than torchmetrics: importing torchmetrics costs as much
as importing Lightning (seconds), more than this whole stage's work. tests/test_evaluation.py
checks both functions against torchmetrics.
"""

from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from mnistlab.data import Split, to_float
from mnistlab.errors import DataError
from mnistlab.models import NUM_CLASSES, build_model


def load_model(path: Path) -> nn.Module:
    """The network in a Lightning checkpoint, loaded with ``weights_only=True``, in eval mode."""
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        hyper_parameters = checkpoint["hyper_parameters"]
        model = build_model(hyper_parameters["model_name"], **(hyper_parameters.get("model_options") or {}))
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(state)
    except FileNotFoundError:
        raise DataError(f"{path} not found: train the model first") from None
    except Exception as error:
        raise DataError(f"{path}: not a checkpoint of this project's models ({error})") from None
    return model.eval()


@torch.inference_mode()
def predict_logits(model: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """Logits for uint8 images (N, 28, 28), ``batch_size`` at a time."""
    return torch.cat(
        [model(to_float(images[start : start + batch_size])) for start in range(0, len(images), batch_size)]
    )


def score(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """The lab's metrics on one part (``accuracy``, mean cross-entropy ``loss``) and the error count."""
    accuracy = (logits.argmax(1) == labels).double().mean()
    return {
        "accuracy": round(accuracy.item(), 6),
        "loss": round(nn.functional.cross_entropy(logits, labels).item(), 6),
        "errors": int((logits.argmax(1) != labels).sum()),
    }


def predictions_table(logits: Tensor, test: Split) -> pd.DataFrame:
    """One row per test image: its index, true and predicted digit, and the predicted probability."""
    probabilities = logits.softmax(1)
    confidence, predicted = probabilities.max(1)
    return pd.DataFrame(
        {
            "index": test.indices.numpy(),
            "actual": test.labels.numpy(),
            "predicted": predicted.numpy(),
            "confidence": confidence.numpy().round(6),
        }
    )


def per_class_accuracy(logits: Tensor, labels: Tensor) -> list[float]:
    """Recall of each digit: the share of its test images predicted as that digit."""
    correct = torch.bincount(labels[logits.argmax(1) == labels], minlength=NUM_CLASSES)
    return (correct.double() / torch.bincount(labels, minlength=NUM_CLASSES).double()).tolist()


# The DVC metrics file's groups, in the order DVC shows them: what a run is chosen by (validation
# accuracy) first, the test accuracy of what was chosen next, then the losses.
METRIC_GROUPS = {
    "val_acc": ("validation", "accuracy"),
    "test_acc": ("test", "accuracy"),
    "val_loss": ("validation", "loss"),
    "test_loss": ("test", "loss"),
}


def compared_metrics(scores: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """The DVC metrics file from ``scores[model][part]``: each metric with one key per model.

    Grouped by metric, not by model, so that ``dvc exp show`` names its columns ``val_acc.mlp``,
    ``val_acc.mlr``, ``test_acc.mlp``, ... (short, unique; in a narrow terminal DVC folds columns from
    the right, so the ones people choose by come first) and ``dvc metrics show`` prints one row.
    Written in this order (not key-sorted): DVC keeps the file's order.
    """
    return {
        group: {model: scores[model][part][value] for model in sorted(scores)}
        for group, (part, value) in METRIC_GROUPS.items()
    }


def model_metrics(metrics: dict, model: str) -> dict[str, float]:
    """One model's test accuracy and loss from the metrics file's content (`make verify`'s names)."""
    return {"test_accuracy": metrics["test_acc"][model], "test_loss": metrics["test_loss"][model]}


def last_epoch(history_csv: Path) -> dict[str, float]:
    """The final epoch's train/valid loss and accuracy from the CSV history."""
    history = pd.read_csv(history_csv)
    row = history.dropna(subset=["valid_accuracy"]).iloc[-1] if "valid_accuracy" in history else history.iloc[-1]
    names = ["train_accuracy", "train_loss", "valid_accuracy", "valid_loss"]
    return {name: round(float(row[name]), 6) for name in names if name in row}
