"""How fast the project is, next to the lab's own code, on this machine: prints tables, writes JSON.

CPU (`make bench`, ``python -m bench``):
1. The lab's way (bench/lab.py: the lab's cells with the real ISLP 0.6.0) vs ours (``fit``), same steps.
2. Lightning's overhead: ``fit`` vs the same steps in a plain PyTorch loop (bench/overhead.py).
3. Stage start-up: importing each stage, and its ``--help`` (bench/startup.py).
4. The whole pipeline: one ``dvc repro -f`` in a throwaway copy, per stage, its non-training time, and
   the lab's two fits + tests (extrapolated to the pipeline's epochs) over it (bench/pipeline.py).
5. What bounds a CPU step, under torch.profiler (bench/step_profile.py).
6. What MKL's strict mode (thread-invariant bits) costs: our fit with it and without (bench/strict_mode.py).
7. What ATen's AVX2 kernels (one result on AVX2 and AVX-512 CPUs) cost on AVX-512 (bench/kernels.py).
8. One experiment: `dvc exp run -S train_mlr.epochs=1` from a reproduced baseline, its stages' start-up,
   DVC's own share, the run-cache, a queued experiment (bench/experiment.py).

GPU (`make bench-gpu`, ``python3 -m bench --gpu``): our fits, the plain loop, the graph path (eager vs
CUDA graphs) and each stage as ``python -m stages.<name>`` without DVC (bench/gpu.py,
bench/stage_times.py); only the repository and the MNIST files are read, no DVC or torchinfo needed.

Usage (from the project root):
    python -m bench                        # the recorded CPU figures (needs data/split: make repro)
    python -m bench --quick                # a smoke test: 1 epoch, 1 repeat, 1-epoch pipeline
    python3 -m bench --gpu                 # the GPU table, 30 epochs
    python -m bench --gpu --accelerator cpu --quick   # the GPU table's code, on a CPU
    python -m bench --only experiment --mnist-raw /path/to/raw   # item 8 alone, into results.json's "experiment"
"""

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from bench import experiment, gpu, kernels, lab, overhead, pipeline, stage_times, startup, step_profile, strict_mode
from bench.common import extrapolate, machine, quiet_lightning, resolve_device, stage_commands, stage_env, synchronize
from mnistlab.params import (
    MODEL_NAMES,
    TrainerParams,
    TrainParams,
    parse_section,
    read_params,
    seed,
    train_params,
    train_section,
)
from mnistlab.workspace import ROOT


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, 1 repeat, 1-epoch stages")
    parser.add_argument("--gpu", action="store_true", help="the GPU table instead of items 1-5")
    parser.add_argument("--epochs", type=int, help="epochs per fit (items 1-2 default 3; --gpu 30; --quick 1)")
    parser.add_argument(
        "--repeats", type=int, help="runs per fit figure, median reported (default 3; --gpu, --quick 1)"
    )
    parser.add_argument("--lab-repeats", type=int, default=1, help="runs of the lab's way (slow; default 1)")
    parser.add_argument("--startup-repeats", type=int, help="runs per start-up figure (default 5; --quick: 1)")
    parser.add_argument(
        "--pipeline-epochs", type=int, help="epochs per model in the stages (default: params.yaml's; --quick: 1)"
    )
    parser.add_argument("--accelerator", help="Lightning accelerator (default: params.yaml's; --gpu: gpu)")
    parser.add_argument("--threads", type=int, help="torch threads, here and in child processes (default: torch's)")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="holds MNIST/raw (and split/ on a CPU)")
    parser.add_argument("--skip-lab", action="store_true", help="leave out the lab's way (item 1a)")
    parser.add_argument("--skip-startup", action="store_true", help="leave out item 3")
    parser.add_argument("--skip-pipeline", action="store_true", help="leave out item 4")
    parser.add_argument("--skip-profile", action="store_true", help="leave out item 5 (CPU only)")
    parser.add_argument("--skip-strict", action="store_true", help="leave out item 6 (CPU only)")
    parser.add_argument("--skip-kernels", action="store_true", help="leave out item 7 (CPU only)")
    parser.add_argument(
        "--skip-experiment", action="store_true", help="leave out item 8 (CPU only; --quick leaves it out)"
    )
    parser.add_argument(
        "--only",
        choices=["experiment"],
        help="run this item alone; its key replaces that of the JSON, the rest is kept",
    )
    parser.add_argument("--mnist-raw", type=Path, help="the four MNIST files (default: DATA_ROOT/MNIST/raw)")
    parser.add_argument(
        "--experiment-repeats", type=int, help="real runs of item 8's experiment (default 3; --quick 1)"
    )
    parser.add_argument("--skip-stages", action="store_true", help="--gpu: leave out the stage times")
    parser.add_argument("--profile-steps", type=int, help="steps per model in item 5 (default 100; --quick: 20)")
    parser.add_argument("--json", type=Path, help="where the JSON goes (bench/results.json; --gpu: results_gpu.json)")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else 30 if args.gpu else 3)
    args.repeats = args.repeats or (1 if args.quick or args.gpu else 3)
    args.startup_repeats = args.startup_repeats or (1 if args.quick else 5)
    args.profile_steps = args.profile_steps or (20 if args.quick else 100)
    args.experiment_repeats = args.experiment_repeats or (1 if args.quick else 3)
    args.json = args.json or Path("bench/results_gpu.json" if args.gpu else "bench/results.json")
    if args.quick and args.pipeline_epochs is None:
        args.pipeline_epochs = 1
    if args.gpu and args.accelerator is None:
        args.accelerator = "gpu"
    return args


