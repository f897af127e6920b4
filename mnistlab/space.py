"""The search space of `make tune`: ``tune.yaml`` and its checks.

Per model, keys of ``params.yaml``'s ``train_*`` section, each ``{low, high}`` (integers where the
param is one; ``log: true`` samples uniformly in log space) or ``{choices: [...]}``. Every bound and
choice is checked against what ``params.yaml`` allows before anything is queued, and every problem
is reported at once, in one line: a typo never costs a trial.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from mnistlab.errors import PipelineError
from mnistlab.params import MODEL_NAMES, TrainParams, train_params, train_section

SPACE_FILE = Path("tune.yaml")


class SpaceError(PipelineError):
    """The search space file is missing, malformed, or names params that do not exist."""


_NUMBER = BeforeValidator(lambda v: yaml.safe_load(v) if isinstance(v, str) else v)  # '1e-4' is a number too
Number = Annotated[int | float, _NUMBER]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Range(_Strict):
    """Numbers from ``low`` to ``high``; integers where the param is one; ``log``: uniform in log space."""

    low: Number
    high: Number
    log: bool = False


class Choices(_Strict):
    """One of a list of values (batch sizes, say)."""

    choices: tuple[Any, ...] = Field(min_length=1)


class Pruning(_Strict):
    """Optuna's MedianPruner, fed each epoch's validation accuracy of the running experiment."""

    startup_trials: int = Field(4, ge=0, description="trials completed (not pruned or failed) before any is pruned")
    warmup_epochs: int = Field(3, ge=0, description="epochs each trial trains before it may be pruned")


class SpaceFile(_Strict):
    seed: int = Field(0, ge=0, description="the sampler's seed")
    pruning: Pruning | None = Pruning()
    train_mlp: dict[str, dict] = {}
    train_mlr: dict[str, dict] = {}


@dataclass(frozen=True)
class Space:
    """The validated search space of one model: Optuna's distributions by params key, in file order."""

    model: str
    seed: int
    pruning: Pruning | None
    distributions: dict[str, Any]  # "train_mlp.learning_rate" -> optuna.distributions.*


def _problems(error: ValidationError, prefix: str, known: Sequence[str]) -> list[str]:
    problems = []
    for item in error.errors():
        where = prefix + ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            nested = SpaceFile.model_fields[item["loc"][0]].default if len(item["loc"]) > 1 else None
            allowed = list(type(nested).model_fields) if isinstance(nested, BaseModel) else known
            problems.append(f"{where} is not a known key (allowed: {', '.join(allowed)})")
        elif item["type"] == "missing":
            problems.append(f"{where} is missing")
        else:
            problems.append(f"{where} = {item['input']!r} is not allowed: {item['msg']}")
    return problems


def _value_problem(params_cls: type[TrainParams], key: str, value: Any, where: str) -> str | None:
    """Why params.yaml would refuse ``value`` for ``key`` (its own bounds and type), or None."""
    info = params_cls.model_fields[key]
    adapter = TypeAdapter(Annotated[(info.annotation, *info.metadata)], config=ConfigDict(strict=True))
    try:
        adapter.validate_python(value)
    except ValidationError:
        allowed = next((str(item) for item in info.metadata if type(item).__name__ == "Allowed"), "a valid value")
        return f"{where} = {value!r} is not allowed: params.yaml's {key} expects {allowed}"
    return None


def _distribution(params_cls: type[TrainParams], key: str, spec: dict, where: str) -> tuple[Any, list[str]]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind = Choices if "choices" in spec else Range
    try:
        dimension = kind.model_validate(spec)
    except ValidationError as error:
        return None, _problems(error, f"{where}.", list(kind.model_fields))
    if isinstance(dimension, Choices):
        problems = [p for value in dimension.choices if (p := _value_problem(params_cls, key, value, where))]
        return CategoricalDistribution(dimension.choices), problems
    integer = params_cls.model_fields[key].annotation is int
    problems = [
        p
        for bound in ("low", "high")
        if (p := _value_problem(params_cls, key, getattr(dimension, bound), f"{where}.{bound}"))
    ]
    if problems:
        return None, problems
    low, high = dimension.low, dimension.high
    if not low < high:
        return None, [f"{where}: low = {low!r} must be below high = {high!r}"]
    if dimension.log and low <= 0:
        return None, [f"{where}: log = true needs low > 0, got {low!r}"]
    if integer:
        return IntDistribution(low, high, log=dimension.log), []
    return FloatDistribution(float(low), float(high), log=dimension.log), []


def parse_space(raw: Any, model: str, source: str = str(SPACE_FILE)) -> Space:
    """The search space of ``model`` from the content of tune.yaml; every problem in one SpaceError."""
    section = train_section(model)
    if not isinstance(raw, dict):
        raise SpaceError(f"{source} must be a mapping (seed, pruning, train_mlp, train_mlr), got {raw!r}")
    try:
        space = SpaceFile.model_validate(raw)
    except ValidationError as error:
        raise SpaceError(f"{source}: " + "; ".join(_problems(error, "", list(SpaceFile.model_fields)))) from None
    params_cls = train_params(model)
    problems, distributions = [], {}
    for name in MODEL_NAMES:
        for key in getattr(space, train_section(name)):
            if key not in train_params(name).model_fields:
                known = ", ".join(train_params(name).model_fields)
                problems.append(
                    f"{train_section(name)}.{key} is not a key of params.yaml's {train_section(name)}"
                    f" (allowed: {known})"
                )
    for key, spec in getattr(space, section).items():
        where = f"{section}.{key}"
        if key not in params_cls.model_fields:
            continue  # reported above
        if not isinstance(spec, dict):
            problems.append(
                f"{where} = {spec!r} is not allowed: expected {{low: ..., high: ...}} or {{choices: [...]}}"
            )
            continue
        distribution, found = _distribution(params_cls, key, spec, where)
        problems += found
        if distribution is not None and not found:
            distributions[where] = distribution
    if not problems and not distributions:
        problems.append(f"{section} is empty: nothing to search for {model}")
    if problems:
        raise SpaceError(f"{source}: " + "; ".join(problems))
    return Space(model, space.seed, space.pruning, distributions)


def load_space(path: Path, model: str) -> Space:
    """``parse_space`` of a file; a missing or malformed one is a SpaceError naming it."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpaceError(f"{path} not found: the search space (see tune.yaml in the repository)") from None
    except yaml.YAMLError as error:
        raise SpaceError(f"{path} is not valid YAML: {error}") from None
    return parse_space(raw, model, str(path))


def describe(space: Space) -> str:
    """The distributions as JSON (Optuna's own form), to tell whether a stored study was made with this space."""
    from optuna.distributions import distribution_to_json

    return json.dumps({key: json.loads(distribution_to_json(d)) for key, d in space.distributions.items()})
