"""The install: requirements.in (declared) against requirements.txt (the lock), and the Python check.

Offline: the lock pins every declared package at its declared version and nothing that was dropped
(`make lock` after each edit of requirements.in), with hashes; torch's CUDA libraries only on Linux; the
venv holds the lock. Slow (PyPI): the lock resolves for each supported platform. And `make repro` with
an old Python stops with one line.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT, sitecustomize_env
from tools.check_python import minimum, problem

DECLARED = ROOT / "requirements.in"
LOCK = ROOT / "requirements.txt"
STALE = "the lock is stale against requirements.in: run `make lock`"


@dataclass
class Locked:
    name: str  # canonical
    version: str
    extras: set[str]
    marker: Marker | None
    hashes: list[str]
    via: list[str] = field(default_factory=list)


def declared() -> dict[str, Requirement]:
    requirements = {}
    for line in DECLARED.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            requirements[canonicalize_name(requirement.name)] = requirement
    return requirements


def locked() -> list[Locked]:
    """The lock's entries: one per pin (a package may have several, for different markers)."""
    entries: list[Locked] = []
    lines = LOCK.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line and not line[0].isspace() and not line.startswith("#"):
            spec = line
            while spec.endswith("\\"):
                i += 1
                spec = spec[:-1] + lines[i]
            hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", spec)
            requirement = Requirement(re.sub(r"\s--hash=\S+", "", spec).strip())
            pins = [s.version for s in requirement.specifier if s.operator == "=="]
            assert len(pins) == 1 and len(requirement.specifier) == 1, f"not an exact pin: {line}"
            entries.append(
                Locked(canonicalize_name(requirement.name), pins[0], requirement.extras, requirement.marker, hashes)
            )
        elif entries and line.lstrip().startswith("#"):
            comment = line.strip("# ").removeprefix("via").strip()
            if comment:
                entries[-1].via.append(comment)
        i += 1
    return entries


def test_lock_pins_every_declared_package_at_its_declared_version() -> None:
    lock = {entry.name: entry for entry in locked()}
    for name, requirement in declared().items():
        assert name in lock, f"{requirement.name} is declared but not in the lock: {STALE}"
        pin = [s.version for s in requirement.specifier if s.operator == "=="]
        assert len(pin) == 1, f"requirements.in pins exactly: {requirement}"
        locked_version = lock[name].version
        assert locked_version == pin[0], f"{requirement.name}: declared {pin[0]}, locked {locked_version}: {STALE}"
        assert lock[name].extras == requirement.extras, f"{requirement.name}: extras differ: {STALE}"
        assert lock[name].marker is None, f"{requirement.name} is declared for every platform, locked for some"


def test_lock_lists_as_declared_exactly_what_requirements_in_declares() -> None:
    from_in = {entry.name for entry in locked() if "-r requirements.in" in entry.via}
    not_yet, no_longer = sorted(set(declared()) - from_in), sorted(from_in - set(declared()))
    assert not not_yet and not no_longer, f"{STALE} (declared since: {not_yet}; no longer declared: {no_longer})"


def test_declarations_include_pydantic_and_the_torch_pair() -> None:
    versions = {name: str(requirement.specifier) for name, requirement in declared().items()}
    assert versions["torch"] == "==2.14.1" and versions["torchvision"] == "==0.29.1"
    assert versions["pydantic"] == "==2.14.4"


def test_every_locked_package_has_sha256_hashes() -> None:
    entries = locked()
    assert len(entries) > 150, "the lock pins everything the install brings in, not just what is declared"
    for entry in entries:
        assert entry.hashes, f"{entry.name} has no hash: pip and uv refuse the whole lock"


def test_lock_is_universal_cuda_libraries_only_on_linux() -> None:
    """Resolved on Linux alone, torch's CUDA libraries lose their markers and a Mac install breaks."""
    entries = locked()
    cuda = [e for e in entries if e.name.startswith(("nvidia-", "cuda-")) or e.name == "triton"]
    assert len(cuda) >= 15
    mac = {"sys_platform": "darwin", "platform_machine": "arm64", "platform_system": "Darwin"}
    linux = {"sys_platform": "linux", "platform_machine": "x86_64", "platform_system": "Linux"}
    for entry in cuda:
        assert entry.marker is not None and 'sys_platform == "linux"' in str(entry.marker), entry.name
        assert not entry.marker.evaluate({**mac, "python_full_version": "3.11.7"}), entry.name
        assert entry.marker.evaluate({**linux, "python_full_version": "3.11.7"}), entry.name
    torch = [e for e in entries if e.name in ("torch", "torchvision")]
    assert [e.marker for e in torch] == [None, None]
    assert len(next(e for e in torch if e.name == "torch").hashes) >= 8, "one wheel per platform and Python"


