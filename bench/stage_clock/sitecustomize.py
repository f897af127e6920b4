"""Loaded at start-up (on PYTHONPATH) by every Python process of a timed DVC run (bench/experiment.py): a stage
process (``python -m stages.<name> ...``) writes when it started (this import, which only the interpreter's own
start-up precedes) and when it exited, as JSON in the folder $MNISTLAB_STAGE_CLOCK. Others install nothing.
"""

import atexit
import json
import os
import sys
import time
from pathlib import Path

FOLDER_VARIABLE = "MNISTLAB_STAGE_CLOCK"


def stage_of(argv: list[str]) -> str | None:
    """The stage a command line runs (``python -m stages.<name> ...``), or None."""
    if "-m" not in argv[:-1]:
        return None
    module = argv[argv.index("-m") + 1]
    return module.removeprefix("stages.") if module.startswith("stages.") else None


def install() -> None:
    folder, stage = os.environ.get(FOLDER_VARIABLE), stage_of(getattr(sys, "orig_argv", []))
    if not folder or stage is None:
        return
    start = time.time()

    def write() -> None:  # registered first, so it runs after every other exit handler
        record = {"stage": stage, "start": start, "end": time.time()}
        (Path(folder) / f"{stage}-{os.getpid()}.json").write_text(json.dumps(record))

    atexit.register(write)


install()
