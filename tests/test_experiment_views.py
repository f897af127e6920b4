"""What a person reads after a sweep: DVC's grid syntax, the terminal views at 120 columns, the
experiments' curves overlaid by `dvc plots diff`, and `make report`'s page.

One project serves every test here: a copy of the test session's tiny trained project (the baseline
committed, then shared through a git origin and a DVC folder remote, as a team's machine A), then the
README's 2x2 grid of the MLR queued and run by two workers, as a user would. That grid is also machine
A's share of a sweep split over two machines (docs/scaling.md), which come together in a third.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from itertools import product
from pathlib import Path

import pytest
import yaml
from torchvision.io import read_image

from mnistlab.dvc_queue import start_workers
from mnistlab.experiments import Run, flatten, trial_message
from mnistlab.workspace import venv_env
from tests.conftest import TrainedProject, clone, copy_built, dvc, git, make_report, share
from tests.test_browser import ARTIFACTS, VENDOR, chromium, open_page  # noqa: F401 (chromium: a fixture)
from tests.test_experiments import accuracy, experiments, ran, section, wait_for_queue

pytestmark = pytest.mark.slow
RATES, BATCHES = (0.001, 0.003), (128, 256)
GRID = ["-S", "train_mlr.learning_rate=0.001,0.003", "-S", "train_mlr.batch_size=128,256"]  # as in the README
WIDTH = 120
MODELS = ("mlp", "mlr")
# docs/experiments.md's recipe for a piped table: the dependencies and the params nobody compares here
DROP = "^(mnistlab|stages|data|models|plots)/|^(download|trainer|split|evaluate)\\.|^(val|test)_loss\\."


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, trained_project: TrainedProject) -> Path:
    """The baseline committed and shared (a git origin, its outputs pushed to the DVC remote), then the
    README's 2x2 grid run through DVC's queue with two workers."""
    project = copy_built(trained_project.path, tmp_path_factory.mktemp("swept") / "project")
    share(project, project.parent)
    dvc(project, "push")
    shutil.copytree(VENDOR, project / "html" / "vendor")  # git-ignored, as in a clone after `make`
    queued = dvc(project, "exp", "run", "--queue", *GRID).stdout
    assert queued.count("Queued experiment") == 4, queued
    start_workers(2, project)
    status = wait_for_queue(project)
    assert "Failed" not in status, status
    return project


@pytest.fixture(scope="module")
def swept_shown(swept: Path) -> dict[str, Run]:
    """The sweep's `dvc exp show --json`, read once (each read is seconds of CPU): no test before the report's
    renames changes what it shows (the apply test works in a copy)."""
    return experiments(swept)


def test_a_grid_sweep_gives_four_experiments_with_their_own_params_and_results(swept_shown: dict[str, Run]) -> None:
    shown = dict(swept_shown)
    baseline = shown.pop("main")
    swept_params = {(e.params["train_mlr.learning_rate"], e.params["train_mlr.batch_size"]) for e in shown.values()}
    assert len(shown) == 4 and swept_params == set(product(RATES, BATCHES)), shown.keys()
    for experiment in shown.values():  # only the MLR changed: its own result; the MLP's reused
        assert accuracy(experiment, "mlp") == accuracy(baseline, "mlp")
        assert section(experiment, "train_mlp") == section(baseline, "train_mlp")
    mlr = [accuracy(experiment, "mlr") for experiment in shown.values()]
    assert len(set(mlr)) == 4 and all(0 < value <= 1 for value in mlr), mlr


def test_a_sweep_split_over_two_machines_comes_together_in_a_third(
    swept: Path, swept_shown: dict[str, Run], tmp_path: Path
) -> None:
    """docs/scaling.md: machine A's share is the grid above, machine B's one more learning rate; each pushes
    its experiments (git refs to the origin, outputs to the DVC remote), and a third clone pulls them all."""
    origin = Path(git(swept, "remote", "get-url", "origin").strip())  # the fixture shared it
    grid = {name: section(e, "train_mlr") for name, e in swept_shown.items() if name != "main"}
    machine_b = clone(origin, tmp_path / "b")
    dvc(machine_b, "pull")  # the baseline's outputs: the MLP is reused, not retrained
    dvc(machine_b, "exp", "run", "--queue", "-n", "lr0002", "-S", "train_mlr.learning_rate=0.002")
    start_workers(1, machine_b)
    status = wait_for_queue(machine_b)
    assert "Failed" not in status, status
    for machine in (swept, machine_b):
        dvc(machine, "exp", "push", "origin")  # the experiments of HEAD

    third = clone(origin, tmp_path / "c")
    dvc(third, "exp", "pull", "origin")
    shown = experiments(third)
    assert set(shown) == {"main", "lr0002", *grid}, shown.keys()
    assert shown["lr0002"].params["train_mlr.learning_rate"] == 0.002
    for name, params in grid.items():
        assert section(shown[name], "train_mlr") == params
    swept_runs = [name for name in shown if name != "main"]
    assert all(0 < accuracy(shown[name], "mlr") <= 1 for name in swept_runs)
    assert len({accuracy(shown[name], "mlr") for name in swept_runs}) == 5  # each run its own result
    assert len({accuracy(shown[name], "mlp") for name in shown}) == 1  # the MLP reused on both machines

    dvc(third, "exp", "apply", "lr0002")  # another machine's experiment, outputs included
    assert (third / "models/mlr/model.ckpt").is_file()
    assert "up to date" in dvc(third, "status").stdout


def test_apply_and_branch_bring_back_the_experiment_shown(
    swept: Path, swept_shown: dict[str, Run], tmp_path: Path
) -> None:
    """`dvc exp apply` puts an experiment's params and results in the workspace, nothing left to run;
    `dvc exp branch` makes a branch of another."""
    project = copy_built(swept, tmp_path / "project")  # the other tests here read the sweep's workspace
    shown = swept_shown
    named = {(e.params["train_mlr.learning_rate"], e.params["train_mlr.batch_size"]): n for n, e in shown.items()}
    applied, branched = named[(0.003, 128)], named[(0.001, 256)]

    dvc(project, "exp", "apply", applied)
    params = yaml.safe_load((project / "params.yaml").read_text())["train_mlr"]
    assert (params["learning_rate"], params["batch_size"]) == (0.003, 128)
    metrics = json.loads((project / "metrics/metrics.json").read_text())
    assert flatten(metrics) == shown[applied].metrics
    assert ran(dvc(project, "repro").stdout) == []  # the workspace now is that experiment, outputs included

    dvc(project, "exp", "branch", branched, "lr001")
    branch_params = yaml.safe_load(git(project, "show", "lr001:params.yaml"))["train_mlr"]
    assert (branch_params["learning_rate"], branch_params["batch_size"]) == (0.001, 256)
    branch_metrics = json.loads(git(project, "show", "lr001:metrics/metrics.json"))
    assert flatten(branch_metrics) == shown[branched].metrics


def terminal(project: Path, command: str) -> list[str]:
    """The screen of a WIDTH-column terminal (tmux) after ``command``, as a person sees it (DVC's pager included)."""
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is not installed: .ci/run installs it with apt-get")
        pytest.skip("tmux is not installed (Debian: apt-get install -y tmux)")
    session = f"views{os.getpid()}"
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    shell = f"cd {project} && export PATH={path} && {command}; sleep 60"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(WIDTH), "-y", "40", shell], check=True)
    try:
        deadline, screen = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            if "(END)" in screen or "└──" in screen:  # the table is on the screen
                time.sleep(1)  # the pager has drawn its screen
                screen = subprocess.run(
                    ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
                ).stdout
                break
            time.sleep(0.5)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    return screen.splitlines()