def test_lock_header_is_the_command_make_lock_runs() -> None:
    """The header says how to regenerate it; its --python-version is pyproject.toml's requires-python."""
    low = ".".join(map(str, minimum((ROOT / "pyproject.toml").read_text())))
    command = (
        f"uv pip compile --universal --generate-hashes --no-strip-extras --python-version {low} "
        "requirements.in -o requirements.txt"
    )
    assert f"#    {command}\n" in LOCK.read_text()[:400]
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lock:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "make lock"
    flat = re.sub(r"\\\n\s*", "", recipe[1])
    assert "uv pip compile --quiet --universal --generate-hashes --no-strip-extras" in flat
    assert "requirements.in -o requirements.txt" in flat


def test_the_venv_holds_exactly_the_locked_versions() -> None:
    """What `make` installed is the lock, as this platform's markers select it."""
    mismatched = {}
    for entry in locked():
        if entry.marker is not None and not entry.marker.evaluate():
            continue
        try:
            installed = metadata.version(entry.name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != entry.version:
            mismatched[entry.name] = (entry.version, installed)
    assert not mismatched, f"locked vs installed (run make): {mismatched}"


# The platforms the install supports (docs/install.md): uv's names, and the macOS that torch's wheels need.
PLATFORMS = {
    "linux-x86_64": "x86_64-unknown-linux-gnu",
    "linux-aarch64": "aarch64-unknown-linux-gnu",
    "macos-arm64": "aarch64-apple-darwin",
}


@pytest.fixture(scope="module")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uv cache for the platforms' dry runs: PyPI's metadata once, not the user's cache."""
    return tmp_path_factory.mktemp("uv-cache")


@pytest.mark.slow
@pytest.mark.parametrize("python", ["3.11", "3.13"])
@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_lock_resolves_for_each_supported_platform(platform: str, python: str, tmp_path: Path, uv_cache: Path) -> None:
    """uv installs the lock, every package with a hash, for the platform (a dry run: PyPI's metadata)."""
    command = [sys.executable, "-m", "uv", "pip", "install", "--dry-run", "--require-hashes"]
    command += ["--python-platform", PLATFORMS[platform], "--python-version", python]
    command += ["--target", str(tmp_path / "target"), "-r", str(LOCK)]
    env = {**os.environ, "MACOSX_DEPLOYMENT_TARGET": "14.0", "UV_CACHE_DIR": str(uv_cache)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    would = set(re.findall(r"^ \+ ([A-Za-z0-9_.-]+)==", result.stderr, re.MULTILINE))
    assert {"torch", "torchvision", "pytorch-lightning", "dvc", "pydantic"} <= would, result.stderr
    assert any(name.startswith("nvidia-") for name in would) == platform.startswith("linux")


@pytest.mark.slow
@pytest.mark.parametrize("package", ["torch", "torchvision"])
def test_lock_has_pypis_hashes_of_the_linux_and_macos_wheels(package: str) -> None:
    request = urllib.request.Request(
        f"https://pypi.org/simple/{package}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        files = json.load(response)["files"]
    entry = next(e for e in locked() if e.name == package)
    for tag in ("cp311-cp311-manylinux_2_28_x86_64", "cp311-cp311-macosx_14_0_arm64", "cp313-cp313-macosx_14_0_arm64"):
        wheel = f"{package}-{entry.version}-{tag}.whl"
        sha256 = [f["hashes"]["sha256"] for f in files if f["filename"] == wheel]
        assert len(sha256) == 1, f"no {wheel} on PyPI"
        assert sha256[0] in entry.hashes, f"{wheel}'s hash is not in the lock"


# The Python check: tools/check_python.py, which make runs before it creates .venv.


def test_minimum_is_pyprojects_requires_python() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    low = minimum((ROOT / "pyproject.toml").read_text())
    assert requires == f">={low[0]}.{low[1]}"
    assert minimum('[project]\nrequires-python = ">=3.12"\n') == (3, 12)
    with pytest.raises(ValueError, match="requires-python"):
        minimum("[project]\n")


def test_problem_names_the_version_found_and_the_one_needed() -> None:
    message = problem((3, 9, 18, "final", 0), (3, 11), "/usr/bin/python3")
    assert message is not None and "\n" not in message
    assert "/usr/bin/python3 is Python 3.9.18" in message and ">=3.11" in message
    assert "PYTHON3=python3.11" in message and "clean-venv" not in message
    assert "make clean-venv" in problem((3, 10, 13), (3, 11), "python", in_venv=True)
    for version in [(3, 11, 0), (3, 11, 7), (3, 12, 1), (3, 13, 0), (4, 0, 0)]:
        assert problem(version, (3, 11), "python3") is None


def fake_python(directory: Path, version: tuple[int, ...], base: str) -> Path:
    """A python3 that reports ``version``: the real one, with sys.version_info replaced at start-up."""
    site = directory / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(f"import sys\nsys.version_info = {(*version, 'final', 0)!r}\n")
    script = directory / "python3"
    script.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {base} "$@"\n')
    script.chmod(0o755)
    return script


@pytest.fixture
def project_for_make(tmp_path: Path) -> Path:
    """The Makefile and what its install rule reads, with an empty lock: nothing real gets installed."""
    project = tmp_path / "project"
    (project / "tools").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "tools/check_python.py"):
        shutil.copy(ROOT / name, project / name)
    (project / "requirements.txt").write_text("# empty\n")
    return project


def run_make(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``make`` in ``project``, in ``env`` (default: this process's) without what the calling make or the user set."""
    unset = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VIRTUAL_ENV", "TEST_WORKERS")
    env = {k: v for k, v in (os.environ if env is None else env).items() if k not in unset}
    return subprocess.run(["make", *args], cwd=project, env=env, capture_output=True, text=True, timeout=120)


def test_make_repro_with_an_old_python_stops_at_once_with_one_line(project_for_make: Path, tmp_path: Path) -> None:
    base = str(Path(sys.base_prefix) / "bin" / "python3")
    old = fake_python(tmp_path / "old", (3, 9, 18), base)
    result = run_make(project_for_make, "repro", f"PYTHON3={old}")
    assert result.returncode != 0
    assert result.stdout == "", "nothing ran"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "is Python 3.9.18; this project needs Python >=3.11" in lines[0]
    assert "make PYTHON3=python3.11" in lines[0]
    assert not (project_for_make / ".venv").exists(), "no venv from the old python"

    # A .venv that an old python made: make stops the same way, and says how to start over.
    venv_python = project_for_make / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    shutil.copy(fake_python(tmp_path / "old_venv", (3, 10, 13), sys.executable), venv_python)
    result = run_make(project_for_make, "repro")
    assert result.returncode != 0 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "is Python 3.10.13" in result.stderr and "make clean-venv" in result.stderr


def test_make_goes_on_to_create_the_venv_with_a_new_enough_python(project_for_make: Path, tmp_path: Path) -> None:
    base = str(Path(sys.base_prefix) / "bin" / "python3")
    result = run_make(project_for_make, "-n", ".venv/.installed", f"PYTHON3={fake_python(tmp_path, (3, 12, 1), base)}")
    assert result.returncode == 0, result.stderr
    assert "-m venv .venv" in result.stdout and "uv pip sync" in result.stdout and "--require-hashes" in result.stdout


# Every Python the Makefile starts sees this many usable cores.
CORES = "import os\nos.sched_getaffinity = lambda pid: set(range(int(os.environ['FAKE_CORES'])))\n"


@pytest.mark.parametrize(("cores", "workers"), [(1, 2), (2, 2), (3, 3), (16, 4)])
def test_make_test_runs_a_worker_per_core_from_2_to_4(cores: int, workers: int, tmp_path: Path) -> None:
    env = sitecustomize_env(tmp_path / "cores", CORES) | {"FAKE_CORES": str(cores)}
    for extra, expected in [((), workers), (("TEST_WORKERS=6",), 6)]:  # the user's number wins
        result = run_make(ROOT, "-n", "test", *extra, env=env)
        assert result.returncode == 0, result.stderr
        assert f"-m pytest -n {expected} --dist loadfile" in result.stdout, result.stdout
