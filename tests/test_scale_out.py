"""Several machines, simulated by clones of one bare git repo that share one DVC folder remote.

The run-cache restores a training run pushed by another machine; two "nodes" train one model
together under DDP (gloo on 127.0.0.1) as docs/scaling.md's recipe says; a sweep split over two
machines comes together in a third through `dvc exp push` / `dvc exp pull`.
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

from mnistlab.tune import start_workers
from tests.conftest import ROOT, dvc, git, run, update_params, venv_env
from tests.test_experiments import accuracy, experiments, ran, wait_for_queue

TRAINING = ["train_mlp", "train_mlr"]


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


def committed_files(project: Path) -> dict[str, bytes]:
    """What git would commit in ``project``: tracked files and new ones it does not ignore."""
    names = git(project, "ls-files", "--cached", "--others", "--exclude-standard").split()
    return {name: (project / name).read_bytes() for name in names if (project / name).is_file()}


@pytest.mark.slow
def test_run_cache_restores_the_training_stages_on_another_machine(copy_trained, tmp_path: Path) -> None:
    project = copy_trained()  # the baseline run
    origin = share(project, tmp_path)  # a committed baseline, its outputs in the DVC remote
    dvc(project, "push")
    first, second = clone(origin, tmp_path / "a"), clone(origin, tmp_path / "b")
    change = {"train_mlp": {"learning_rate": 0.002}, "train_mlr": {"learning_rate": 0.002}}

    dvc(first, "pull")
    update_params(first, change)
    assert ran(dvc(first, "repro").stdout) == [*TRAINING, "evaluate", "plot"]
    dvc(first, "push", "--run-cache")  # not committed: the other machine only has the same params

    update_params(second, change)  # the same params, nothing run here yet
    dvc(second, "pull", "--run-cache")  # the baseline's outputs and the records of A's runs
    output = dvc(second, "repro", "--pull").stdout  # --pull: the outputs those records name (DVC 3.67)
    for stage in TRAINING:
        assert f"Stage '{stage}' is cached - skipping run" in output, output
    assert not set(ran(output)) & set(TRAINING), output
    assert (second / "models/mlr/model.ckpt").read_bytes() == (first / "models/mlr/model.ckpt").read_bytes()
    assert committed_files(second) == committed_files(first)  # dvc.lock, metrics, histories, figures


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
    reference_dir = tmp_path / "reference"  # one process, batches of 256
    run([*stage_command.split()[:-1], str(reference_dir)], project)  # the stage, writing outside the project
    reference = weights(reference_dir / "model.ckpt")
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
        update_params(folder, {"trainer": {"join_timeout_s": 10}})
    codes = run_nodes(nodes, free_ports(2), tmp_path / "alone", timeout_s=120)
    for node, code in enumerate(codes):
        output = (tmp_path / f"alone/node{node}.log").read_text()
        assert code != 0, output
        assert re.search(rf"^error: the 2 DDP processes did not all join .*= 10 s .*rank {node},", output, re.M), output
    assert not (node1 / "models/mlr").exists()


@pytest.mark.slow
def test_a_sweep_split_over_two_machines_comes_together_in_a_third(copy_trained, tmp_path: Path) -> None:
    project = copy_trained()  # the baseline committed
    origin = share(project, tmp_path)
    dvc(project, "push")

    shares = {"a": {"lr0001": "0.001"}, "b": {"lr0003": "0.003"}}  # one experiment each: the queue, pushed
    machines = {name: clone(origin, tmp_path / name) for name in shares}
    for name, machine in machines.items():
        dvc(machine, "pull")  # the baseline's outputs: the MLP is reused, not retrained
        for experiment, rate in shares[name].items():
            dvc(machine, "exp", "run", "--queue", "-n", experiment, "-S", f"train_mlr.learning_rate={rate}")
        start_workers(1, machine)
    for machine in machines.values():
        status = wait_for_queue(machine)
        assert "Failed" not in status, status
        dvc(machine, "exp", "push", "origin")  # the experiments of HEAD: git refs to origin, outputs to the DVC remote

    third = clone(origin, tmp_path / "c")
    dvc(third, "exp", "pull", "origin")
    shown = experiments(third)
    swept = {experiment: float(rate) for rates in shares.values() for experiment, rate in rates.items()}
    assert set(swept) <= set(shown), shown.keys()
    for experiment, rate in swept.items():
        assert shown[experiment]["params"]["train_mlr"]["learning_rate"] == rate
        assert 0 < accuracy(shown[experiment], "mlr") <= 1
    accuracies = [accuracy(shown[experiment], "mlr") for experiment in swept]
    assert len(set(accuracies)) == len(accuracies)  # each learning rate its own result
    assert len({accuracy(shown[name], "mlp") for name in [*swept, "main"]}) == 1

    dvc(third, "exp", "apply", "lr0003")  # another machine's experiment, outputs included
    assert (third / "models/mlr/model.ckpt").is_file()
    assert "up to date" in dvc(third, "status").stdout
