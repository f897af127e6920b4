"""`make report`: one offline page comparing every experiment of this commit (reports/experiments.html).

Built from what DVC and git already hold, nothing kept on the side: ``dvc exp show --json`` gives the
experiments, their params and metrics; each experiment's committed history and predictions are read
from its git commit (``git show <rev>:plots/...``). The page inlines vega, vega-lite and vega-embed
from html/vendor/ (installed by `make`), so it opens without a network.

The best run per model is chosen by validation accuracy (``val_acc.<model>``), and its test accuracy
is shown beside it: the test set is looked at once, for what was chosen (ISLP ch. 5). The runs are
read, and the best chosen, by :mod:`mnistlab.experiments`, as `make tune` does. The trials of a
tuning study (`make tune`) are the experiments whose commits say so (``Tuning-Study`` trailers):
one chart per study shows each trial's validation accuracy and the best so far.

    python -m mnistlab.report reports/experiments.html [--sort-by val_acc.mlr] [--rev COMMIT]
"""

import argparse
import base64
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from html import escape
from pathlib import Path

import pandas as pd

from mnistlab import dvc_queue
from mnistlab.errors import DataError, PipelineError
from mnistlab.experiments import ExpShowError, Run, best_on_validation, read_runs, show, tag_trials
from mnistlab.params import MODEL_NAMES
from mnistlab.stage import METRICS_FILE

VENDOR = Path("html/vendor")  # relative: run from the project root, as the stages are
VEGA_SCRIPTS = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
MAX_DIGITS = 24  # per side of the best-vs-baseline comparison
WHY_VALIDATION = (
    "The best run per model is the one with the highest validation accuracy, and its test accuracy is shown"
    " beside it: the test set is looked at once, for the run already chosen, because a run picked by its"
    " test accuracy would have been fitted to those test images and its test number would be optimistic"
    " (ISLP, chapter 5)."
)


def collect_runs(runs: Sequence[Run]) -> list[Run]:
    """The runs with results to compare (failed, queued and running ones have none), the baseline commit first
    among them; a DataError when no committed baseline has metrics."""
    results = [run for run in runs if run.state == "success" and run.metrics]
    if not any(run.baseline for run in results):
        raise DataError(f"no committed {METRICS_FILE}: run `make repro` and commit before `make report`")
    return results


def experiment_table(runs: list[Run], sort_by: str) -> pd.DataFrame:
    """Each run's metrics (validation first, as in the metrics file), then the params that differ from
    the baseline; sorted by ``sort_by``, best first; the best run per model (by validation) marked."""
    base = next(run for run in runs if run.baseline)
    changed = sorted({key for run in runs for key, value in run.params.items() if base.params.get(key) != value})
    rows = []
    for run in runs:
        row = {"experiment": run.name + (" (baseline)" if run.baseline else "")}
        row |= run.metrics | {key: run.params.get(key) for key in changed}
        rows.append(row)
    table = pd.DataFrame(rows)
    if sort_by not in table:
        raise PipelineError(f"--sort-by {sort_by}: not a metric or param here (have: {', '.join(table.columns[1:])})")
    table = table.sort_values(sort_by, ascending=sort_by.split(".")[0].endswith("loss"), kind="stable")
    for model in MODEL_NAMES:
        best = runs.index(best_run(runs, model))
        table.loc[best, "experiment"] += f" ★ best {model}"
    return table.reset_index(drop=True)


def best_run(runs: list[Run], model: str) -> Run:
    """The run chosen on validation for ``model`` (:func:`mnistlab.experiments.best_on_validation`); the baseline
    when no run has a validation accuracy for it."""
    return best_on_validation(runs, model) or next(run for run in runs if run.baseline)


def chosen_runs(runs: list[Run]) -> pd.DataFrame:
    """Per model, the run chosen on validation, its validation accuracy and, beside it, its test accuracy."""
    rows = []
    for model in MODEL_NAMES:
        best = best_run(runs, model)
        rows.append(
            {
                "model": model,
                "best run (by validation accuracy)": best.name,
                "validation accuracy": best.metrics[f"val_acc.{model}"],
                "test accuracy": best.metrics[f"test_acc.{model}"],
            }
        )
    return pd.DataFrame(rows)


def default_sort(runs: list[Run]) -> str:
    """The validation accuracy of the model the experiments changed most (the MLP's on a tie)."""
    spreads = {}
    for model in MODEL_NAMES:
        values = [run.metrics[f"val_acc.{model}"] for run in runs]
        spreads[f"val_acc.{model}"] = max(values) - min(values)
    return max(spreads, key=spreads.get)


