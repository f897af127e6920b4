"""params.yaml, the only configuration: each section becomes a frozen dataclass, checked on load.

Every stage loads only the sections it reads (the same keys ``dvc.yaml`` lists for it), so a
mistake is reported by the first stage that needs the value, naming the key, the bad value and
what is allowed. Unknown keys inside a section are errors too: a typo must not be ignored.
"""

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mnistlab.errors import ParamsError

PARAMS_FILE = Path("params.yaml")
MODEL_NAMES = ("mlp", "mlr")
SOURCE_KINDS = ("torchvision", "pypi")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64", "32", "16", "bf16")

T = TypeVar("T")
Check = Callable[[str, Any], Any]  # (key, raw value) -> validated value, or raise ParamsError
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _fail(key: str, value: Any, allowed: str) -> ParamsError:
    return ParamsError(f"{key} = {value!r} is not allowed: expected {allowed}")


def integer(minimum: int) -> Check:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _fail(key, value, f"an integer >= {minimum}")
        return value

    return check


def real(low: float, high: float = math.inf, *, open_low: bool = True, open_high: bool = True) -> Check:
    """A float in an interval. '1e-3' is accepted too: YAML 1.1 reads it as a string."""
    interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"

    def check(key: str, value: Any) -> float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(key, value, f"a number in {interval}")
        inside_low = value > low if open_low else value >= low
        inside_high = value < high if open_high else value <= high
        if not (inside_low and inside_high):
            raise _fail(key, value, f"a number in {interval}")
        return float(value)

    return check


def choice(options: tuple[str, ...]) -> Check:
    def check(key: str, value: Any) -> str:
        if str(value) not in options or isinstance(value, bool):
            raise _fail(key, value, f"one of {', '.join(options)}")
        return str(value)

    return check


def text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, value, "a non-empty string")
    return value


def sources(key: str, value: Any) -> tuple[str, ...]:
    allowed = f"a non-empty list of {', '.join(SOURCE_KINDS)} or dir:PATH"
    if not isinstance(value, list) or not value:
        raise _fail(key, value, allowed)
    for item in value:
        is_dir = isinstance(item, str) and item.startswith("dir:") and len(item) > len("dir:")
        if not (item in SOURCE_KINDS or is_dir):
            raise _fail(f"{key}[{value.index(item)}]", item, allowed)
    return tuple(value)


def devices(key: str, value: Any) -> int | str | tuple[int, ...]:
    """Lightning's ``devices``: 'auto', a count (-1 = all), or a list of device indices."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1)):
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    ):
        return tuple(value)
    raise _fail(key, value, "'auto', a device count >= 1 (or -1 for all), or a list of device indices")


def _param(check: Check, **default: Any) -> Any:
    """A params.yaml key; ``default=`` only for code that builds the dataclass itself (params.yaml must set it)."""
    return field(metadata={"check": check}, **default)


@dataclass(frozen=True)
class DownloadParams:
    sources: tuple[str, ...] = _param(sources)  # tried in order until one delivers
    timeout_s: float = _param(real(0.0, 600.0, open_high=False))  # per network request


@dataclass(frozen=True)
class SplitParams:
    validation_fraction: float = _param(real(0.0, 1.0))  # of the 60,000 training images


@dataclass(frozen=True)
class TrainerParams:
    """Passed unchanged to Lightning's ``Trainer``."""

    accelerator: str = _param(choice(ACCELERATORS))
    devices: int | str | tuple[int, ...] = _param(devices)
    strategy: str = _param(text)
    num_nodes: int = _param(integer(1))
    precision: str = _param(choice(PRECISIONS))
    join_timeout_s: float = _param(real(0.0), default=300.0)  # DDP: how long a process waits for the others to join


@dataclass(frozen=True)
class TrainParams:
    epochs: int = _param(integer(1))
    learning_rate: float = _param(real(0.0))  # RMSprop
    batch_size: int = _param(integer(1))
    eval_batch_size: int = _param(integer(1))  # validation runs in batches this large
    cuda_graphs: str = _param(choice(("auto", "off")), default="auto")  # auto: record the steps as CUDA graphs on a GPU


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = _param(integer(1))


def read_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """The whole params file as a mapping; a missing or malformed file is a ParamsError."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run the stage from the project root") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must be a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_section(cls: type[T], raw: Mapping[str, Any], name: str) -> T:
    """Build ``cls`` from ``raw[name]``; every problem in the section is reported in one message."""
    if name not in raw:
        raise ParamsError(f"params.yaml has no '{name}' section")
    section = raw[name]
    if not isinstance(section, dict):
        raise ParamsError(f"params.yaml: {_fail(name, section, 'a mapping of keys')}")
    known = [f.name for f in fields(cls)]
    problems = [f"{name}.{key} is not a known key (allowed: {', '.join(known)})" for key in section if key not in known]
    values = {}
    for f in fields(cls):
        key = f"{name}.{f.name}"
        if f.name not in section:
            problems.append(f"{key} is missing")
            continue
        try:
            values[f.name] = f.metadata["check"](key, section[f.name])
        except ParamsError as error:
            problems.append(str(error))
    if problems:
        raise ParamsError("params.yaml: " + "; ".join(problems))
    return cls(**values)


def seed(raw: Mapping[str, Any]) -> int:
    """The one seed: split, weight initialisation, dropout and batch order."""
    if "seed" not in raw:
        raise ParamsError("params.yaml has no 'seed'")
    try:
        return integer(0)("seed", raw["seed"])
    except ParamsError as error:
        raise ParamsError(f"params.yaml: {error}") from None


def train_section(model_name: str) -> str:
    if model_name not in MODEL_NAMES:
        raise ParamsError(f"unknown model {model_name!r}: expected one of {', '.join(MODEL_NAMES)}")
    return f"train_{model_name}"


def validate_all(raw: Mapping[str, Any]) -> None:
    """Check every section at once (tests and ``make check``); unknown top-level keys are errors."""
    sections = {"download": DownloadParams, "split": SplitParams, "trainer": TrainerParams, "evaluate": EvaluateParams}
    sections |= {train_section(name): TrainParams for name in MODEL_NAMES}
    unknown = sorted(set(raw) - set(sections) - {"seed"})
    if unknown:
        raise ParamsError(f"params.yaml: unknown section(s) {', '.join(unknown)}")
    seed(raw)
    for name, cls in sections.items():
        parse_section(cls, raw, name)
