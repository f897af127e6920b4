"""params.yaml, the only configuration: each section is a frozen pydantic model, checked on load.

Every stage loads only the sections it reads (the same keys ``dvc.yaml`` lists for it), so a
mistake is reported by the first stage that needs the value, naming the key, the bad value and
what is allowed. Unknown keys inside a section are errors too: a typo must not be ignored.
"""

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from mnistlab.errors import ParamsError

PARAMS_FILE = Path("params.yaml")
MODEL_NAMES = ("mlp", "mlr")
SOURCE_KINDS = ("torchvision", "pypi")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64", "32", "16", "bf16")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# '1e-3' is a number too: YAML 1.1 reads an exponent without a dot as a string
_YAML_FLOAT = BeforeValidator(lambda v: float(v) if isinstance(v, str) and _FLOAT.fullmatch(v.strip()) else v)
_LIST = BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)  # YAML's lists, and only those


class Allowed(str):
    """What a key accepts, as the error message says it (kept in the field's metadata)."""


def integer(minimum: int) -> Any:
    return Annotated[int, Field(ge=minimum), Allowed(f"an integer >= {minimum}")]


def real(low: float, high: float = math.inf, *, high_included: bool = False) -> Any:
    """A finite number above ``low`` and below ``high`` (or up to it)."""
    bound = {} if high == math.inf else {"le" if high_included else "lt": high}
    allowed = Allowed(f"a number in ({low}, {high}{']' if high_included else ')'}")
    return Annotated[float, _YAML_FLOAT, Field(gt=low, allow_inf_nan=False, **bound), allowed]


def choice(*options: str) -> Any:
    """One of ``options``; ``precision: 32`` too, which YAML reads as a number."""
    digits = BeforeValidator(lambda v: str(v) if type(v) is int and str(v) in options else v)
    return Annotated[Literal[options], digits, Allowed(f"one of {', '.join(options)}")]


Text = Annotated[str, Field(pattern=r"\S"), Allowed("a non-empty string")]
Sources = Annotated[
    tuple[Literal[SOURCE_KINDS] | Annotated[str, Field(pattern=r"^dir:.")], ...],
    _LIST,
    Field(min_length=1),
    Allowed(f"a non-empty list of {', '.join(SOURCE_KINDS)} or dir:PATH"),
]
Devices = Annotated[
    Literal["auto"]
    | Annotated[int, Field(ge=1)]
    | Annotated[int, Field(ge=-1, le=-1)]
    | Annotated[tuple[Annotated[int, Field(ge=0)], ...], _LIST, Field(min_length=1)],
    Allowed("'auto', a device count >= 1 (or -1 for all), or a list of device indices"),
]


class Section(BaseModel):
    """A params.yaml section: every key typed and bounded, and all of them set in the file."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)  # strict: true is not 1, nor '5' 5


class Seed(Section):
    seed: integer(0) = Field(description="the one seed: split, weight initialisation, dropout and batch order")


class DownloadParams(Section):
    sources: Sources = Field(description="tried in order until one delivers")
    timeout_s: real(0.0, 600.0, high_included=True) = Field(description="per network request")


class SplitParams(Section):
    validation_fraction: real(0.0, 1.0) = Field(description="of the 60,000 training images")


class TrainerParams(Section):
    """Passed unchanged to Lightning's ``Trainer`` (but ``join_timeout_s``)."""

    accelerator: choice(*ACCELERATORS) = Field(description="Lightning's accelerator")
    devices: Devices = Field(description="'auto', a count (-1 = all), or a list of device indices")
    strategy: Text = Field(description="Lightning's strategy: auto, ddp, ...")
    num_nodes: integer(1) = Field(description="machines taking part")
    precision: choice(*PRECISIONS) = Field(description="Lightning's precision")
    join_timeout_s: real(0.0) = Field(300.0, description="DDP: how long a process waits for the others to join")


class TrainParams(Section):
    epochs: integer(1) = Field(description="passes over the training images")
    learning_rate: real(0.0) = Field(description="RMSprop's step size")
    batch_size: integer(1) = Field(description="training images per step")
    eval_batch_size: integer(1) = Field(description="validation runs in batches this large")
    cuda_graphs: choice("auto", "off") = Field("auto", description="auto: record the steps as CUDA graphs on a GPU")

    def model_options(self) -> dict[str, float]:
        """What the network is built with besides its name (``mnistlab.models.build_model``)."""
        return {}


Probability = Annotated[float, _YAML_FLOAT, Field(ge=0.0, lt=1.0, allow_inf_nan=False), Allowed("a number in [0, 1)")]


