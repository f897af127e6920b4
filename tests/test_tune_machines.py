"""One study across machines, as docs/scaling.md gives it: two clones of one project, one PostgreSQL study,
one bare git remote and one DVC remote, one queue worker each. One machine dies mid-trial; the other
finishes the study; a third clone pulls everything and reports it."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from mnistlab.dvc_queue import executor_records, running_status
from mnistlab.experiments import best_on_validation, read_runs, show, tag_trials
from mnistlab.workspace import venv_env
from tests.conftest import clone, copy_built, dvc, git, make_report, share
from tests.test_browser import VENDOR

pytestmark = pytest.mark.slow
TRIALS = 4
GRACE_S = 8  # --grace-period: a heartbeat every 2 s
SPACE = {"seed": 0, "pruning": None, "train_mlr": {"learning_rate": {"low": 0.0005, "high": 0.005, "log": True}}}


def tune(machine: Path, url: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "mnistlab.tune", "--model", "mlr", "--trials", str(TRIALS), "--jobs", "1"]
    command += ["--storage", url, "--grace-period", str(GRACE_S), "--push", "origin", *extra]
    return subprocess.Popen(
        command, cwd=machine, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def lines_until(process: subprocess.Popen, pattern: str, seen: list[str], timeout_s: float = 600) -> str:
    """Read ``process``'s output until a line matches ``pattern`` (all lines kept in ``seen``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line, "".join(seen)
        seen.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r} in {timeout_s} s:\n{''.join(seen)}")


def kill_machine(machine: Path) -> list[int]:
    """SIGKILL every process working in ``machine`` (its tuner, its queue worker, the experiment it runs in a
    temporary copy under .dvc/tmp): the machine as it is when its power goes."""
    killed = []
    for proc in Path("/proc").iterdir():
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if proc.name.isdigit() and (cwd == str(machine) or cwd.startswith(f"{machine}/")):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
            except ProcessLookupError:
                pass
    return killed


def study_trials(url: str) -> list:
    import optuna

    return optuna.load_study(study_name="tune-mlr", storage=url).get_trials()


def best_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("best trial (validation accuracy):"))


@pytest.mark.timeout(1800)
def test_two_machines_share_one_postgresql_study_and_a_dead_one_s_trial_fails_by_heartbeat(
    copy_trained, postgres_url: str, tmp_path: Path
) -> None:
    project = copy_trained("a")
    (project / "tune.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    git(project, "commit", "-qam", "the search space")
    share(project, tmp_path)  # origin.git and the DVC folder remote
    dvc(project, "push")  # the baseline's outputs, for the clones
    machine_a, machine_b = project, copy_built(project, tmp_path / "b")  # b: another checkout of the origin
    git(machine_b, "remote", "set-url", "origin", str(tmp_path / "origin.git"))

    started = time.monotonic()
    a_out, b_out = [], []
    a, b = tune(machine_a, postgres_url), tune(machine_b, postgres_url)
    lines_until(a, r"validation accuracy \d", a_out)  # machine A finished a trial ...
    doomed = lines_until(a, r": queued ", a_out).split(":")[0]  # ... and queued its next one
    deadline = time.monotonic() + 600
    while not any(
        info and info.get("name") == doomed and info.get("status") == running_status()
        for info in executor_records(machine_a).values()
    ):
        assert time.monotonic() < deadline and a.poll() is None, "".join(a_out)
        time.sleep(0.5)
    assert kill_machine(machine_a)  # mid-trial: its tuner, its worker and the experiment's processes
    a.wait(timeout=30)
    killed_at = datetime.now()  # Optuna's clock: naive local time

    b_text = "".join(b_out) + b.communicate(timeout=1200)[0]
    took = time.monotonic() - started
    print(f"two machines, {TRIALS} trials: {took:.0f} s\n--- machine A\n{''.join(a_out)}--- machine B\n{b_text}")
    assert b.returncode == 0, b_text

    import optuna

    trials = study_trials(postgres_url)
    complete, fail = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    finished = [t for t in trials if t.state in (complete, fail)]
    assert len(finished) == len(trials) == TRIALS, trials  # exactly N, none running
    assert sorted(t.number for t in trials) == list(range(TRIALS))
    names = [t.user_attrs["experiment"] for t in trials]
    assert len(set(names)) == TRIALS, names
    param_sets = {tuple(sorted(t.params.items())) for t in trials}
    assert len(param_sets) == TRIALS, [t.params for t in trials]  # no param set twice across the machines
    owners = {t.user_attrs["queue"].rsplit(":", 1)[-1] for t in trials}
    assert owners == {str(machine_a), str(machine_b)}, owners  # both machines ran trials
    dead = [t for t in trials if t.state == fail]
    assert [t.user_attrs["experiment"] for t in dead] == [doomed], dead  # only the dead machine's running trial
    assert f"{doomed}: failed: no heartbeat from " in b_text  # failed by machine B, through the heartbeat
    waited = (dead[0].datetime_complete - killed_at).total_seconds()
    print(f"the dead machine's trial was failed {waited:.1f} s after the kill ({GRACE_S} s grace)")
    assert GRACE_S - 2 < waited < 300  # after the grace period (the last beat may precede the kill by 2 s)

    # machine A comes back: the same command finds the study finished, and both name the same best trial
    a_again = tune(machine_a, postgres_url)
    a_text = a_again.communicate(timeout=300)[0]
    assert a_again.returncode == 0, a_text
    assert "study tune-mlr: 4 trials, 3 complete, 0 pruned, 1 failed" in a_text and "queued" not in a_text
    assert best_line(a_text) == best_line(b_text)
    best = max((t for t in trials if t.state == complete), key=lambda t: (t.value, -t.number))
    assert best_line(b_text) == f"best trial (validation accuracy): {best.user_attrs['experiment']}"
    for text, machine in ((a_text, machine_a), (b_text, machine_b)):
        pushed = re.search(r"^push: (\d+) experiments to origin", text, re.MULTILINE)
        ours = [t for t in trials if t.state == complete and t.user_attrs["queue"].endswith(f":{machine}")]
        assert pushed and int(pushed[1]) == len(ours), text

    # a third clone pulls every machine's trials and reports the whole study, the best chosen on validation
    third = clone(tmp_path / "origin.git", tmp_path / "c")
    dvc(third, "exp", "pull", "origin")
    dvc(third, "pull", "data/split")  # the test images the report shows
    shutil.copytree(VENDOR, third / "html" / "vendor")  # git-ignored, as in a clone after `make`
    html = make_report(third)
    for trial in trials:
        if trial.state == complete:
            assert trial.user_attrs["experiment"] in html
    runs = tag_trials(read_runs(show(cwd=third)), cwd=third)
    assert {run.name for run in runs if run.study == "tune-mlr"} == {
        t.user_attrs["experiment"] for t in trials if t.state == complete
    }
    chosen = best_on_validation(runs, "mlr")  # the baseline competes too
    assert re.search(rf"{re.escape(chosen.name)}[^<]*★ best mlr", html), chosen
    assert "tune-mlr: MLR validation accuracy by trial" in html  # the study's chart, from the trials' trailers
