"""Stage split: the lab's seeded 80/20 train/validation split and the test set as tensors
(params: seed, split)."""

import argparse
from collections.abc import Sequence
from pathlib import Path

from mnistlab.stage import check_params_first, run_stage, write_json

if __name__ == "__main__":
    check_params_first("split")  # before torch loads: a typo costs a second, not four

from mnistlab.data import describe, read_mnist, save_split, split_indices, take
from mnistlab.params import SplitParams, parse_section, read_params, seed


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path, help="torchvision's MNIST root (holds MNIST/raw)")
    parser.add_argument(
        "split_dir", type=Path, help="output: train/, validation/, test/ (images, labels, indices as .npy)"
    )
    parser.add_argument("description", type=Path, help="output: the dataset description (JSON)")
    args = parser.parse_args(argv)
    raw = read_params()
    params, split_seed = parse_section(SplitParams, raw, "split"), seed(raw)

    images, labels = read_mnist(args.root, train=True)
    train_indices, validation_indices = split_indices(len(labels), params.validation_fraction, split_seed)
    train = take(images, labels, train_indices)
    validation = take(images, labels, validation_indices)
    test_images, test_labels = read_mnist(args.root, train=False)
    test = take(test_images, test_labels)

    for name, part in {"train": train, "validation": validation, "test": test}.items():
        save_split(part, args.split_dir / name)
    write_json(args.description, describe(train, validation, test))
    print(f"split: {len(train)} train, {len(validation)} validation, {len(test)} test")


if __name__ == "__main__":
    run_stage(main)