class MLPTrainParams(TrainParams):
    dropout1: Probability = Field(0.4, description="dropout after the first hidden layer (256 units)")
    dropout2: Probability = Field(0.3, description="dropout after the second hidden layer (128 units)")

    def model_options(self) -> dict[str, float]:
        return {"dropout1": self.dropout1, "dropout2": self.dropout2}


class EvaluateParams(Section):
    batch_size: integer(1) = Field(description="test images per forward pass")


S = TypeVar("S", bound=Section)


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


def _validated(cls: type[S], section: dict[str, Any], prefix: str) -> S:
    """``cls`` from ``section``, or one ParamsError with every problem: unknown keys first, then the keys in order."""
    keys = list(cls.model_fields)
    problems = {(key,): f"{prefix}{key} is missing" for key in keys if key not in section}  # defaults: for code
    try:
        params = cls.model_validate(section)
    except ValidationError as error:
        for problem in error.errors():
            loc = problem["loc"]
            path = loc[:2] if len(loc) > 1 and isinstance(loc[1], int) else loc[:1]  # a list's item, or the key
            where = f"{prefix}{path[0]}" + "".join(f"[{index}]" for index in path[1:])
            if problem["type"] == "extra_forbidden":
                problems[path] = f"{where} is not a known key (allowed: {', '.join(keys)})"
            elif problem["type"] != "missing":
                value = section[path[0]] if len(path) == 1 else section[path[0]][path[1]]
                allowed = next(item for item in cls.model_fields[path[0]].metadata if isinstance(item, Allowed))
                problems[path] = f"{where} = {value!r} is not allowed: expected {allowed}"
    if problems:
        order = sorted(problems, key=lambda path: keys.index(path[0]) if path[0] in keys else -1)
        raise ParamsError("params.yaml: " + "; ".join(problems[path] for path in order))
    return params


def parse_section(cls: type[S], raw: Mapping[str, Any], name: str) -> S:
    """Build ``cls`` from ``raw[name]``; every problem in the section is reported in one message."""
    if name not in raw:
        raise ParamsError(f"params.yaml has no '{name}' section")
    if not isinstance(raw[name], dict):
        raise ParamsError(f"params.yaml: {name} = {raw[name]!r} is not allowed: expected a mapping of keys")
    return _validated(cls, raw[name], f"{name}.")


def seed(raw: Mapping[str, Any]) -> int:
    """The one seed: split, weight initialisation, dropout and batch order."""
    if "seed" not in raw:
        raise ParamsError("params.yaml has no 'seed'")
    return _validated(Seed, {"seed": raw["seed"]}, "").seed


def train_params(model_name: str) -> type[TrainParams]:
    """The section class of ``train_<model_name>``: the MLP's has its dropout rates too."""
    train_section(model_name)
    return MLPTrainParams if model_name == "mlp" else TrainParams


def train_section(model_name: str) -> str:
    if model_name not in MODEL_NAMES:
        raise ParamsError(f"unknown model {model_name!r}: expected one of {', '.join(MODEL_NAMES)}")
    return f"train_{model_name}"


# The params each stage reads, in the order it reads them: dvc.yaml's `params:` lists the same
# (tests/test_dvc_yaml.py), so that DVC reruns a stage when one of them changes.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "download": ("download",),
    "split": ("split", "seed"),
    "train_mlp": ("train_mlp", "trainer", "seed"),
    "train_mlr": ("train_mlr", "trainer", "seed"),
    "evaluate": ("evaluate",),
    "plot": (),
}


# Every section of params.yaml and the model that checks it; the seed, a top-level value, is checked by seed().
SECTIONS: dict[str, type[Section]] = {
    "download": DownloadParams,
    "split": SplitParams,
    "trainer": TrainerParams,
    "evaluate": EvaluateParams,
    **{train_section(name): train_params(name) for name in MODEL_NAMES},
}


def check_sections(raw: Mapping[str, Any], names: Sequence[str]) -> None:
    """Check the sections ``names`` of ``raw`` (and the top-level seed) as the stages read them."""
    for name in names:
        if name == "seed":
            seed(raw)
        else:
            parse_section(SECTIONS[name], raw, name)


def validate_all(raw: Mapping[str, Any]) -> None:
    """Check every section at once (tests and ``make check``); unknown top-level keys are errors."""
    unknown = sorted(set(raw) - set(SECTIONS) - {"seed"})
    if unknown:
        raise ParamsError(f"params.yaml: unknown section(s) {', '.join(unknown)}")
    check_sections(raw, ["seed", *SECTIONS])
