"""The audit's files: consensus.csv, metrics.json and a self-contained report.html.

The HTML is drawn from the metrics dict alone (plots as base64 PNGs, no external assets),
so an old metrics.json can be re-rendered and a report can be mailed as one file.
matplotlib is imported only when plotting, through ``Figure`` (no pyplot global state),
so importing the quality library stays cheap for a DAG parser. A loop audit's page opens
with what a lead reads first (``RunHeading``): the project, when it ran, the gate's verdict
with each failed metric's shortfall, and a link to the review project. Tables of rows
(annotators first) sort by any column with a click, by a few lines of inline script.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .agreement import kappa_matrix

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .audit import AuditResult

#: Text properties of every plot label taken from data (annotator ids, labels, run ids): drawn as
#: typed, since matplotlib reads "$...$" as math and raises on what it cannot typeset ("$\\x$").
PLAIN = {"parse_math": False}

#: Heatmaps and accuracy plots show at most this many annotators (the busiest ones).
MAX_ANNOTATORS_SHOWN = 40

#: Metrics plotted across runs in the history chart: (label, section, key).
HISTORY_SERIES = (
    ("Krippendorff's alpha", "agreement", "krippendorff_alpha_nominal"),
    ("Fleiss' kappa", "agreement", "fleiss_kappa"),
    ("mean pairwise kappa", "agreement", "pairwise_kappa_mean"),
    ("consensus accuracy on gold", "gold", "consensus_accuracy"),
)


#: Sorts a ``table.sortable`` by the clicked column: numbers by value, text alphabetically, and
#: cells without a number ("n/a") last either way; a second click reverses. No network needed.
SORT_SCRIPT = """<script>
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.title = "sort by " + th.textContent;
  th.style.cursor = "pointer";
  th.addEventListener("click", function () {
    var table = th.closest("table"), column = th.cellIndex, body = table.tBodies[0];
    var up = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach(function (other) { other.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    function key(row) {
      var text = row.cells[column].textContent.trim();
      return text !== "" && !isNaN(Number(text)) ? Number(text) : text;
    }
    Array.from(body.rows).map(function (row) { return [key(row), row]; }).sort(function (a, b) {
      var x = a[0], y = b[0];
      if (typeof x !== typeof y) { return typeof x === "number" ? -1 : 1; }
      var order = typeof x === "number" ? x - y : x.localeCompare(y);
      return up ? order : -order;
    }).forEach(function (pair) { body.appendChild(pair[1]); });
  });
});
</script>"""


@dataclass(frozen=True)
class RunHeading:
    """The top of a loop audit's report: whose labels, when, the gate's verdict, where to review."""

    project: str  # the spec's title
    ran_at: datetime
    run_id: str = ""
    gate: dict[str, Any] | None = None  # ``Gate.to_dict``: passed, summary, checks
    review_url: str | None = None

    def title(self) -> str:
        return html.escape(f"{self.project}: label audit of {self.ran_at:%Y-%m-%d %H:%M %Z}".strip())

    def intro(self) -> str:
        """The banner and the run's facts, above the sections."""
        when = html.escape(self.ran_at.isoformat(timespec="seconds"))
        facts = [f'ran <time datetime="{when}">{html.escape(f"{self.ran_at:%Y-%m-%d %H:%M:%S %Z}".strip())}</time>']
        if self.run_id:
            facts.append(f"Airflow run <code>{html.escape(self.run_id)}</code>")
        if self.review_url:
            facts.append(f'<a id="review-project" href="{html.escape(self.review_url)}">review project in '
                         "Label Studio</a> (the items routed for a reviewer's decision)")
        return (gate_banner(self.gate) if self.gate is not None else "") + f'<p>{" · ".join(facts)}</p>'


