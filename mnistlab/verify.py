"""`make verify`: did I reproduce the committed results? Per model: identical, another machine within
the measured spread, or beyond it (exit status 1).

    python -m mnistlab.verify              # rerun the pipeline in a throwaway copy, compare with the commit
    python -m mnistlab.verify --workspace  # compare this workspace (after `make repro`) with the commit
    python -m mnistlab.verify --measure-spread   # rerun the spread measurements (minutes)

The spread is measured, not guessed (``experiments/spread.json``): the same pipeline inputs trained
with other training seeds and with settings that make this CPU take another CPU's arithmetic
(ATen's AVX-512 or generic kernels instead of the AVX2 default, MKL's COMPATIBLE branch: the branch
MKL takes on the other vendor's CPUs is not available here). A result from another machine
is within the spread when each test and last-epoch metric is no further from the committed value
than the furthest of those runs.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from mnistlab.evaluation import last_epoch, model_metrics
from mnistlab.machine import cpu_flags
from mnistlab.params import MODEL_NAMES
from mnistlab.stage import METRICS_FILE
from mnistlab.workspace import ROOT, copy_project, venv_env

SPREAD_FILE = Path("experiments/spread.json")
VENDORS = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}  # /proc/cpuinfo's vendor_id
COMPARED = ("test_accuracy", "test_loss", "valid_accuracy", "valid_loss")  # test: metrics file; valid: history
# (name, seed, environment): each run emulates what another machine or seed changes
SPREAD_RUNS = (
    ("seed 1", 1, {}),
    ("seed 2", 2, {}),
    # ATen's own choice on an AVX-512 CPU: what it runs with ATEN_CPU_CAPABILITY=avx512 (skipped without it)
    ("ATen AVX-512 kernels", 0, {"ATEN_CPU_CAPABILITY": "avx512"}),
    ("ATen default kernels", 0, {"ATEN_CPU_CAPABILITY": "default"}),
    ("MKL COMPATIBLE branch", 0, {"MKL_CBWR": "COMPATIBLE,STRICT"}),
)


def committed(path: str, root: Path = ROOT) -> str | None:
    """The text of ``path`` in the commit checked out (HEAD), or None where it is not in git."""
    result = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=root, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def result_files(model: str) -> list[str]:
    """What the pipeline commits for one model besides the shared metrics file: history and predictions."""
    return [f"plots/history/{model}/metrics.csv", f"plots/predictions/{model}.csv"]


def scores(files: dict[str, str | None], model: str) -> dict[str, float]:
    """One model's compared numbers: test metrics from the metrics file, the last epoch's from its history."""
    history = last_epoch(io.StringIO(files[f"plots/history/{model}/metrics.csv"]))
    return model_metrics(json.loads(files[METRICS_FILE]), model) | {key: history[key] for key in COMPARED[2:]}


def compare(model: str, reference: dict[str, str | None], rerun: dict[str, str], spread: dict) -> tuple[bool, str]:
    """Whether ``rerun`` reproduces ``reference`` for ``model`` (or is within the spread), and why, in words."""
    machine_file = f"plots/history/{model}/machine.json"
    files = result_files(model)
    missing = [name for name in [METRICS_FILE, *files] if reference.get(name) is None]
    if missing:
        return False, f"{model}: nothing committed to compare with ({', '.join(missing)} not in git)"
    then, now = scores(reference, model), scores(rerun, model)
    if then == now and all(reference[name] == rerun[name] for name in files):
        return True, f"{model}: identical to the committed result ({METRICS_FILE}, {', '.join(files)})"
    deltas = {key: now[key] - then[key] for key in COMPARED}
    limits = spread["models"][model]["max_abs_delta"]
    numbers = ", ".join(
        f"{key} {then[key]:.4f} -> {now[key]:.4f} ({deltas[key]:+.4f}, spread {limits[key]:.4f})" for key in COMPARED
    )
    old_machine = json.loads(reference[machine_file]) if reference.get(machine_file) else {}
    new_machine = json.loads(rerun[machine_file])
    if old_machine == new_machine:
        return False, (
            f"{model}: NOT reproduced on the same machine and software ({describe(new_machine)}); "
            f"this should be identical: {numbers}"
        )
    within = all(abs(deltas[key]) <= limits[key] for key in COMPARED)
    verdict = "within the expected spread" if within else "BEYOND the expected spread"
    return within, (
        f"{model}: another machine: {describe(new_machine)}, against the committed {describe(old_machine)}; "
        f"{verdict}: {numbers}"
    )


def describe(machine: dict) -> str:
    """One line for a machine record."""
    if not machine:
        return "unknown machine (no machine record committed)"
    vendor = VENDORS.get(machine.get("cpu_vendor"), machine.get("cpu_vendor") or machine.get("cpu"))
    device = machine.get("gpu") or f"{vendor} CPU ({machine.get('cpu_capability')} kernels)"
    changed = ("device", "torch", "mkl")
    return f"{device}, " + ", ".join(f"{key} {machine.get(key)}" for key in changed)


def rerun_in_copy(workdir: Path) -> Path:
    """The pipeline from the committed inputs, in a fresh copy of the project under ``workdir``."""
    project = copy_project(workdir / "project")
    raw = ROOT / "data/MNIST/raw"
    if raw.is_dir():  # the local files are checked against the canonical MD5s by the download stage
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["download"]["sources"] = [f"dir:{raw}", *params["download"]["sources"]]
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    print(f"verify: running the pipeline in {project} (a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=venv_env(), check=True)
    return project


def read_results(root: Path) -> dict[str, str]:
    names = [METRICS_FILE, *(name for model in MODEL_NAMES for name in result_files(model))]
    names += [f"plots/history/{model}/machine.json" for model in MODEL_NAMES]
    return {name: (root / name).read_text() for name in names}


def verify(rerun_root: Path) -> int:
    """Print one verdict per model; 0 when every model is identical or within the spread."""
    spread = json.loads((ROOT / SPREAD_FILE).read_text())
    names = read_results(rerun_root)
    reference = {name: committed(name) for name in names}
    verdicts = [compare(model, reference, names, spread) for model in MODEL_NAMES]
    for _, line in verdicts:
        print(line)
    return 0 if all(ok for ok, _ in verdicts) else 1


# ------------------------------------------------------------------ measuring the spread


def spread_run(name: str, run_seed: int, env: dict[str, str], workdir: Path) -> dict[str, dict]:
    """Train both models from data/split with ``run_seed`` in ``env`` (fresh processes); their test metrics."""
    folder = workdir / name.replace(" ", "_")
    folder.mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text()) | {"seed": run_seed}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    environment = venv_env() | env | {"PYTHONPATH": str(ROOT)}
    for model in MODEL_NAMES:
        command = [sys.executable, "-m", f"stages.train_{model}", str(ROOT / "data/split"), f"models/{model}"]
        subprocess.run(command, cwd=folder, env=environment, check=True, capture_output=True)
    command = [sys.executable, "-m", "stages.evaluate", str(ROOT / "data/split"), "models"]
    command += [METRICS_FILE, "metrics", "plots/history", "predictions", "per_class.csv"]
    subprocess.run(command, cwd=folder, env=environment, check=True, capture_output=True)
    files = {METRICS_FILE: (folder / METRICS_FILE).read_text()}
    files |= {
        f"plots/history/{model}/metrics.csv": (folder / f"plots/history/{model}/metrics.csv").read_text()
        for model in MODEL_NAMES
    }
    return {model: scores(files, model) for model in MODEL_NAMES}


def measure_spread(workdir: Path) -> dict:
    """Every run of SPREAD_RUNS against the committed metrics, and the largest deviation per metric."""
    files = {name: committed(name) for name in [METRICS_FILE, *(f"plots/history/{m}/metrics.csv" for m in MODEL_NAMES)]}
    reference = {model: scores(files, model) for model in MODEL_NAMES}
    runs = []
    for name, run_seed, env in SPREAD_RUNS:
        if env.get("ATEN_CPU_CAPABILITY") == "avx512" and "avx512f" not in cpu_flags():
            print(f"spread: {name} skipped: this CPU has no AVX-512", flush=True)
            continue
        print(f"spread: {name} ({env or 'params.yaml as committed'}, seed {run_seed})", flush=True)
        runs.append({"name": name, "seed": run_seed, "env": env, "metrics": spread_run(name, run_seed, env, workdir)})
    models = {}
    for model in MODEL_NAMES:
        deltas = pd.DataFrame(
            [{key: run["metrics"][model][key] - reference[model][key] for key in COMPARED} for run in runs]
        )
        models[model] = {
            "reference": {key: reference[model][key] for key in COMPARED},
            "max_abs_delta": {key: round(float(deltas[key].abs().max()), 6) for key in COMPARED},
        }
    from mnistlab.machine import machine_record  # imports torch and Lightning: only here

    return {"machine": machine_record("cpu"), "runs": runs, "models": models}


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mnistlab.verify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", action="store_true", help="compare this workspace, do not rerun")
    parser.add_argument("--measure-spread", action="store_true", help=f"rerun the spread runs, write {SPREAD_FILE}")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if args.measure_spread:
        with tempfile.TemporaryDirectory() as workdir:
            spread = measure_spread(Path(workdir))
        SPREAD_FILE.write_text(json.dumps(spread, indent=2, sort_keys=True) + "\n")
        print(pd.DataFrame({model: values["max_abs_delta"] for model, values in spread["models"].items()}))
        return 0
    if args.workspace:
        return verify(ROOT)
    with tempfile.TemporaryDirectory() as workdir:
        return verify(rerun_in_copy(Path(workdir)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
