"""Experiments, branches and remotes: dvc exp and its queue, diffs against main, push/pull round trips."""

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mnistlab.dvc_queue import EXPS_DIR, ended_statuses, executor_records, live_workers
from mnistlab.experiments import Run, read_runs
from mnistlab.params import validate_all
from tests.conftest import ROOT, clone, dvc, git

STAGES = ["download", "split", "train_mlp", "train_mlr", "evaluate", "plot"]


def ran(output: str) -> list[str]:
    """The stages a `dvc repro` or `dvc exp run` output says it ran."""
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


def experiments(project: Path) -> dict[str, Run]:
    """`dvc exp show --json`, read by the project's one reader, as name -> run (params and metrics flattened)."""
    return {run.name: run for run in read_runs(json.loads(dvc(project, "exp", "show", "--json").stdout))}


def section(run: Run, name: str) -> dict:
    """One section of params.yaml as a run had it: ``train_mlr`` -> {"learning_rate": ..., ...}."""
    return {key.split(".", 1)[1]: value for key, value in run.params.items() if key.startswith(f"{name}.")}


def accuracy(run: Run, model: str, metric: str = "test_acc") -> float:
    """A model's test accuracy (or ``metric``: ``val_acc``) in one run of ``experiments()``."""
    return run.metrics[f"{metric}.{model}"]


def queue_workers_running(project: Path) -> bool:
    """Whether one of DVC's queue workers may still be running in ``project``, from the records DVC's task library
    keeps of them (mnistlab.dvc_queue.live_workers): a worker stops 10 s after the queue is empty. No DVC process
    started to know it."""
    return live_workers(project) > 0


def queue_tasks_ended(project: Path) -> bool:
    """Whether every task DVC's queue in ``project`` was given looks ended, from its files: no task message
    waiting in the broker (``celery/broker/in/*.celery.msg``; ``*.pidbox.msg`` are DVC's own control messages)
    and every executor record in an ended state. A worker then still waits 10 s for more work before it
    stops: this does not wait for that."""
    if any((project / EXPS_DIR / "celery" / "broker" / "in").glob("*.celery.msg")):
        return False
    return all(
        info is not None and info.get("status") in ended_statuses() for info in executor_records(project).values()
    )


def wait_for_queue(project: Path, timeout_s: float = 900) -> str:
    """Wait until nothing is queued or running; the last `dvc queue status` output.

    `dvc queue status` costs about 2 s of CPU, taken from the experiments it waits for: it is asked only
    once DVC's files say every task ended or its workers stopped, and asked again (after a pause) if it
    still lists a task as queued or running: between taking a task and writing its record, a worker's
    task is in neither file."""
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        if queue_workers_running(project) and not queue_tasks_ended(project):
            time.sleep(1)
            continue
        status = dvc(project, "queue", "status").stdout
        if not any(state in status for state in ("Queued", "Running")):
            return status
        time.sleep(5)
    pytest.fail(f"the experiment queue did not finish in {timeout_s} s:\n{status}")