def table_rows(screen: list[str]) -> dict[str, list[str]]:
    """Experiment name -> the cells of its row; the header row under "header"."""
    rows = {}
    for line in screen:
        cells = line.replace(">", " ").split()
        if cells[:1] == ["Experiment"]:
            rows["header"] = cells
        elif match := re.search(r"\[([\w-]+)\]", line):
            rows[match.group(1)] = line.split("]", 1)[1].split()
        elif cells[:1] in (["main"], ["workspace"]):
            rows[cells[0]] = cells[1:]
    return rows


def validation(experiment: Run, model: str) -> float:
    return accuracy(experiment, model, "val_acc")


def displayed(value: float) -> float:
    """A metric as DVC's tables print it: 5 significant digits (0.914833 -> 0.91483)."""
    return float(f"{value:.5g}")


def accuracies(experiment: Run) -> list[float]:
    """val_acc.mlp, val_acc.mlr, test_acc.mlp, test_acc.mlr as the tables print them."""
    values = [validation(experiment, model) for model in MODELS] + [accuracy(experiment, model) for model in MODELS]
    return [displayed(value) for value in values]


def test_dvc_metrics_show_prints_one_row_of_every_model_s_metrics(swept: Path) -> None:
    # one row, no column of dashes (DVC sorts these columns by name: test_* first)
    metrics = dvc(swept, "metrics", "show").stdout.splitlines()
    names = [f"{metric}.{model}" for metric in ("test_acc", "test_loss", "val_acc", "val_loss") for model in MODELS]
    assert metrics[0].split() == ["Path", *names], metrics
    assert len(metrics) == 2 and "-" not in metrics[1].split(), metrics


