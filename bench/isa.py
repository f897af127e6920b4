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
"""

import argparse
import ctypes
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mnistlab.data import load_split, to_float
from mnistlab.models import build_model

ROOT = Path(__file__).resolve().parents[1]
RESULT = "ISA_RESULT "  # prefix of the worker's one JSON line; MKL's verbose lines share its stdout
LEARNING_RATE, BATCH_SIZE, SEED = 0.01, 256, 0  # the lab's MLP training (params.yaml train_mlp)

# Every variable that picks a code path or prints which one runs; a worker starts without any of them.
KNOBS = (
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
    "MKL_VERBOSE",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_VERBOSE",
    "DNNL_VERBOSE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
STRICT = {"MKL_CBWR": "AVX2,STRICT"}  # the project's default (mnistlab.machine)
COMPATIBLE = {"MKL_CBWR": "COMPATIBLE,STRICT"}
ALL_THREADS, TWO = (1, 2, 4), (2,)
# Each setting's environment and the thread counts it runs with (all three where thread invariance
# is in question, one count where only the path is).
SETTINGS: dict[str, tuple[dict[str, str], tuple[int, ...]]] = {
    "default": ({}, ALL_THREADS),
    "cbwr=AVX2,STRICT": (STRICT, ALL_THREADS),
    "cbwr=AVX512,STRICT": ({"MKL_CBWR": "AVX512,STRICT"}, TWO),
    "cbwr=AVX2,STRICT mkl_isa=SSE4_2": ({**STRICT, "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, TWO),
    "cbwr=AVX2,STRICT onednn=AVX2": ({**STRICT, "ONEDNN_MAX_CPU_ISA": "AVX2"}, TWO),
    "cbwr=AVX2,STRICT aten=avx2": ({**STRICT, "ATEN_CPU_CAPABILITY": "avx2"}, ALL_THREADS),
    "cbwr=AVX2,STRICT aten=default": ({**STRICT, "ATEN_CPU_CAPABILITY": "default"}, TWO),
    "cbwr=COMPATIBLE,STRICT": (COMPATIBLE, TWO),
    "cbwr=COMPATIBLE,STRICT aten=avx2": ({**COMPATIBLE, "ATEN_CPU_CAPABILITY": "avx2"}, ALL_THREADS),
}
QUICK_SETTINGS = {"default": (1, 2), "cbwr=AVX2,STRICT": (1, 2)}
QUICK_STEPS = 40  # of the epoch's 188 steps
# MKL's CNR constants (mkl_service.h): the branch in the low bits, STRICT as a flag.
CBWR_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 8: "SSE4_2", 9: "AVX", 10: "AVX2", 12: "AVX512"}
CBWR_STRICT = 0x10000


# The worker: digests of each op in this process's setting ---------------------------------------


def digest(*tensors: Tensor) -> str:
    """The first 12 hex digits of SHA-256 over the tensors' bytes: equal digests mean equal bits."""
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.detach().contiguous().numpy().tobytes())
    return sha.hexdigest()[:12]


def mkl_cbwr_mode() -> str | None:
    """The CNR mode MKL runs (e.g. ``AUTO,STRICT``), read from libtorch_cpu's MKL; None if not found.

    The first call fixes the mode from ``MKL_CBWR`` as any MKL call does.
    """
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        cbwr_get = library.mkl_serv_cbwr_get  # what mkl_cbwr_get calls; the public name is not exported
    except (OSError, AttributeError):
        return None
    cbwr_get.restype, cbwr_get.argtypes = ctypes.c_int, [ctypes.c_int]
    mode = cbwr_get(-1)  # MKL_CBWR_ALL
    branch = CBWR_BRANCHES.get(mode & 0xFFFF, str(mode & 0xFFFF))
    return branch + (",STRICT" if mode & CBWR_STRICT else "")