def gate_banner(gate: dict[str, Any]) -> str:
    """Passed or failed, in colour; a failure lists each failed metric with its value, the
    threshold and the shortfall; metrics the data could not give are named as not measured."""
    checks = gate["checks"]
    failed = [check for check in checks if check["status"] == "failed"]
    unmeasured = [check for check in checks if check["status"] == "not measured"]
    if failed:
        rows = "".join(
            f"<tr><th>{html.escape(check['metric'])}</th><td>{_fmt(check['value'])}</td>"
            f"<td>{html.escape(check['threshold_name'])} {_fmt(check['threshold'])}</td>"
            f"<td>{_fmt(check['threshold'] - check['value'])}</td></tr>" for check in failed)
        verdict = (f"<strong>Quality gate FAILED</strong>: {len(failed)} of {len(checks)} checks"
                   "<table><tr><th>metric</th><th>value</th><th>threshold</th><th>short by</th></tr>"
                   f"{rows}</table>")
        style, status = "background:#fde8e8;border-color:#c0392b", "failed"
    else:
        verdict = f"<strong>Quality gate passed</strong>: {len(checks) - len(unmeasured)} of {len(checks)} checks met"
        style, status = "background:#e6f4ea;border-color:#2e7d32", "passed"
    if unmeasured:
        verdict += "<p>Not measured: " + "; ".join(
            html.escape(f"{check['metric']} ({check['note'] or 'no data'})") for check in unmeasured) + "</p>"
    return (f'<div id="gate" class="gate-{status}" role="status" '
            f'style="border:2px solid;padding:.5em 1em;margin:1em 0;{style}">{verdict}</div>')


