"""How fast the project is, next to the lab's own code, on this machine: prints tables, writes JSON.

`make bench` (``python -m bench``), each item a claim of the README or docs/performance.md:
1. the lab's own cells with the real ISLP 0.6.0 against our fit(), the same steps (bench/lab.py);
2. the pipeline, stage by stage: one ``dvc repro -f`` in a throwaway copy (bench/pipeline.py);
3. one experiment, `dvc exp run -S train_mlr.epochs=1`: its wall time, DVC's own share, the same from the
   run-cache, and queued (bench/experiment.py).
`make bench-gpu` (``python3 -m bench --gpu``; no DVC or torchinfo needed):
4. the GPU table: our fits, a plain loop, eager vs CUDA graphs, and each stage without DVC (bench/gpu.py).

    python -m bench --quick                           # the smoke test: 1 epoch, 1 repeat, 1-epoch stages
    python -m bench --gpu --accelerator cpu --quick   # the GPU table's code, on a CPU
"""

import argparse
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from bench import experiment, gpu, lab, pipeline
from bench.common import FitSettings, extrapolate, machine, measure_ours, resolve_device, synchronize
from mnistlab.params import MODEL_NAMES, TrainerParams, parse_section, read_params, seed, train_params, train_section
from mnistlab.training import quiet_lightning
from mnistlab.workspace import ROOT


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, 1 repeat, 1-epoch stages")
    parser.add_argument("--gpu", action="store_true", help="the GPU table (item 4) instead of items 1-3")
    parser.add_argument("--epochs", type=int, help="epochs per fit (item 1 default 3; --gpu 30; --quick 1)")
    parser.add_argument("--repeats", type=int, help="runs per figure, median reported (default 3; --gpu, --quick 1)")
    parser.add_argument("--lab-repeats", type=int, default=1, help="runs of the lab's way (slow; default 1)")
    parser.add_argument("--pipeline-epochs", type=int, help="epochs per model in the stages (params.yaml's; --quick 1)")
    parser.add_argument("--accelerator", help="Lightning accelerator (default: params.yaml's; --gpu: gpu)")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="holds MNIST/raw (and split/ on a CPU)")
    parser.add_argument("--skip-lab", action="store_true", help="leave out the lab's way (item 1's first half)")
    parser.add_argument("--skip-pipeline", action="store_true", help="leave out item 2")
    parser.add_argument("--skip-experiment", action="store_true", help="leave out item 3")
    parser.add_argument("--json", type=Path, help="where the JSON goes (bench/results.json; --gpu: results_gpu.json)")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else 30 if args.gpu else 3)
    args.repeats = args.repeats or (1 if args.quick or args.gpu else 3)
    args.json = args.json or Path("bench/results_gpu.json" if args.gpu else "bench/results.json")
    args.pipeline_epochs = args.pipeline_epochs or (1 if args.quick else None)
    args.accelerator = args.accelerator or ("gpu" if args.gpu else None)
    return args


def recorded(value: object) -> object:
    """A setting as results.json records it: a path outside the repository is the reader's own, not recorded."""
    if isinstance(value, Path) and not value.resolve().is_relative_to(ROOT):
        return "a path outside the repository"
    return str(value.resolve().relative_to(ROOT)) if isinstance(value, Path) else value


