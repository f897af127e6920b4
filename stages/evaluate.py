"""Stage evaluate: both models on the test set, the metrics people compare runs by, per-image
predictions, and the small committed copies of what training wrote (params: evaluate)."""

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mnistlab.data import load_split
from mnistlab.evaluation import (
    compared_metrics,
    load_model,
    per_class_accuracy,
    predict_logits,
    predictions_table,
    score,
)
from mnistlab.machine import arithmetic_record
from mnistlab.params import MODEL_NAMES, EvaluateParams, parse_section, read_params
from mnistlab.stage import CHECKPOINT, HISTORY, MACHINE, SUMMARY, copy_file, read_json, run_stage, write_json


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("test_split", type=Path, help="the split stage's test.pt")
    parser.add_argument("models_dir", type=Path, help="holds <model>/: the training stages' outputs")
    parser.add_argument("metrics", type=Path, help="output: the DVC metrics file, test acc and loss per model")
    parser.add_argument("summaries_dir", type=Path, help="output: <model>_summary.txt")
    parser.add_argument("history_dir", type=Path, help="output: <model>/metrics.csv and <model>/machine.json")
    parser.add_argument("predictions_dir", type=Path, help="output: <model>.csv, one row per test image")
    parser.add_argument("per_class", type=Path, help="output: test accuracy per digit and model (CSV)")
    args = parser.parse_args(argv)
    params = parse_section(EvaluateParams, read_params(), "evaluate")

    test = load_split(args.test_split)
    per_class = pd.DataFrame({"digit": range(10)})
    args.predictions_dir.mkdir(parents=True, exist_ok=True)
    scores = {}
    for name in MODEL_NAMES:
        trained = args.models_dir / name
        copy_file(trained / HISTORY, args.history_dir / name / HISTORY)
        copy_file(trained / SUMMARY, args.summaries_dir / f"{name}_summary.txt")
        # the committed record keeps what decides the bits, not the CPU's model (docs/reproducibility.md)
        write_json(args.history_dir / name / MACHINE, arithmetic_record(read_json(trained / MACHINE)))
        logits = predict_logits(load_model(trained / CHECKPOINT), test.images, params.batch_size)
        scores[name] = score(logits, test.labels)
        predictions_table(logits, test).to_csv(args.predictions_dir / f"{name}.csv", index=False)
        per_class[name] = [round(value, 6) for value in per_class_accuracy(logits, test.labels)]
        print(f"{name}: test accuracy {scores[name]['test_accuracy']:.4f}, test loss {scores[name]['test_loss']:.4f}")
    write_json(args.metrics, compared_metrics(scores))
    per_class.to_csv(args.per_class, index=False)


if __name__ == "__main__":
    run_stage(main)
