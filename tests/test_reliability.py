"""Faults in the real pipeline: reruns are bit-identical, kills and a second `dvc repro` lose nothing.

Each test runs `dvc repro` in its own copy of the test session's tiny trained project (``copy_trained``),
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

from tests.conftest import TrainedProject, ctrl_c_reaches_it, dvc, git, sitecustomize_env, update_params, venv_env

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

    def __init__(self, project: Path, *args: str, env: dict[str, str] | None = None) -> None:
        env = (env or venv_env()) | {"PYTHONUNBUFFERED": "1"}  # the stage's lines arrive as they are printed
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", *args],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=ctrl_c_reaches_it,
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


# Loaded by every Python process of the clone's `dvc repro` (PYTHONPATH): the CPU reads as another model.
OTHER_CPU_MODEL = """
import mnistlab.machine as machine

real = machine.cpu_model
machine.cpu_model = lambda: real() | {"cpu": "Imaginary CPU 9000", "cpu_family_model": "99/42"}
"""


def test_a_fresh_clone_on_another_cpu_reruns_to_a_clean_git_status_and_locks_out_a_second_repro(
    trained_project: TrainedProject, tmp_path: Path
) -> None:
    """The README's first command on another machine: a fresh clone (no DVC cache, so every stage whose
    outputs are not in git reruns) on another CPU model gives the committed bytes. While it runs, a second
    `dvc repro` is refused and does not disturb it. Then a forced rerun of evaluate and plot changes no byte.

    (This was two tests: the fresh clone, and `dvc repro -f` of the whole pipeline in a copy, whose
    retraining this run does too.)"""
    project = trained_project.path  # the reference run, committed; git clone only reads it
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    env = sitecustomize_env(tmp_path / "other_cpu", OTHER_CPU_MODEL, clone)

    first = Repro(clone, env=env)
    first.wait_for("Running stage 'train_mlp'")
    second = dvc(clone, "repro", check=False)
    assert second.returncode != 0
    # DVC releases its repo lock while a stage's command runs; the per-file lock then refuses.
    blocked_by_first = re.search(rf"is being blocked by:\s+\(PID {first.process.pid}\)", second.stderr)
    assert LOCK_MESSAGE in second.stderr or blocked_by_first, second.stderr
    assert "Running stage" not in second.stdout
    assert first.process.poll() is None, "the second dvc repro must not stop the first"
    assert first.finish() == 0, first.output

    for stage in ("download", "split", "train_mlp", "train_mlr"):  # their outputs are in no clone
        assert f"Running stage '{stage}'" in first.output, first.output
    for stage in ("evaluate", "plot"):  # the retrained models hash as committed, so nothing downstream reruns
        assert f"Stage '{stage}' didn't change, skipping" in first.output, first.output
    assert "'cpu_family_model': '99/42'" in first.output, first.output  # the training log: the whole record
    assert digests(clone, CHECKPOINTS) == digests(project, CHECKPOINTS)  # the checkpoints, byte for byte
    assert git(clone, "status", "--porcelain") == ""

    forced = Repro(clone, "-f", "-s", "evaluate", "plot", env=env)  # the figures from identical predictions
    assert forced.finish() == 0, forced.output
    assert "Running stage 'evaluate'" in forced.output and "Running stage 'plot'" in forced.output, forced.output
    assert git(clone, "status", "--porcelain") == ""  # metrics, histories, predictions, figures, dvc.lock
    assert "up to date" in dvc(clone, "status").stdout


def test_killed_training_reruns_to_a_complete_result(copy_trained) -> None:
    epochs = 3  # after the first epoch's line, two epochs of training left: seconds, even on a fast CPU
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
