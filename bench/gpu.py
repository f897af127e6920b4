"""4. The GPU table (`make bench-gpu`): per model, our fit() as the stage calls it, the same steps in a plain
loop, and fit(cuda_graphs=False) (eager) vs fit(cuda_graphs=True) (CUDA graphs; on a CPU the graph path's
static buffers, not recorded) with the largest difference of their final history rows. Needs torch,
Lightning, torchmetrics, torchvision, pandas, matplotlib, PyYAML and pydantic: not DVC, torchinfo or a network.
"""

from pathlib import Path

from bench.common import FitSettings, plain_fit, project_fit, ratio, seconds, summarize_runs, table


def largest_difference(first: dict[str, float], second: dict[str, float]) -> float | None:
    """max |first - second| over the metrics both hold; None where they share none."""
    shared = first.keys() & second.keys()
    return max((abs(first[name] - second[name]) for name in shared), default=None)


def measure(settings: FitSettings, split_dir: Path, repeats: int) -> dict:
    """Per model, ``repeats`` rounds of: fit(), the plain loop, eager and graphs, interleaved so that a busy
    moment hits them alike."""
    result = {"models": {}}
    for name, params in settings.params.items():
        runs = {"fit": [], "plain": [], "eager": [], "graphs": []}
        for _ in range(repeats):
            runs["fit"].append(project_fit(name, settings, split_dir))
            runs["plain"].append(plain_fit(name, settings, split_dir))
            runs["eager"].append(project_fit(name, settings, split_dir, cuda_graphs=False))
            runs["graphs"].append(project_fit(name, settings, split_dir, cuda_graphs=True))
            timings = ", ".join(f"{label} {found[-1].seconds:.1f} s" for label, found in runs.items())
            print(f"  {name}: {timings}", flush=True)
        figures = {label: summarize_runs(found, params.epochs) for label, found in runs.items()}
        differences = [largest_difference(e.final, g.final) for e, g in zip(runs["eager"], runs["graphs"], strict=True)]
        figures["final_row_max_abs_difference"] = max((d for d in differences if d is not None), default=None)
        result["models"][name] = figures
    return result


def render(result: dict, machine: dict, repeats: int) -> str:
    rows = []
    for name, figures in result["models"].items():
        fit, plain, eager, graphs = (figures[label]["fit_s"] for label in ("fit", "plain", "eager", "graphs"))
        difference = figures["final_row_max_abs_difference"]
        row = [name, seconds(fit), seconds(figures["fit"]["epoch_median_s"]), seconds(plain), ratio(fit, plain)]
        row += [seconds(eager), seconds(graphs), ratio(eager, graphs)]
        rows.append([*row, "n/a" if difference is None else f"{difference:.2e}"])
    epochs = len(next(iter(result["models"].values()))["fit"]["runs"][0]["epoch_seconds"])
    headers = ["model", "fit s", "one epoch s", "plain loop s", "fit/plain", "eager s", "graphs s", "eager/graphs"]
    return (
        f"4. GPU table: {machine['gpu'] or 'no GPU'} ({machine['device']}), torch {machine['torch']}, Lightning "
        f"{machine['pytorch_lightning']}; {epochs} epoch(s) per fit, median of {repeats}; fit = our fit() as the stage "
        "calls it; eager = fit(cuda_graphs=False), graphs = fit(cuda_graphs=True); max |d| = largest difference "
        "of the final history rows, eager vs graphs\n" + table([*headers, "max |d| final row"], rows)
    )
