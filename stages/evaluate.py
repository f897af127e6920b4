"""Stage evaluate: both models on the test set, metrics and per-image predictions, and the small
committed copies of what training wrote (history, summary, machine record) (params: evaluate)."""

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mnistlab.data import load_split
from mnistlab.evaluation import last_epoch, load_model, per_class_accuracy, predict_logits, predictions_table, score
from mnistlab.params import MODEL_NAMES, EvaluateParams, parse_section, read_params
from mnistlab.stage import CHECKPOINT, HISTORY, MACHINE, SUMMARY, copy_file, run_stage, write_json


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("test_split", type=Path, help="the split stage's test.pt")
    parser.add_argument("models_dir", type=Path, help="holds <model>/: the training stages' outputs")
    parser.add_argument("metrics_dir", type=Path, help="output: <model>.json and <model>_summary.txt")
    parser.add_argument("history_dir", type=Path, help="output: <model>/metrics.csv and <model>/machine.json")
    parser.add_argument("predictions_dir", type=Path, help="output: <model>.csv, one row per test image")
    parser.add_argument("per_class", type=Path, help="output: test accuracy per digit and model (CSV)")
    args = parser.parse_args(argv)
    params = parse_section(EvaluateParams, read_params(), "evaluate")

    test = load_split(args.test_split)
    per_class = pd.DataFrame({"digit": range(10)})
    args.predictions_dir.mkdir(parents=True, exist_ok=True)
    for name in MODEL_NAMES:
        trained = args.models_dir / name
        for source, copy in {
            HISTORY: args.history_dir / name / HISTORY,
            MACHINE: args.history_dir / name / MACHINE,
            SUMMARY: args.metrics_dir / f"{name}_summary.txt",
        }.items():
            copy_file(trained / source, copy)
        logits = predict_logits(load_model(trained / CHECKPOINT), test.images, params.batch_size)
        metrics = score(logits, test.labels) | last_epoch(trained / HISTORY)
        write_json(args.metrics_dir / f"{name}.json", metrics)
        predictions_table(logits, test).to_csv(args.predictions_dir / f"{name}.csv", index=False)
        per_class[name] = [round(value, 6) for value in per_class_accuracy(logits, test.labels)]
        print(f"{name}: test_accuracy {metrics['test_accuracy']:.4f}, test_loss {metrics['test_loss']:.4f}")
    per_class.to_csv(args.per_class, index=False)


if __name__ == "__main__":
    run_stage(main)
