"""Where a command's CPU time goes, by kind of Python process: `python tools/suite_cpu.py -- make test`.

Every Python process the command starts (pytest's workers, DVC's commands and queue workers, the stages)
records its own CPU seconds at exit (tools/suite_cpu_hook/sitecustomize.py, loaded through PYTHONPATH);
the table sums them by kind: `dvc <command>`, `stages.<name>`, a module run with -m, or a -c snippet.
Not counted: other programs (git, the shell), the kernel's work for them, a process killed by a signal,
and processes started with a PYTHONPATH of their own. docs/performance.md, "The test suite", has a run.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOOK = Path(__file__).resolve().parent / "suite_cpu_hook"
DVC_GROUPS = ("exp", "queue", "plots", "metrics", "params", "remote")  # commands shown with their subcommand


def kind(argv: list[str]) -> str:
    """A process's group, from its arguments after the interpreter."""
    while argv and argv[0].startswith("-") and argv[0] not in ("-m", "-c"):  # the interpreter's own options
        argv = argv[2:] if argv[0] in ("-X", "-W") else argv[1:]
    if len(argv) >= 2 and argv[0] == "-m":
        if argv[1] != "dvc":
            return argv[1]
        words = [word for word in argv[2:] if not word.startswith("-")]
        return " ".join(["dvc", *words[: 2 if words and words[0] in DVC_GROUPS else 1]])
    if len(argv) >= 2 and argv[0] == "-c":
        return "-c " + " ".join(argv[1].split())[:40]
    script = Path(argv[0]).name if argv else "?"
    if script == "dvc":  # DVC's own console script (its queue workers and executors)
        return kind(["-m", "dvc", *argv[1:]])
    return script


def table(lines: list[dict], top: int) -> str:
    groups: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for line in lines:
        group = groups[kind(line["argv"])]
        group[0] += 1
        group[1] += line["cpu_s"]
    total = sum(cpu for _, cpu in groups.values())
    rows = [f"{'CPU s':>8} {'share':>6} {'processes':>9} {'s each':>7}  kind"]
    ranked = sorted(groups.items(), key=lambda item: (-item[1][1], item[0]))  # ties: by name
    for name, (count, cpu) in ranked[:top]:
        rows.append(f"{cpu:8.1f} {cpu / total:6.1%} {count:9d} {cpu / count:7.2f}  {name}")
    rows.append(f"{total:8.1f} {1:6.0%} {len(lines):9d} {'':>7}  all Python processes")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, help="keep the per-process JSON lines here (default: a temporary file)")
    parser.add_argument("--top", type=int, default=25, help="rows to show (default 25)")
    parser.add_argument("command", nargs="+", help="what to run, after --")
    args = parser.parse_args()
    log = args.log or Path(tempfile.mkstemp(prefix="suite-cpu-", suffix=".jsonl")[1])
    log.write_text("")
    path = os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"PYTHONPATH": path, "SUITE_CPU_LOG": str(log)}
    started = time.monotonic()
    code = subprocess.run(args.command, env=env).returncode
    wall = time.monotonic() - started
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    print(f"\n{' '.join(args.command)}: exit {code}, {wall:.0f} s wall, {os.cpu_count()} cores")
    print(table(lines, args.top))
    sys.exit(code)


if __name__ == "__main__":
    main()
