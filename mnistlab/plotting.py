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

    ``images[i]`` is the test image whose canonical index is ``indices[i]``. The digits are tiles of one
    image, each under its caption (one axes instead of 32: a third of the time to lay out and draw).
    """
    wrong = predictions[predictions.actual != predictions.predicted]
    # confidences tie (many mistakes at 100%): the index decides, so the figure is the same on every run
    wrong = wrong.sort_values(["confidence", "index"], ascending=[False, True], kind="stable").head(columns * rows)
    row_of = pd.Series(np.arange(len(indices)), index=indices)
    side = images.shape[-1]
    caption, gap = side // 3, side // 7  # image pixels: the band above each digit for its caption, between tiles
    tile_height, tile_width = caption + side + gap, side + gap
    mosaic = np.zeros((rows * tile_height, columns * tile_width), dtype=images.dtype)  # 0: white in gray_r
    width, title = 1.6 * columns, 0.5  # inches: the mosaic fills the width, the title gets a band above it
    height = width * mosaic.shape[0] / mosaic.shape[1] + title
    fig, ax = plt.subplots(figsize=(width, height))
    for place, (_, row) in enumerate(wrong.iterrows()):
        top, left = (place // columns) * tile_height + caption, (place % columns) * tile_width + gap // 2
        mosaic[top : top + side, left : left + side] = images[row_of[int(row["index"])]]
        label = f"true {row.actual:.0f}, pred {row.predicted:.0f}\n{row.confidence:.0%}"
        ax.text(left + (side - 1) / 2, top - 1, label, ha="center", va="bottom", fontsize=8)
    ax.imshow(mosaic, cmap="gray_r")
    ax.axis("off")
    total = int((predictions.actual != predictions.predicted).sum())
    fig.suptitle(f"{model_title}: the most confident mistakes ({len(wrong)} of {total})")
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - title / height)
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
            text = ax.text(predicted, actual, count, ha="center", va="center", fontsize=7, color=colour)
            text.set_in_layout(False)  # inside its cell: the layout need not measure 200 texts
        ax.set(
            xticks=range(10), yticks=range(10), xlabel="Predicted", ylabel="Actual", title=MODEL_TITLES.get(name, name)
        )
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version string: same inputs, same bytes
    plt.close(fig)
