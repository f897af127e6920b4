"""What every stage script shares: clear errors instead of tracebacks, and result files."""

import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mnistlab.errors import DataError, PipelineError

# What a training stage writes into its folder (models/<model>/, cached by DVC, so that the
# run-cache restores all of it); the evaluate stage copies the small files where git keeps them.
CHECKPOINT, HISTORY, SUMMARY, MACHINE = "model.ckpt", "metrics.csv", "summary.txt", "machine.json"
# The DVC metrics file (dvc.yaml passes it to evaluate); `make verify` and `make report` read it back.
METRICS_FILE = "metrics/metrics.json"


def run_stage(main: Callable[[Sequence[str]], None]) -> None:
    """Run a stage's ``main(argv)``; a PipelineError becomes one line on stderr and exit code 1."""
    try:
        main(sys.argv[1:])
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def check_params_first(stage: str) -> None:
    """Check the params ``stage`` reads before the stage imports torch (seconds; Lightning: more), so that a
    mistake in params.yaml is its one error line at once. The stage reads them again for their values."""
    from mnistlab.params import STAGE_PARAMS, check_sections, read_params

    run_stage(lambda argv: check_sections(read_params(), STAGE_PARAMS[stage]))


def write_json(path: Path, content: dict, sort_keys: bool = True) -> None:
    """Pretty JSON, key-sorted unless the caller's order is the point, so ``git diff`` shows what changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: Path) -> dict:
    """A JSON file a stage reads; a missing one is a DataError naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the stage that writes it first (dvc repro)") from None


def copy_file(source: Path, copy: Path) -> None:
    """Copy ``source`` to ``copy``; a missing source is a DataError naming it."""
    copy.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(source, copy)
    except FileNotFoundError:
        raise DataError(f"{source} not found: run the stage that writes it first (dvc repro)") from None
