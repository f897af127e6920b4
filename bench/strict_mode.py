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


def worker(model_name: str, epochs: int, split_dir: Path) -> None:
    """In a fresh process: one fit; prints MKL's mode and the seconds of each epoch as JSON."""
    import torch

    from mnistlab.machine import mkl_mode
    from mnistlab.params import TrainerParams, parse_section, read_params, train_params, train_section
    from mnistlab.training import EpochClock, fit

    raw = read_params()
    params = parse_section(train_params(model_name), raw, train_section(model_name)).model_copy(
        update={"epochs": epochs}
    )
    trainer_params = parse_section(TrainerParams, raw, "trainer").model_copy(update={"accelerator": "cpu"})
    trainer, _ = fit(model_name, params, trainer_params, 0, split_dir, None)
    clock = next(callback for callback in trainer.callbacks if isinstance(callback, EpochClock))
    capability = torch.backends.cpu.get_cpu_capability()
    print(json.dumps({"mkl": mkl_mode(), "kernels": capability, "epoch_s": clock.epoch_seconds}))


def measure(
    models: list[str], epochs: int, repeats: int, split_dir: Path, threads: int | None, settings: dict = SETTINGS
) -> dict:
    """Median seconds per epoch of each model under each setting, ``repeats`` fresh processes each."""
    results: dict = {}
    for name in models:
        for label, env in settings.items():
            per_epoch, modes, kernels = [], set(), set()
            for _ in range(repeats):
                command = [sys.executable, "-m", "bench.strict_mode", name, str(epochs), str(split_dir)]
                out = subprocess.run(command, env=stage_env(threads) | env, capture_output=True, text=True, check=True)
                run = json.loads(out.stdout.strip().splitlines()[-1])
                per_epoch.append(statistics.median(run["epoch_s"]))
                modes.add(run["mkl"])
                kernels.add(run["kernels"])
            results.setdefault(name, {})[label] = {
                "s_per_epoch": median(per_epoch),
                "mkl": sorted(modes),
                "kernels": sorted(kernels),
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
    worker(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
