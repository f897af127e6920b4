"""Several nodes, simulated by clones of one bare git repo that share one DVC folder remote: two "nodes"
train one model together under DDP (gloo on 127.0.0.1), as docs/scaling.md's recipe says.

The other multi-machine tests share the projects of other tests: the run-cache on a machine with no
commit of the result, tests/test_experiments.py; a sweep split over two machines,
tests/test_experiment_views.py (its grid is machine A's share).
"""

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from mnistlab.params import TrainerParams, TrainParams, parse_section, read_params, seed
from mnistlab.training import fit
from tests.conftest import ROOT, clone, dvc, share, update_params, venv_env


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now (all bound at once, so none is handed out twice)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def node_env(port: int, node_rank: int) -> dict[str, str]:
    """The rendezvous variables of docs/scaling.md for one node, node 0 on this machine."""
    return venv_env() | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node_rank)}


def files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and modification time, but git's own and Python's bytecode."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file() and not {".git", "__pycache__"} & set(path.relative_to(folder).parts)
    }


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=False)["state_dict"]


def run_nodes(nodes: list[tuple[Path, list[str], int]], ports: list[int], logs: Path, timeout_s: float) -> list[int]:
    """Start each (folder, command, node rank) at once, each given its master's port; their exit codes, or a
    failure after ``timeout_s``."""
    logs.mkdir(exist_ok=True)
    started = []
    for (folder, command, rank), port in zip(nodes, ports, strict=True):
        with (logs / f"node{rank}.log").open("w") as log:
            env = node_env(port, rank)
            started.append(
                subprocess.Popen(
                    command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    try:
        return [process.wait(timeout=timeout_s) for process in started]
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout_s} s: {[(logs / f'node{r}.log').read_text() for *_, r in nodes]}")
    finally:
        for process in started:
            if process.poll() is None:  # a hang must not outlive the test, nor its children
                os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_two_nodes_train_as_one_process_and_only_node_0_records(copy_trained, tmp_path: Path) -> None:
    """docs/scaling.md's multi-node recipe, two nodes on one machine: node 0 `dvc repro`, node 1 the stage command."""
    single = {
        "trainer": {"accelerator": "cpu", "devices": 1, "strategy": "auto"},
        "train_mlr": {"epochs": 1, "batch_size": 256},
    }
    project = copy_trained()  # the split done (and the tiny training, which this test's params replace)
    update_params(project, single)
    dvc(project, "repro", "split")
    stage_command = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train_mlr"]["cmd"]
    raw = read_params(project / "params.yaml")  # the reference: one process, batches of 256, fit here
    params, trainer = parse_section(TrainParams, raw, "train_mlr"), parse_section(TrainerParams, raw, "trainer")
    _, system = fit("mlr", params, trainer, seed(raw), project / "data/split", None)
    reference = {f"model.{name}": value for name, value in system.model.state_dict().items()}  # the checkpoint's
    update_params(project, {"trainer": {"strategy": "ddp", "num_nodes": 2}, "train_mlr": {"batch_size": 128}})
    origin = share(project, tmp_path)  # the two-node params, and dvc.lock with the data
    dvc(project, "push")

    page = (ROOT / "docs/scaling.md").read_text()  # where the recipe is written
    recipe = ["dvc pull split --with-deps", "dvc pull data/split", "NODE_RANK=0 dvc repro train_mlr"]
    assert all(line in page for line in [*recipe, f"NODE_RANK=1 {stage_command}"])  # what runs here
    node0, node1 = clone(origin, tmp_path / "node0"), clone(origin, tmp_path / "node1")
    dvc(node0, "pull", "split", "--with-deps")  # the recipe's commands, as checked above
    dvc(node1, "pull", "data/split")
    node1_before = files(node1)
    nodes = [(node0, ["dvc", "repro", "train_mlr"], 0), (node1, stage_command.split(), 1)]
    codes = run_nodes(nodes, free_ports(1) * 2, tmp_path / "logs", timeout_s=600)
    assert codes == [0, 0], [(tmp_path / f"logs/node{rank}.log").read_text() for rank in (0, 1)]

    # The same weights as one process with the same global batch, up to rounding: 2 partial sums
    # averaged instead of one sum over the batch (tests/test_ddp.py's tolerance; seen: 6e-7 at most).
    result = weights(node0 / "models/mlr/model.ckpt")
    assert result.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(result[name], value, rtol=1e-4, atol=1e-5)
    assert json.loads((node0 / "models/mlr/machine.json").read_text())["world_size"] == 2

    # Node 0 records the run; node 1 writes nothing: no checkpoint, no history, no dvc.lock change.
    lock = yaml.safe_load((node0 / "dvc.lock").read_text())["stages"]["train_mlr"]
    assert lock["params"]["params.yaml"]["trainer"]["num_nodes"] == 2
    assert "up to date" in dvc(node0, "status", "train_mlr").stdout
    assert (node0 / "models/mlr/metrics.csv").is_file()
    assert not (node1 / "models/mlr").exists()
    assert files(node1) == node1_before, set(files(node1).items()) ^ set(node1_before.items())

    # A node that never joins: the other gives up after trainer.join_timeout_s with one clear line,
    # node 0 (waiting for node 1 to register) as well as node 1 (waiting for node 0 to listen). Both
    # alone at once, each with a master port of its own, so that they do not find each other.
    for folder, *_ in nodes:
        update_params(folder, {"trainer": {"join_timeout_s": 5}})
    codes = run_nodes(nodes, free_ports(2), tmp_path / "alone", timeout_s=120)
    for node, code in enumerate(codes):
        output = (tmp_path / f"alone/node{node}.log").read_text()
        assert code != 0, output
        assert re.search(rf"^error: the 2 DDP processes did not all join .*= 5 s .*rank {node},", output, re.M), output
    assert not (node1 / "models/mlr").exists()
