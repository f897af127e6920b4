"""Thread- and CPU-generation-invariant CPU arithmetic, and the record of the machine a result was computed on.

Intel MKL, torch's BLAS on x86-64, splits a matrix product into blocks by thread count, so 1, 2
and 4 threads round differently. Its strict conditional-numerical-reproducibility mode
(``MKL_CBWR=...,STRICT``) makes the result the same for any thread count. MKL reads the variable
when it first runs, so ``mnistlab/__init__.py`` sets it before anything computes; a value already in
the environment wins (``MKL_CBWR=AUTO`` turns the strict mode off). Nothing here imports torch at
module level.

ATen (torch's own CPU kernels) picks AVX-512 or AVX2 code by what the CPU has; its softmax and
cross-entropy kernels round differently in the two, so an AVX-512 server and an AVX2 laptop of the
same vendor trained different MLPs. ``ATEN_CPU_CAPABILITY=avx2`` makes both run the AVX2 kernels:
set on x86-64 where the CPU has AVX2 (ATen does not check, and AVX2 code on a CPU without it would
crash), never elsewhere, and a value already in the environment wins.
"""

import ctypes
import os
import platform
from pathlib import Path

MKL_CBWR = "MKL_CBWR"
STRICT_CBWR = "AVX2,STRICT"  # AVX2: the branch both x86 vendors run; MKL on AMD maps it to AUTO
ATEN_CPU_CAPABILITY = "ATEN_CPU_CAPABILITY"
ATEN_KERNELS = "avx2"  # what every x86-64 CPU of the last decade runs: AVX-512 machines give the same bits
X86 = ("x86_64", "amd64", "x64")

# mkl_cbwr_get's answer: a branch number, plus 0x10000 for the strict mode (mkl_service.h)
_BRANCHES = {
    0: "OFF",
    1: "OFF",
    2: "AUTO",
    3: "COMPATIBLE",
    4: "SSE2",
    6: "SSSE3",
    7: "SSE4_1",
    8: "SSE4_2",
    9: "AVX",
    10: "AVX2",
    12: "AVX512",
    14: "AVX512_E1",
}
_STRICT = 0x10000


def pin_cpu_arithmetic() -> None:
    """MKL's strict mode and, on x86-64 with AVX2, ATen's AVX2 kernels, unless the user chose others."""
    os.environ.setdefault(MKL_CBWR, STRICT_CBWR)
    if has_avx2():
        os.environ.setdefault(ATEN_CPU_CAPABILITY, ATEN_KERNELS)


def cpu_flags() -> set[str]:
    """The CPU's feature flags, lower case (Linux: /proc/cpuinfo, macOS: sysctl); empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        import subprocess

        try:
            command = ["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"]
            text = subprocess.run(command, capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return set()
    return set(text.lower().split())


def has_avx2(machine: str | None = None, flags: str | None = None) -> bool:
    """Whether this is an x86-64 CPU with AVX2 (``flags``: this CPU's by default); False elsewhere."""
    if (machine or platform.machine()).lower() not in X86:
        return False
    return "avx2" in (set(flags.lower().split()) if flags is not None else cpu_flags())


def mkl_mode() -> str:
    """MKL's mode as MKL itself reports it (e.g. ``AUTO,STRICT``), or why it cannot be read."""
    import torch

    if not torch.backends.mkl.is_available():
        return "no MKL (torch's BLAS is another library)"
    torch.ones(2, 2) @ torch.ones(2, 2)  # MKL settles its mode on its first call
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        get = library.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return f"unknown (MKL_CBWR={os.environ.get(MKL_CBWR, '')!r})"
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    mode = get(-1)  # MKL_CBWR_ALL
    branch = _BRANCHES.get(mode & 0xFFFF, str(mode & 0xFFFF))
    return f"{branch},STRICT" if mode & _STRICT else branch


def cpu_model() -> dict[str, str]:
    """The CPU's model name, vendor and family/model numbers, from /proc/cpuinfo where there is one."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": fields.get("vendor_id") or platform.machine(),
        "cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
    }


# What decides the bits of a CPU result besides its inputs; the CPU's model and family do not (measured:
# Zen 3 and Zen 4 give the same bits), so the committed record leaves them out and a clone on another
# generation of the same vendor keeps a clean `git status`.
ARITHMETIC = (
    "cpu_vendor",
    "cpu_capability",
    "device",
    "gpu",
    "cuda",
    "torch",
    "lightning",
    "mkl",
    "threads",
    "world_size",
)


def arithmetic_record(record: dict) -> dict:
    """The part of a machine record that decides the bits (what `evaluate` commits)."""
    return {key: value for key, value in record.items() if key in ARITHMETIC}


def machine_record(device: str) -> dict:
    """What decides the bits of a result besides its inputs: hardware, software, threads."""
    import pytorch_lightning
    import torch

    mkl = mkl_mode()
    record = cpu_model() | {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels ATen dispatches to
        "device": device,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
        "torch": torch.__version__,
        "lightning": pytorch_lightning.__version__,
        "mkl": mkl,
        # in MKL's strict mode the bits do not depend on the thread count (tests/test_reproducibility.py),
        # so a recorded count would only make results from 2 and 8 cores look different
        "threads": "any (MKL strict mode)" if mkl.endswith("STRICT") else torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        record["cuda"] = torch.version.cuda
    return record
