"""The audit's files: what a reader of metrics.json, consensus.csv and report.html gets."""

from __future__ import annotations

import base64
import json
import re

import pandas as pd
import pytest

from labelloop.quality.audit import run_audit
from labelloop.quality.report import render_html, write_audit

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
