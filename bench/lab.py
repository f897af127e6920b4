"""1. The lab's code against ours: the lab's own cells with the real ISLP 0.6.0 in a fresh process, and our fit().

The lab (ISLP ch. 10, MNIST): torchvision's MNIST with ToTensor, ISLP's ``SimpleDataModule`` (validation 0.2, a
worker per usable CPU, batches of 256), ``SimpleModule.classification`` and ``Trainer(deterministic=True,
callbacks=[ErrorTracker()])``; ``fit`` and ``test`` for the MLP, then the MLR. Timed: the data module's set-up,
each ``Trainer`` + ``fit`` (each epoch too), each ``test``; not the imports. ISLP comes from bench/.deps (`make
bench`), which only this module puts on sys.path. Alone: ``python -m bench.lab --epochs 1 --json lab.json``.
"""

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.common import EpochClock, Run, median, ratio, resolve_device, seconds, stage_env, summarize_runs, table
from mnistlab.models import build_model
from mnistlab.workspace import ROOT

DEPS = Path(__file__).resolve().parent / ".deps"
ISLP_VERSION = "0.6.0"
LOG_NAMES = {"mlp": "MNIST", "mlr": "MNIST_MLR"}  # the lab's CSVLogger('logs', name=...)


def import_islp() -> object:
    """ISLP.torch from bench/.deps, with a message that says how to install it when it is missing."""
    sys.path.insert(0, str(DEPS))
    try:
        import ISLP
        import ISLP.torch
    except ImportError as error:
        message = f"bench: no ISLP {ISLP_VERSION} in {DEPS} ({error}): run `make bench`, or pass --skip-lab"
        raise SystemExit(message) from None
    if ISLP.__version__ != ISLP_VERSION:
        raise SystemExit(f"bench: {DEPS} holds ISLP {ISLP.__version__}, not {ISLP_VERSION}: rerun `make bench`")
    return ISLP.torch


def run_lab(model_names: Sequence[str], epochs: int, data_root: Path) -> dict:
    """The lab's cells for ``model_names``, ``epochs`` epochs each; run in a scratch folder (its logs/ go there)."""
    islp = import_islp()
    from pytorch_lightning import Trainer, seed_everything
    from pytorch_lightning.loggers import CSVLogger
    from torchvision.datasets import MNIST
    from torchvision.transforms import ToTensor

    seed_everything(0, workers=True)  # the lab's seed
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device("auto")  # the lab's Trainer leaves accelerator at "auto"

    start = time.perf_counter()
    mnist_train = MNIST(root=str(data_root), train=True, download=True, transform=ToTensor())
    mnist_test = MNIST(root=str(data_root), train=False, download=True, transform=ToTensor())
    max_num_workers = islp.rec_num_workers()
    mnist_data_module = islp.SimpleDataModule(
        mnist_train, mnist_test, validation=0.2, num_workers=max_num_workers, batch_size=256
    )
    report: dict = {"data_s": time.perf_counter() - start, "num_workers": max_num_workers, "models": {}}

    for name in model_names:
        clock = EpochClock(device)
        start = time.perf_counter()
        module = islp.SimpleModule.classification(build_model(name), num_classes=10)
        # The lab builds a CSVLogger for the MLR too but leaves it out of its Trainer: Lightning's
        # default logger then is a CSVLogger as well (no TensorBoard here), so both get one.
        trainer = Trainer(
            deterministic=True,
            max_epochs=epochs,
            logger=CSVLogger("logs", name=LOG_NAMES[name]),
            enable_progress_bar=False,
            callbacks=[islp.ErrorTracker(), clock],
        )
        trainer.fit(module, datamodule=mnist_data_module)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        (test,) = trainer.test(module, datamodule=mnist_data_module)
        report["models"][name] = {
            "fit": dataclasses.asdict(Run(fit_seconds, clock.seconds)),
            "test_s": time.perf_counter() - start,
            "test_accuracy": test["test_accuracy"],
        }
    return report


def lab_process(model_names: Sequence[str], epochs: int, data_root: Path) -> dict:
    """One run of the lab in a fresh Python, as a notebook kernel would run it."""
    with tempfile.TemporaryDirectory(prefix="mnistlab-lab-") as scratch:
        report_path = Path(scratch) / "lab.json"
        command = [sys.executable, "-m", "bench.lab", "--models", *model_names, "--epochs", str(epochs)]
        command += ["--data-root", str(data_root.resolve()), "--json", str(report_path)]
        result = subprocess.run(command, cwd=scratch, env=stage_env([ROOT]), capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"bench: the lab's way failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return json.loads(report_path.read_text())


def measure(model_names: Sequence[str], epochs: int, repeats: int, data_root: Path) -> dict:
    """``repeats`` runs of the lab's cells; medians per model: fit (per epoch, one epoch) and test."""
    runs = [lab_process(model_names, epochs, data_root) for _ in range(repeats)]
    models = {}
    for name in model_names:
        figures = [run["models"][name] for run in runs]
        models[name] = summarize_runs([Run(**one["fit"]) for one in figures], epochs) | {
            "test_s": median([one["test_s"] for one in figures]),
            "test_accuracy": [one["test_accuracy"] for one in figures],
        }
        print(f"  {name} lab's way (ISLP): fit {models[name]['fit_s']:.1f} s for {epochs} epoch(s)", flush=True)
    return {
        "islp": ISLP_VERSION,
        "epochs": epochs,
        "repeats": repeats,
        "num_workers": runs[0]["num_workers"],
        "data_s": median([run["data_s"] for run in runs]),
        "models": models,
    }


def render(lab: dict | None, fits: dict, repeats: int) -> str:
    """Per model: the lab's fit and ours per epoch (the same epochs, the same steps), and the speed-up."""
    rows = []
    for name, figures in fits.items():
        ours, theirs = figures["project"], (lab or {}).get("models", {}).get(name, {})
        lab_figures = [theirs.get(key) for key in ("per_epoch_s", "epoch_median_s", "test_s")]
        row = [name, *map(seconds, lab_figures), seconds(ours["per_epoch_s"]), seconds(ours["fit_s"])]
        rows.append([*row, ratio(lab_figures[0], ours["per_epoch_s"])])
    epochs = len(next(iter(fits.values()))["project"]["runs"][0]["epoch_seconds"])
    how = "skipped"
    if lab:
        how = f"ISLP {lab['islp']}, {lab['num_workers']} loader workers, data module {lab['data_s']:.2f} s"
    return (
        f"1. The lab's way (a: the lab's code, real ISLP; {how}) vs ours (b: mnistlab fit(), median of {repeats}):"
        f" {epochs} epoch(s), same steps; s/epoch = fit wall / epochs (Trainer set-up included, imports not)\n"
        + table(["model", "a s/epoch", "a one epoch", "a test s", "b s/epoch", "b fit s", "a/b"], rows)
    )


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="The lab's cells (real ISLP), timed; writes JSON.")
    parser.add_argument("--models", nargs="+", default=["mlp", "mlr"], choices=list(LOG_NAMES))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="holds MNIST/raw")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    args.json.write_text(json.dumps(run_lab(args.models, args.epochs, args.data_root)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
