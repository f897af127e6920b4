"""Faults in the real pipeline: reruns are bit-identical, kills and a second `dvc repro` lose nothing.

Each test runs `dvc repro` in its own copy of the session's tiny trained project (``copy_trained``),
on the real data. Training is signalled the way a user does it: Ctrl-C (SIGINT to the whole process group)
and ``kill -9`` (SIGKILL to the whole process group, DVC included).
"""

import hashlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import dvc, git, update_params, venv_env

pytestmark = pytest.mark.slow
HANG_GUARD_S = 600  # only against a hang: no test asserts how long anything takes
LOCK_MESSAGE = "Unable to acquire lock. Most likely another DVC process is running"  # the repo lock
CHECKPOINTS = ("models/mlp/model.ckpt", "models/mlr/model.ckpt")


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_repro_left_running() -> Iterator[None]:
    """A failed assertion must not leave a `dvc repro` running in the background."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class Repro:
    """`dvc repro` in the background, in its own process group, with its output read line by line."""

    def __init__(self, project: Path, *args: str) -> None:
        env = venv_env() | {"PYTHONUNBUFFERED": "1"}  # the stage's lines arrive as they are printed
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", *args],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            # As from a terminal: SIGINT handled even when this test runs as a background job, whose
            # children a non-interactive shell starts with SIGINT ignored (POSIX), so Ctrl-C could not reach them
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        STARTED.append(self.process)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, *markers: str) -> None:
        """Read until each marker has appeared, in order; fail if the run ends first."""
        for marker in markers:
            while not self.lines or marker not in self.lines[-1]:
                line = self._queue.get(timeout=HANG_GUARD_S)
                assert line is not None, f"dvc repro ended before {marker!r}:\n{self.output}"
                self.lines.append(line)

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def finish(self) -> int:
        """Wait for the end; the exit code."""
        while (line := self._queue.get(timeout=HANG_GUARD_S)) is not None:
            self.lines.append(line)
        return self.process.wait(timeout=HANG_GUARD_S)


def digests(project: Path, paths: tuple[str, ...]) -> dict[str, str]:
    return {path: hashlib.sha256((project / path).read_bytes()).hexdigest() for path in paths}


def lock_entry(project: Path, stage: str) -> dict:
    """What dvc.lock records for ``stage``: its command, dependencies, params and outputs' hashes."""
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]


def training_started(repro: Repro, stage: str) -> None:
    """Wait for evidence that ``stage`` is inside fit: its line for the first finished epoch."""
    repro.wait_for(f"Running stage '{stage}'", "Total params", "epoch 1/")
    assert repro.process.poll() is None, f"dvc repro ended before training was interrupted:\n{repro.output}"


def test_forced_rerun_is_bit_identical_and_a_second_repro_is_locked_out(copy_trained) -> None:
    project = copy_trained()  # the reference run, committed
    reference = digests(project, CHECKPOINTS)

    first = Repro(project, "-f")  # every stage again, from the same inputs
    first.wait_for("Running stage 'train_mlp'")
    second = dvc(project, "repro", check=False)
    assert second.returncode != 0
    # DVC releases its repo lock while a stage's command runs; the per-file lock then refuses.
    blocked_by_first = re.search(rf"is being blocked by:\s+\(PID {first.process.pid}\)", second.stderr)
    assert LOCK_MESSAGE in second.stderr or blocked_by_first, second.stderr
    assert "Running stage" not in second.stdout
    assert first.process.poll() is None, "the second dvc repro must not stop the first"
    assert first.finish() == 0, first.output

    assert digests(project, CHECKPOINTS) == reference  # the checkpoints, byte for byte
    git(project, "diff", "--exit-code", "--stat", "metrics/", "plots/history/", "plots/predictions/")
    assert git(project, "status", "--porcelain", "metrics/", "plots/", "dvc.lock") == ""
    assert "up to date" in dvc(project, "status").stdout


def test_killed_training_reruns_to_a_complete_result(copy_trained) -> None:
    epochs = 5  # after the first epoch's line, several seconds of training left even on a fast CPU
    project = copy_trained()  # the data split, and a 1-epoch MLP that these params make stale
    update_params(project, {"train_mlp": {"epochs": epochs}})
    checkpoint = project / "models/mlp/model.ckpt"
    recorded = lock_entry(project, "train_mlp")  # the 1-epoch run's

    interrupted = Repro(project)  # Ctrl-C: the stage and DVC both get SIGINT
    training_started(interrupted, "train_mlp")
    interrupted.signal(signal.SIGINT)
    assert interrupted.finish() != 0, interrupted.output
    assert "Detected KeyboardInterrupt" in interrupted.output  # Lightning was inside fit
    assert "failed to reproduce 'train_mlp'" in interrupted.output
    assert not checkpoint.exists()  # DVC removes a stage's outputs before it runs the stage
    assert lock_entry(project, "train_mlp") == recorded  # DVC recorded nothing for it

    killed = Repro(project)  # kill -9 of the whole group: DVC dies too, and leaves its lock files
    killed.wait_for("Stage 'split' didn't change, skipping")
    training_started(killed, "train_mlp")
    killed.signal(signal.SIGKILL)
    assert killed.finish() == -signal.SIGKILL
    assert not checkpoint.exists()
    assert lock_entry(project, "train_mlp") == recorded

    final = dvc(project, "repro").stdout
    assert "Running stage 'train_mlp'" in final and "Running stage 'plot'" in final
    assert "up to date" in dvc(project, "status").stdout
    history = pd.read_csv(project / "plots/history/mlp/metrics.csv")
    assert history["epoch"].tolist() == list(range(epochs))  # nothing left over from the killed runs
    assert history[["train_loss", "valid_loss", "valid_accuracy"]].notna().all().all()
    saved = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert saved["epoch"] == epochs and saved["global_step"] == epochs * 188  # epochs done; 48,000 / 256
    assert (project / "metrics/metrics.json").is_file() and (project / "plots/figures/accuracy.png").is_file()
    assert not list(project.glob("models/*/.*.partial"))
