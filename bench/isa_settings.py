"""bench/isa.py's settings: the environments its worker processes start in, one per code path.

Each setting is a set of environment variables a library reads when it first needs them, so each
runs in a fresh process (bench/isa.py starts them, bench/isa_ops.py is what they run).
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def clean_env(setting: dict[str, str], threads: int) -> dict[str, str]:
    """This environment without any of the KNOBS, plus the setting's and the thread count."""
    env = {name: value for name, value in os.environ.items() if name not in KNOBS}
    env.update(setting, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env
