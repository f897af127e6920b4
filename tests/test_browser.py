"""`dvc plots show` offline: headless Chromium opens the page and every chart is drawn.

The page comes from the project's template (.dvc/config: plots.html_template), which loads vega,
vega-lite and vega-embed from html/vendor/ (installed by `make test`), not from a CDN. The data are
the committed reference run's outputs in plots/. A screenshot is kept in test-artifacts/.
"""

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from torchvision.io import read_image

from tests.conftest import ROOT, dvc, git

pytestmark = pytest.mark.slow  # runs dvc and a browser: seconds each
VEGA_CHARTS = ["accuracy", "loss", "confusion_mlp", "confusion_mlr"]
IMAGE_PLOTS = ["plots/figures/accuracy.png", "plots/figures/confusion_matrix.png"]
VENDOR = ROOT / "html" / "vendor"
ARTIFACTS = ROOT / "test-artifacts"
VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Offline and quiet: no sandbox (CI runs as root), no GPU, no background requests or updates.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=15000",  # ms of page time: scripts and rendering settle before the dump
]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; CI installs it (.ci/run), elsewhere the test is skipped without it."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it with apt-get")
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    return path


def open_page(chromium: str, page: Path, profile: Path, *action: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``page`` with a fresh profile; ``action`` is --dump-dom or --screenshot=..."""
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *action]
    return subprocess.run([*cmd, page.as_uri()], capture_output=True, text=True, timeout=180, check=True)


class DrawnCharts(HTMLParser):
    """Per top-level plot div: the vega marks (canvas or svg with class "marks") drawn inside it."""

    def __init__(self, plot_ids: list[str]) -> None:
        super().__init__()
        self.plot_ids = set(plot_ids)
        self.marks: dict[str, int] = {name: 0 for name in plot_ids}
        self.images: list[str] = []
        self.errors: list[str] = []
        self.stack: list[str | None] = []  # the plot id each open element belongs to
        self.in_errors = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        owner = attributes.get("id") if attributes.get("id") in self.plot_ids else None
        owner = owner or (self.stack[-1] if self.stack else None)
        if tag in ("canvas", "svg") and "marks" in (attributes.get("class") or "").split() and owner:
            self.marks[owner] += int(int(attributes.get("width") or 0) > 0 and int(attributes.get("height") or 0) > 0)
        if tag == "img":
            self.images.append(attributes.get("src") or "")
        self.in_errors = self.in_errors or attributes.get("id") == "plot-errors"
        if tag not in VOID_ELEMENTS:
            self.stack.append(owner)

    def handle_endtag(self, tag: str) -> None:
        if tag == "ul":
            self.in_errors = False
        if self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.in_errors and data.strip():
            self.errors.append(data.strip())


def plots_project(folder: Path, with_vendor: bool = True) -> Path:
    """The project's plot definitions, template and reference outputs in a git repo of their own."""
    for name in ["dvc.yaml", ".dvc/config", "html/dvc_plots.html"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, folder / name)
    for name in ["plots/history", "plots/predictions", "plots/figures"]:
        shutil.copytree(ROOT / name, folder / name)
    if with_vendor:
        shutil.copytree(VENDOR, folder / "html" / "vendor")
    git(folder, "init", "-q")
    dvc(folder, "plots", "show")  # writes dvc_plots/index.html, as a user's `dvc plots show` does
    return folder / "dvc_plots" / "index.html"


def draw(chromium: str, page: Path, profile: Path) -> tuple[DrawnCharts, str]:
    result = open_page(chromium, page, profile, "--dump-dom")
    charts = DrawnCharts(VEGA_CHARTS)
    charts.feed(result.stdout)
    uncaught = [line for line in result.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    return charts, "\n".join(uncaught)


def test_plots_render_offline_from_the_vendored_vega(chromium: str, tmp_path: Path) -> None:
    assert (VENDOR / ".installed").exists(), "html/vendor/ is missing: `make test` installs vega there"
    page = plots_project(tmp_path / "project")
    html = page.read_text()
    assert "cdn.jsdelivr.net" not in html and "https://" not in html.split("<body>")[0]  # nothing from the web
    for model in ["mlp", "mlr"]:  # the accuracy overlay: both models, train and validation
        for curve in ["train_accuracy", "valid_accuracy"]:
            assert f"{model}/metrics.csv::{curve}" in html

    charts, uncaught = draw(chromium, page, tmp_path / "profile")
    assert charts.errors == [], charts.errors  # the template lists script and loading errors on the page
    assert uncaught == ""
    for name in VEGA_CHARTS:
        assert charts.marks[name] >= 1, f"chart {name!r} was not drawn: {charts.marks}"
    assert sorted(charts.images) == sorted(
        f"static/workspace_{name.replace('/', '_')}" for name in IMAGE_PLOTS
    )  # and each image loaded, or its failure would be in charts.errors

    screenshot = tmp_path / "dvc_plots.png"
    open_page(chromium, page, tmp_path / "profile-screenshot", "--window-size=1280,2400", f"--screenshot={screenshot}")
    pixels = read_image(str(screenshot))
    assert pixels.shape[1:] == (2400, 1280)
    assert pixels.float().std() > 10  # not a blank page
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy2(screenshot, ARTIFACTS / "dvc_plots.png")


def test_without_the_vendored_vega_the_page_says_what_to_do(chromium: str, tmp_path: Path) -> None:
    page = plots_project(tmp_path / "project", with_vendor=False)
    charts, _ = draw(chromium, page, tmp_path / "profile")
    assert all(count == 0 for count in charts.marks.values()), charts.marks
    assert any("not found in html/vendor/" in error and "make" in error for error in charts.errors), charts.errors
    assert any("could not load" in error and "vega.min.js" in error for error in charts.errors), charts.errors