def test_everything_the_pipeline_reads_is_visible_to_git() -> None:
    """Queued experiments and fresh clones see only git- and DVC-tracked files: no input may be ignored."""
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outputs = {
        next(iter(out)) if isinstance(out, dict) else out for s in pipeline.values() for out in s.get("outs", [])
    }
    deps = {dep for stage in pipeline.values() for dep in stage.get("deps", [])}
    produced = {dep for dep in deps for out in outputs if dep == out or dep.startswith(f"{out}/")}
    inputs = [*sorted(deps - produced), "params.yaml", "dvc.yaml", "dvc.lock"]
    inputs += sorted(str(path.relative_to(ROOT)) for path in ROOT.glob("*/*.py") if path.parts[-2] != ".venv")
    for name in inputs:
        assert (ROOT / name).is_file(), name
    ignored = subprocess.run(["git", "check-ignore", *inputs], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout == "", f"ignored by git, so invisible to queued experiments: {ignored.stdout}"


def test_tuned_params_are_valid_and_match_their_command() -> None:
    """experiments/tuned.yaml: keys params.yaml has, valid values, and the `-S` command it gives says the same."""
    text = (ROOT / "experiments/tuned.yaml").read_text()
    tuned = yaml.safe_load(text)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    changed = {f"{section}.{key}": value for section, keys in tuned.items() for key, value in keys.items()}
    assert all(key.split(".")[1] in params[key.split(".")[0]] for key in changed), changed
    for section, keys in tuned.items():
        params[section] |= keys
    validate_all(params)
    command = next(line for line in text.splitlines() if "dvc exp run" in line)
    overrides = dict(item.split("=") for item in re.findall(r"-S (\S+)", command))
    assert {key: yaml.safe_load(value) for key, value in overrides.items()} == changed


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on loopback, with a bucket `mnistlab`; credentials in the environment."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="mnistlab")
    yield endpoint
    server.stop()


def clone_and_check_out(source: Path, target: Path, branch: str) -> Path:
    git(clone(source, target), "checkout", "-q", branch)
    return target


def committed_files(project: Path) -> dict[str, bytes]:
    """What git would commit in ``project``: tracked files and new ones it does not ignore."""
    names = git(project, "ls-files", "--cached", "--others", "--exclude-standard").split()
    return {name: (project / name).read_bytes() for name in names if (project / name).is_file()}


@pytest.mark.slow
def test_an_experiment_becomes_a_branch_that_diffs_against_main_and_travels_through_remotes_and_the_run_cache(
    trained_project, copy_trained, tmp_path: Path, s3_endpoint: str
) -> None:
    """The README's loop on one project: one `dvc exp run` (only what its params change runs, and it shows
    beside main), kept as a branch and compared with main from a fresh clone; its outputs, and its run-cache
    record, through a DVC folder remote and an S3 API. (This was three tests, each with its own copy of the
    project and its own training: one experiment, branches and remotes, and the run-cache on another machine,
    from tests/test_scale_out.py. A sweep queued and run by two workers, then `dvc exp apply` and
    `dvc exp branch`: tests/test_experiment_views.py, on the README's grid.)"""
    assert ran(trained_project.repro_output) == STAGES
    project = copy_trained()  # the baseline run
    dvc(project, "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote"))  # committed with the project
    git(project, "add", "-A")
    git(project, "commit", "-qm", "baseline, with a shared DVC remote")
    dvc(project, "push", "--run-cache")

    # One experiment: the MLP is not retrained, and the MLR's result is its own.
    single = dvc(project, "exp", "run", "-n", "mlr-lr001", "-S", "train_mlr.learning_rate=0.001").stdout
    assert ran(single) == ["train_mlr", "evaluate", "plot"]
    shown = experiments(project)
    assert {"main", "mlr-lr001"} <= set(shown), shown.keys()
    for name, rate in [("main", 0.01), ("mlr-lr001", 0.001)]:
        assert shown[name].params["train_mlr.learning_rate"] == rate
        assert 0 < accuracy(shown[name], "mlr") <= 1
    assert len({accuracy(shown[name], "mlp") for name in shown}) == 1  # the MLP's result reused, not retrained
    assert accuracy(shown["main"], "mlr") != accuracy(shown["mlr-lr001"], "mlr")  # the learning rate's own result

    # The workspace now holds the experiment (params, dvc.lock, metrics, figures): kept as a branch.
    assert yaml.safe_load((project / "params.yaml").read_text())["train_mlr"]["learning_rate"] == 0.001
    git(project, "checkout", "-qb", "lower-lr")
    git(project, "commit", "-qam", "mlr: learning rate 0.001")
    dvc(project, "push", "--run-cache")

    # A colleague's fresh clone, no DVC cache: diffs against main need only git.
    colleague = clone_and_check_out(project, tmp_path / "colleague", "lower-lr")
    assert not (colleague / ".dvc/cache").exists()
    metrics = json.loads(dvc(colleague, "metrics", "diff", "main", "--json").stdout)
    assert metrics["metrics/metrics.json"]["test_acc.mlr"]["diff"] != 0
    assert metrics["metrics/metrics.json"]["val_acc.mlr"]["diff"] != 0
    assert "test_acc.mlp" not in metrics["metrics/metrics.json"]  # the MLP was not retrained
    assert "val_acc.mlp" not in metrics["metrics/metrics.json"]
    params = json.loads(dvc(colleague, "params", "diff", "main", "--json").stdout)
    changed = params["params.yaml"]
    assert list(changed) == ["train_mlr.learning_rate"]
    assert (changed["train_mlr.learning_rate"]["old"], changed["train_mlr.learning_rate"]["new"]) == (0.01, 0.001)
    dvc(colleague, "plots", "diff", "main", "-o", str(tmp_path / "compare"))  # outside the clone: compared below
    html = (tmp_path / "compare/index.html").read_text()
    for revision in ["main", "workspace"]:
        assert f'"rev": "{revision}"' in html or f'"rev":"{revision}"' in html, revision

    # Pull the outputs and the run-cache: nothing left to run.
    dvc(colleague, "pull", "--run-cache")
    assert (colleague / "models/mlr/model.ckpt").is_file()
    assert "up to date" in dvc(colleague, "status").stdout
    assert ran(dvc(colleague, "repro").stdout) == []

    # A machine with no commit of the result (docs/scaling.md): main, with the branch's params.yaml copied in.
    # The run-cache record restores the training stage instead of training; evaluate and plot rerun (their
    # outputs are the committed files, which the run-cache does not carry) to the branch's bytes.
    other_machine = clone_and_check_out(project, tmp_path / "other-machine", "main")
    (other_machine / "params.yaml").write_bytes((project / "params.yaml").read_bytes())
    dvc(other_machine, "pull", "--run-cache")  # main's outputs and the records of the runs pushed
    output = dvc(other_machine, "repro", "--pull").stdout  # --pull: the outputs those records name (DVC 3.67)
    assert "Stage 'train_mlr' is cached - skipping run" in output, output
    assert ran(output) == ["evaluate", "plot"], output  # neither model trained here
    assert (other_machine / "models/mlr/model.ckpt").read_bytes() == (project / "models/mlr/model.ckpt").read_bytes()
    assert committed_files(other_machine) == committed_files(colleague)  # dvc.lock, metrics, histories, figures

    # The same round trip through an S3 API (moto on loopback): push there, pull into another clone.
    s3 = ["s3", "s3://mnistlab/dvcstore"]
    dvc(project, "remote", "add", "--local", *s3)
    dvc(project, "remote", "modify", "--local", "s3", "endpointurl", s3_endpoint)
    dvc(project, "push", "-r", "s3", "--run-cache")
    other = clone_and_check_out(project, tmp_path / "other", "lower-lr")
    dvc(other, "remote", "add", "--local", *s3)
    dvc(other, "remote", "modify", "--local", "s3", "endpointurl", s3_endpoint)
    dvc(other, "pull", "-r", "s3", "--run-cache")
    assert (other / "models/mlr/model.ckpt").read_bytes() == (project / "models/mlr/model.ckpt").read_bytes()
    assert "up to date" in dvc(other, "status").stdout
    assert ran(dvc(other, "repro").stdout) == []
