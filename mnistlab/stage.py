"""What every stage script shares: clear errors instead of tracebacks, and result files."""

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mnistlab.errors import PipelineError


def run_stage(main: Callable[[Sequence[str]], None]) -> None:
    """Run a stage's ``main(argv)``; a PipelineError becomes one line on stderr and exit code 1."""
    try:
        main(sys.argv[1:])
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def write_json(path: Path, content: dict) -> None:
    """Pretty, key-sorted JSON, so that ``git diff`` of a metrics file shows what changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
