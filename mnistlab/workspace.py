"""A throwaway copy of the project as a git repo, for the tests and the benchmark (no stage imports it)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("data/", "models/", "metrics/", "plots/", "dvc.lock", "dvc_plots/", "bench/results")


def venv_env() -> dict[str, str]:
    """The environment `make` gives a stage: this interpreter's bin folder first on PATH, no CI flag."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("CI", None)
    return env


def project_files() -> list[str]:
    """The project's files as a clone would have them (tracked or new), without pipeline outputs."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [name for name in listed if not name.startswith(OUTPUTS) and (ROOT / name).is_file()]


def copy_project(destination: Path) -> Path:
    """The project's files in ``destination``, a new git repo on branch main with nothing committed."""
    for name in project_files():
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination / name)
    for command in (
        ["init", "-q", "-b", "main"],
        ["config", "user.email", "test@example.com"],
        ["config", "user.name", "test"],
    ):
        subprocess.run(["git", *command], cwd=destination, capture_output=True, check=True)
    return destination
