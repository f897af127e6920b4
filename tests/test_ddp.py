"""Scaling up: the trainer params reach Lightning unchanged, and DDP shards batches and reduces metrics."""

import csv
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import yaml
from pytorch_lightning.strategies import DDPStrategy

from mnistlab import training
from mnistlab.data import Split, save_split
from mnistlab.params import TrainerParams, TrainParams, parse_section
from mnistlab.system import Classifier
from tests.conftest import ROOT, run, venv_env

TINY = TrainParams(epochs=1, learning_rate=0.01, batch_size=8, eval_batch_size=4)
DDP_CPU = {
    "accelerator": "cpu",
    "devices": 2,
    "strategy": "ddp",
    "num_nodes": 1,
    "precision": "32-true",
    "join_timeout_s": 300,
}


def trainer_section(**changes) -> TrainerParams:
    return parse_section(TrainerParams, {"trainer": DDP_CPU | changes}, "trainer")


def test_trainer_params_reach_lightning_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    received = {}
    monkeypatch.setattr(training.pl, "Trainer", lambda **options: received.update(options))
    section = yaml.safe_load("""
        trainer: {accelerator: gpu, devices: [0, 3], strategy: ddp_find_unused_parameters_true,
                  num_nodes: 4, precision: bf16-mixed, join_timeout_s: 60}
    """)
    training.build_trainer(TINY, parse_section(TrainerParams, section, "trainer"), None)
    passed = {key: value for key, value in section["trainer"].items() if key != "join_timeout_s"}  # not Trainer's
    assert {key: received[key] for key in passed} == passed and "join_timeout_s" not in received


def test_join_timeout_becomes_ddp_s_timeout() -> None:
    """strategy ddp: DDPStrategy(timeout=join_timeout_s), so a node that never joins ends the wait."""
    strategy = training.strategy(trainer_section(join_timeout_s=42))
    assert isinstance(strategy, DDPStrategy) and strategy._timeout == timedelta(seconds=42)
    assert training.strategy(trainer_section(strategy="auto")) == "auto"


def test_ddp_params_build_a_ddp_trainer() -> None:
    trainer = training.build_trainer(TINY, trainer_section(num_nodes=2), None)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy.cluster_environment.creates_processes_externally is False
    assert (trainer.num_devices, trainer.num_nodes, trainer.world_size) == (2, 2, 4)
    assert trainer.precision == "32-true"


def numbered_split(num_samples: int, seed: int) -> Split:
    """Random digits whose first two pixels hold the sample's index (low byte, high byte)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_samples, 28, 28), dtype=torch.uint8, generator=generator)
    indices = torch.arange(num_samples)
    images[:, 0, 0], images[:, 0, 1] = indices % 256, indices // 256
    return Split(images, indices % 10, indices)


def history(path: Path) -> list[dict[str, float]]:
    with path.open() as file:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]


def epoch_totals(ranks: list[dict], part: str, epoch: int) -> tuple[list[int], float, float]:
    """All ranks' sample ids of one epoch, with the mean loss and accuracy over all of them."""
    batches = [batch for rank in ranks for batch in rank[part] if batch["epoch"] == epoch]
    ids = [sample for batch in batches for sample in batch["ids"]]
    return ids, sum(b["loss_sum"] for b in batches) / len(ids), sum(b["correct"] for b in batches) / len(ids)


@pytest.mark.slow
def test_ddp_on_cpu_shards_batches_and_reduces_metrics(tmp_path: Path) -> None:
    """Two gloo processes: each sample once per epoch across ranks; the logged metrics cover both."""
    sizes = {"train": 60, "validation": 22}  # 30 and 11 per rank: batches of 8 and 4 end short
    for name, size in sizes.items():
        save_split(numbered_split(size, seed=size), tmp_path / "split" / name)
    result = run([sys.executable, "-m", "tests.ddp_probe", str(tmp_path / "split"), str(tmp_path / "out")], ROOT)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr  # Lightning started rank 1

    ranks = [json.loads((tmp_path / f"out/rank{rank}.json").read_text()) for rank in range(2)]
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    rows = history(tmp_path / "out/history/metrics.csv")
    assert [row["epoch"] for row in rows] == [0, 1]
    for part, column, size in [("train", "train", sizes["train"]), ("valid", "valid", sizes["validation"])]:
        for epoch, row in enumerate(rows):
            ids, loss, accuracy = epoch_totals(ranks, part, epoch)
            assert sorted(ids) == list(range(size)), f"{part} epoch {epoch}: not every sample exactly once"
            assert row[f"{column}_loss"] == pytest.approx(loss, rel=1e-5)
            assert row[f"{column}_accuracy"] == pytest.approx(accuracy, abs=1e-6)
            rank0_ids, rank0_loss, _ = epoch_totals(ranks[:1], part, epoch)
            assert len(rank0_ids) == size // 2 and rank0_loss != pytest.approx(loss, rel=1e-5)  # reduced, not rank 0's
    train_orders = [epoch_totals(ranks[:1], "train", epoch)[0] for epoch in range(2)]
    assert train_orders[0] != train_orders[1]  # reshuffled each epoch

    # Gradients are averaged across ranks: both end with the same weights, and those are the weights
    # of one process training on batches twice as large (rank r takes every 2nd sample of one order).
    weights = [torch.load(tmp_path / f"out/rank{rank}.pt") for rank in range(2)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    one_process = TrainParams(epochs=2, learning_rate=0.01, batch_size=16, eval_batch_size=8)
    _, system = training.fit(
        "mlr", one_process, trainer_section(devices=1, strategy="auto"), 0, tmp_path / "split", None
    )
    for name, value in system.model.state_dict().items():
        torch.testing.assert_close(weights[0][name], value, rtol=1e-4, atol=1e-5)
    checkpoint = torch.load(tmp_path / "out/model.ckpt", weights_only=False)
    assert torch.equal(checkpoint["state_dict"]["model.linear.1.weight"], weights[0]["linear.1.weight"])


@pytest.mark.slow
def test_train_stage_under_ddp(tmp_path: Path, tiny_split_dir: Path) -> None:
    """`python -m stages.train_mlr` with strategy ddp, devices 2: rank 1 is relaunched the same way."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["trainer"] = DDP_CPU
    params["train_mlr"] |= {"epochs": 2, "batch_size": 16, "eval_batch_size": 8}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    outputs = ["models/mlr"]
    env = venv_env() | {"PYTHONPATH": str(ROOT)}  # the stages from this checkout, params.yaml from tmp_path
    command = [sys.executable, "-m", "stages.train_mlr", str(tiny_split_dir), *outputs]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr
    rows = history(tmp_path / "models/mlr/metrics.csv")
    assert [row["epoch"] for row in rows] == [0, 1]
    checkpoint = torch.load(tmp_path / "models/mlr/model.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 2
    Classifier("mlr", 0.01).load_state_dict(checkpoint["state_dict"])  # strict: every weight present
    assert not list((tmp_path / "models/mlr").glob(".*partial"))
