"""Stage plot: the lab's figures (accuracy by epoch, a sample digit) and the evaluation's, as PNGs.

pandas and matplotlib only: the split is read as numpy arrays, so this stage never imports torch.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mnistlab import plotting
from mnistlab.params import MODEL_NAMES
from mnistlab.splitfiles import load_arrays, training_sample
from mnistlab.stage import HISTORY, run_stage


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split_dir", type=Path, help="the split stage's output (images for the figures)")
    parser.add_argument("history_dir", type=Path, help="holds <model>/metrics.csv")
    parser.add_argument("predictions_dir", type=Path, help="holds <model>.csv")
    parser.add_argument("per_class", type=Path, help="the evaluate stage's per-class accuracy CSV")
    parser.add_argument("figures_dir", type=Path, help="output: the PNGs")
    args = parser.parse_args(argv)

    # rows in a canonical order, whatever order the files list them in: same inputs, same bytes
    histories = {name: plotting.by_epoch(pd.read_csv(args.history_dir / name / HISTORY)) for name in MODEL_NAMES}
    predictions = {name: plotting.by_index(pd.read_csv(args.predictions_dir / f"{name}.csv")) for name in MODEL_NAMES}
    per_class = pd.read_csv(args.per_class).sort_values("digit", kind="stable")
    sample_image, sample_label = training_sample(args.split_dir, index=0)  # the lab's mnist_train[0]
    test_images, _, test_indices = load_arrays(args.split_dir / "test")

    figures = {
        "accuracy.png": plotting.accuracy_figure(histories),
        "sample_digit.png": plotting.digit_figure(sample_image, sample_label),
        "misclassified_mlp.png": plotting.misclassified_figure(predictions["mlp"], test_images, test_indices, "MLP"),
        "per_class_accuracy.png": plotting.per_class_figure(per_class),
        "confusion_matrix.png": plotting.confusion_figure(predictions),
    }
    for name, figure in figures.items():
        plotting.save(figure, args.figures_dir / name)
    print(f"plot: {', '.join(figures)} in {args.figures_dir}")


if __name__ == "__main__":
    run_stage(main)
