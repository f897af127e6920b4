"""Stage plot: the lab's figures (accuracy by epoch, a sample digit) and the evaluation's, as PNGs."""

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mnistlab import plotting
from mnistlab.data import load_split, training_sample
from mnistlab.params import MODEL_NAMES
from mnistlab.stage import run_stage


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split_dir", type=Path, help="the split stage's output (images for the figures)")
    parser.add_argument("history_dir", type=Path, help="holds <model>/metrics.csv")
    parser.add_argument("predictions_dir", type=Path, help="holds <model>.csv")
    parser.add_argument("per_class", type=Path, help="the evaluate stage's per-class accuracy CSV")
    parser.add_argument("figures_dir", type=Path, help="output: the PNGs")
    args = parser.parse_args(argv)

    histories = {name: pd.read_csv(args.history_dir / name / "metrics.csv") for name in MODEL_NAMES}
    predictions = {name: pd.read_csv(args.predictions_dir / f"{name}.csv") for name in MODEL_NAMES}
    sample_image, sample_label = training_sample(args.split_dir, index=0)  # the lab's mnist_train[0]
    test_images = load_split(args.split_dir / "test.pt").images  # row i is test image i

    figures = {
        "accuracy.png": plotting.accuracy_figure(histories),
        "sample_digit.png": plotting.digit_figure(sample_image, sample_label),
        "misclassified_mlp.png": plotting.misclassified_figure(predictions["mlp"], test_images, "MLP"),
        "per_class_accuracy.png": plotting.per_class_figure(pd.read_csv(args.per_class)),
        "confusion_matrix.png": plotting.confusion_figure(predictions),
    }
    for name, figure in figures.items():
        plotting.save(figure, args.figures_dir / name)
    print(f"plot: {', '.join(figures)} in {args.figures_dir}")


if __name__ == "__main__":
    run_stage(main)
