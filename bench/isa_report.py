"""bench/isa.py's report: the digests as a table of letters, the summary per setting, and its printout.

Also what MKL's and oneDNN's verbose lines say, and which rows differ between two machines' reports.
"""

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench.isa_settings import ALL_THREADS, BATCH_SIZE, SETTINGS


def letters(values: Sequence[str]) -> list[str]:
    """A letter per value, the same letter for equal values, in order of first appearance."""
    names: dict[str, str] = {}
    return [names.setdefault(value, chr(ord("A") + len(names))) for value in values]


def row_values(report: dict) -> dict[str, str]:
    return {**report["ops"], "one epoch (trained weights)": report["epoch"]}


def digest_table(runs: dict[str, dict[int, dict]]) -> dict[str, list[str]]:
    """Per row, a cell per setting with a letter per thread count (``AAB``: 4 threads differ)."""
    columns = [(setting, threads) for setting, by_threads in runs.items() for threads in by_threads]
    table = {}
    for row in row_values(runs[columns[0][0]][columns[0][1]]):
        marks = iter(letters([row_values(runs[setting][threads])[row] for setting, threads in columns]))
        table[row] = ["".join(next(marks) for _ in by_threads) for by_threads in runs.values()]
    return table


def summarize(runs: dict[str, dict[int, dict]]) -> dict:
    """Per setting: its environment, MKL's CNR mode, the rows that vary with threads, seconds per epoch."""
    summary = {}
    for setting, by_threads in runs.items():
        reports = [row_values(report) for report in by_threads.values()]
        first = next(iter(by_threads.values()))
        summary[setting] = {
            "env": SETTINGS[setting][0],
            "mkl_cbwr": first["mkl_cbwr"],
            "aten_capability": first["aten_capability"],
            "varies_with_threads": [row for row in reports[0] if len({values[row] for values in reports}) > 1],
            "addmm_differs_from_mm_plus_bias": sorted(
                {
                    shape
                    for report in by_threads.values()
                    for shape, same in report["addmm_is_mm_plus_bias"].items()
                    if same is False
                }
            ),
            "addmm_differs_from_k": first["addmm_is_mm_plus_bias"]["first K where they differ"],
            "epoch_s": {threads: round(report["epoch_s"], 2) for threads, report in by_threads.items()},
            "epoch_cpu_s": {threads: round(report["epoch_cpu_s"], 2) for threads, report in by_threads.items()},
        }
    return summary


def verbose_libraries(verbose: str) -> dict:
    """What MKL_VERBOSE and ONEDNN_VERBOSE printed: calls per routine, CNR modes, threads, oneDNN runs."""
    mkl = re.findall(r"^MKL_VERBOSE (\w+)\(.*CNR:(\S+) .*NThr:(\d+)", verbose, re.MULTILINE)
    # transa, transb, m, n, k of each call, in order (column-major: m, n are the output's columns, rows)
    shapes = re.findall(r"^MKL_VERBOSE (\w+\(\w,\w,\d+,\d+,\d+),", verbose, re.MULTILINE)
    header = re.search(r"^MKL_VERBOSE (oneMKL .*)$", verbose, re.MULTILINE)
    return {
        "mkl_header": header.group(1) if header else None,
        "mkl_calls": dict(Counter(routine for routine, _, _ in mkl)),
        "mkl_call_shapes": [f"{shape})" for shape in shapes],
        "mkl_cnr": sorted({cnr for _, cnr, _ in mkl}),
        "mkl_threads": sorted({int(threads) for _, _, threads in mkl}),
        "onednn_runs": len(re.findall(r"^(?:onednn|dnnl)_verbose,.*,exec,", verbose, re.MULTILINE)),
    }


def compare_reports(mine: dict, theirs: dict) -> dict[str, list[str]]:
    """Per setting and thread count run on both machines, the rows whose bits differ.

    The epoch's row counts only where both trained the same number of steps.
    """
    skip = set() if mine["steps"] == theirs["steps"] else {"one epoch (trained weights)"}
    differing = {}
    for setting, by_threads in mine["digests"].items():
        for threads, values in by_threads.items():
            other = theirs["digests"].get(setting, {}).get(threads)
            if other is not None:
                differing[f"{setting} @{threads}T"] = [
                    row for row in values if row not in skip and values[row] != other.get(row)
                ]
    return differing


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def print_report(report: dict) -> None:
    table, summary = report["table"], report["summary"]
    print(f"{report['cpu']} ({report['cpu_count']} CPUs), torch {report['torch']}, {report['mkl']}")
    print(f"epoch: {report['steps']} steps of {BATCH_SIZE}; equal letters in a row = identical bits\n")
    print("s/epoch: wall (CPU) seconds of the epoch's steps at each thread count\n")
    for index, (setting, facts) in enumerate(summary.items()):
        seconds = "  ".join(
            f"{threads}T {wall:5.2f} ({facts['epoch_cpu_s'][threads]:5.2f})"
            for threads, wall in facts["epoch_s"].items()
        )
        paths = f"MKL {facts['mkl_cbwr']!s:<18} ATen {facts['aten_capability']:<8}"
        print(f"S{index:<2} {setting:<34} {paths} s/epoch {seconds}")
    width = max(map(len, table)) + 1
    cells = [max(len(cell) for cell in column) for column in zip(*table.values(), strict=True)]
    print("\n" + f"{'threads: ' + '/'.join(map(str, ALL_THREADS)):<{width}}", end="")
    print(" ".join(f"S{index:<{max(size, 2) - 1}}" for index, size in enumerate(cells)))
    for row, row_cells in table.items():
        print(
            f"{row:<{width}}" + " ".join(f"{cell:<{max(size, 2)}}" for cell, size in zip(row_cells, cells, strict=True))
        )
    if "dispatch" in report:
        dispatch = report["dispatch"]
        print(f"\none step with {dispatch['setting']}: MKL {dispatch['mkl_calls']}, CNR {dispatch['mkl_cnr']},")
        print(f"  MKL threads {dispatch['mkl_threads']}, oneDNN primitives run: {dispatch['onednn_runs']}")
        print(f"  MKL calls: {', '.join(dispatch['mkl_call_shapes'])}")
        print(f"  aten ops: {', '.join(dispatch['step_ops'])}")
    print("\naddmm (bias inside MKL's sgemm) differs bitwise from mm + bias:")
    for setting, facts in summary.items():
        layers = ", ".join(facts["addmm_differs_from_mm_plus_bias"]) or "no layer"
        print(f"  {setting:<34} {layers}; from K={facts['addmm_differs_from_k']} (M=256, N=64)")
    for name, late in report.get("late_env", {}).items():
        print(
            f"MKL_CBWR=AVX2,STRICT set after import torch, {name}: MKL runs {late['mkl_cbwr']}, threads "
            f"{late['threads']} equal: {late['thread_invariant']}, same bits as {late['same_bits_as_set_at_launch']}"
        )
