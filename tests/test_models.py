"""The networks and the Lightning system on tiny synthetic data."""

import pandas as pd
import pytest
import torch

from mnistlab.data import TensorBatches, load_split
from mnistlab.errors import TrainingError
from mnistlab.evaluation import load_model, predict_logits
from mnistlab.models import build_model, summarize
from mnistlab.params import MLPTrainParams, TrainerParams, TrainParams
from mnistlab.training import fit, save_checkpoint

TRAINER = TrainerParams(accelerator="cpu", devices=1, strategy="auto", num_nodes=1, precision="32-true")
TINY = TrainParams(epochs=2, learning_rate=0.01, batch_size=16, eval_batch_size=32)


@pytest.mark.parametrize(("name", "parameters"), [("mlp", 235_146), ("mlr", 7_850)])
def test_parameter_counts_match_the_lab(name: str, parameters: int) -> None:
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert model(torch.zeros(256, 1, 28, 28)).shape == (256, 10)
    assert f"Total params: {parameters:,}" in summarize(model, 256)


@pytest.mark.parametrize("name", ["mlp", "mlr"])
def test_fast_dev_run(name: str, tiny_split_dir) -> None:
    trainer, _ = fit(name, TINY, TRAINER, 0, tiny_split_dir, None, fast_dev_run=True)
    assert trainer.state.finished
    assert trainer.global_step == 4  # one training_step: a chunk of all 4 batches (64 / 16)
    assert set(trainer.callback_metrics) >= {"train_loss", "train_accuracy", "valid_loss", "valid_accuracy"}


@pytest.mark.parametrize("name", ["mlp", "mlr"])
def test_history_has_one_row_per_epoch_and_checkpoint_loads_without_lightning(name, tiny_split_dir, tmp_path) -> None:
    trainer, system = fit(name, TINY, TRAINER, 0, tiny_split_dir, tmp_path / "history" / name)
    history = pd.read_csv(tmp_path / "history" / name / "metrics.csv")
    assert list(history.epoch) == [0, 1]
    assert list(history.step) == [3, 7]  # optimizer steps (4 per epoch), not training_step calls
    assert {"train_loss", "train_accuracy", "valid_loss", "valid_accuracy"} <= set(history.columns)
    assert not history[["train_loss", "train_accuracy", "valid_loss", "valid_accuracy"]].isna().any().any()
    assert trainer.global_step == 2 * 4  # 64 samples / batch 16, two epochs

    save_checkpoint(trainer, tmp_path / f"{name}.ckpt")
    model = load_model(tmp_path / f"{name}.ckpt")  # torch.load(weights_only=True)
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    system.eval()
    with torch.no_grad():
        expected = system(images.unsqueeze(1).float() / 255)
    torch.testing.assert_close(predict_logits(model, images, batch_size=3), expected)  # batched in 3s