def study_trials(runs: Sequence[Run]) -> pd.DataFrame:
    """The trials of tuning studies (runs tagged by the tuner, whatever their state): study, trial number,
    experiment and each model's validation accuracy, NaN for a trial without one (failed, pruned, queued)."""
    rows = []
    for run in runs:
        if run.study is None:
            continue
        row = {"study": run.study, "trial": run.trial, "experiment": run.name}
        for model in MODEL_NAMES:
            row[f"val_acc.{model}"] = run.accuracy("val", model) if run.state == "success" else None
        rows.append(row)
    columns = ["study", "trial", "experiment", *(f"val_acc.{model}" for model in MODEL_NAMES)]
    trials = pd.DataFrame(rows, columns=columns).astype({f"val_acc.{model}": float for model in MODEL_NAMES})
    return trials.sort_values(["study", "trial", "experiment"], kind="stable").reset_index(drop=True)


def study_model(study: str, trials: pd.DataFrame) -> str:
    """The model a study tunes: named in the study (``tune-mlp``), else the one whose validation accuracy varies."""
    named = [model for model in MODEL_NAMES if model in study.split("-")]
    if len(named) == 1:
        return named[0]
    spreads = {model: trials[f"val_acc.{model}"].max() - trials[f"val_acc.{model}"].min() for model in MODEL_NAMES}
    return max(MODEL_NAMES, key=lambda model: spreads[model] if pd.notna(spreads[model]) else -1.0)


def best_so_far(trials: pd.DataFrame, model: str) -> pd.DataFrame:
    """One study's trials by number: trial, experiment, val_acc and the best val_acc up to that trial."""
    ordered = trials.sort_values("trial", kind="stable")
    accuracy = ordered[f"val_acc.{model}"]
    return pd.DataFrame(
        {
            "trial": ordered["trial"].to_numpy(),
            "experiment": ordered["experiment"].to_numpy(),
            "val_acc": accuracy.to_numpy(),
            "best_so_far": accuracy.cummax().ffill().to_numpy(),  # a trial without metrics keeps the best
        }
    )


def trial_chart(study: str, trials: pd.DataFrame) -> dict:
    """Vega-lite: a study's validation accuracy by trial (points) and the best so far (a step line)."""
    model = study_model(study, trials)
    progress = best_so_far(trials, model)
    missing = progress.trial[progress.val_acc.isna()].tolist()
    subtitle = "points: each trial; line: the best so far"
    if missing:
        subtitle += f"; no metrics (failed or pruned): trial {', '.join(map(str, missing))}"
    values = progress.astype(object).where(progress.notna(), None).to_dict("records")  # NaN is not JSON
    x = {"field": "trial", "type": "quantitative", "axis": {"tickMinStep": 1}}
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": {"text": f"{study}: {model.upper()} validation accuracy by trial", "subtitle": subtitle},
        "width": 460,
        "height": 280,
        "data": {"values": values},
        "layer": [
            {
                "mark": {"type": "line", "interpolate": "step-after", "color": "#d62728"},
                "encoding": {
                    "x": x,
                    "y": {"field": "best_so_far", "type": "quantitative", "scale": {"zero": False}},
                },
            },
            {
                "mark": {"type": "point", "filled": True},
                "encoding": {
                    "x": x,
                    "y": {
                        "field": "val_acc",
                        "type": "quantitative",
                        "title": f"val_acc.{model}",
                        "scale": {"zero": False},
                    },
                    "tooltip": [{"field": "experiment"}, {"field": "val_acc", "format": ".4f"}],
                },
            },
        ],
    }


def study_section(runs: Sequence[Run]) -> tuple[str, dict[str, dict]]:
    """HTML and chart specs for the tuning studies: one chart per study; nothing when there is none."""
    trials = study_trials(runs)
    if trials.empty:
        return "", {}
    specs = {
        f"trials_{number}": trial_chart(study, group)
        for number, (study, group) in enumerate(trials.groupby("study", sort=True))
    }
    charts = "".join(f'<div class="chart" id="{name}"></div>' for name in specs)
    return f"<h2>Tuning studies</h2>{charts}", specs


def read_committed(rev: str, path: str) -> pd.DataFrame:
    """A committed CSV as it is in ``rev`` (an experiment's commit or the baseline's)."""
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise DataError(f"{path} is not in commit {rev[:7]}: {shown.stderr.strip()}")
    return pd.read_csv(io.StringIO(shown.stdout))