def test_the_views_a_person_reads_first_fit_120_columns(swept: Path, swept_shown: dict[str, Run]) -> None:
    shown = swept_shown
    names = [name for name in shown if name != "main"]

    # plain dvc exp show, in the pager DVC opens: both models' validation accuracy, what runs are
    # chosen by, then their test accuracy, on every row
    rows = table_rows(terminal(swept, "dvc exp show"))
    columns = ["val_acc.mlp", "val_acc.mlr", "test_acc.mlp", "test_acc.mlr"]
    assert rows["header"][:8] == ["Experiment", "Created", "State", "Executor", *columns], rows
    for name in names:
        state, executor, *values = rows[name][2:8]  # after Created: today's time, e.g. 07:54 PM
        assert (state, executor) == ("Success", "Dvc-task")
        assert [float(value) for value in values] == accuracies(shown[name]), (name, rows[name])

    # after `dvc queue remove --success` (the README's sweep): --only-changed shows the swept params
    dvc(swept, "queue", "remove", "--success")
    # piped, or with --no-pager, DVC folds columns to the width; dropping the dependencies and the
    # params nobody compares here and the losses (docs/experiments.md) keeps the four accuracies
    env = venv_env() | {"COLUMNS": str(WIDTH)}
    command = [sys.executable, "-m", "dvc", "exp", "show", "--no-pager", "--drop", DROP]
    piped = subprocess.run(command, cwd=swept, env=env, capture_output=True, text=True, check=True).stdout
    assert max(len(line) for line in piped.splitlines()) <= WIDTH, piped
    rows = table_rows(piped.splitlines())
    assert rows["header"][:6] == ["Experiment", "Created", *columns], piped
    for name in names:
        assert [float(value) for value in rows[name][2:6]] == accuracies(shown[name]), (name, rows[name])

    # the README's command: the swept model's accuracies, validation first, best first, then the swept params
    # (with its losses too, the learning rate is cut at column 120 and the batch size is off the screen)
    screen = terminal(
        swept, "dvc exp show --only-changed --drop '(val|test)_loss' --sort-by val_acc.mlr --sort-order desc"
    )
    assert max(len(line.rstrip()) for line in screen) <= WIDTH
    rows = table_rows(screen)
    header = ["Experiment", "Created", "val_acc.mlr", "test_acc.mlr", "train_mlr.learning_rate", "train_mlr.batch_size"]
    assert rows["header"][:6] == header, "\n".join(screen)
    assert [name for name in rows if name in names] == sorted(names, key=lambda n: -validation(shown[n], "mlr"))
    for name in names:
        val_acc, test_acc, rate, batch = rows[name][2:6]
        assert float(val_acc) == displayed(validation(shown[name], "mlr")), (name, rows[name])
        assert float(test_acc) == displayed(accuracy(shown[name], "mlr")), (name, rows[name])
        assert float(rate) == shown[name].params["train_mlr.learning_rate"]
        assert int(batch) == shown[name].params["train_mlr.batch_size"]


