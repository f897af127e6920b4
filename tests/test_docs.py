"""The README and docs/: every relative link, image and anchor resolves; the README stays short;
docs/lab.md covers every code cell of the ISLP lab and names functions, files and params that exist; no
project file speaks of how it was developed; CHANGELOG.md, pyproject.toml and LICENSE agree."""

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from mnistlab.evaluation import model_metrics
from mnistlab.params import MODEL_NAMES
from mnistlab.stage import METRICS_FILE
from tests.conftest import ROOT

README_LIMIT_BYTES = 12_000  # a newcomer's five minutes; the rest belongs in docs/
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc=[\"']([^\"']+)[\"']", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced and indented code blocks."""
    lines, fenced, previous_blank = [], False, True
    for number, line in enumerate(text.splitlines(), 1):
        indented_code = previous_blank and line.startswith("    ")
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and not indented_code:
            lines.append((number, line))
        previous_blank = not line.strip() or indented_code
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor in ``page``; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in prose_lines(page.read_text()):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(page: Path) -> list[str]:
    """Each relative link, image or <img src> in ``page`` whose file or heading does not exist."""
    problems = []
    for number, line in prose_lines(page.read_text()):
        line = INLINE_CODE.sub("``", line)  # `[a](b)` in inline code is not a link
        for target in LINK.findall(line) + IMG_SRC.findall(line):
            if SCHEME.match(target) or target.startswith("//"):
                continue  # https:, mailto: ...: not this repository's
            path_part, _, anchor = target.partition("#")
            resolved = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            if not resolved.is_relative_to(ROOT.resolve()):
                problems.append(f"{where}: outside the repository")
            elif not resolved.exists():
                problems.append(f"{where}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where}: no heading with this anchor in {resolved.relative_to(ROOT.resolve())}")
    return problems


def test_the_pages_exist() -> None:
    names = {page.name for page in PAGES}
    expected = ["lab", "experiments", "reproducibility", "performance", "predict", "scaling", "errors", "layout"]
    assert {f"{name}.md" for name in expected} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page: Path) -> None:
    problems = broken_links(page)
    assert not problems, "\n".join(problems)


def test_the_link_check_sees_broken_links_images_and_anchors(tmp_path: Path, monkeypatch) -> None:
    """The check itself: each kind of breakage is reported, code is skipped, good links pass."""
    root = tmp_path / "repo"
    monkeypatch.setattr(f"{__name__}.ROOT", root)
    (root / "docs").mkdir(parents=True)
    (root / "docs/figure.png").write_bytes(b"")
    (root / "docs/other.md").write_text("# Other page\n\n## Same bits?\n\n## Same bits?\n\n```\n# not a heading\n```\n")
    (tmp_path / "outside.md").write_text("")
    page = root / "README.md"
    page.write_text(
        "# Title: `code` and *more*\n\n"
        "[ok](docs/other.md) [ok](docs/other.md#same-bits) [ok](docs/other.md#same-bits-1) [ok](#title-code-and-more)\n"
        "![ok](docs/figure.png) [web](https://example.com/missing.md) `[code](missing-in-code.md)`\n"
        "[ok, `code` in the text](docs/other.md#other-page)\n\n"
        "```\n[fenced](missing-in-fence.md)\n```\n\n"
        "    [indented](missing-indented.md)\n\n"
        '[gone](docs/gone.md) ![gone](docs/gone.png) <img src="docs/gone.jpg" alt="x">\n'
        "[bad anchor](docs/other.md#nowhere) [bad local anchor](#nowhere) [outside](../outside.md)\n"
        "[not a heading](docs/other.md#not-a-heading)\n"
    )
    problems = broken_links(page)
    assert [problem.split(": ")[1] for problem in problems] == [
        "docs/gone.md",
        "docs/gone.png",
        "docs/gone.jpg",
        "docs/other.md#nowhere",
        "#nowhere",
        "../outside.md",
        "docs/other.md#not-a-heading",
    ], problems


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Beating the lab with params alone", "beating-the-lab-with-params-alone"),
        ("Scaling up: a GPU, several GPUs, several nodes", "scaling-up-a-gpu-several-gpus-several-nodes"),
        ("`make verify`: did I reproduce the committed results?", "make-verify-did-i-reproduce-the-committed-results"),
        ("A mistake in `params.yaml`", "a-mistake-in-paramsyaml"),
        ("Cell 2: torch, `nn`, `RMSprop`, `TensorDataset`", "cell-2-torch-nn-rmsprop-tensordataset"),
        ("Two `dvc repro` at once", "two-dvc-repro-at-once"),
        ("train_mlp and [the lab](lab.md)", "train_mlp-and-the-lab"),
    ],
)
def test_anchors_follow_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_the_readme_is_read_in_five_minutes() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size < README_LIMIT_BYTES, f"README.md is {size} bytes: move the detail to a page in docs/"


# The seed's code cells (ISLP ch. 10, the MNIST part), each by what it calls or defines. Each must
# have its own section in docs/lab.md, "## Cell <n>: ...", that quotes these.
LAB_CELLS = {
    1: ["import numpy as np, pandas as pd, matplotlib.pyplot as plt"],
    2: ["from torch import nn", "from torch.optim import RMSprop", "TensorDataset"],
    3: ["MeanAbsoluteError", "R2Score", "from torchinfo import summary"],
    4: ["from pytorch_lightning import Trainer", "CSVLogger"],
    5: ["seed_everything(0, workers=True)", "torch.use_deterministic_algorithms(True, warn_only=True)"],
    6: ["read_image", "from torchvision.datasets import MNIST", "ToTensor"],
    7: ["SimpleDataModule", "SimpleModule", "ErrorTracker", "rec_num_workers"],
    8: ["MNIST(root='data', train=True, download=True, transform=ToTensor())"],
    9: ["mnist_train[0]", "plt.imshow"],
    10: ["len(mnist_train)", "mnist_train.targets"],
    11: ["SimpleDataModule(mnist_train, mnist_test", "validation=0.2", "batch_size=256"],
    12: ["mnist_dataModule.train_dataloader()"],
    13: ["class MNISTModel(nn.Module)", "nn.Dropout(0.4)", "nn.Dropout(0.3)"],
    14: ["mnist_model = MNISTModel()"],
    15: ["mnist_model(X_).size()"],
    16: ["summary(mnist_model, input_data=X_", "col_names=['input_size', 'output_size', 'num_params']"],
    17: ["SimpleModule.classification(mnist_model, num_classes=10)", "CSVLogger('logs', name='MNIST')"],
    18: ["Trainer(deterministic=True", "max_epochs=30", "ErrorTracker()", "mnist_trainer.fit("],
    19: ["pd.read_csv(mnist_logger.experiment.metrics_file_path)", "train_accuracy_epoch", "valid_accuracy"],
    20: ["mnist_trainer.test(mnist_module, datamodule=mnist_dataModule)"],
    21: ["class MNIST_MLR(nn.Module)", "SimpleModule.classification(mlr_model", "CSVLogger('logs', name='MNIST_MLR')"],
    22: ["mlr_trainer.fit(mlr_module, datamodule=mnist_dataModule)"],
    23: ["mlr_trainer.test(mlr_module, datamodule=mnist_dataModule)"],
}
LAB_RESULTS = ["0.966", "0.146", "0.922", "0.318", "235,146", "188"]  # what the lab prints


def lab_sections() -> dict[int, str]:
    text = (ROOT / "docs/lab.md").read_text()
    parts = re.split(r"^## Cell (\d+): .*$", text, flags=re.M)
    return {int(number): body for number, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_lab_md_has_a_section_for_every_code_cell_of_the_lab() -> None:
    sections = lab_sections()
    assert sorted(sections) == sorted(LAB_CELLS)
    for number, calls in LAB_CELLS.items():
        missing = [call for call in calls if call not in sections[number]]
        assert not missing, f"docs/lab.md, cell {number}: the lab's {missing} not quoted"
        assert "**Now**" in sections[number], f"docs/lab.md, cell {number}: where it lives now"


def test_lab_md_names_the_differences_and_puts_the_lab_s_results_next_to_ours() -> None:
    text = (ROOT / "docs/lab.md").read_text()
    for difference in ["DataLoader", "index_select", "per epoch", "eval_batch_size", "STEPS_PER_CALL"]:
        assert difference in text, difference
    results = text.split("## The lab's printed results next to ours", 1)[1]
    for number in LAB_RESULTS:
        assert number in results, number
    # Ours are the committed metrics, rounded: a new reference run must update the README and lab.md.
    readme = (ROOT / "README.md").read_text()
    metrics = json.loads((ROOT / METRICS_FILE).read_text())
    for name in MODEL_NAMES:
        accuracy = f"{model_metrics(metrics, name)['test_accuracy']:.4f}"  # the file's layout lives there
        assert accuracy in readme and accuracy in results, f"{name}: test accuracy {accuracy}"
        validation = f"{metrics['val_acc'][name]:.4f}"
        assert validation in readme, f"{name}: validation accuracy {validation}"


# Names the docs give in code spans: modules and their functions, classes and methods; params keys;
# files of the repository. Each must exist, so that a rename shows up here.
DOTTED = re.compile(r"^(mnistlab|stages|bench)(\.\w+)+$")
PARAM = re.compile(r"^(seed|download|split|trainer|train_mlp|train_mlr|evaluate)\.(\w+)$")
REPO_PATH = re.compile(r"^(mnistlab|stages|tests|bench|experiments|metrics|plots|html|docs)/[\w./-]*$")
NOT_COMMITTED = ("html/vendor/", "bench/.deps")  # made by make
FILE_SUFFIXES = (".py", ".json", ".csv", ".txt", ".pt", ".yaml", ".md", ".png", ".ckpt")


def names_defined(path: Path) -> dict[str, set[str]]:
    """Top-level names of a module (functions, classes, assignments), each with its class's members."""
    names: dict[str, set[str]] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            members = set()
            if isinstance(node, ast.ClassDef):
                members = {item.name for item in node.body if isinstance(item, (ast.FunctionDef, ast.ClassDef))}
            names[node.name] = members
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names[name.id] = set()
    return names


def dotted_exists(reference: str) -> bool:
    parts = reference.split(".")
    for split_at in range(len(parts), 0, -1):
        module = ROOT.joinpath(*parts[:split_at])
        source = module.with_suffix(".py") if module.with_suffix(".py").is_file() else module / "__init__.py"
        if source.is_file():
            rest = parts[split_at:]
            if not rest:
                return True
            names = names_defined(source)
            return rest[0] in names and (len(rest) == 1 or (len(rest) == 2 and rest[1] in names[rest[0]]))
    return False


def code_spans(page: Path) -> set[str]:
    """The inline code of ``page``'s prose (code blocks left out)."""
    return {
        match.group(0).strip("`").strip()
        for _, line in prose_lines(page.read_text())
        for match in INLINE_CODE.finditer(line)
    }


def what_is_missing(span: str, params: dict) -> str | None:
    """Why the thing a code span names does not exist; None when it does, or names nothing checked."""
    if span.endswith(FILE_SUFFIXES) and not REPO_PATH.match(span):
        return None  # a file name like train_mlp.py, not a dotted name or a key
    if DOTTED.match(span):
        return None if dotted_exists(span) else f"{span}: no such module, function, class or method"
    if match := PARAM.match(span):
        section, key = match.groups()
        found = isinstance(params.get(section), dict) and key in params[section]
        return None if found else f"{span}: not a key of params.yaml"
    if REPO_PATH.match(span) and not span.startswith(NOT_COMMITTED) and not (ROOT / span).exists():
        return f"{span}: no such file"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_the_functions_params_and_files_the_docs_name_exist(page: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    missing = [problem for span in sorted(code_spans(page)) if (problem := what_is_missing(span, params))]
    assert not missing, f"{page.relative_to(ROOT)} names what does not exist:\n" + "\n".join(missing)


def test_the_name_check_sees_what_does_not_exist() -> None:
    params = {"train_mlp": {"epochs": 30}, "seed": 0}
    assert what_is_missing("train_mlp.epochs", params) is None
    assert what_is_missing("train_mlp.epoch", params) == "train_mlp.epoch: not a key of params.yaml"
    assert what_is_missing("stages/train_mlp.py", params) is None
    assert what_is_missing("stages/no_such_stage.py", params) == "stages/no_such_stage.py: no such file"
    assert what_is_missing("train_mlp.py", params) is None
    assert what_is_missing("mnistlab.data.no_such_function", params)
    assert dotted_exists("mnistlab.data.split_indices")
    assert dotted_exists("mnistlab.system.Classifier.training_step")
    assert dotted_exists("mnistlab.system.STEPS_PER_CALL")
    assert dotted_exists("stages.split.main")
    assert dotted_exists("mnistlab.idx")
    assert not dotted_exists("mnistlab.data.no_such_function")
    assert not dotted_exists("mnistlab.system.Classifier.no_such_method")
    assert not dotted_exists("mnistlab.no_such_module")


# Docs say what is; how the project got there is CHANGELOG.md's and git log's. So no project file speaks
# of the development's "stops" or "sessions" or of a numbered issue. The ordinary words stay: a process
# that stops, `dvc queue stop`, pytest's session (scope="session", "once per test session", the session's
# fixtures), a tmux session, and an upstream issue by its link or its #number.
_WHEN = r"(?:earlier|later|previous|next|last|same|first|final)"
DEVELOPMENT_TALK = re.compile(
    rf"\b(?:this|that|an?|another|each|every|{_WHEN})\s+(?:{_WHEN}\s+)?(?:stop|session)(?:['’]s)?\b(?![-_])"
    rf"|\b(?:the|these|those|several|many|some|its|our|{_WHEN})\s+(?:{_WHEN}\s+)?stops\b"
    rf"|\bthe\s+(?:{_WHEN}\s+)?stop\b(?![-_(])"
    rf"|\bthe\s+{_WHEN}\s+session"
    r"|(?<!tmux )(?<!test )\bsessions\b"
    r"|\bissues?\s+\d+",
    re.IGNORECASE,
)
TEXT_SUFFIXES = {".py", ".md", ".txt", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh"}


def project_files() -> list[Path]:
    """The files that describe or make up the project (hidden and generated folders left out)."""
    files = [ROOT / name for name in ("README.md", "CHANGELOG.md", "Makefile", "tune.yaml", "params.yaml", "dvc.yaml")]
    files += sorted((ROOT / "docs").glob("*.md"))
    for folder in ("mnistlab", "stages", "bench", "tests"):
        for path in sorted((ROOT / folder).rglob("*")):
            hidden = any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(ROOT).parts)
            if path.is_file() and path.suffix in TEXT_SUFFIXES and not hidden:
                files.append(path)
    this_test = Path(__file__).resolve()  # its examples below are what it looks for
    return [path for path in files if path.is_file() and path.resolve() != this_test]


def development_talk(path: Path) -> list[str]:
    """``path:line: text`` for each line of ``path`` that speaks of the development's stops, sessions or issues."""
    return [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if DEVELOPMENT_TALK.search(line)
    ]


def test_no_project_file_speaks_of_the_development_s_stops_sessions_or_issues() -> None:
    hits = [hit for path in project_files() for hit in development_talk(path)]
    assert not hits, "say what is, not when or for which issue (history: CHANGELOG.md, git log):\n" + "\n".join(hits)


STOP, SESSION, ISSUE = "st" + "op", "sess" + "ion", "iss" + "ue"


@pytest.mark.parametrize(
    "line",
    [
        # the phrases are put together here, so that a search of the project for them finds none
        f"The cause, found in a later {STOP} from the workers' logs",
        f"at this {STOP}'s final code",
        f"An earlier {STOP}: the same assertions in fewer processes",
        f"the previous {STOP} (0f62ca3): the same",
        f"The {STOP} that found the suite CPU-bound",
        f"the next {STOP}'s first step",
        f"no GPU was available to this project's {SESSION}s",
        f"measured in a later {SESSION}",
        f"the previous {SESSION}'s code",
        f"the default on x86-64 since {ISSUE} 17",
        f"{ISSUE}s 16 and 17",
        f"over several {STOP}s",
    ],
)
def test_the_development_talk_check_sees_stops_sessions_and_issues(line: str) -> None:
    assert DEVELOPMENT_TALK.search(line), line


@pytest.mark.parametrize(
    "line",
    [
        "Python 3.11 or newer (an older one stops `make` with one line saying so)",
        "A stage stops with one `error:` line",
        "a worker stops 10 s after the queue is empty; Ctrl-C stops the tuner",
        "an option that stops the run",
        "`range(start,stop,step)`",
        'project.dvc("queue", "stop"); server.stop()',
        '@pytest.fixture(scope="session")',
        "def shared(session_dir: Path) -> Path:",
        "The four canonical files, obtained once per test session",
        "A copy of the session's committed, trained tiny project",
        "a session-scoped fixture",
        'subprocess.run(["tmux", "new-session", "-d", "-s", session])',
        "two tmux sessions, shared across test sessions",
        "upstream, torchmetrics issue #3457",
    ],
)
def test_the_development_talk_check_lets_the_ordinary_words_be(line: str) -> None:
    assert not DEVELOPMENT_TALK.search(line), line


def test_the_changelog_s_latest_release_is_pyproject_s_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## \[Unreleased\]", changelog, re.M), "CHANGELOG.md: an [Unreleased] heading on top"
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", changelog, re.M)
    assert releases, "CHANGELOG.md: no '## [X.Y.Z] - YYYY-MM-DD' entry"
    assert releases[0][0] == version, f"CHANGELOG.md's latest release {releases[0][0]}, pyproject.toml's {version}"
    assert "## [1.0.0]" in changelog


def test_the_licence_exists_and_the_readme_names_it() -> None:
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("BSD 3-Clause License"), "LICENSE: the BSD 3-Clause text"
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "BSD-3-Clause"
    readme = (ROOT / "README.md").read_text()
    assert "](LICENSE)" in readme and "BSD 3-Clause" in readme, "README.md: a line naming the licence, linking LICENSE"