def test_same_seed_same_weights(tiny_split_dir) -> None:
    _, first = fit("mlp", TINY, TRAINER, 7, tiny_split_dir, None)
    _, second = fit("mlp", TINY, TRAINER, 7, tiny_split_dir, None)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_chunked_steps_compute_the_same_as_one_batch_per_step(tiny_split_dir, monkeypatch) -> None:
    """Several optimizer steps per training_step is a speed-up only: same weights, same metrics."""
    import mnistlab.system

    params = TrainParams(epochs=2, learning_rate=0.01, batch_size=8, eval_batch_size=32)  # 8 steps per epoch
    monkeypatch.setattr(mnistlab.system, "STEPS_PER_CALL", 3)
    chunked_trainer, chunked = fit("mlp", params, TRAINER, 1, tiny_split_dir, None)
    monkeypatch.setattr(mnistlab.system, "STEPS_PER_CALL", 1)
    single_trainer, single = fit("mlp", params, TRAINER, 1, tiny_split_dir, None)
    assert chunked_trainer.global_step == single_trainer.global_step == 16
    for (name, a), b in zip(chunked.state_dict().items(), single.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for name in ["train_loss", "train_accuracy", "valid_loss", "valid_accuracy"]:
        assert torch.equal(chunked_trainer.callback_metrics[name], single_trainer.callback_metrics[name]), name


def test_foreach_rmsprop_is_bitwise_the_per_tensor_rmsprop() -> None:
    """The system uses RMSprop(foreach=True) for speed; it must not change a single bit."""
    images, labels = torch.rand(32, 1, 28, 28), torch.arange(32) % 10
    weights = []
    for foreach in (False, True):
        torch.manual_seed(0)
        model = build_model("mlp")
        optimizer = torch.optim.RMSprop(model.parameters(), lr=0.01, foreach=foreach)
        for _ in range(5):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
        weights.append(model.state_dict())
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


def test_the_graph_path_computes_what_the_eager_path_computes(tiny_split_dir, monkeypatch) -> None:
    """cuda_graphs=True on a CPU: the graph path's static index buffers, plain backward and optimizer
    step and in-place zeroed gradients, run at each replay without recording. It must give the eager
    path's weights, step count and metrics, bit for bit; only the recording itself needs a GPU."""
    import mnistlab.system

    params = TrainParams(epochs=2, learning_rate=0.01, batch_size=8, eval_batch_size=32)  # 8 steps per epoch
    monkeypatch.setattr(mnistlab.system, "STEPS_PER_CALL", 3)  # chunks of 3, 3 and 2 steps: two graph shapes
    graphed_trainer, graphed = fit("mlp", params, TRAINER, 1, tiny_split_dir, None, cuda_graphs=True)
    eager_trainer, eager = fit("mlp", params, TRAINER, 1, tiny_split_dir, None, cuda_graphs=False)
    assert set(graphed.graphs) == {(8, 8, 8), (8, 8)} and eager.graphs is None
    assert graphed_trainer.global_step == eager_trainer.global_step == 16
    for (name, a), b in zip(graphed.state_dict().items(), eager.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for name in ["train_loss", "train_accuracy", "valid_loss", "valid_accuracy"]:
        assert torch.equal(graphed_trainer.callback_metrics[name], eager_trainer.callback_metrics[name]), name


def test_graphs_are_automatic_on_a_gpu_only(tiny_split_dir) -> None:
    """auto (None) records graphs on CUDA alone; on a CPU the eager path runs."""
    params = TrainParams(epochs=1, learning_rate=0.01, batch_size=8, eval_batch_size=32)
    _, system = fit("mlr", params, TRAINER, 1, tiny_split_dir, None)
    assert system.graphs is None
    off = TrainParams(epochs=1, learning_rate=0.01, batch_size=8, eval_batch_size=32, cuda_graphs="off")
    _, system = fit("mlr", off, TRAINER, 1, tiny_split_dir, None, cuda_graphs=None)
    assert system.graphs is None


def test_train_loss_is_the_mean_over_samples_not_over_batches(tiny_split_dir, tmp_path) -> None:
    """64 samples in batches of 24: the last batch of 16 counts 16/64, as the lab's per-sample mean does."""
    # lr 0: the weights stay (model_construct: params.yaml's check would refuse it, rightly)
    params = TrainParams.model_construct(epochs=1, learning_rate=0.0, batch_size=24, eval_batch_size=32)
    _, system = fit("mlr", params, TRAINER, 3, tiny_split_dir, None)
    split = load_split(tiny_split_dir / "train")
    batches = TensorBatches(split.images, split.labels, 24, shuffle=True, seed=3)
    losses = [(system.loss(system.model(x), y).item(), len(y)) for x, y in batches]
    assert [n for _, n in losses] == [24, 24, 16]
    expected = sum(loss * n for loss, n in losses) / 64
    assert float(system.trainer.callback_metrics["train_loss"]) == pytest.approx(expected, rel=1e-6)
    assert float(system.trainer.callback_metrics["train_loss"]) != pytest.approx(
        sum(loss for loss, _ in losses) / 3, rel=1e-6
    )


def test_a_diverging_fit_is_one_clear_error(tiny_split_dir) -> None:
    """A learning rate that blows the loss up fails the stage (and so a tuning trial) instead of saving NaN weights."""
    diverging = TrainParams(epochs=2, learning_rate=1e36, batch_size=16, eval_batch_size=32)
    with pytest.raises(
        TrainingError,
        match=r"training diverged: valid_loss is nan in epoch 1 with learning_rate 1e\+36: lower the learning",
    ):
        fit("mlr", diverging, TRAINER, 0, tiny_split_dir, None)


def test_the_mlp_s_dropout_rates_come_from_its_params_and_survive_the_checkpoint(tiny_split_dir, tmp_path) -> None:
    params = MLPTrainParams(epochs=1, learning_rate=0.01, batch_size=16, eval_batch_size=32, dropout1=0.1, dropout2=0.0)
    trainer, system = fit("mlp", params, TRAINER, 0, tiny_split_dir, None)
    assert [m.p for m in system.model.modules() if isinstance(m, torch.nn.Dropout)] == [0.1, 0.0]
    save_checkpoint(trainer, tmp_path / "mlp.ckpt")
    loaded = load_model(tmp_path / "mlp.ckpt")
    assert [m.p for m in loaded.modules() if isinstance(m, torch.nn.Dropout)] == [0.1, 0.0]
