"""The GPU table (`make bench-gpu`): our fits, the plain loop, the graph path, and each stage without DVC.

Per model: ``fit()`` as the stage calls it (its default ``cuda_graphs``), the plain loop of item 2,
and the graph path: ``fit(cuda_graphs=False)`` (eager) vs ``fit(cuda_graphs=True)`` (CUDA graphs; on a
CPU the graph path's static buffers without recording), with the largest difference between their
final history rows. Needs torch, Lightning, torchmetrics, torchvision, pandas, matplotlib and
PyYAML; not DVC, not torchinfo, not the network.
"""

from collections.abc import Sequence
from pathlib import Path

import torch

from bench.common import (
    divide,
    fit_has_cuda_graphs,
    project_fit,
    ratio,
    seconds,
    summarize_runs,
    table,
)
from bench.overhead import plain_fit
from mnistlab.params import TrainerParams, TrainParams


def largest_difference(first: dict[str, float], second: dict[str, float]) -> float | None:
    """max |first - second| over the metrics both hold; None where they share none."""
    shared = first.keys() & second.keys()
    return max((abs(first[name] - second[name]) for name in shared), default=None)


def measure(
    model_names: Sequence[str],
    params: dict[str, TrainParams],
    trainer: TrainerParams,
    run_seed: int,
    split_dir: Path,
    device: torch.device,
    repeats: int,
) -> dict:
    """Per model, ``repeats`` rounds of: fit(), the plain loop, and (where fit() has the keyword) eager and graphs."""
    result = {"graph_path": fit_has_cuda_graphs(), "models": {}}
    for name in model_names:
        runs = {"fit": [], "plain": [], "eager": [], "graphs": []}
        for _ in range(repeats):
            runs["fit"].append(project_fit(name, params[name], trainer, run_seed, split_dir, device))
            runs["plain"].append(plain_fit(name, params[name], run_seed, split_dir, device))
            if result["graph_path"]:
                for label, setting in (("eager", False), ("graphs", True)):
                    run = project_fit(name, params[name], trainer, run_seed, split_dir, device, cuda_graphs=setting)
                    runs[label].append(run)
            timings = ", ".join(f"{label} {found[-1].seconds:.1f} s" for label, found in runs.items() if found)
            print(f"  {name}: {timings}", flush=True)
        epochs = params[name].epochs
        figures = {label: summarize_runs(found, epochs) for label, found in runs.items() if found}
        if result["graph_path"]:
            differences = [
                largest_difference(e.final, g.final) for e, g in zip(runs["eager"], runs["graphs"], strict=True)
            ]
            figures["final_row_max_abs_difference"] = max((d for d in differences if d is not None), default=None)
        result["models"][name] = figures
    return result


def render(result: dict, machine: dict, repeats: int) -> str:
    rows = []
    for name, figures in result["models"].items():
        fit, plain = figures["fit"], figures["plain"]
        eager, graphs = figures.get("eager"), figures.get("graphs")
        difference = figures.get("final_row_max_abs_difference")
        rows.append(
            [
                name,
                seconds(fit["fit_s"]),
                seconds(fit["epoch_median_s"]),
                seconds(plain["fit_s"]),
                ratio(divide(fit["fit_s"], plain["fit_s"])),
                seconds(eager["fit_s"] if eager else None),
                seconds(graphs["fit_s"] if graphs else None),
                ratio(divide(eager["fit_s"], graphs["fit_s"]) if eager and graphs else None),
                "n/a" if difference is None else f"{difference:.2e}",
            ]
        )
    epochs = len(next(iter(result["models"].values()))["fit"]["runs"][0]["epoch_seconds"])
    graph_note = (
        "eager = fit(cuda_graphs=False), graphs = fit(cuda_graphs=True)"
        if result["graph_path"]
        else "graph path n/a: mnistlab.training.fit has no cuda_graphs keyword"
    )
    return (
        f"GPU table: {machine['gpu'] or 'no GPU'} ({machine['device']}), torch {machine['torch']}, Lightning "
        f"{machine['pytorch_lightning']}; {epochs} epoch(s) per fit, median of {repeats}; fit = our fit() as the stage "
        f"calls it; {graph_note}; max |d| = largest difference of the final history rows, eager vs graphs\n"
        + table(
            [
                "model",
                "fit s",
                "one epoch s",
                "plain loop s",
                "fit/plain",
                "eager s",
                "graphs s",
                "eager/graphs",
                "max |d| final row",
            ],
            rows,
        )
    )
