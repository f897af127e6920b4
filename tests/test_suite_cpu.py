"""tools/suite_cpu.py: every Python process it starts records its CPU time, grouped by kind."""

import json
import subprocess
import sys

from tests.conftest import ROOT
from tools.suite_cpu import kind, table


def test_processes_are_grouped_by_what_they_run() -> None:
    assert kind(["-m", "dvc", "exp", "run", "--queue", "-S", "x=1"]) == "dvc exp run"
    assert kind(["-m", "dvc", "repro", "-f"]) == "dvc repro"
    assert kind(["/venv/bin/dvc", "exp", "queue-worker", "dvc-exp-1@localhost"]) == "dvc exp queue-worker"
    assert kind(["-m", "stages.train_mlr", "data/split", "models/mlr"]) == "stages.train_mlr"
    assert kind(["-u", "-c", "import sys;exec(eval(sys.stdin.readline()))"]).startswith("-c import sys;")
    assert kind(["-X", "importtime", "-m", "stages.plot"]) == "stages.plot"
    lines = [{"argv": ["-m", "stages.plot"], "cpu_s": 3.0}, {"argv": ["-m", "stages.plot"], "cpu_s": 1.0}]
    rows = table([*lines, {"argv": ["-m", "dvc", "status"], "cpu_s": 4.0}], top=5).splitlines()
    assert rows[1].split() == ["4.0", "50.0%", "1", "4.00", "dvc", "status"]  # a tie: by name
    assert rows[2].split() == ["4.0", "50.0%", "2", "2.00", "stages.plot"]
    assert rows[-1].split()[:3] == ["8.0", "100%", "3"]


def test_every_python_process_of_the_command_is_counted(tmp_path) -> None:
    log = tmp_path / "cpu.jsonl"
    inner = [sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-m', 'json.tool', '-h'])"]
    command = [sys.executable, "tools/suite_cpu.py", "--log", str(log), "--", *inner]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    kinds = [kind(json.loads(line)["argv"]) for line in log.read_text().splitlines()]
    assert len(kinds) == 2 and kinds[0] == "json.tool" and kinds[1].startswith("-c import subprocess")  # child first
    assert "all Python processes" in result.stdout
