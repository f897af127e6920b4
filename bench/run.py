"""How fast the project is, next to the lab's own way, on this machine. Prints a table, writes JSON.

1. The lab's way vs ours: the same optimizer steps (``--epochs``), fed (a) as the lab does
   (torchvision MNIST + ToTensor, DataLoader with a worker per CPU, per-step ``self.log``) and
   (b) by ``mnistlab.training.fit``. Seconds per epoch = fit wall time / epochs: Trainer and data
   set-up included, process start-up (imports) not.
2. Lightning's overhead: ``fit`` vs the same optimizer steps and metrics in a plain PyTorch loop.
3. Stage start-up: ``python -c "import stages.<name>"`` and ``python -m stages.<name> --help``.
4. The whole pipeline: one ``dvc repro`` in a throwaway copy of the project, each stage timed from
   DVC's "Running stage" line to the next; next to it the 10x target and the floor (both fits' steps
   in the plain loop of item 2, nothing else).
5. What bounds a CPU step: the plain loop's step under torch.profiler, split into matrix products,
   dropout masks, RMSprop's step and everything else.

Usage (from the project root, with the split stage's output in ``data/split``):
    python -m bench.run                      # the recorded figures (several minutes)
    python -m bench.run --quick              # a smoke test: 1 epoch, 1 repeat
    python -m bench.run --accelerator gpu --skip-lab --epochs 30    # the GPU check
"""

import argparse
import dataclasses
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn
from torchmetrics import Accuracy, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnistlab.data import TensorBatches, load_split
from mnistlab.models import NUM_CLASSES, build_model
from mnistlab.params import (
    MODEL_NAMES,
    SplitParams,
    TrainerParams,
    TrainParams,
    parse_section,
    read_params,
    seed,
    train_section,
)
from mnistlab.training import fit
from mnistlab.workspace import ROOT, copy_project, venv_env

# Pipeline outputs: a copy of the project for `dvc repro` leaves them out, as a clean clone would.


@dataclasses.dataclass
class Run:
    """One timed fit: its wall time and the wall time of each epoch (training + validation)."""

    seconds: float
    epoch_seconds: list[float]

    @property
    def setup_seconds(self) -> float:
        return self.seconds - sum(self.epoch_seconds)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(accelerator: str) -> torch.device:
    """The device Lightning's ``accelerator`` picks for a single-device run."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


def machine(device: torch.device) -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device": str(device),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


class EpochClock(pl.Callback):
    """Wall time of each epoch; Lightning validates before ``on_train_epoch_end``, so it is included."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self._start = device, [], 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._start)


# 1a. The lab's way -------------------------------------------------------------------------------


