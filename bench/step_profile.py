"""5. What bounds a CPU step: the plain loop's step under torch.profiler, split into disjoint parts."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor

from bench.common import table
from bench.overhead import plain_step_parts
from mnistlab.data import TensorBatches, load_split
from mnistlab.params import TrainParams

# Disjoint parts of a CPU step: the self time of these aten ops, and all of RMSprop's step.
STEP_OPS = {"matrix products": ("aten::mm", "aten::addmm"), "dropout masks": ("aten::bernoulli_",)}
OPTIMIZER_RANGE = "Optimizer.step#RMSprop.step"


def endless_batches(batches: TensorBatches) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        yield from batches


def measure(model_name: str, params: TrainParams, run_seed: int, split_dir: Path, steps: int) -> dict:
    """Where a CPU training step's time goes: ``steps`` steps of the plain loop, timed, then profiled.

    The step is the project's (RMSprop with foreach, batches from uint8); the parts are disjoint, and
    "everything else" is autograd, the loss, activations, the batch gather and Python.
    """
    from torch.profiler import ProfilerActivity, profile

    pl.seed_everything(run_seed, workers=True, verbose=False)
    model, loss_function, optimizer = plain_step_parts(model_name, params.learning_rate, torch.device("cpu"))
    train = load_split(split_dir / "train")
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


def render(profiles: dict) -> str:
    parts = list(next(iter(profiles.values()))["parts_ms"])
    rows = [
        [name, f"{p['step_ms']:.2f}", f"{p['profiled_step_ms']:.2f}"]
        + [f"{p['parts_ms'][part]:.2f} ({p['parts_ms'][part] / p['profiled_step_ms']:.0%})" for part in parts]
        for name, p in profiles.items()
    ]
    return (
        f"5. What bounds a CPU step: the plain loop's step, {next(iter(profiles.values()))['steps']} steps timed, "
        "then the same under torch.profiler (ms per step)\n" + table(["model", "step", "profiled", *parts], rows)
    )
