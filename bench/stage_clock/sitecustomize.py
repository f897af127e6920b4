"""Loaded at start-up (on PYTHONPATH) by every Python process of a timed DVC run (bench/experiment.py).

A stage process (``python -m stages.<name> ...``) writes, as JSON in the folder $MNISTLAB_STAGE_CLOCK,
when it started, when it first opened an input by a relative path (its first work, the imports done:
a path dvc.yaml passed it; libraries open absolute paths; params.yaml does not count, as a stage reads
it once before its imports to check it) and when it exited.
Any other process (DVC itself, a test importing this file) installs nothing.
"""

import atexit
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

FOLDER_VARIABLE = "MNISTLAB_STAGE_CLOCK"


def now() -> float:
    """Seconds on a system-wide clock, the one /proc/<pid>/stat's start time counts on (Linux)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


def started_at(stat: str, ticks_per_second: int) -> float:
    """The seconds since boot at which a process started, from its /proc/<pid>/stat line."""
    fields = stat.rpartition(")")[2].split()  # the name in parentheses may hold spaces
    return int(fields[19]) / ticks_per_second  # field 22, starttime, in clock ticks


def stage_of(argv: Sequence[str]) -> str | None:
    """The stage a command line runs (``python -m stages.<name> ...``), or None."""
    if "-m" not in argv[:-1]:
        return None
    module = argv[argv.index("-m") + 1]
    return module.removeprefix("stages.") if module.startswith("stages.") else None


def is_stage_input(path: object) -> bool:
    """Whether ``open`` was given a relative path (not a file descriptor, not an absolute path) other than
    params.yaml, which a stage reads before its imports (mnistlab.stage.check_params_first)."""
    if not isinstance(path, (str, bytes, os.PathLike)) or os.path.isabs(path):
        return False
    return os.path.basename(os.fsdecode(path)) != "params.yaml"


def process_start() -> float:
    """When this process started: from /proc (10 ms ticks) where there is one, else now."""
    stat = Path("/proc/self/stat")
    if stat.exists() and hasattr(time, "CLOCK_BOOTTIME"):
        return started_at(stat.read_text(), os.sysconf("SC_CLK_TCK"))
    return now()


def install() -> None:
    folder, stage = os.environ.get(FOLDER_VARIABLE), stage_of(getattr(sys, "orig_argv", []))
    if not folder or stage is None:
        return
    marks = {"stage": stage, "pid": os.getpid(), "start": process_start(), "first_read": None, "end": None}

    def on_open(event: str, args: tuple) -> None:
        if event == "open" and marks["first_read"] is None and is_stage_input(args[0]):
            marks["first_read"] = now()

    def write() -> None:  # registered first, so it runs after every other exit handler
        marks["end"] = now()
        (Path(folder) / f"{stage}-{os.getpid()}.json").write_text(json.dumps(marks))

    sys.addaudithook(on_open)
    atexit.register(write)


install()