def fit_settings(args: argparse.Namespace) -> FitSettings:
    """params.yaml's, with the bench's epochs and accelerator; an error if they ask for a GPU torch cannot see."""
    raw = read_params()
    trainer = parse_section(TrainerParams, raw, "trainer")
    if args.accelerator:
        trainer = trainer.model_copy(update={"accelerator": args.accelerator})
    device = resolve_device(trainer.accelerator)
    if device.type == "cuda" and not torch.cuda.is_available():
        hint = "pass --accelerator cpu for a smoke run on a CPU"
        raise SystemExit(f"bench: accelerator {trainer.accelerator!r} asks for a GPU, but torch sees none: {hint}")
    params = {
        name: parse_section(train_params(name), raw, train_section(name)).model_copy(update={"epochs": args.epochs})
        for name in args.models
    }
    return FitSettings(params, trainer, seed(raw), device)


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    quiet_lightning()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)  # nor a 'GPU available' banner per fit
    settings = fit_settings(args)
    raw_dir = args.data_root / "MNIST" / "raw"
    if not (raw_dir / "train-images-idx3-ubyte").exists():
        raise SystemExit(f"bench: no MNIST in {raw_dir}: run the download stage (make repro), or pass --data-root")
    if settings.device.type == "cuda":  # CUDA's start-up belongs to the process, not to a fit
        torch.zeros(1, device=settings.device)
        synchronize(settings.device)

    recorded_args = {key: recorded(value) for key, value in vars(args).items()}
    report = {"machine": machine(settings.device), "settings": recorded_args}
    print("machine: " + ", ".join(f"{key} {value}" for key, value in report["machine"].items()), flush=True)
    sections = (gpu_report if args.gpu else cpu_report)(args, report, settings, raw_dir)
    print("\n" + "\n\n".join(sections))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {args.json}")


def gpu_report(args: argparse.Namespace, report: dict, settings: FitSettings, raw_dir: Path) -> list[str]:
    """Item 4: the stages without DVC in a scratch copy (its split feeds the fits), then the fits."""
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-gpu-") as folder:
        print("stages, without DVC:", flush=True)
        accelerator, epochs = settings.trainer.accelerator, args.pipeline_epochs
        report["stage_times"] = pipeline.measure_without_dvc(Path(folder), raw_dir, accelerator, epochs)
        print("fits:", flush=True)
        split_dir = Path(folder) / "data" / "split"  # the split stage's output (dvc.yaml)
        report["gpu"] = gpu.measure(settings, split_dir, args.repeats)
    title = "Stage times: each `python -m stages.<name>` (dvc.yaml's command, no DVC, torchinfo {})"
    stages = pipeline.render(report["stage_times"], title.format(report["stage_times"]["torchinfo"]))
    return [gpu.render(report["gpu"], report["machine"], args.repeats), stages]


def cpu_report(args: argparse.Namespace, report: dict, settings: FitSettings, raw_dir: Path) -> list[str]:
    """Items 1-3."""
    split_dir = args.data_root / "split"
    if not (split_dir / "train").is_dir():
        raise SystemExit(f"bench: {split_dir / 'train'} not found: run the pipeline's split stage first (make repro)")
    print("our fits, and the same steps in a plain loop:", flush=True)
    report["fits"] = measure_ours(settings, split_dir, args.repeats)
    if not args.skip_lab:
        print("the lab's way:", flush=True)
        report["lab"] = lab.measure(args.models, args.epochs, args.lab_repeats, args.data_root)
    sections = [lab.render(report.get("lab"), report["fits"], args.repeats)]
    if not args.skip_pipeline:
        print("pipeline (one dvc repro -f in a temporary copy):", flush=True)
        result = pipeline.measure(raw_dir, settings.trainer.accelerator, args.pipeline_epochs)
        if "lab" in report and set(report["lab"]["models"]) == set(MODEL_NAMES):
            result["lab_s"] = pipeline.lab_seconds(report["lab"], result["epochs"])
            result["lab_note"] = f"{args.epochs} epoch(s) measured, extrapolated to {max(result['epochs'].values())}"
        if set(report["fits"]) == set(MODEL_NAMES):  # the floor: both fits' steps, nothing else
            plain = [extrapolate(report["fits"][name]["plain"], result["epochs"][name]) for name in MODEL_NAMES]
            result["plain_fits_s"] = sum(plain)
        report["pipeline"] = result
        title = "2. The whole pipeline: one `dvc repro -f`, a stage from its 'Running stage' line to the next"
        sections.append(pipeline.render(result, title))
    if not args.skip_experiment:
        print("one experiment (dvc exp run in a temporary copy):", flush=True)
        epochs = 2 if args.quick else args.pipeline_epochs  # with --quick 2, so that 1 epoch changes something
        report["experiment"] = experiment.measure(raw_dir, settings.trainer.accelerator, args.repeats, epochs)
        sections.append(experiment.render(report["experiment"]))
    return sections
