"""Is this Python new enough for the project? If not: one line on stderr, exit status 1.

`make` runs it, with the python that creates .venv, before pip sees the lock: an older Python would
otherwise end in a pip resolver error. The minimum is pyproject.toml's requires-python (">=X.Y").
`--minimum` prints that minimum (e.g. 3.11), the version `make lock` resolves for.
Keep it runnable by old Pythons (3.6+): no walrus, no match, no tomllib.
"""

import re
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def minimum(text):
    """(major, minor) from requires-python = ">=X.Y" in pyproject.toml's text."""
    found = re.search(r'^requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', text, re.MULTILINE)
    if found is None:
        raise ValueError(f'{PYPROJECT}: no requires-python = ">=X.Y" line')
    return int(found.group(1)), int(found.group(2))


def problem(version, needed, executable, in_venv=False):
    """The one-line message when `version` (a sys.version_info-like tuple) is older than `needed`; else None."""
    if tuple(version[:2]) >= tuple(needed):
        return None
    found = ".".join(str(part) for part in version[:3])
    wanted = f"{needed[0]}.{needed[1]}"
    advice = f"make clean-venv, then make PYTHON3=python{wanted}" if in_venv else f"make PYTHON3=python{wanted}"
    return (
        f"{executable} is Python {found}; this project needs Python >={wanted} (requires-python in pyproject.toml): "
        f"{advice}"
    )


def main(argv):
    needed = minimum(PYPROJECT.read_text(encoding="utf-8"))
    if argv[1:] == ["--minimum"]:
        print(f"{needed[0]}.{needed[1]}")
        return 0
    message = problem(sys.version_info, needed, sys.executable, in_venv=sys.prefix != sys.base_prefix)
    if message is None:
        return 0
    print(message, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
