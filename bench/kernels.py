"""7. What ATen's AVX2 kernels cost on an AVX-512 CPU: our fit in fresh processes, with the default
(``ATEN_CPU_CAPABILITY=avx2``, set by ``mnistlab``) and with ATen's own choice, AVX-512.

ATen reads the variable once per process, so each setting runs in its own (bench/strict_mode.py's
worker). On a CPU without AVX-512 there is nothing to compare and the item says so.
"""

from pathlib import Path

from bench import strict_mode
from bench.common import table
from mnistlab.machine import cpu_flags

SETTINGS = {"AVX2 (default)": {}, "AVX-512 (ATEN_CPU_CAPABILITY=avx512)": {"ATEN_CPU_CAPABILITY": "avx512"}}


def measure(models: list[str], epochs: int, repeats: int, split_dir: Path, threads: int | None) -> dict:
    if "avx512f" not in cpu_flags():
        return {"skipped": "this CPU has no AVX-512: both settings run the same AVX2 kernels"}
    return strict_mode.measure(models, epochs, repeats, split_dir, threads, SETTINGS)


def render(report: dict) -> str:
    title = "7. ATen's kernels on an AVX-512 CPU: seconds per epoch of our fit"
    if "skipped" in report:
        return f"{title}: skipped, {report['skipped']}"
    rows = []
    for name, settings in report["models"].items():
        avx2, avx512 = (settings[label]["s_per_epoch"] for label in SETTINGS)
        kernels = " / ".join(",".join(settings[label]["kernels"]) for label in SETTINGS)
        rows.append([name, f"{avx2:.3f}", f"{avx512:.3f}", f"{avx2 / avx512:.2f}x", kernels])
    title += f", median epoch of {report['epochs']}, median of {report['repeats']} fresh processes"
    return title + "\n" + table(["model", "AVX2 s/epoch", "AVX-512 s/epoch", "AVX2 / AVX-512", "dispatched"], rows)