def real_inputs(train_path: Path, rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flattened float images and labels: the first ``rows`` (for ops) and the whole split (for the epoch)."""
    train = load_split(train_path)
    images = to_float(train.images).flatten(1)
    return images[:rows], train.labels[:rows], images, train.labels


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [module for module in model.modules() if isinstance(module, nn.Linear)]


def fixed_mlp(generator: torch.Generator) -> nn.Module:
    """The lab's MLP with weights from ``rand`` (one op at a time, so the same bits on every path).

    Its own initialisation is a row of its own: ``uniform_(-b, b)`` rounds differently per ATen path.
    """
    model = build_model("mlp")
    with torch.no_grad():
        for parameter in model.parameters():
            bound = 1 / parameter.shape[-1] ** 0.5
            parameter.copy_((torch.rand(parameter.shape, generator=generator) * 2 - 1) * bound)
    return model


def op_digests(images: Tensor, labels: Tensor) -> tuple[dict[str, str], dict[str, bool | int | None]]:
    """A digest of each part of the MLP's step, every input built without the ops under test.

    Also whether addmm (the bias added inside MKL's sgemm, beta=1) equals mm then + bias, per layer.
    """
    generator = torch.Generator().manual_seed(1)
    rows = len(images)
    torch.manual_seed(SEED)
    digests = {"init: kaiming_uniform_ (uniform_)": digest(*build_model("mlp").state_dict().values())}
    digests[f"torch.rand {rows}x784"] = digest(torch.rand(images.shape, generator=generator))
    digests[f"torch.randn {rows}x784"] = digest(torch.randn(images.shape, generator=generator))
    mask = torch.empty(rows, 256).bernoulli_(0.6, generator=generator)
    digests["bernoulli_(0.6): dropout mask"] = digest(mask)
    torch.manual_seed(SEED)
    digests["F.dropout(0.4) train"] = digest(F.dropout(images[:, :256], 0.4, training=True))
    model = fixed_mlp(generator)
    layers = linear_layers(model)
    batch, batch_labels = images[:BATCH_SIZE], labels[:BATCH_SIZE]
    # Each layer's input from real pixels (non-negative, many zeros, like a ReLU's output), not from
    # the previous layer, so a difference upstream cannot leak into a row below.
    layer_inputs = (images, images[:, 200:456].contiguous(), images[:, 300:428].contiguous())
    bias_inside_is_bias_after: dict[str, bool | int | None] = {}
    with torch.no_grad():
        for layer, inputs in zip(layers, layer_inputs, strict=True):
            shape = f"{layer.in_features}->{layer.out_features}"
            for count in (rows, BATCH_SIZE):
                with_bias = F.linear(inputs[:count], layer.weight, layer.bias)
                without = F.linear(inputs[:count], layer.weight)
                digests[f"linear {shape} x{count} +bias (addmm)"] = digest(with_bias)
                digests[f"linear {shape} x{count} no bias (mm)"] = digest(without)
                bias_inside_is_bias_after[f"{shape} x{count}"] = torch.equal(with_bias, without + layer.bias)
        digests["relu"] = digest(F.relu(images - 0.5))
        model.eval()
        digests[f"MLP forward, eval, x{rows}"] = digest(model(images.view(-1, 1, 28, 28)))
        logits = torch.rand(rows, 10, generator=generator) * 16 - 8
        digests[f"log_softmax x{rows}x10"] = digest(F.log_softmax(logits, dim=1))
    logits = logits[:BATCH_SIZE].clone().requires_grad_()
    loss = F.cross_entropy(logits, batch_labels)
    loss.backward()
    digests["cross_entropy x256 + grad"] = digest(loss, logits.grad)
    # Autograd's pieces of a Linear's backward, on the batch: grad of the bias (a sum over the batch),
    # of the weight (grad^T @ input) and of the input (grad @ weight).
    grads = [torch.rand(BATCH_SIZE, layer.out_features, generator=generator) * 2 - 1 for layer in layers]
    with torch.no_grad():
        digests["bias grad: sum(0) x256"] = digest(*(grad.sum(0) for grad in grads))
        weight_grads = [grad.t() @ inputs[:BATCH_SIZE] for grad, inputs in zip(grads, layer_inputs, strict=True)]
        digests["weight grad: grad^T @ input (mm)"] = digest(*weight_grads)
        input_grads = [grad @ layer.weight for grad, layer in zip(grads, layers, strict=True)]
        digests["input grad: grad @ weight (mm)"] = digest(*input_grads)
    F.cross_entropy(model(batch.view(-1, 1, 28, 28)), batch_labels).backward()
    digests["MLP backward, eval, x256"] = digest(*(parameter.grad for parameter in model.parameters()))
    step_grads = [torch.rand(2, *parameter.shape, generator=generator) * 2 - 1 for parameter in model.parameters()]
    for foreach in (True, False):
        copy = fixed_mlp(torch.Generator().manual_seed(2))
        optimizer = torch.optim.RMSprop(copy.parameters(), lr=LEARNING_RATE, foreach=foreach)
        for step in range(2):  # the second step reads a non-zero square_avg
            for parameter, grad in zip(copy.parameters(), step_grads, strict=True):
                parameter.grad = grad[step]
            optimizer.step()
        digests[f"RMSprop step x2 (foreach={foreach})"] = digest(*copy.parameters())
    bias_inside_is_bias_after["first K where they differ"] = first_k_where_addmm_differs(generator)
    return digests, bias_inside_is_bias_after


def first_k_where_addmm_differs(generator: torch.Generator) -> int | None:
    """The smallest inner size K at which addmm rounds differently from mm + bias: MKL's K block.

    ATen's addmm copies the bias into the output and calls sgemm with beta=1, so the bias joins the
    sum at MKL's first block of K and every later block adds to a rounded partial sum.
    """
    for inner in range(8, 808, 8):
        inputs, weight = torch.rand(256, inner, generator=generator), torch.rand(64, inner, generator=generator) - 0.5
        bias = torch.rand(64, generator=generator)
        if not torch.equal(F.linear(inputs, weight, bias), F.linear(inputs, weight) + bias):
            return inner
    return None


def train_epoch(images: Tensor, labels: Tensor, steps: int | None) -> tuple[str, float, float]:
    """One epoch (or its first ``steps`` steps) of the lab's MLP in plain torch.

    Returns the trained weights' digest, the wall seconds and the process's CPU seconds (all threads).
    """
    torch.manual_seed(SEED)
    model = build_model("mlp")
    optimizer = torch.optim.RMSprop(model.parameters(), lr=LEARNING_RATE, foreach=True)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SEED))
    batches = order.split(BATCH_SIZE)[:steps]
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    for batch in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images[batch].view(-1, 1, 28, 28)), labels[batch])
        loss.backward()
        optimizer.step()
    return digest(*model.parameters()), time.perf_counter() - start, time.process_time() - cpu_start


def step_dispatch(images: Tensor, labels: Tensor) -> list[str]:
    """The aten ops one training step runs, as torch.profiler names them, in order of first call."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(SEED)
    model = build_model("mlp")
    optimizer = torch.optim.RMSprop(model.parameters(), lr=LEARNING_RATE, foreach=True)
    batch = slice(0, BATCH_SIZE)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        F.cross_entropy(model(images[batch].view(-1, 1, 28, 28)), labels[batch]).backward()
        optimizer.step()
    names = [event.name for event in profiler.events() if event.name.startswith(("aten::", "Optimizer"))]
    return list(dict.fromkeys(names))


def worker(
    train_path: Path, setting: dict[str, str], threads: int, steps: int | None, late_env: dict[str, str], dispatch: bool
) -> dict:
    """Everything one fresh process measures in the setting its environment gave at launch."""
    if "MKL_CBWR" not in setting:  # importing mnistlab pinned it; MKL reads it at its first call, not yet made
        os.environ.pop("MKL_CBWR", None)
    torch.set_num_threads(threads)
    rows_images, rows_labels, images, labels = real_inputs(train_path, rows=12000)
    if late_env.pop("matmul_first", None):
        torch.ones(4, 4) @ torch.ones(4, 4)  # any MKL call fixes the CNR mode
    os.environ.update(late_env)  # after `import torch`, before (or after) MKL's first call
    result = {
        "threads": threads,
        "mkl_cbwr": mkl_cbwr_mode(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if dispatch:
        result["step_ops"] = step_dispatch(rows_images, rows_labels)
        return result
    result["ops"], result["addmm_is_mm_plus_bias"] = op_digests(rows_images, rows_labels)
    result["epoch"], result["epoch_s"], result["epoch_cpu_s"] = train_epoch(images, labels, steps)
    return result


# The driver: one process per setting and thread count ------------------------------------------


def clean_env(setting: dict[str, str], threads: int) -> dict[str, str]:
    """This environment without any of the KNOBS, plus the setting's and the thread count."""
    env = {name: value for name, value in os.environ.items() if name not in KNOBS}
    env.update(setting, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


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
    parser.add_argument("--train", type=Path, default=ROOT / "data" / "split" / "train.pt", help="the split's train.pt")
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