def recorded(value: object) -> object:
    """A setting as results.json records it: a path outside the repository is the reader's own, not recorded."""
    if not isinstance(value, Path):
        return value
    absolute = value.resolve()
    return str(absolute.relative_to(ROOT)) if absolute.is_relative_to(ROOT) else "a path outside the repository"


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    quiet_lightning()
    if args.threads:
        torch.set_num_threads(args.threads)
    raw = read_params()
    run_seed = seed(raw)
    trainer = parse_section(TrainerParams, raw, "trainer")
    if args.accelerator:
        trainer = trainer.model_copy(update={"accelerator": args.accelerator})
    device = resolve_device(trainer.accelerator)
    params = {
        name: parse_section(train_params(name), raw, train_section(name)).model_copy(update={"epochs": args.epochs})
        for name in args.models
    }
    raw_dir = args.mnist_raw or args.data_root / "MNIST" / "raw"
    if not (raw_dir / "train-images-idx3-ubyte").exists():
        raise SystemExit(f"bench: no MNIST in {raw_dir}: run the download stage (make repro), or pass --data-root")
    if device.type == "cuda" and not torch.cuda.is_available():
        hint = "pass --accelerator cpu for a smoke run on a CPU"
        raise SystemExit(f"bench: accelerator {trainer.accelerator!r} asks for a GPU, but torch sees none: {hint}")
    if device.type == "cuda":  # CUDA's start-up belongs to the process, not to a fit
        torch.zeros(1, device=device)
        synchronize(device)

    settings = {key: recorded(value) for key, value in vars(args).items()}
    report: dict = {"machine": machine(device), "settings": settings}
    print("machine: " + ", ".join(f"{key} {value}" for key, value in report["machine"].items()), flush=True)
    machine_figures = report["machine"]
    if args.only:  # one item, under its key in the JSON, with the machine and settings it ran with
        report[args.only] = measure_experiment(args, trainer, raw_dir) | {
            "machine": machine_figures,
            "settings": settings,
        }
        sections = [experiment.render(report[args.only])]
        report = (json.loads(args.json.read_text()) if args.json.exists() else {}) | {args.only: report[args.only]}
    elif args.gpu:
        sections = gpu_report(args, report, params, trainer, run_seed, raw_dir, device)
    else:
        sections = cpu_report(args, report, params, trainer, run_seed, raw_dir, device)
    print("\n" + "\n\n".join([machine_line(machine_figures), *sections]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {args.json}")


def machine_line(figures: dict) -> str:
    return (
        f"Machine: {figures['cpu']}, {figures['cpus_usable']} CPUs usable, torch threads {figures['torch_threads']}, "
        f"GPU {figures['gpu'] or 'none'}, device {figures['device']}, torch {figures['torch']}, "
        f"Lightning {figures['pytorch_lightning']}"
    )


def gpu_report(
    args: argparse.Namespace,
    report: dict,
    params: dict[str, TrainParams],
    trainer: TrainerParams,
    run_seed: int,
    raw_dir: Path,
    device: torch.device,
) -> list[str]:
    """The stages without DVC in a scratch copy (its split feeds the fits), then the fits; the GPU table."""
    sections = []
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-gpu-") as folder:
        project = stage_times.scratch_project(Path(folder), raw_dir, trainer.accelerator, args.pipeline_epochs)
        names = ["download", "split"] if args.skip_stages else list(stage_commands(project))
        print("stages, without DVC:", flush=True)
        stages = stage_times.measure(project, names, args.threads)
        print("fits:", flush=True)
        split_dir = project / "data" / "split"  # the split stage's output (dvc.yaml)
        report["gpu"] = gpu.measure(args.models, params, trainer, run_seed, split_dir, device, args.repeats)
    sections.append(gpu.render(report["gpu"], report["machine"], args.repeats))
    if not args.skip_stages:
        report["stage_times"] = stages
        sections.append(stage_times.render(stages, "Stage times"))
    return sections


def cpu_report(
    args: argparse.Namespace,
    report: dict,
    params: dict[str, TrainParams],
    trainer: TrainerParams,
    run_seed: int,
    raw_dir: Path,
    device: torch.device,
) -> list[str]:
    """Items 1-5."""
    split_dir = args.data_root / "split"
    if not (split_dir / "train").is_dir():
        raise SystemExit(f"bench: {split_dir / 'train'} not found: run the pipeline's split stage first (make repro)")
    env = stage_env(args.threads)
    print("fits, ours and the plain loop:", flush=True)
    fits = overhead.measure(args.models, params, trainer, run_seed, split_dir, device, args.repeats)
    report["fits"] = fits
    if not args.skip_lab:
        print("the lab's way:", flush=True)
        report["lab"] = lab.measure(args.models, args.epochs, args.lab_repeats, args.data_root, args.threads)
    sections = [lab.render(report.get("lab"), fits, args.repeats), overhead.render(fits, args.repeats)]
    if not args.skip_startup:
        report["startup"] = startup.measure(args.startup_repeats, env)
        sections.append(startup.render(report["startup"]))
    if not args.skip_pipeline:
        print("pipeline (one dvc repro -f in a temporary copy):", flush=True)
        result = pipeline.measure(raw_dir, trainer.accelerator, args.pipeline_epochs, env)
        if "lab" in report and set(report["lab"]["models"]) == set(MODEL_NAMES):
            result["lab_s"] = lab.lab_seconds(report["lab"], result["epochs"])
            result["lab_note"] = f"{args.epochs} epoch(s) measured, extrapolated to {max(result['epochs'].values())}"
        if set(fits) == set(MODEL_NAMES):  # the floor: both fits' steps, nothing else
            result["plain_fits_s"] = sum(
                extrapolate(fits[name]["plain"], result["epochs"][name]) for name in MODEL_NAMES
            )
        report["pipeline"] = result
        sections.append(pipeline.render(result))
    if not args.skip_profile and device.type == "cpu":
        report["step_profile"] = {
            name: step_profile.measure(name, params[name], run_seed, split_dir, args.profile_steps)
            for name in args.models
        }
        sections.append(step_profile.render(report["step_profile"]))
    if not args.skip_strict and device.type == "cpu":
        print("MKL's strict mode, on and off:", flush=True)
        report["strict_mode"] = strict_mode.measure(args.models, args.epochs, args.repeats, split_dir, args.threads)
        sections.append(strict_mode.render(report["strict_mode"]))
    if not args.skip_kernels and device.type == "cpu":
        print("ATen's AVX2 and AVX-512 kernels:", flush=True)
        report["kernels"] = kernels.measure(args.models, args.epochs, args.repeats, split_dir, args.threads)
        sections.append(kernels.render(report["kernels"]))
    if not (args.skip_experiment or args.quick) and device.type == "cpu":
        report["experiment"] = measure_experiment(args, trainer, raw_dir)
        sections.append(experiment.render(report["experiment"]))
    return sections


def measure_experiment(args: argparse.Namespace, trainer: TrainerParams, raw_dir: Path) -> dict:
    """Item 8 (not in --quick but with --only); --quick: a 2-epoch baseline, so that 1 epoch changes something."""
    print("one experiment (dvc exp run in a temporary copy):", flush=True)
    epochs = 2 if args.quick else args.pipeline_epochs
    return experiment.measure(raw_dir, trainer.accelerator, stage_env(args.threads), args.experiment_repeats, epochs)


if __name__ == "__main__":
    main(sys.argv[1:])