class ChartState(HTMLParser):
    """The data-* attributes the pages set on each chart's div once vega has drawn it."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, str]] = {}
        self.errors: list[str] = []
        self._in_errors = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        if "id" in attributes and any(key.startswith("data-") for key in attributes):
            self.charts[attributes["id"]] = attributes
        self._in_errors = self._in_errors or attributes.get("id") in ("plot-errors", "report-errors")

    def handle_endtag(self, tag: str) -> None:
        self._in_errors = self._in_errors and tag != "ul"

    def handle_data(self, data: str) -> None:
        if self._in_errors and data.strip():
            self.errors.append(data.strip())


def drawn(chromium: str, page: Path, profile: Path) -> ChartState:  # noqa: F811 (chromium: the fixture's value)
    state = ChartState()
    state.feed(open_page(chromium, page, profile, "--dump-dom").stdout)
    return state


def test_plots_diff_overlays_two_experiments_curves(
    swept: Path,
    swept_shown: dict[str, Run],
    chromium: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    page = swept / "dvc_plots" / "index.html"
    dvc(swept, "plots", "show")  # one revision: the workspace
    single = drawn(chromium, page, tmp_path / "single")
    first, second = sorted(name for name in swept_shown if name != "main")[:2]
    dvc(swept, "plots", "diff", first, second)
    html = page.read_text()
    assert first in html and second in html
    state = drawn(chromium, page, tmp_path / "profile")
    assert single.errors == [] and state.errors == []
    # every accuracy and loss series drawn once per experiment: twice the lines of one revision
    for chart in ("accuracy", "loss"):
        lines = int(single.charts[chart]["data-lines"])
        assert lines > 0 and int(state.charts[chart]["data-lines"]) == 2 * lines, (single.charts, state.charts)


def tag_as_trial(project: Path, study: str, number: int) -> None:
    """The experiment ``<study>-<number>``'s commit, made again with the message `make tune` gives its trials
    (the same tree and parent): its trailers make it a trial of ``study`` for `make report`."""
    name = f"{study}-{number:03d}"
    ref = next(
        r for r in git(project, "for-each-ref", "--format=%(refname)", "refs/exps").split() if r.endswith(f"/{name}")
    )
    tree, parent = git(project, "rev-parse", f"{ref}^{{tree}}", f"{ref}^").split()
    commit = git(project, "commit-tree", tree, "-p", parent, "-m", trial_message(study, number, name)).strip()
    git(project, "update-ref", ref, commit)


def test_make_report_draws_every_chart_offline(
    swept: Path,
    swept_shown: dict[str, Run],
    chromium: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    # two of the sweep's runs become the trials of a tuning study, as `make tune` names and tags them
    first, second = sorted(name for name in swept_shown if name != "main")[:2]
    dvc(swept, "exp", "rename", first, "tune-mlr-000")
    dvc(swept, "exp", "rename", second, "tune-mlr-002")
    for number in (0, 2):
        tag_as_trial(swept, "tune-mlr", number)
    html = make_report(swept)
    page = swept / "reports" / "experiments.html"
    markup = re.sub(r"<script>.*?</script>", "", html, flags=re.DOTALL)  # outside the inlined scripts:
    assert "<script>" in html and not re.search(r"\b(src|href)=\"(?!data:)", markup)  # nothing to fetch
    shown = experiments(swept)
    assert len(shown) >= 3
    for name in shown:
        assert name in html
    # the best MLR by validation accuracy, marked, and its test accuracy beside it, with the reason
    best = max(shown, key=lambda name: validation(shown[name], "mlr"))
    assert re.search(rf"{re.escape(best)}[^<]*★ best mlr", html), best
    chosen = [best, f"{validation(shown[best], 'mlr'):.4f}", f"{accuracy(shown[best], 'mlr'):.4f}"]
    assert re.search(r"<td>mlr</td>\s*" + r"\s*".join(f"<td>{re.escape(cell)}</td>" for cell in chosen), html)
    assert 'id="why-validation"' in html and "highest validation accuracy" in html
    state = drawn(chromium, page, tmp_path / "profile")
    assert state.errors == []
    charts = {name for name in state.charts if name.startswith(("curves_", "confusion_"))}
    # every model's curves; the confusion matrices where an experiment beat the baseline: the MLR's
    # (the sweep changed only the MLR, so the MLP's best run is the baseline and the page says so)
    expected = {"curves_mlp", "curves_mlr", "confusion_mlr_baseline", "confusion_mlr_best"}
    assert charts == expected, state.charts.keys()
    assert {name for name in state.charts if name.startswith("trials_")} == {"trials_0"}  # one study
    assert "tune-mlr: MLR validation accuracy by trial" in html
    charts.add("trials_0")
    assert "No experiment beats the baseline main." in html
    assert all(int(state.charts[name]["data-drawn"]) > 0 for name in charts), state.charts
    screenshot = tmp_path / "report.png"
    open_page(chromium, page, tmp_path / "profile-shot", "--window-size=1300,2600", f"--screenshot={screenshot}")
    assert read_image(str(screenshot)).float().std() > 10
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy2(screenshot, ARTIFACTS / "experiments_report.png")
    json.loads(dvc(swept, "exp", "show", "--json").stdout)  # the page came from this, and it still reads
