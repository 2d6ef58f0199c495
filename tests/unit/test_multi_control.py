"""A project with two audited controls (entity spans and a document-level choice): the audit
scores each on its own, gates each with its kind's thresholds, writes one report section and
one consensus table per control, and keeps the model's control where retraining reads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.metrics import cohen_kappa_score

from labelloop.audit.run import audit_latest
from labelloop.collect.export import annotation_rows, task_rows
from labelloop.collect.table import (
    ANNOTATIONS_SCHEMA, TASKS_SCHEMA, point_latest, read_parquet, to_table, write_snapshot,
)
from labelloop.layout import Layout
from labelloop.spec import load_spec

from tests.unit.test_loop_types import PROJECTS, WHO, span

TEXT = "Wayne Ferreira beat Thomas Enqvist in Toronto"
#: 12 items x 3 annotators: c disagrees on a third of the topics, b on one.
TOPICS = {item: {"a@x": truth, "b@x": truth if item != 5 else "news", "c@x": truth if item % 3 else "news"}
          for item, truth in enumerate(["sport", "news"] * 6, start=1)}


def tasks_with_both_controls() -> list[dict]:
    """Label Studio export tasks whose annotations answer both controls."""
    per, loc = span(0, 14, "PER", TEXT), span(38, 45, "LOC", TEXT)
    spans = {"a@x": [per, loc], "b@x": [per, loc], "c@x": [per]}
    return [{"id": item, "data": {"text": TEXT, "labelloop_hash": f"h{item}"}, "meta": {},
             "annotations": [{"id": item * 10 + n, "completed_by": {"id": n, "email": who},
                              "result": [*spans[who], topic(TOPICS[item][who])], "was_cancelled": False,
                              "created_at": "2026-11-28T18:10:42Z", "updated_at": f"2026-11-28T18:10:4{n}Z"}
                             for n, who in enumerate(WHO)]}
            for item in TOPICS]


def topic(label: str) -> dict:
    return {"from_name": "topic", "to_name": "text", "type": "choices", "value": {"choices": [label]}}


@pytest.fixture
def two_controls(tmp_path: Path):
    """conll_ner with a <Choices name="topic"> beside its spans, on a local store."""
    include = tmp_path / "include"
    shutil.copytree(PROJECTS.parent / "labeling", include / "labeling")
    shutil.copytree(PROJECTS.parent / "guidelines", include / "guidelines")
    xml = (include / "labeling" / "conll_ner.xml").read_text()
    (include / "labeling" / "conll_ner.xml").write_text(xml.replace(
        "</Labels>", '</Labels><Choices name="topic" toName="text"><Choice value="sport"/><Choice value="news"/>'
                     "</Choices>", 1))
    raw = yaml.safe_load((PROJECTS / "conll_ner.yaml").read_text())
    raw.update(storage_uri=f"file://{tmp_path}/store", source={**raw["source"], "uri": f"file://{tmp_path}/raw/"})
    raw["quality"]["min_kappa"] = 0.8  # the topic's kappa (0.657) falls short: the gate must say so
    (include / "projects").mkdir()
    path = include / "projects" / "conll_ner.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_spec(path)


def test_each_control_is_audited_gated_and_reported_on_its_own(two_controls) -> None:
    spec = two_controls
    assert [t.control.name for t in spec.audited_types] == ["entities", "topic"]
    tasks = tasks_with_both_controls()
    root = Layout.of(spec).root
    tables = {"annotations": to_table(annotation_rows(tasks, spec.control_names), ANNOTATIONS_SCHEMA),
              "tasks": to_table(task_rows(tasks), TASKS_SCHEMA),
              "review_annotations": to_table([], ANNOTATIONS_SCHEMA)}
    write_snapshot(root, "c1", tables, {"run": "c1", "run_after": "2026-12-01T00:00:00+00:00"})
    point_latest(root, "c1", "2026-12-01T00:00:00+00:00", {})

    outcome = audit_latest(spec, "manual__a1")
    out = Layout.of(spec).audit_run(outcome["audit"])
    metrics = json.loads((out / "metrics.json").read_text())
    # The model's control stays at the top level, as in a one-control project.
    assert metrics["control"]["name"] == "entities" and metrics["agreement"]["exact_f1"] is not None
    # The choice: Cohen's kappa of each pair, as scikit-learn computes it.
    choice = metrics["controls"]["topic"]
    assert choice["kind"] == "choices"
    pairs = {(row["annotator_a"], row["annotator_b"]): row["kappa"] for row in choice["pairwise_kappa"]}
    for (a, b), kappa in pairs.items():
        expected = cohen_kappa_score([TOPICS[item][a] for item in TOPICS], [TOPICS[item][b] for item in TOPICS])
        assert kappa == pytest.approx(expected)
    assert set(pairs) == {(a, b) for i, a in enumerate(WHO) for b in WHO[i + 1:]}

    # Each control gated with its kind's thresholds; the choice's checks name it.
    checks = {check["threshold_name"]: check["metric"] for check in outcome["gate"]["checks"]}
    assert {"min_gold_f1", "min_span_f1", "min_kappa", "min_alpha"} <= set(checks)
    assert checks["min_kappa"].startswith("<Choices name='topic'>")
    kappa_check = next(check for check in outcome["gate"]["checks"] if check["threshold_name"] == "min_kappa")
    assert kappa_check["value"] == pytest.approx(sum(pairs.values()) / len(pairs)) and kappa_check["status"] == "failed"
    assert not outcome["gate"]["passed"] and "<Choices name='topic'> mean pairwise" in outcome["gate"]["summary"]

    # One report section per control; the consensus of each control in its own table.
    report = (out / "report.html").read_text()
    assert "&lt;Labels name=&#x27;entities&#x27;&gt;</h2>" in report and "&lt;Choices name=&#x27;topic&#x27;&gt;</h2>" in report
    spans = read_parquet(out / "consensus.parquet")
    topics = read_parquet(out / "consensus.topic.parquet").set_index("task_id")
    assert len(spans) == len(TOPICS) and spans["label"].isna().all()  # spans: the result column, no single label
    assert topics.loc[1, "label"] == "sport" and topics["label"].notna().all()
    assert pd.api.types.is_float_dtype(topics["confidence"])