def metrics_json(metrics: dict[str, Any]) -> str:
    """Strict JSON (no NaN): a metric that is undefined is already null in the dict."""
    return json.dumps(metrics, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def write_audit(
    result: AuditResult, out_dir: Path | str, history: Sequence[dict[str, Any]] = ()
) -> list[Path]:
    """Write consensus.csv (item_id, label, confidence), metrics.json and report.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in ("consensus.csv", "metrics.json", "report.html")]
    result.consensus[["item_id", "label", "confidence"]].to_csv(paths[0], index=False)
    paths[1].write_text(metrics_json(result.metrics), encoding="utf-8")
    paths[2].write_text(render_html(result.metrics, history), encoding="utf-8")
    return paths


def render_html(metrics: dict[str, Any], history: Sequence[dict[str, Any]] = ()) -> str:
    """The report page; ``history`` (earlier metrics dicts, oldest first) adds a trend plot."""
    title = f"Label audit {html.escape(str(metrics.get('run_id') or ''))}".strip()
    return page(title, "".join(choice_sections(metrics, history)))


def page(title: str, body: str, heading: RunHeading | None = None) -> str:
    """A self-contained HTML page around the report's sections (``title`` already escaped);
    with a ``heading``, its title, banner and run facts come first instead."""
    if heading is not None:
        title, body = heading.title(), heading.intro() + body
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
        "text-align:right}img{max-width:100%}th[aria-sort=ascending]::after{content:' \\25B2'}"
        "th[aria-sort=descending]::after{content:' \\25BC'}</style></head><body>"
        f"<h1>{title}</h1>{body}{SORT_SCRIPT}</body></html>\n"
    )


def choice_sections(metrics: dict[str, Any], history: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The sections of one single-choice control's audit."""
    gold = metrics["gold"]
    sections = [_summary(metrics)]
    if gold:
        sections.append(_figure("Annotator accuracy on gold (95% Wilson interval)",
                                _accuracy_plot(metrics["annotators"])))  # fmt: skip
        sections.append(_figure("Consensus vs gold", _confusion_plot(gold["confusion"])))
    else:
        sections.append("<p>No gold labels were given: no accuracy or confusion matrix.</p>")
    sections.append(_figure(
        f"Pairwise Cohen's kappa (pairs sharing at least {metrics['parameters']['min_shared']} "
        f"items; the {MAX_ANNOTATORS_SHOWN} busiest annotators)",
        _kappa_heatmap(metrics["pairwise_kappa"], metrics["annotators"]),
    ))  # fmt: skip
    if history:
        sections.append(_figure("Agreement over time", _history_plot([*history, metrics])))
    sections.append(_annotator_table(metrics["annotators"]))
    if metrics.get("comments") is not None:
        sections.append(comment_section(metrics["comments"]))
    return sections


def comment_section(comments: list[dict[str, Any]]) -> str:
    """What annotators wrote, per item and annotator, verbatim (escaped), for the leads."""
    if not comments:
        return "<p>No annotator left a comment.</p>"
    body = "".join(f"<tr><td>{html.escape(str(row['item_id']))}</td><td>{html.escape(str(row['annotator_id']))}</td>"
                   f"<td style=\"text-align:left;white-space:pre-wrap\">{html.escape(str(row['text']))}</td></tr>"
                   for row in comments)
    return ("<h3>Annotator comments</h3><table><tr><th>item</th><th>annotator</th><th>comment</th></tr>"
            f"{body}</table>")


def table_sections(metrics: dict[str, Any]) -> list[str]:
    """Any task type's metrics as tables: every scalar of each section, then every list of
    rows (annotators, pairs, labels). Task types with plots of their own add them."""
    sections = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            scalars = [(name, v) for name, v in value.items() if not isinstance(v, dict | list)]
            if scalars:
                body = "".join(f"<tr><th>{html.escape(str(n))}</th><td>{_fmt(v)}</td></tr>" for n, v in scalars)
                sections.append(f"<h3>{html.escape(key)}</h3><table>{body}</table>")
        elif isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            columns = list(dict.fromkeys(name for row in value for name in row
                                         if not isinstance(row[name], dict | list)))
            sections.append(f"<h3>{html.escape(key)}</h3>{rows_table(columns, value, key)}")
    return sections


def rows_table(columns: Sequence[str], rows: Sequence[dict[str, Any]], name: str) -> str:
    """One row per dict, sortable by any column (``SORT_SCRIPT``); ``name`` says which rows."""
    head = "".join(f'<th scope="col">{html.escape(str(column))}</th>' for column in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(row.get(column))}</td>" for column in columns) + "</tr>"
                   for row in rows)
    return (f'<table class="sortable" data-rows="{html.escape(name)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _summary(metrics: dict[str, Any]) -> str:
    counts, agreement, review = metrics["counts"], metrics["agreement"], metrics["review"]
    rows = [
        ("method", metrics["method"]),
        ("annotations / items / annotators",
         f"{counts['annotations']} / {counts['items']} / {counts['annotators']}"),
        ("Krippendorff's alpha (nominal)", agreement["krippendorff_alpha_nominal"]),
        ("Fleiss' kappa", agreement["fleiss_kappa"]),
        ("mean pairwise kappa", agreement["pairwise_kappa_mean"]),
        ("pairs with a kappa", agreement["n_pairs"]),
        ("mean consensus confidence", metrics["consensus"]["mean_confidence"]),
        ("consensus accuracy on gold", (metrics["gold"] or {}).get("consensus_accuracy")),
        ("items with disagreement", review["n_disagreements"]),
        ("items below confidence "
         f"{metrics['parameters']['low_confidence_threshold']}", len(review["low_confidence"])),
        ("items in the spot check", len(review["spot_check"])),
    ]  # fmt: skip
    body = "".join(f"<tr><th>{html.escape(name)}</th><td>{_fmt(v)}</td></tr>" for name, v in rows)
    return f"<h2>Summary</h2><table>{body}</table>"


def _annotator_table(annotators: list[dict[str, Any]]) -> str:
    columns = ["annotator_id", "n_labels", "n_gold", "n_correct", "accuracy", "ci_low", "ci_high"]
    return f"<h2>Annotators</h2>{rows_table(columns, annotators, 'annotators')}"


def _figure(caption: str, figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    caption = html.escape(caption)
    return f'<h2>{caption}</h2><img alt="{caption}" src="data:image/png;base64,{data}">'


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _accuracy_plot(annotators: list[dict[str, Any]]) -> Figure:
    table = pd.DataFrame(annotators)
    table = table[table["n_gold"] > 0].nlargest(MAX_ANNOTATORS_SHOWN, "n_gold")
    table = table.sort_values("accuracy")
    figure = _new_figure(7, 1 + 0.25 * len(table))
    axes = figure.subplots()
    position = np.arange(len(table))
    # Clipped: at accuracy 1.0 the Wilson bound can round to just below it.
    error = np.clip([table["accuracy"] - table["ci_low"], table["ci_high"] - table["accuracy"]],
                    0, None)  # fmt: skip
    axes.errorbar(table["accuracy"], position, xerr=error, fmt="o", capsize=3)
    axes.set_yticks(position, [f"{a} (n={n})" for a, n in zip(table["annotator_id"],
                                                              table["n_gold"])], **PLAIN)  # fmt: skip
    axes.set_xlim(0, 1)
    axes.set_xlabel("accuracy on gold items")
    return figure


def _kappa_heatmap(pairs: list[dict[str, Any]], annotators: list[dict[str, Any]]) -> Figure:
    busiest = pd.DataFrame(annotators).nlargest(MAX_ANNOTATORS_SHOWN, "n_labels")["annotator_id"]
    frame = pd.DataFrame(pairs, columns=["annotator_a", "annotator_b", "n_shared", "kappa"])
    frame = frame[frame["annotator_a"].isin(busiest) & frame["annotator_b"].isin(busiest)]
    matrix = kappa_matrix(frame.astype({"kappa": float}))
    size = 2 + 0.2 * len(matrix)
    figure = _new_figure(size + 1, size)
    axes = figure.subplots()
    if matrix.empty:
        axes.text(0.5, 0.5, "no pair shares enough items", ha="center", va="center")
        axes.set_axis_off()
        return figure
    image = axes.imshow(matrix.to_numpy(), cmap="RdBu", vmin=-1, vmax=1)
    axes.set_facecolor("#ddd")  # NaN cells: too few shared items
    ticks = np.arange(len(matrix))
    axes.set_xticks(ticks, [str(a) for a in matrix.columns], rotation=90, fontsize=7, **PLAIN)
    axes.set_yticks(ticks, [str(a) for a in matrix.index], fontsize=7, **PLAIN)
    figure.colorbar(image, ax=axes, label="Cohen's kappa")
    return figure


def _confusion_plot(confusion: dict[str, Any]) -> Figure:
    labels, matrix = [str(label) for label in confusion["labels"]], np.array(confusion["matrix"])
    size = 2.5 + 0.6 * len(labels)
    figure = _new_figure(size + 1, size)
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour)
    ticks = np.arange(len(labels))
    axes.set_xticks(ticks, labels, rotation=45, ha="right", **PLAIN)
    axes.set_yticks(ticks, labels, **PLAIN)
    axes.set_xlabel("consensus")
    axes.set_ylabel("gold")
    figure.colorbar(image, ax=axes, label="items")
    return figure


def _history_plot(runs: list[dict[str, Any]]) -> Figure:
    figure = _new_figure(7, 3.5)
    axes = figure.subplots()
    position = np.arange(len(runs))
    for name, section, key in HISTORY_SERIES:
        values = [(run.get(section) or {}).get(key) for run in runs]
        if any(value is not None for value in values):
            axes.plot(position, [np.nan if v is None else v for v in values], "o-", label=name)
    names = [str(run.get("run_id") or f"run {i + 1}") for i, run in enumerate(runs)]
    axes.set_xticks(position, names, rotation=30, ha="right", fontsize=8, **PLAIN)
    axes.set_ylim(min(0, axes.get_ylim()[0]), 1)
    axes.legend(fontsize=8)
    return figure
