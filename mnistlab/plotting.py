"""The lab's figures and a few more, drawn with pandas and matplotlib from the stages' outputs (no torch).

Each figure is a function of its inputs' content, not of their row order: the stage puts the rows in
canonical order (``by_epoch``, ``by_index``) and every ranking has an explicit tie-breaker.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

MODEL_TITLES = {"mlp": "MLP 784-256-128-10", "mlr": "Logistic regression 784-10"}


def by_epoch(history: pd.DataFrame) -> pd.DataFrame:
    """A training history in epoch order."""
    return history.sort_values("epoch", kind="stable").reset_index(drop=True)


def by_index(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per-image predictions in the order of the canonical test file."""
    return predictions.sort_values("index", kind="stable").reset_index(drop=True)


def accuracy_figure(histories: dict[str, pd.DataFrame]) -> Figure:
    """The lab's plot, one panel per model: training vs validation accuracy by epoch."""
    fig, axes = plt.subplots(1, len(histories), figsize=(6 * len(histories), 5), sharey=True, squeeze=False)
    for ax, (name, history) in zip(axes[0], histories.items(), strict=True):
        history.plot(x="epoch", y="train_accuracy", ax=ax, label="Training", marker="o", color="k")
        history.plot(x="epoch", y="valid_accuracy", ax=ax, label="Validation", marker="+", color="r")
        ax.set_title(MODEL_TITLES.get(name, name))
        ax.set_ylabel("Accuracy")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def digit_figure(image: np.ndarray, label: int) -> Figure:
    """The lab's sample: one digit in grey with its label as the title."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(image.squeeze(), cmap="gray")
    ax.set_title(f"Label: {label}")
    return fig


def misclassified_figure(
    predictions: pd.DataFrame,
    images: np.ndarray,
    indices: np.ndarray,
    model_title: str,
    columns: int = 8,
    rows: int = 4,
) -> Figure:
    """The test digits the model gets wrong, most confident mistakes first (ties: lower test index first).

    ``images[i]`` is the test image whose canonical index is ``indices[i]``.
    """
    wrong = predictions[predictions.actual != predictions.predicted]
    # confidences tie (many mistakes at 100%): the index decides, so the figure is the same on every run
    wrong = wrong.sort_values(["confidence", "index"], ascending=[False, True], kind="stable").head(columns * rows)
    row_of = pd.Series(np.arange(len(indices)), index=indices)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, row) in zip(axes.flat, wrong.iterrows(), strict=False):
        ax.imshow(images[row_of[int(row["index"])]], cmap="gray_r")
        ax.set_title(f"true {row.actual:.0f}, pred {row.predicted:.0f}\n{row.confidence:.0%}", fontsize=8)
    total = int((predictions.actual != predictions.predicted).sum())
    fig.suptitle(f"{model_title}: the most confident mistakes ({len(wrong)} of {total})")
    fig.tight_layout()
    return fig


def per_class_figure(per_class: pd.DataFrame) -> Figure:
    """Test accuracy per digit, the models side by side."""
    fig, ax = plt.subplots(figsize=(8, 4))
    per_class.set_index("digit").plot.bar(ax=ax, rot=0)
    ax.set_ylim(max(0.0, per_class.drop(columns="digit").to_numpy().min() - 0.05), 1.0)
    ax.set_ylabel("Test accuracy")
    labels = [MODEL_TITLES.get(c, c) for c in per_class.columns if c != "digit"]
    ax.legend(labels, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(labels), frameon=False)
    fig.tight_layout()
    return fig


def confusion_figure(predictions: dict[str, pd.DataFrame]) -> Figure:
    """Confusion matrices (counts, log colour scale) from the per-image predictions."""
    fig, axes = plt.subplots(1, len(predictions), figsize=(5.5 * len(predictions), 5), squeeze=False)
    for ax, (name, table) in zip(axes[0], predictions.items(), strict=True):
        counts = pd.crosstab(table.actual, table.predicted).reindex(index=range(10), columns=range(10), fill_value=0)
        ax.imshow(counts.to_numpy() + 1, cmap="Blues", norm=matplotlib.colors.LogNorm())
        for (actual, predicted), count in counts.stack().items():
            colour = "white" if count > counts.to_numpy().max() / 10 else "black"
            ax.text(predicted, actual, count, ha="center", va="center", fontsize=7, color=colour)
        ax.set(
            xticks=range(10), yticks=range(10), xlabel="Predicted", ylabel="Actual", title=MODEL_TITLES.get(name, name)
        )
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version string: same inputs, same bytes
    plt.close(fig)
