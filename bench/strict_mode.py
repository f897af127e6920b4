"""6. What MKL's strict mode costs: our fit in fresh processes, with it (the default) and without it.

MKL reads ``MKL_CBWR`` when it first runs, so each setting needs its own process; ``MKL_CBWR=``
(empty) is MKL's own default, the way the README says to turn the strict mode off.
"""

import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import median, stage_env, table

SETTINGS = {"strict (default)": {}, "off (MKL_CBWR=)": {"MKL_CBWR": ""}}


def worker(model_names: list[str], epochs: int, split_dir: Path) -> None:
    """In a fresh process: one fit of each model; prints MKL's mode and each fit's epoch seconds as JSON."""
    import torch

    from mnistlab.machine import mkl_mode
    from mnistlab.params import TrainerParams, parse_section, read_params, train_params, train_section
    from mnistlab.training import EpochClock, fit

    raw = read_params()
    trainer_params = parse_section(TrainerParams, raw, "trainer").model_copy(update={"accelerator": "cpu"})
    epoch_s = {}
    for name in model_names:
        params = parse_section(train_params(name), raw, train_section(name)).model_copy(update={"epochs": epochs})
        trainer, _ = fit(name, params, trainer_params, 0, split_dir, None)
        clock = next(callback for callback in trainer.callbacks if isinstance(callback, EpochClock))
        epoch_s[name] = clock.epoch_seconds
    capability = torch.backends.cpu.get_cpu_capability()
    print(json.dumps({"mkl": mkl_mode(), "kernels": capability, "epoch_s": epoch_s}))


def measure(
    models: list[str], epochs: int, repeats: int, split_dir: Path, threads: int | None, settings: dict = SETTINGS
) -> dict:
    """Median seconds per epoch of each model under each setting: ``repeats`` fresh processes per setting,
    each fitting every model (a process costs seconds of imports; the setting is per process)."""
    runs: dict = {label: [] for label in settings}
    for label, env in settings.items():
        for _ in range(repeats):
            command = [sys.executable, "-m", "bench.strict_mode", str(epochs), str(split_dir), *models]
            out = subprocess.run(command, env=stage_env(threads) | env, capture_output=True, text=True, check=True)
            runs[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = {
        name: {
            label: {
                "s_per_epoch": median([statistics.median(run["epoch_s"][name]) for run in runs[label]]),
                "mkl": sorted({run["mkl"] for run in runs[label]}),
                "kernels": sorted({run["kernels"] for run in runs[label]}),
            }
            for label in settings
        }
        for name in models
    }
    return {"epochs": epochs, "repeats": repeats, "models": results}


def render(report: dict) -> str:
    rows = []
    for name, settings in report["models"].items():
        strict, off = (settings[label]["s_per_epoch"] for label in SETTINGS)
        rows.append(
            [
                name,
                f"{strict:.3f}",
                f"{off:.3f}",
                f"{strict / off:.2f}x",
                " / ".join(",".join(settings[label]["mkl"]) for label in SETTINGS),
            ]
        )
    title = (
        f"6. MKL's strict mode: seconds per epoch of our fit, median epoch of {report['epochs']}, "
        f"median of {report['repeats']} fresh processes"
    )
    return title + "\n" + table(["model", "strict s/epoch", "off s/epoch", "strict / off", "MKL reports"], rows)


if __name__ == "__main__":
    worker(sys.argv[3:], int(sys.argv[1]), Path(sys.argv[2]))
