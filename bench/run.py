"""``python -m bench.run``: the old name of ``python -m bench`` (bench/cli.py)."""

import sys

from bench.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