def curves(runs: list[Run], model: str) -> dict:
    """Vega-lite: validation accuracy by epoch, one line per experiment."""
    values = []
    for run in runs:
        history = read_committed(run.rev, f"plots/history/{model}/metrics.csv").dropna(subset=["valid_accuracy"])
        values += [
            {"experiment": run.name, "epoch": int(e), "valid_accuracy": a}
            for e, a in zip(history.epoch, history.valid_accuracy, strict=True)
        ]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": f"{model.upper()}: validation accuracy by epoch",
        "width": 460,
        "height": 280,
        "data": {"values": values},
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": {"field": "epoch", "type": "quantitative"},
            "y": {"field": "valid_accuracy", "type": "quantitative", "scale": {"zero": False}},
            "color": {"field": "experiment", "type": "nominal"},
        },
    }


def confusion(predictions: pd.DataFrame, title: str) -> dict:
    counts = predictions.groupby(["actual", "predicted"]).size().reset_index(name="count")
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title,
        "width": 220,
        "height": 220,
        "data": {"values": counts.to_dict("records")},
        "layer": [
            {
                "mark": "rect",
                "encoding": {
                    "x": {"field": "predicted", "type": "ordinal"},
                    "y": {"field": "actual", "type": "ordinal"},
                    "color": {"field": "count", "type": "quantitative", "scale": {"type": "log"}},
                },
            },
            {
                "mark": {"type": "text", "fontSize": 8},
                "encoding": {
                    "x": {"field": "predicted", "type": "ordinal"},
                    "y": {"field": "actual", "type": "ordinal"},
                    "text": {"field": "count"},
                },
            },
        ],
    }


def digit_tiles(images, predictions: pd.DataFrame, indices: list[int]) -> str:
    """Test digits as inline PNGs, each captioned with its label and both runs' predictions."""
    from PIL import Image

    tiles = []
    for index in indices[:MAX_DIGITS]:
        buffer = io.BytesIO()
        Image.fromarray(images[index].numpy()).resize((56, 56), Image.NEAREST).save(buffer, "PNG")
        row = predictions.loc[index]
        caption = f"{int(row.actual)}: {int(row.predicted_baseline)}→{int(row.predicted_best)}"
        data = base64.b64encode(buffer.getvalue()).decode()
        image = f'<img alt="{caption}" src="data:image/png;base64,{data}">'
        tiles.append(f"<figure>{image}<figcaption>{caption}</figcaption></figure>")
    more = f"<p>and {len(indices) - MAX_DIGITS} more</p>" if len(indices) > MAX_DIGITS else ""
    return f'<div class="digits">{"".join(tiles) or "<p>none</p>"}</div>{more}'


def model_section(runs: list[Run], model: str, images) -> tuple[str, dict[str, dict]]:
    """HTML and chart specs for one model: curves, and the best run against the baseline."""
    base, best = next(run for run in runs if run.baseline), best_run(runs, model)
    specs = {f"curves_{model}": curves(runs, model)}
    if best is base:
        charts = f'<div class="chart" id="curves_{model}"></div>'
        return f"<h2>{model.upper()}</h2>{charts}<p>No experiment beats the baseline {escape(base.name)}.</p>", specs
    predictions = {
        run.rev: read_committed(run.rev, f"plots/predictions/{model}.csv").set_index("index") for run in (base, best)
    }
    specs[f"confusion_{model}_baseline"] = confusion(predictions[base.rev], f"baseline {base.name}")
    specs[f"confusion_{model}_best"] = confusion(predictions[best.rev], f"best {best.name}")
    both = predictions[base.rev].rename(columns={"predicted": "predicted_baseline"})
    both["predicted_best"] = predictions[best.rev]["predicted"]
    right_base, right_best = both.actual == both.predicted_baseline, both.actual == both.predicted_best
    fixed, broken = both.index[~right_base & right_best].tolist(), both.index[right_base & ~right_best].tolist()
    curves_div, *confusion_divs = (f'<div class="chart" id="{name}"></div>' for name in specs)
    charts = f"{curves_div}<br>{''.join(confusion_divs)}"  # the curves, then the two matrices side by side
    validation, test = (
        f"{best.metrics[f'{m}.{model}']:.4f} vs {base.metrics[f'{m}.{model}']:.4f}" for m in ("val_acc", "test_acc")
    )
    html = f"""<h2>{model.upper()}</h2>{charts}
<h3>Best run {escape(best.name)} against the baseline {escape(base.name)}: validation accuracy {validation},
test accuracy {test}</h3>
<h4>Right now, wrong in the baseline ({len(fixed)}), as label: baseline→best</h4>{digit_tiles(images, both, fixed)}
<h4>Wrong now, right in the baseline ({len(broken)})</h4>{digit_tiles(images, both, broken)}"""
    return html, specs


PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Experiments: the MNIST lab</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.chart {{ display: inline-block; vertical-align: top; margin: 0 1em 1em 0; }}
.digits figure {{ display: inline-block; margin: 2px; text-align: center; font-size: 11px; }}
#report-errors {{ color: #b00020; }}
</style>
<script>{vega}</script>
<script>
const reportErrors = [];
window.addEventListener("error", (event) => reportErrors.push(event.message));
</script>
</head><body>
<ul id="report-errors"></ul>
<h1>Experiments of {baseline}</h1>
<p>{count} runs: the baseline commit and its experiments (<code>dvc exp show</code>), sorted by {sort_by};
validation and test metrics ({metrics_file}), then the params that differ from the baseline.</p>
<p id="why-validation">{why}</p>
{chosen}
{table}
{studies}
{sections}
<script>
const specs = {specs};
Promise.all(Object.entries(specs).map(([id, spec]) =>
  vegaEmbed("#" + id, spec, {{actions: false, renderer: "svg"}}).then((result) => {{
    document.getElementById(id).dataset.drawn = result.view.scenegraph().root.items.length;
  }})
)).catch((error) => reportErrors.push(String(error))).finally(() => {{
  document.getElementById("report-errors").replaceChildren(...reportErrors.map((message) => {{
    const item = document.createElement("li"); item.textContent = message; return item;
  }}));
  document.body.dataset.done = "1";
}});
</script>
</body></html>
"""


def render(shown: list[Run], images, sort_by: str | None = None) -> str:
    """The whole page for the runs of ``dvc exp show`` (:func:`mnistlab.experiments.read_runs`, trials tagged)
    and the test images (uint8, N x 28 x 28)."""
    missing = [name for name in VEGA_SCRIPTS if not (VENDOR / name).is_file()]
    if missing:
        raise DataError(f"{', '.join(missing)} not in html/vendor/: `make report` installs them (npm)")
    runs = collect_runs(shown)
    sort_by = sort_by or default_sort(runs)
    table = experiment_table(runs, sort_by)
    studies, specs = study_section(shown)
    sections = []
    for model in MODEL_NAMES:
        html, model_specs = model_section(runs, model, images)
        sections.append(html)
        specs |= model_specs
    return PAGE.format(
        vega="\n".join((VENDOR / name).read_text() for name in VEGA_SCRIPTS).replace("</script", "<\\/script"),
        baseline=escape(next(run.name for run in runs if run.baseline)),
        count=len(runs),
        sort_by=escape(sort_by),
        metrics_file=METRICS_FILE,
        why=escape(WHY_VALIDATION),
        chosen=chosen_runs(runs).to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0),
        table=table.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4f}", border=0),
        studies=studies,
        sections="\n".join(sections),
        specs=json.dumps(specs).replace("</", "<\\/"),
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mnistlab.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="the page to write (reports/experiments.html)")
    parser.add_argument(
        "--sort-by", help="a metric or param column (default: the validation accuracy that varies most)"
    )
    parser.add_argument("--rev", help="the experiments of this commit (dvc exp show --rev; default HEAD)")
    parser.add_argument("--test-split", type=Path, default=Path("data/split/test"), help="the test images")
    args = parser.parse_args(argv)
    try:
        try:
            shown = tag_trials(read_runs(show(*(["--rev", args.rev] if args.rev else []))))
        except ExpShowError as error:
            stuck = [message.task[:7] for message in dvc_queue.stuck_tasks(Path.cwd())]
            if not stuck:
                raise
            remedy = "; ".join(
                f"dvc queue kill {task}, then dvc queue remove {task} (twice if still listed)" for task in stuck
            )
            raise DataError(
                f"{error}: DVC's queue holds a stuck task (active, no executor record); DVC's remedy: {remedy}"
            ) from None
        from mnistlab.data import load_split  # torch: only once the experiments are known

        page = render(shown, load_split(args.test_split).images, args.sort_by)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"report: {args.out} ({len(page) // 1024} KB), open it in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