class LabModule(pl.LightningModule):
    """ISLP's ``SimpleModule.classification`` as the lab uses it: loss and accuracy logged each step."""

    def __init__(self, model_name: str, learning_rate: float) -> None:
        super().__init__()
        self.model = build_model(model_name)
        self.loss = nn.CrossEntropyLoss()
        self.accuracy = Accuracy(task="multiclass", num_classes=NUM_CLASSES)
        self.learning_rate = learning_rate

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.loss(logits, labels)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.log("train_accuracy", self.accuracy(logits, labels), on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("valid_loss", self.loss(logits, labels), on_step=False, on_epoch=True)
        self.log("valid_accuracy", self.accuracy(logits, labels), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(self.parameters(), lr=self.learning_rate)


def lab_loaders(data_root: Path, validation_fraction: float, split_seed: int, batch_size: int) -> tuple:
    """ISLP's ``SimpleDataModule``: a PIL image and ToTensor() per sample, a worker per CPU."""
    from torchvision.datasets import MNIST
    from torchvision.transforms import ToTensor

    dataset = MNIST(root=str(data_root), train=True, transform=ToTensor(), download=False)
    num_validation = int(validation_fraction * len(dataset))
    train, validation = torch.utils.data.random_split(
        dataset, [len(dataset) - num_validation, num_validation], generator=torch.Generator().manual_seed(split_seed)
    )
    workers = os.cpu_count() or 1
    options = dict(batch_size=batch_size, num_workers=workers, persistent_workers=True)
    return (
        torch.utils.data.DataLoader(train, shuffle=True, **options),
        torch.utils.data.DataLoader(validation, shuffle=False, **options),
    )


def lab_fit(
    model_name: str,
    params: TrainParams,
    trainer: TrainerParams,
    split: SplitParams,
    run_seed: int,
    data_root: Path,
    device: torch.device,
) -> Run:
    """The lab's fit, timed from building the data sets to the end of the last epoch."""
    # As the lab runs: Lightning's import sets this, mnistlab.training.fit removes it on a machine
    # without an NVIDIA driver (it costs a library load per optimizer step there).
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    pl.seed_everything(run_seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    clock = EpochClock(device)
    with tempfile.TemporaryDirectory() as logs:
        start = time.perf_counter()
        train, validation = lab_loaders(data_root, split.validation_fraction, run_seed, params.batch_size)
        module = LabModule(model_name, params.learning_rate)
        lightning = pl.Trainer(
            accelerator=trainer.accelerator,
            devices=list(trainer.devices) if isinstance(trainer.devices, tuple) else trainer.devices,
            max_epochs=params.epochs,
            deterministic=True,
            logger=CSVLogger(logs, name="MNIST"),
            default_root_dir=logs,
            enable_progress_bar=False,
            enable_model_summary=False,  # printing only; the lab prints it once
            callbacks=[clock],
        )
        lightning.fit(module, train, validation)
        seconds = time.perf_counter() - start
        del lightning, train, validation  # ends the persistent workers
    return Run(seconds, clock.seconds)


# 1b and 2. The project's way, and the same steps without Lightning ---------------------------------


def project_fit(
    model_name: str, params: TrainParams, trainer: TrainerParams, run_seed: int, split_dir: Path, device: torch.device
) -> Run:
    """``mnistlab.training.fit`` as the training stage calls it, with its CSV history in a temp dir."""
    clock = EpochClock(device)
    with tempfile.TemporaryDirectory() as history:
        start = time.perf_counter()
        history_dir = Path(history) / model_name
        fit(model_name, params, trainer, run_seed, split_dir, history_dir, callbacks=[clock], enable_progress_bar=False)
        synchronize(device)
        seconds = time.perf_counter() - start
    return Run(seconds, clock.seconds)


def plain_step_parts(
    model_name: str, learning_rate: float, device: torch.device
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """The network, loss and optimizer of the system's step, for a hand loop (RMSprop as the system builds it)."""
    model = build_model(model_name).to(device)
    return model, nn.CrossEntropyLoss(), torch.optim.RMSprop(model.parameters(), lr=learning_rate, foreach=True)


def plain_fit(model_name: str, params: TrainParams, run_seed: int, split_dir: Path, device: torch.device) -> Run:
    """The same arithmetic without Lightning: a hand loop over the same batches, metrics as the system keeps."""
    pl.seed_everything(run_seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    start = time.perf_counter()
    model, loss_function, optimizer = plain_step_parts(model_name, params.learning_rate, device)
    train, validation = (load_split(split_dir / f"{name}.pt") for name in ("train", "validation"))
    train_batches = TensorBatches(
        train.images.to(device), train.labels.to(device), params.batch_size, shuffle=True, seed=run_seed
    )
    validation_batches = TensorBatches(
        validation.images.to(device), validation.labels.to(device), params.eval_batch_size, shuffle=False
    )
    metrics = {
        part: (
            MeanMetric().to(device),
            MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False).to(device),
        )
        for part in ("train", "valid")
    }
    epoch_seconds = []
    for _ in range(params.epochs):
        epoch_start = time.perf_counter()
        model.train()
        mean_loss, accuracy = metrics["train"]
        for images, labels in train_batches:
            optimizer.zero_grad()
            logits = model(images)
            loss = loss_function(logits, labels)
            loss.backward()
            optimizer.step()
            mean_loss.update(loss.detach(), weight=len(labels))
            accuracy.update(logits.detach(), labels)
        model.eval()
        mean_loss, accuracy = metrics["valid"]
        with torch.inference_mode():  # as Lightning validates
            for images, labels in validation_batches:
                logits = model(images)
                mean_loss.update(loss_function(logits, labels), weight=len(labels))
                accuracy.update(logits, labels)
        for metric in (metric for pair in metrics.values() for metric in pair):  # the epoch's row of the history
            metric.compute()
            metric.reset()
        synchronize(device)
        epoch_seconds.append(time.perf_counter() - epoch_start)
    return Run(time.perf_counter() - start, epoch_seconds)


def summarize_runs(runs: list[Run], epochs: int) -> dict:
    return {
        "per_epoch_s": median([run.seconds for run in runs]) / epochs,
        "epoch_median_s": median([second for run in runs for second in run.epoch_seconds]),
        "setup_s": median([run.setup_seconds for run in runs]),
        "runs": [dataclasses.asdict(run) for run in runs],
    }


def extrapolate(summary: dict, epochs: int) -> float:
    """Seconds for ``epochs`` epochs: the measured set-up once, plus the median epoch each time."""
    return summary["setup_s"] + epochs * summary["epoch_median_s"]


# 3. Stage start-up ------------------------------------------------------------------------------


def stage_env(threads: int | None) -> dict[str, str]:
    """The environment `make` gives a stage, with torch's threads fixed in child processes if asked."""
    return venv_env() | ({"OMP_NUM_THREADS": str(threads)} if threads else {})


def stage_names() -> list[str]:
    return list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def wall_seconds(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return seconds


def startup(repeats: int, env: dict[str, str]) -> dict:
    """Median wall times of importing each stage and of its ``--help``, with Python/torch/Lightning for scale."""
    python = sys.executable

    def timed(command: list[str]) -> float:
        return median([wall_seconds(command, ROOT, env) for _ in range(repeats)])

    reference = {
        "python -c pass": timed([python, "-c", "pass"]),
        "import torch": timed([python, "-c", "import torch"]),
        "import torchvision": timed([python, "-c", "import torchvision"]),
        "import torchmetrics": timed([python, "-c", "import torchmetrics"]),
        "import pytorch_lightning": timed([python, "-c", "import pytorch_lightning"]),
    }
    stages = {
        name: {
            "import_s": timed([python, "-c", f"import stages.{name}"]),
            "help_s": timed([python, "-m", f"stages.{name}", "--help"]),
        }
        for name in stage_names()
    }
    return {"reference_s": reference, "stages": stages, "repeats": repeats}


# 4. The whole pipeline --------------------------------------------------------------------------

RUNNING_STAGE = re.compile(r"Running stage '([^']+)'")


def stage_seconds(marks: list[tuple[str, float]], end: float) -> dict[str, float]:
    """Each stage's share of one `dvc repro`: from its "Running stage" line to the next one (or the end).

    A share includes what DVC does after the command (hashing and caching outputs, dvc.lock).
    """
    ends = [at for _, at in marks[1:]] + [end]
    return {name: stop - at for (name, at), stop in zip(marks, ends, strict=True)}


def pipeline(raw_dir: Path, accelerator: str, epochs: int | None, env: dict[str, str]) -> dict:
    """One `dvc repro` of the whole pipeline in a fresh copy, each stage timed by DVC's own log lines.

    The data comes from a `dir:` source, so that the download stage does not time the network.
    """
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-") as folder:
        project = copy_project(Path(folder))
        params_file = project / "params.yaml"
        params = yaml.safe_load(params_file.read_text())
        params["download"]["sources"] = [f"dir:{raw_dir.resolve()}"]
        params["trainer"]["accelerator"] = accelerator
        for name in MODEL_NAMES:
            if epochs is not None:
                params[train_section(name)]["epochs"] = epochs
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run(["git", "add", "-A"], cwd=project, check=True)
        subprocess.run(["git", "commit", "-qm", "bench"], cwd=project, capture_output=True, check=True)
        command = [sys.executable, "-m", "dvc", "repro"]
        marks, output = [], []
        start = time.perf_counter()
        with subprocess.Popen(
            command,
            cwd=project,
            env=env | {"PYTHONUNBUFFERED": "1"},  # DVC's log lines arrive when they are written
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process:
            for line in process.stdout:
                output.append(line)
                if match := RUNNING_STAGE.search(line):
                    marks.append((match.group(1), time.perf_counter()))
                    print(f"  {time.perf_counter() - start:6.1f} s  stage {match.group(1)}", flush=True)
        end = time.perf_counter()
        if process.returncode != 0 or sorted(name for name, _ in marks) != sorted(stage_names()):
            raise SystemExit(f"bench: {' '.join(command)} failed ({process.returncode}):\n{''.join(output)}")
    model_epochs = {name: params[train_section(name)]["epochs"] for name in MODEL_NAMES}
    return {
        "command": "dvc repro",
        "stages_s": stage_seconds(marks, end),
        "dvc_startup_s": marks[0][1] - start,
        "total_s": end - start,
        "epochs": model_epochs,
        "accelerator": accelerator,
    }


# 5. What bounds a step -------------------------------------------------------------------------

# Disjoint parts of a CPU step: the self time of these aten ops, and all of RMSprop's step.
STEP_OPS = {"matrix products": ("aten::mm", "aten::addmm"), "dropout masks": ("aten::bernoulli_",)}
OPTIMIZER_RANGE = "Optimizer.step#RMSprop.step"


def endless_batches(batches: TensorBatches) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        yield from batches


def step_profile(model_name: str, params: TrainParams, run_seed: int, split_dir: Path, steps: int) -> dict:
    """Where a CPU training step's time goes: ``steps`` steps of the plain loop, timed, then profiled.

    The step is the project's (RMSprop with foreach, batches from uint8); the parts are disjoint, and
    "everything else" is autograd, the loss, activations, the batch gather and Python.
    """
    from torch.profiler import ProfilerActivity, profile

    pl.seed_everything(run_seed, workers=True, verbose=False)
    model, loss_function, optimizer = plain_step_parts(model_name, params.learning_rate, torch.device("cpu"))
    train = load_split(split_dir / "train.pt")
    batches = endless_batches(TensorBatches(train.images, train.labels, params.batch_size, shuffle=True, seed=run_seed))

    def run(count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            images, labels = next(batches)
            optimizer.zero_grad()
            loss_function(model(images), labels).backward()
            optimizer.step()
        return (time.perf_counter() - start) / count * 1e3

    run(20)  # warm-up
    step_ms = run(steps)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        profiled_step_ms = run(steps)
    events = {event.key: event for event in profiler.key_averages()}

    def per_step_ms(microseconds: float) -> float:
        return microseconds / steps / 1e3

    parts = {
        part: per_step_ms(sum(events[op].self_cpu_time_total for op in ops if op in events))
        for part, ops in STEP_OPS.items()
    }
    parts["optimizer step"] = per_step_ms(events[OPTIMIZER_RANGE].cpu_time_total) if OPTIMIZER_RANGE in events else 0.0
    parts["everything else"] = profiled_step_ms - sum(parts.values())
    return {
        "steps": steps,
        "step_ms": step_ms,
        "profiled_step_ms": profiled_step_ms,
        "parts_ms": parts,
    }


# The report -------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: list[Sequence[object]]) -> str:
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, 1 repeat, 1-epoch pipeline")
    parser.add_argument("--epochs", type=int, help="epochs per fit in items 1-2 (default 3; --quick: 1)")
    parser.add_argument("--repeats", type=int, help="runs per cheap figure, median reported (default 3; --quick: 1)")
    parser.add_argument("--lab-repeats", type=int, default=1, help="runs of the lab's way (slow; default 1)")
    parser.add_argument("--startup-repeats", type=int, help="runs per start-up figure (default 5; --quick: 1)")
    parser.add_argument(
        "--pipeline-epochs", type=int, help="epochs per model in item 4 (default: params.yaml's; --quick: 1)"
    )
    parser.add_argument("--accelerator", help="Lightning accelerator for items 1, 2, 4 (default: params.yaml's)")
    parser.add_argument(
        "--threads", type=int, help="torch threads, here and in the stages' processes (default: torch's choice)"
    )
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="holds MNIST/raw and split/")
    parser.add_argument("--skip-lab", action="store_true", help="leave out the lab's way (item 1a)")
    parser.add_argument("--skip-startup", action="store_true", help="leave out item 3")
    parser.add_argument("--skip-pipeline", action="store_true", help="leave out item 4")
    parser.add_argument("--skip-profile", action="store_true", help="leave out item 5 (CPU only)")
    parser.add_argument("--profile-steps", type=int, help="steps per model in item 5 (default 100; --quick: 20)")
    parser.add_argument("--json", type=Path, default=Path("bench/results.json"), help="where the JSON goes")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else 3)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.startup_repeats = args.startup_repeats or (1 if args.quick else 5)
    args.profile_steps = args.profile_steps or (20 if args.quick else 100)
    if args.quick and args.pipeline_epochs is None:
        args.pipeline_epochs = 1
    return args


def quiet_lightning() -> None:
    """Keep the report readable: no 'GPU available' banners or advice about DataLoader workers."""
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is an invalid value for `log_every_n_steps`.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    quiet_lightning()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = stage_env(args.threads)
    raw = read_params()
    run_seed = seed(raw)
    trainer = parse_section(TrainerParams, raw, "trainer")
    split = parse_section(SplitParams, raw, "split")
    if args.accelerator:
        trainer = dataclasses.replace(trainer, accelerator=args.accelerator)
    device = resolve_device(trainer.accelerator)
    split_dir, raw_dir = args.data_root / "split", args.data_root / "MNIST" / "raw"
    for needed in (split_dir / "train.pt", raw_dir / "train-images-idx3-ubyte"):
        if not needed.exists():
            raise SystemExit(f"bench: {needed} not found: run the pipeline's split stage first (make repro)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench: accelerator {trainer.accelerator!r} asks for a GPU, but torch sees no CUDA device")
    if device.type == "cuda":  # CUDA's start-up belongs to the process, not to a fit
        torch.zeros(1, device=device)
        synchronize(device)

    report: dict = {
        "machine": machine(device),
        "settings": {
            "quick": args.quick,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "lab_repeats": args.lab_repeats,
            "startup_repeats": args.startup_repeats,
            "accelerator": trainer.accelerator,
            "threads": args.threads,
            "models": args.models,
        },
        "notes": (
            "per_epoch_s = median fit wall time / epochs, Trainer and data set-up included, process start-up "
            "not; epoch_median_s = median wall time of one epoch (training + validation); the lab's way at N "
            "epochs is extrapolated as setup_s + N * epoch_median_s"
        ),
    }
    print("machine: " + ", ".join(f"{key} {value}" for key, value in report["machine"].items()), flush=True)

    fits: dict = {}
    for name in args.models:
        params = dataclasses.replace(parse_section(TrainParams, raw, train_section(name)), epochs=args.epochs)
        lab = []
        if not args.skip_lab:
            for _ in range(args.lab_repeats):
                lab.append(lab_fit(name, params, trainer, split, run_seed, args.data_root, device))
                print(f"  {name} lab's way: {lab[-1].seconds:.1f} s for {args.epochs} epoch(s)", flush=True)
        project, plain = [], []
        for _ in range(args.repeats):  # interleaved, so that a busy moment hits both alike
            project.append(project_fit(name, params, trainer, run_seed, split_dir, device))
            plain.append(plain_fit(name, params, run_seed, split_dir, device))
            print(f"  {name} ours: fit {project[-1].seconds:.1f} s, plain loop {plain[-1].seconds:.1f} s", flush=True)
        fits[name] = {"project": summarize_runs(project, args.epochs), "plain": summarize_runs(plain, args.epochs)}
        if lab:
            fits[name]["lab"] = summarize_runs(lab, args.epochs)

    lab_vs_project, overhead = {}, {}
    for name, figures in fits.items():
        ours, plain = figures["project"], figures["plain"]
        overhead[name] = {
            "fit_per_epoch_s": ours["per_epoch_s"],
            "plain_per_epoch_s": plain["per_epoch_s"],
            "ratio": ours["per_epoch_s"] / plain["per_epoch_s"],
            "epoch_ratio": ours["epoch_median_s"] / plain["epoch_median_s"],
        }
        entry = {"project": ours, "epochs": args.epochs, "fit_s": median([r["seconds"] for r in ours["runs"]])}
        if "lab" in figures:
            lab = figures["lab"]
            entry |= {
                "lab": lab,
                "ratio_project_over_lab": ours["per_epoch_s"] / lab["per_epoch_s"],
                "speedup": lab["per_epoch_s"] / ours["per_epoch_s"],
            }
        lab_vs_project[name] = entry
    report["lab_vs_project"], report["lightning_overhead"] = lab_vs_project, overhead

    if not args.skip_startup:
        report["startup"] = startup(args.startup_repeats, env)
    if not args.skip_pipeline:
        print("pipeline (one dvc repro in a temporary copy):", flush=True)
        result = pipeline(raw_dir, trainer.accelerator, args.pipeline_epochs, env)
        if all("lab" in fits.get(name, {}) for name in MODEL_NAMES):
            lab_fits = sum(extrapolate(fits[name]["lab"], result["epochs"][name]) for name in MODEL_NAMES)
            result |= {"lab_fits_extrapolated_s": lab_fits, "speedup": lab_fits / result["total_s"]}
        if all(name in fits for name in MODEL_NAMES):  # the floor: both fits' steps, nothing else
            result["plain_fits_extrapolated_s"] = sum(
                extrapolate(fits[name]["plain"], result["epochs"][name]) for name in MODEL_NAMES
            )
        report["pipeline"] = result
    if not args.skip_profile and device.type == "cpu":
        report["step_profile"] = {}
        for name in args.models:
            params = parse_section(TrainParams, raw, train_section(name))
            report["step_profile"][name] = step_profile(name, params, run_seed, split_dir, args.profile_steps)

    print()
    print(render(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {args.json}")


def render(report: dict) -> str:
    """The report as text tables."""
    settings, sections = report["settings"], []
    machine_line = report["machine"]
    sections.append(
        f"Machine: {machine_line['cpu']}, {machine_line['cpus_usable']} CPUs usable, torch threads "
        f"{machine_line['torch_threads']}, GPU {machine_line['gpu'] or 'none'}, device {machine_line['device']}, "
        f"torch {machine_line['torch']}, Lightning {machine_line['pytorch_lightning']}"
    )
    rows = []
    for name, entry in report["lab_vs_project"].items():
        lab = entry.get("lab")
        rows.append(
            [
                name,
                seconds(lab["per_epoch_s"] if lab else None),
                seconds(entry["project"]["per_epoch_s"]),
                seconds(entry["fit_s"]),
                ratio(entry.get("ratio_project_over_lab")),
                ratio(entry.get("speedup")),
            ]
        )
    sections.append(
        f"1. The lab's way (a) vs ours (b): {settings['epochs']} epoch(s), same steps; s/epoch = fit wall / epochs "
        f"(set-up included, imports not); median of {settings['repeats']} (lab: {settings['lab_repeats']})\n"
        + table(["model", "a s/epoch", "b s/epoch", "b fit s", "b/a", "a/b"], rows)
    )
    rows = [
        [
            name,
            seconds(o["fit_per_epoch_s"]),
            seconds(o["plain_per_epoch_s"]),
            ratio(o["ratio"]),
            ratio(o["epoch_ratio"]),
        ]
        for name, o in report["lightning_overhead"].items()
    ]
    sections.append(
        "2. Lightning overhead: Trainer.fit vs the same steps in a plain loop (target: MLP <= 1.3x)\n"
        + table(["model", "fit s/epoch", "plain s/epoch", "fit/plain", "one epoch fit/plain"], rows)
    )
    if "startup" in report:
        startup_figures = report["startup"]
        rows = [[label, seconds(value)] for label, value in startup_figures["reference_s"].items()]
        rows += [
            [f"stages.{name}: import / --help", f"{seconds(s['import_s'])} / {seconds(s['help_s'])}"]
            for name, s in startup_figures["stages"].items()
        ]
        sections.append(
            f"3. Start-up: wall seconds of a fresh python, median of {startup_figures['repeats']}\n"
            + table(["command", "s"], rows)
        )
    if "pipeline" in report:
        result = report["pipeline"]
        rows = [["DVC start-up, until the first stage", seconds(result["dvc_startup_s"])]]
        rows += [[name, seconds(value)] for name, value in result["stages_s"].items()]
        rows.append(["total: `dvc repro`", seconds(result["total_s"])])
        if "lab_fits_extrapolated_s" in result:
            rows.append(["lab's way, both fits alone (extrapolated)", seconds(result["lab_fits_extrapolated_s"])])
            rows.append(["speedup: lab's fits / our whole pipeline", ratio(result["speedup"])])
            rows.append(["10x target: the whole pipeline in at most", seconds(result["lab_fits_extrapolated_s"] / 10)])
        if "plain_fits_extrapolated_s" in result:
            rows.append(["floor: both fits in a plain loop", seconds(result["plain_fits_extrapolated_s"])])
        epochs = ", ".join(f"{name} {count}" for name, count in result["epochs"].items())
        sections.append(
            f"4. The whole pipeline: one `dvc repro`, accelerator {result['accelerator']}, epochs: {epochs}; a stage "
            "runs from its 'Running stage' line to the next\n" + table(["stage", "s"], rows)
        )
    if "step_profile" in report:
        profiles = report["step_profile"]
        parts = list(next(iter(profiles.values()))["parts_ms"])
        rows = [
            [name, f"{p['step_ms']:.2f}", f"{p['profiled_step_ms']:.2f}"]
            + [f"{p['parts_ms'][part]:.2f} ({p['parts_ms'][part] / p['profiled_step_ms']:.0%})" for part in parts]
            for name, p in profiles.items()
        ]
        sections.append(
            f"5. What bounds a CPU step: the plain loop's step, {next(iter(profiles.values()))['steps']} steps timed, "
            "then the same under torch.profiler (ms per step)\n" + table(["model", "step", "profiled", *parts], rows)
        )
    return "\n\n".join(sections)


if __name__ == "__main__":
    main(sys.argv[1:])
