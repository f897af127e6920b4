"""Loaded at start-up by every Python process that tools/suite_cpu.py starts (through PYTHONPATH): at exit,
one JSON line with the process's command line and its own CPU seconds (not its children's) goes to the file
named by SUITE_CPU_LOG. A process that ends by os._exit or a signal writes nothing."""

import atexit
import json
import os
import sys
import time

_LOG = os.environ.get("SUITE_CPU_LOG")
_STARTED = time.time()


def _record() -> None:
    times = os.times()
    line = {
        "argv": getattr(sys, "orig_argv", sys.argv)[1:8],
        "cpu_s": round(times.user + times.system, 3),
        "wall_s": round(time.time() - _STARTED, 3),
    }
    try:
        with open(_LOG, "a") as log:  # one short write per line: appends from many processes do not interleave
            log.write(json.dumps(line) + "\n")
    except OSError:
        pass


if _LOG:
    atexit.register(_record)
