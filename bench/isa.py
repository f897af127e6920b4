"""Which CPU code paths change the MLP's bits: a digest per op and per setting, each in a fresh process.

The settings are environment variables read when a library first needs them (so each one runs in its
own process): ``MKL_CBWR`` (MKL's code branch and STRICT mode), ``MKL_ENABLE_INSTRUCTIONS`` (the
newest ISA MKL may dispatch to), ``ATEN_CPU_CAPABILITY`` (the vector width of ATen's own kernels:
default, avx2, avx512) and ``ONEDNN_MAX_CPU_ISA`` (oneDNN's kernels). Lowering them emulates the
paths an older or another vendor's CPU takes. For each setting and thread count a worker process
digests the output of each part of the lab's training step on real MNIST images, then trains one
epoch and digests the weights. The table gives each distinct digest of a row a letter: a row whose
letters change between columns depends on that setting. Seconds per epoch are wall and CPU time of
the epoch's steps; on a shared machine the CPU time at 1 thread is the figure to compare.

Also measured: which library runs each op of a step (``MKL_VERBOSE`` / ``ONEDNN_VERBOSE`` lines and
torch.profiler op names), the CNR mode MKL really runs (read back through ``mkl_serv_cbwr_get``,
which libtorch_cpu.so exports; ``mkl_cbwr_get`` itself is not exported), where addmm (the bias added
inside MKL's sgemm) stops equalling mm + bias, and whether ``MKL_CBWR`` set in ``os.environ`` after
``import torch`` still takes effect.

Usage (from the project root, with the split stage's output in ``data/split``):
    python -m bench.isa                      # every setting (about 3 minutes on 2 idle cores)
    python -m bench.isa --quick              # two settings x threads 1/2, 40 steps (under a minute)
    python -m bench.isa --json amd.json      # also write the report, raw digests included
    python -m bench.isa --compare amd.json intel.json   # rows whose bits differ between two machines

This module starts the processes and assembles the report; the settings are in bench/isa_settings.py,
what each process measures in bench/isa_ops.py, the table and the printout in bench/isa_report.py.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.isa_ops import worker
from bench.isa_report import (
    compare_reports,
    cpu_name,
    digest_table,
    print_report,
    row_values,
    summarize,
    verbose_libraries,
)
from bench.isa_settings import BATCH_SIZE, QUICK_SETTINGS, QUICK_STEPS, ROOT, SETTINGS, STRICT, clean_env
from mnistlab.data import load_split

RESULT = "ISA_RESULT "  # prefix of the worker's one JSON line; MKL's verbose lines share its stdout


def run_worker(
    train_path: Path,
    setting: dict[str, str],
    threads: int,
    steps: int | None,
    late_env: dict[str, str] | None = None,
    dispatch: bool = False,
) -> tuple[dict, str]:
    """A fresh process's report and the rest of its stdout (MKL's and oneDNN's verbose lines)."""
    command = [sys.executable, "-m", "bench.isa", "--worker", "--train", str(train_path), "--threads", str(threads)]
    command += ["--setting", json.dumps(setting), "--late-env", json.dumps(late_env or {})]
    command += ["--steps", str(steps)] if steps else []
    command += ["--dispatch"] if dispatch else []
    done = subprocess.run(command, cwd=ROOT, env=clean_env(setting, threads), capture_output=True, text=True)
    lines = done.stdout.splitlines()
    reports = [line.removeprefix(RESULT) for line in lines if line.startswith(RESULT)]
    if done.returncode != 0 or not reports:
        raise RuntimeError(f"worker {setting} threads={threads} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(reports[-1]), "\n".join(line for line in lines if not line.startswith(RESULT))


def dispatch_report(train_path: Path) -> dict:
    """Which library runs each op of one training step in the project's setting (verbose on)."""
    setting = {**STRICT, "MKL_VERBOSE": "1", "ONEDNN_VERBOSE": "1"}
    result, verbose = run_worker(train_path, setting, threads=2, steps=None, dispatch=True)
    return {"setting": setting, "step_ops": result["step_ops"], **verbose_libraries(verbose)}


def late_env_report(train_path: Path, runs: dict[str, dict[int, dict]]) -> dict:
    """Does MKL_CBWR set in os.environ after ``import torch`` act, before and after MKL's first call?"""
    report = {}
    trials = (("before first matmul", STRICT, (1, 2)), ("after first matmul", {**STRICT, "matmul_first": "1"}, (2,)))
    for name, late, counts in trials:
        by_threads = {threads: run_worker(train_path, {}, threads, None, late_env=late)[0] for threads in counts}
        values = {threads: row_values(result) for threads, result in by_threads.items()}
        report[name] = {
            "mkl_cbwr": by_threads[counts[0]]["mkl_cbwr"],
            "threads": list(counts),
            "thread_invariant": len({json.dumps(value, sort_keys=True) for value in values.values()}) == 1,
            "same_bits_as_set_at_launch": [
                setting
                for setting, launched in runs.items()
                if set(counts) <= set(launched) and all(values[t] == row_values(launched[t]) for t in counts)
            ],
        }
    return report


def measure(train_path: Path, quick: bool) -> dict:
    """Run every setting's workers and assemble the report."""
    start = time.perf_counter()
    plan = QUICK_SETTINGS if quick else {name: threads for name, (_, threads) in SETTINGS.items()}
    steps = QUICK_STEPS if quick else None
    runs = {
        name: {threads: run_worker(train_path, SETTINGS[name][0], threads, steps)[0] for threads in counts}
        for name, counts in plan.items()
    }
    report = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "mkl": next((line.strip() for line in torch.__config__.show().splitlines() if "Math Kernel" in line), "none"),
        "steps": steps or len(range(0, len(load_split(train_path).labels), BATCH_SIZE)),
        "table": digest_table(runs),
        "summary": summarize(runs),
        "digests": {
            setting: {threads: row_values(run) for threads, run in by_threads.items()}
            for setting, by_threads in runs.items()
        },
    }
    if not quick:
        report["dispatch"] = dispatch_report(train_path)
        report["late_env"] = late_env_report(train_path, runs)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=ROOT / "data" / "split" / "train", help="the split's train part")
    parser.add_argument("--quick", action="store_true", help="two settings, threads 1/2, a 40-step epoch")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--compare", type=Path, nargs=2, metavar="JSON", help="rows that differ between two reports")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--setting", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--late-env", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--dispatch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(
            args.train, json.loads(args.setting), args.threads, args.steps, json.loads(args.late_env), args.dispatch
        )
        print(RESULT + json.dumps(result), flush=True)
        return
    if args.compare:
        mine, theirs = (json.loads(path.read_text()) for path in args.compare)
        for column, rows in compare_reports(mine, theirs).items():
            print(f"{column:<45} {'identical' if not rows else 'differ: ' + ', '.join(rows)}")
        return
    if not args.train.exists():
        sys.exit(f"{args.train} not found: run the split stage first (dvc repro split) or pass --train")
    report = measure(args.train, args.quick)
    print_report(report)
    print(f"\n{report['wall_s']} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
