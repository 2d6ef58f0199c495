"""The audit's files: what a reader of metrics.json, consensus.csv and report.html gets."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime

import pandas as pd
import pytest

from labelloop.audit.gate import evaluate_gate
from labelloop.audit.run import report_html
from labelloop.quality.audit import run_audit
from labelloop.quality.report import SORT_SCRIPT, RunHeading, render_html, write_audit
from labelloop.spec import Quality, load_spec

from tests.conftest import REPO

PNG = b"\x89PNG\r\n\x1a\n"


def images(page: str) -> list[bytes]:
    return [
        base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    ]


@pytest.fixture(scope="module")
def audited(rte_labels, rte_gold):
    return run_audit(rte_labels, rte_gold.iloc[:120].reset_index(), run_id="run-3")


def test_write_audit_files(audited, tmp_path) -> None:
    out = tmp_path / "nested" / "out"
    paths = write_audit(audited, out)
    assert [path.name for path in paths] == ["consensus.csv", "metrics.json", "report.html"]
    consensus = pd.read_csv(out / "consensus.csv", dtype={"item_id": str})
    assert list(consensus.columns) == ["item_id", "label", "confidence"]
    assert len(consensus) == 404 and consensus["confidence"].between(0.5, 1).all()
    assert json.loads((out / "metrics.json").read_text()) == audited.metrics
    page = (out / "report.html").read_text()
    # Self-contained: accuracy, confusion and kappa plots inline, nothing fetched.
    assert [image[:8] for image in images(page)] == [PNG] * 3
    assert "http" not in page.replace("http-equiv", "")
    assert "<h1>Label audit run-3</h1>" in page


def test_report_without_gold_and_with_history(audited) -> None:
    metrics = {**audited.metrics, "gold": None}
    assert len(images(render_html(metrics))) == 1  # the kappa heatmap only
    history = [{**audited.metrics, "run_id": f"run-{i}"} for i in (1, 2)]
    page = render_html(audited.metrics, history)
    assert len(images(page)) == 4 and "Agreement over time" in page


def test_report_escapes_ids() -> None:
    labels = pd.DataFrame({
        "item_id": ["1", "1", "2", "2"], "annotator_id": ["<b>x</b>", "y", "<b>x</b>", "y"],
        "label": ["a", "a", "b", "a"],
    })  # fmt: skip
    page = render_html(run_audit(labels, min_shared=1).metrics)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page


# --- what a lead reads first: the loop audit's heading (labelloop.audit.run builds it) -----------

RAN_AT = datetime(2026, 12, 1, 13, 40, 5, tzinfo=UTC)


def loop_page(metrics: dict, quality: Quality, title: str = "SMS spam", review_url: str | None = None) -> str:
    """The report as the audit DAG writes it: the gate evaluated from the same metrics."""
    task_type = load_spec(REPO / "include" / "projects" / "sms_spam.yaml").task_type
    gate = evaluate_gate(metrics, quality, task_type).to_dict("sms_spam")
    heading = RunHeading(title, RAN_AT, "scheduled__2026-12-01T13:40:00+00:00", gate, review_url)
    return report_html(task_type, {**metrics, "comments": []}, [], heading)


def banner(page: str) -> str:
    return re.search(r'<div id="gate".*?</div>', page, re.S).group(0)


def test_a_failed_gate_heads_the_report_with_each_failed_metric_and_its_shortfall(audited) -> None:
    alpha = audited.metrics["agreement"]["krippendorff_alpha_nominal"]
    page = loop_page(audited.metrics, Quality(min_alpha=0.99, min_kappa=0.0, min_gold_accuracy=0.0,
                                              min_consensus_confidence=0.0))
    # The heading is the project and when it ran, not a run id; the banner comes right after it.
    assert "<title>SMS spam: label audit of 2026-12-01 13:40 UTC</title>" in page
    assert page.index("<h1>SMS spam: label audit of 2026-12-01 13:40 UTC</h1>") < page.index('<div id="gate"')
    assert page.index('<div id="gate"') < page.index("<h2>")
    assert '<time datetime="2026-12-01T13:40:05+00:00">2026-12-01 13:40:05 UTC</time>' in page
    assert "<h1>Label audit" not in page
    gate = banner(page)
    assert 'class="gate-failed"' in gate and "Quality gate FAILED</strong>: 1 of 4 checks" in gate
    assert (f"<tr><th>Krippendorff&#x27;s alpha</th><td>{alpha:.3f}</td><td>min_alpha 0.990</td>"
            f"<td>{0.99 - alpha:.3f}</td></tr>") in gate
    assert "kappa" not in gate.replace("Krippendorff", "")  # only the failed metric is listed


def test_a_passed_gate_says_so_and_names_what_it_could_not_measure(rte_labels) -> None:
    metrics = run_audit(rte_labels).metrics  # no gold given
    page = loop_page(metrics, Quality(min_alpha=0.0, min_kappa=0.0, min_gold_accuracy=0.9,
                                      min_consensus_confidence=0.0))
    gate = banner(page)
    assert 'class="gate-passed"' in gate and "Quality gate passed</strong>: 3 of 4 checks met" in gate
    assert "Not measured: gold accuracy (no labelled gold items)" in gate and "short by" not in gate


def test_the_report_links_the_review_project_and_sorts_annotators_without_network(audited) -> None:
    url = "http://127.0.0.1:18081/projects/7/data"
    page = loop_page(audited.metrics, Quality(), review_url=url)
    assert f'<a id="review-project" href="{url}">review project in Label Studio</a>' in page
    table = re.search(r'<table class="sortable" data-rows="annotators"><thead><tr>(.*?)</tr></thead>'
                      r"<tbody>(.*?)</tbody></table>", page, re.S)
    assert '<th scope="col">accuracy</th>' in table.group(1)
    assert table.group(2).count("<tr>") == len(audited.metrics["annotators"])
    assert SORT_SCRIPT in page and "http" not in SORT_SCRIPT and "src=" not in SORT_SCRIPT
    assert "review-project" not in loop_page(audited.metrics, Quality())  # no URL, no link


def test_a_hostile_project_title_annotator_id_and_review_url_are_escaped() -> None:
    labels = pd.DataFrame({
        "item_id": ["1", "1", "2", "2"], "annotator_id": ['<img src=x onerror="alert(1)">', "y"] * 2,
        "label": ["a", "a", "b", "a"],
    })  # fmt: skip
    metrics = run_audit(labels, min_shared=1).metrics
    page = loop_page(metrics, Quality(), title="<script>alert('t')</script>",
                     review_url='http://ls/"><script>alert(2)</script>')
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;t&#x27;)&lt;/script&gt;: label audit" in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert 'href="http://ls/&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;"' in page
    assert page.count("<script>") == 1  # the sort script, nothing else
