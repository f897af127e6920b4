"""Stage evaluate: both models on the validation and test sets, the metrics people compare runs by,
per-image test predictions, and the small committed copies of what training wrote (params: evaluate)."""

import argparse
from collections.abc import Sequence
from pathlib import Path

from mnistlab.stage import CHECKPOINT, HISTORY, MACHINE, SUMMARY, check_params_first, copy_file, run_stage, write_json

if __name__ == "__main__":
    check_params_first("evaluate")  # before torch loads: a typo costs a second, not four

import pandas as pd

from mnistlab.data import in_index_order, load_split
from mnistlab.evaluation import (
    compared_metrics,
    load_model,
    per_class_accuracy,
    predict_logits,
    predictions_table,
    score,
)
from mnistlab.params import MODEL_NAMES, EvaluateParams, parse_section, read_params


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split_dir", type=Path, help="the split stage's output: validation/ and test/")
    parser.add_argument("models_dir", type=Path, help="holds <model>/: the training stages' outputs")
    parser.add_argument("metrics", type=Path, help="output: the DVC metrics file, validation and test acc and loss")
    parser.add_argument("summaries_dir", type=Path, help="output: <model>_summary.txt")
    parser.add_argument("history_dir", type=Path, help="output: <model>/metrics.csv and <model>/machine.json")
    parser.add_argument("predictions_dir", type=Path, help="output: <model>.csv, one row per test image")
    parser.add_argument("per_class", type=Path, help="output: test accuracy per digit and model (CSV)")
    args = parser.parse_args(argv)
    params = parse_section(EvaluateParams, read_params(), "evaluate")

    # in canonical order, whatever order the files hold the rows in: same inputs, same bytes out
    parts = {part: in_index_order(load_split(args.split_dir / part)) for part in ("validation", "test")}
    test = parts["test"]
    per_class = pd.DataFrame({"digit": range(10)})
    args.predictions_dir.mkdir(parents=True, exist_ok=True)
    scores = {}
    for name in MODEL_NAMES:
        trained = args.models_dir / name
        for small_file, copy in {
            HISTORY: args.history_dir / name / HISTORY,
            MACHINE: args.history_dir / name / MACHINE,
            SUMMARY: args.summaries_dir / f"{name}_summary.txt",
        }.items():
            copy_file(trained / small_file, copy)
        model = load_model(trained / CHECKPOINT)  # the weights training saved, the last epoch's
        logits = {part: predict_logits(model, split.images, params.batch_size) for part, split in parts.items()}
        scores[name] = {part: score(logits[part], split.labels) for part, split in parts.items()}
        predictions_table(logits["test"], test).to_csv(args.predictions_dir / f"{name}.csv", index=False)
        per_class[name] = [round(value, 6) for value in per_class_accuracy(logits["test"], test.labels)]
        validation, tested = scores[name]["validation"], scores[name]["test"]
        print(
            f"{name}: validation accuracy {validation['accuracy']:.4f} (loss {validation['loss']:.4f}), "
            f"test accuracy {tested['accuracy']:.4f} (loss {tested['loss']:.4f})"
        )
    write_json(args.metrics, compared_metrics(scores), sort_keys=False)
    per_class.to_csv(args.per_class, index=False)


if __name__ == "__main__":
    run_stage(main)
