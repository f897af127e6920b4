"""A rerun changes no committed byte: evaluate and plot are functions of their inputs' content.

Each stage runs twice, the second time on the same inputs with every row shuffled (the split's
parts, the histories, the predictions, the per-class table): every output must be byte-identical.
The predictions given to plot have tied confidences, as the MLP's most confident mistakes do (many
at 100%), so the misclassified figure's order rests on its tie-breaker. The whole pipeline rerun in a fresh clone
on another CPU model, to a clean `git status`: tests/test_reliability.py.
"""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mnistlab.params import MODEL_NAMES
from mnistlab.splitfiles import PARTS, load_arrays, save_arrays
from mnistlab.training import stage_main
from stages import evaluate, plot
from tests.conftest import ROOT

TINY_TRAINING = {"epochs": 1, "batch_size": 16, "eval_batch_size": 32}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_split_module: Path) -> Path:
    """A project folder with params.yaml, the tiny split and both models trained one epoch on it."""
    root = tmp_path_factory.mktemp("trained")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for model in MODEL_NAMES:
        params[f"train_{model}"] |= TINY_TRAINING
    params["trainer"] |= {"accelerator": "cpu", "devices": 1}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(tiny_split_module, root / "split")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for model in MODEL_NAMES:
            stage_main(model, ["split", f"models/{model}"])
    return root


@pytest.fixture(scope="module")
def tiny_split_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64/32/32 synthetic digits, labels balanced, indices in canonical order."""
    folder = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(0)
    for part, size in zip(PARTS, (64, 32, 32), strict=True):
        images = rng.integers(0, 256, (size, 28, 28), dtype=np.uint8)
        save_arrays(folder / part, images, np.arange(size, dtype=np.int64) % 10, np.arange(size, dtype=np.int64) * 3)
    return folder


def shuffled_split(split_dir: Path, destination: Path, seed: int) -> Path:
    """The same parts with their rows in another order (each row keeps its image, label and index)."""
    rng = np.random.default_rng(seed)
    for part in PARTS:
        images, labels, indices = load_arrays(split_dir / part)
        order = rng.permutation(len(labels))
        save_arrays(destination / part, images[order], labels[order], indices[order])
    return destination


def shuffled_csv(source: Path, destination: Path, seed: int) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(source)
    table.sample(frac=1, random_state=seed).to_csv(destination, index=False)


def files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def run_evaluate(root: Path, split: str, out: str) -> dict[str, bytes]:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        evaluate.main(
            [split, "models", f"{out}/metrics.json", out, f"{out}/history", f"{out}/predictions", f"{out}/pc.csv"]
        )
    return files(root / out)


def test_evaluate_gives_the_same_bytes_whatever_the_order_of_the_split_s_rows(trained: Path) -> None:
    first = run_evaluate(trained, "split", "a")
    shuffled_split(trained / "split", trained / "shuffled", seed=1)
    second = run_evaluate(trained, "shuffled", "b")
    assert set(first) >= {"metrics.json", "pc.csv", "predictions/mlp.csv", "history/mlr/machine.json"}
    assert first == second
    predictions = pd.read_csv(trained / "a/predictions/mlp.csv")
    assert predictions["index"].is_monotonic_increasing  # in canonical order, not the file's


def test_plot_gives_the_same_bytes_whatever_the_order_of_its_input_rows(trained: Path) -> None:
    run_evaluate(trained, "split", "eval")
    inputs = trained / "eval"
    for model in MODEL_NAMES:  # the most confident mistakes tie, as the MLP's do at 100%
        predictions = pd.read_csv(inputs / f"predictions/{model}.csv").assign(confidence=1.0)
        predictions["predicted"] = (predictions["actual"] + predictions["index"] % 2) % 10  # half of them wrong
        predictions.to_csv(inputs / f"predictions/{model}.csv", index=False)
    shuffled = trained / "eval-shuffled"
    for model in MODEL_NAMES:
        shuffled_csv(inputs / f"history/{model}/metrics.csv", shuffled / f"history/{model}/metrics.csv", seed=2)
        shuffled_csv(inputs / f"predictions/{model}.csv", shuffled / f"predictions/{model}.csv", seed=3)
    shuffled_csv(inputs / "pc.csv", shuffled / "pc.csv", seed=4)
    shuffled_split(trained / "split", trained / "split-shuffled", seed=5)

    for split, folder, figures in (("split", inputs, "figures-a"), ("split-shuffled", shuffled, "figures-b")):
        plot.main([str(trained / split), str(folder / "history"), str(folder / "predictions"), str(folder / "pc.csv"),
                   str(trained / figures)])  # fmt: skip
    first, second = files(trained / "figures-a"), files(trained / "figures-b")
    assert set(first) == {
        f"{name}.png"
        for name in ("accuracy", "sample_digit", "misclassified_mlp", "per_class_accuracy", "confusion_matrix")
    }
    assert first == second
