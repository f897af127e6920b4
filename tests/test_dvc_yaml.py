"""dvc.yaml, params.yaml and the code agree: deps, params keys, and what each stage imports."""

import pytest
import yaml

from mnistlab.params import STAGE_PARAMS
from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC["stages"]
TRAINING = {"train_mlp", "train_mlr"}


def test_stage_names_are_the_scripts() -> None:
    assert list(STAGES) == ["download", "split", "train_mlp", "train_mlr", "evaluate", "plot"]
    for name, stage in STAGES.items():
        assert stage["cmd"].startswith(f"python -m stages.{name} ")
        assert f"stages/{name}.py" in stage["deps"]


@pytest.mark.slow  # fresh Python processes that import torch: seconds each
@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_list_exactly_the_library_files_a_stage_imports(stage: str, imports_of) -> None:
    modules = imports_of(f"stages.{stage}").modules  # in a fresh process
    imported = {f"{m.replace('.', '/')}.py" for m in modules if m.startswith("mnistlab.")}
    imported |= {"mnistlab/__init__.py"} if "mnistlab" in modules else set()  # it pins MKL's arithmetic
    listed = {dep for dep in STAGES[stage]["deps"] if dep.startswith("mnistlab/")}
    assert listed == imported
    assert ("pytorch_lightning" in modules) == (stage in TRAINING), "only training stages may import Lightning"
    assert ("torchmetrics" in modules) == (stage in TRAINING), "torchmetrics costs as much start-up as Lightning"
    computes = TRAINING | {"split", "evaluate"}  # the split draws torch's permutation; evaluate runs the networks
    assert ("torch" in modules) == (stage in computes), "a stage that computes nothing with torch must not import it"


def test_params_keys_exist_and_are_the_ones_each_stage_reads() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    reads = {
        "download": ["download"],
        "split": ["seed", "split"],
        "train_mlp": ["seed", "train_mlp", "trainer"],
        "train_mlr": ["seed", "train_mlr", "trainer"],
        "evaluate": ["evaluate"],
        "plot": [],
    }
    for name, stage in STAGES.items():
        assert stage.get("params", []) == reads[name], name
        assert sorted(STAGE_PARAMS[name]) == reads[name], name  # what the stage checks before its imports
        assert all(key in params for key in stage.get("params", []))


def test_results_are_git_outputs_and_data_stays_in_the_cache() -> None:
    for stage in STAGES.values():
        for entry in stage.get("outs", []) + stage.get("metrics", []):
            path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            committed = path.startswith(("metrics/", "plots/")) or path == "data/description.json"
            assert options.get("cache", True) is (not committed), path


def test_the_dataset_description_is_versioned_but_not_a_metric() -> None:
    """`dvc metrics show` lists what runs are compared by; class counts are a committed output instead."""
    metrics = [next(iter(m)) if isinstance(m, dict) else m for s in STAGES.values() for m in s.get("metrics", [])]
    assert metrics == ["metrics/metrics.json"]
    split_outs = [next(iter(o)) if isinstance(o, dict) else o for o in STAGES["split"]["outs"]]
    assert "data/description.json" in split_outs
    assert (ROOT / "data/description.json").is_file()
