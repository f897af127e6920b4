"""mnistlab/dvc_queue.py against DVC itself, in a one-stage project without torch: the queue files it reads are
as DVC wrote them (an upgrade that changes one fails here, naming it), and a stuck task is found and cleared by
DVC's own remedy."""

import json
import time
from pathlib import Path

import pytest

from mnistlab import dvc_queue, experiments, report
from mnistlab.dvc_queue import LayoutError, check_layout, kill_and_remove, messages, start_workers, stuck_tasks
from tests.stuck_task import hold_task, missing_record, tiny_project

pytestmark = pytest.mark.slow  # DVC processes: seconds each


def wait(condition, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_the_queue_files_read_are_as_the_installed_dvc_writes_them(tmp_path: Path) -> None:
    project = tiny_project(tmp_path, sleep_s=4)
    dvc_queue.dvc("exp", "run", "--queue", "-n", "probe", "-S", "p=1", cwd=project)
    (queued,) = messages(project, "in")
    assert queued.name == "probe" and len(queued.task) == 40
    start_workers(1, project)
    running = dvc_queue.running_status()

    def record_running() -> bool:
        return any(info and info.get("status") == running for info in dvc_queue.executor_records(project).values())

    wait(record_running)
    wait(lambda: "Running stage 's'" in "".join(t.log.read_text() for t in dvc_queue.tasks(project).values()))
    (task,) = dvc_queue.tasks(project).values()
    assert (task.name, task.task, task.started) == ("probe", queued.task, ["s"])
    assert dvc_queue.alive(task.pid) and task.root_dir.is_dir()
    checked = check_layout(project)
    assert {path.suffix for path in checked} == {".run", ".out", ".json"}, checked
    assert [m.task for m in messages(project, "processed")] == [queued.task]
    wait(lambda: dvc_queue.result_status(project, queued.celery_id) == "SUCCESS")
    assert stuck_tasks(project) == []


def test_a_changed_layout_fails_naming_the_file(tmp_path: Path) -> None:
    record = tmp_path / ".dvc/tmp/exps/run/abc/abc.run"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"name": "x", "root_dir": "/tmp", "state": "running"}))  # "status" renamed
    with pytest.raises(LayoutError, match=r"abc\.run: expected JSON with \('name', 'root_dir', 'status'\)"):
        check_layout(tmp_path)
    message = tmp_path / ".dvc/tmp/exps/celery/broker/in/1.celery.msg"
    message.parent.mkdir(parents=True)
    message.write_text(json.dumps({"headers": {"task": dvc_queue.RUN_EXP, "id": "1"}, "body": "not json"}))
    with pytest.raises(LayoutError, match=r"1\.celery\.msg: a run_exp message not as DVC 3\.67\.1 wrote it"):
        messages(tmp_path, "in")


def test_a_task_a_live_worker_sets_up_is_left_alone_and_once_stuck_dvc_s_remedy_clears_it(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """From DVC's files alone, a task a live worker is still setting up looks stuck: DVC refuses to kill it (the
    worker says it has it), and nothing is removed. Once that worker is gone the task is stuck for real: every
    `dvc exp show` fails, and DVC's remedy clears it."""
    project = tiny_project(tmp_path)
    task, worker = hold_task(project, "held", "p=1")
    try:
        assert [(m.task, m.name) for m in stuck_tasks(project)] == [(task, "held")]
        assert kill_and_remove(task, cwd=project) is None  # DVC: "Task ... is initializing"
        assert [m.task for m in messages(project, "processed")] == [task]  # nothing removed
    finally:
        worker.kill()
        worker.wait()
    assert [(m.task, m.name) for m in stuck_tasks(project)] == [(task, "held")]
    assert missing_record(project).endswith(f"run/{task}/{task}.run")  # every `dvc exp show` fails
    monkeypatch.chdir(project)  # `make report` there: it tries as the tuner does, then names DVC's remedy
    monkeypatch.setattr(experiments, "RETRY_S", 0.1)
    assert report.main(["reports/experiments.html"]) == 1
    said = capsys.readouterr().err
    assert said.startswith("error: dvc exp show failed: ") and said.count("\n") == 1, said
    assert f"DVC's remedy: dvc queue kill {task[:7]}, then dvc queue remove {task[:7]} (twice if still listed)" in said
    assert kill_and_remove(task, cwd=project)
    assert stuck_tasks(project) == [] and messages(project, "processed") == []
    assert missing_record(project) is None  # `dvc exp show` works again
