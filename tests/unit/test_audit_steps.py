"""The audit's pure steps: snapshot tables to library inputs, the quality gate, review selection."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from labelloop.audit.gate import evaluate_gate
from labelloop.audit.prepare import (
    adjudicated_labels,
    answered_at,
    answered_since,
    audit_labels,
    gold_frame,
    record_seen,
)
from labelloop.audit.routing import review_tasks, select_for_review
from labelloop.collect.export import annotation_rows, task_rows
from labelloop.collect.table import ANNOTATIONS_SCHEMA, TASKS_SCHEMA, to_frame, to_table
from labelloop.quality import run_audit
from labelloop.spec import Quality, load_spec

DATA = Path(__file__).resolve().parents[1] / "data" / "labelstudio-export"
REPO = Path(__file__).resolve().parents[2]


def frame(rows: list[dict], schema: pa.Schema) -> pd.DataFrame:
    """As the audit reads them from a snapshot."""
    return to_frame(to_table(rows, schema))


@pytest.fixture
def tables() -> dict[str, pd.DataFrame]:
    project = json.loads((DATA / "project.json").read_text())
    review = json.loads((DATA / "review-project.json").read_text())
    return {"annotations": frame(annotation_rows(project, ["label"]), ANNOTATIONS_SCHEMA),
            "tasks": frame(task_rows(project), TASKS_SCHEMA),
            "review_annotations": frame(annotation_rows(review, ["label"]), ANNOTATIONS_SCHEMA)}


def test_labels_drop_skips_and_keep_the_latest_answer_per_annotator(tables) -> None:
    annotations = tables["annotations"]
    later = annotations.iloc[[0]].assign(annotation_id=99, label="ham",
                                         updated_at=annotations["updated_at"].max() + pd.Timedelta("1s"))
    labels = audit_labels(pd.concat([annotations, later], ignore_index=True), "label")
    assert sorted(map(tuple, labels.to_numpy().tolist())) == [
        (1, "admin@labelloop.local", "spam"), (1, "sim0@example.org", "ham"), (1, "sim1@example.org", "ham"),
        (2, "sim0@example.org", "ham"),
    ]


def test_gold_only_for_labelled_gold_tasks(tables) -> None:
    labels = audit_labels(tables["annotations"], "label")
    gold = gold_frame(tables["tasks"], labels)
    assert gold.to_dict("records") == [{"item_id": 1, "label": "spam"}]
    assert gold_frame(tables["tasks"], labels[labels["item_id"] == 2]) is None


def test_adjudications_by_main_task(tables) -> None:
    adjudicated = adjudicated_labels(tables["review_annotations"], "label")
    assert adjudicated.to_dict() == {20: "spam"}
    assert adjudicated_labels(tables["review_annotations"].iloc[:0], "label") is None


def metrics_for(alpha: float | None, kappa: float | None, confidence: float, accuracy: float | None) -> dict:
    n_gold = 0 if accuracy is None else 10
    return {
        "agreement": {"krippendorff_alpha_nominal": alpha, "pairwise_kappa_mean": kappa, "fleiss_kappa": None},
        "consensus": {"mean_confidence": confidence},
        "gold": None if accuracy is None else {"consensus_accuracy": 1.0},
        "parameters": {"min_shared": 10},
        "annotators": [{"annotator_id": "a@x", "n_gold": n_gold, "n_correct": round((accuracy or 0) * n_gold),
                        "accuracy": accuracy}],
    }


def test_gate_names_the_failed_metric_and_the_shortfall() -> None:
    quality = Quality(min_gold_accuracy=0.8, min_kappa=0.6, min_alpha=0.6, min_consensus_confidence=0.7)
    choices = load_spec(REPO / "include" / "projects" / "sms_spam.yaml").task_type
    gate = evaluate_gate(metrics_for(alpha=0.45, kappa=0.7, confidence=0.9, accuracy=0.7), quality, choices)
    assert not gate.passed
    assert [check.threshold_name for check in gate.failed] == ["min_gold_accuracy", "min_alpha"]
    summary = gate.summary("sms")
    assert summary.startswith("quality gate FAILED for sms: <Choices name='label'>: ")
    assert "Krippendorff's alpha 0.450 < min_alpha 0.600 (short by 0.150)" in summary
    assert "gold accuracy 0.700 < min_gold_accuracy 0.800 (short by 0.100); annotators below it: a@x 0.70" in summary
    assert "kappa" not in summary  # only failures are listed

    passed = evaluate_gate(metrics_for(alpha=0.9, kappa=None, confidence=0.9, accuracy=None), quality, choices)
    assert passed.passed
    statuses = {c.threshold_name: c.status for c in passed.checks}
    assert statuses == {"min_gold_accuracy": "not measured", "min_kappa": "not measured",
                        "min_alpha": "passed", "min_consensus_confidence": "passed"}
    assert "not measured (no labelled gold items)" in passed.summary("sms")
    assert passed.to_dict("sms")["checks"][2]["status"] == "passed"


def test_review_selection_and_tasks() -> None:
    labels = pd.DataFrame({"item_id": [1, 1, 2, 2, 3, 3, 4, 4],
                           "annotator_id": ["a", "b"] * 4,
                           "label": ["ham", "spam", "ham", "ham", "spam", "spam", "ham", "spam"]})
    consensus = run_audit(labels, pd.DataFrame({"item_id": [4], "label": ["spam"]}), "majority").consensus
    selected = select_for_review(labels, consensus, spot_check=[3], low_confidence=[1])
    # Item 4 disagrees but is gold: settled, not routed.
    assert selected == {1: ["low_confidence", "disagreement"], 3: ["spot_check"]}

    spec = load_spec(REPO / "include" / "projects" / "sms_spam.yaml")
    tasks = pd.DataFrame({"task_id": [1, 2, 3, 4], "item_id": ["x1", "x2", "x3", "x4"],
                          "item_hash": ["h1", "h2", None, "h4"],
                          "data": [json.dumps({"text": f"t{i}", "labelloop_batch": "b"}) for i in range(4)]})
    made = review_tasks(spec, selected, labels, consensus, tasks, "manual__r")
    assert [t["data"]["labelloop_hash"] for t in made] == ["h1", "task-3"]
    assert made[0]["data"] == {"text": "t0", "labelloop_hash": "h1", "labelloop_task_id": 1}
    assert made[0]["meta"]["reasons"] == ["low_confidence", "disagreement"]
    assert [(p["model_version"], p["result"][0]["value"]["choices"]) for p in made[0]["predictions"]] == [
        ("a", ["ham"]), ("b", ["spam"])]
    assert made[0]["predictions"][0]["result"][0]["to_name"] == "text"


def test_only_items_answered_since_the_last_audit_are_new(tables) -> None:
    annotations = tables["annotations"]
    answered = answered_at(annotations)
    assert list(answered_since(answered, {}, "r1")) == [1, 2]  # the first audit: every item
    seen = record_seen(answered, {}, "r1")
    assert seen == {"1": {"answered_at": answered[1], "run": "r1"}, "2": {"answered_at": answered[2], "run": "r1"}}
    assert answered_since(answered, seen, "r2").empty  # nothing answered since: no spot check
    assert list(answered_since(answered, seen, "r1")) == [1, 2]  # a re-run of r1 draws as r1 did

    # A later skip of task 1 is no answer; a later answer on task 2 makes task 2 new, and only it.
    last = annotations["updated_at"].max()
    skip = annotations.iloc[[0]].assign(annotation_id=6, annotator_id=7, annotator_email="sim2@example.org",
                                        label=None, was_cancelled=True, updated_at=last + pd.Timedelta("1s"))
    answer = annotations.iloc[[3]].assign(annotation_id=7, annotator_id=7, annotator_email="sim2@example.org",
                                          updated_at=last + pd.Timedelta("2s"))
    answered = answered_at(pd.concat([annotations, skip, answer], ignore_index=True))
    assert list(answered_since(answered, seen, "r2")) == [2]
    after = record_seen(answered, seen, "r2")
    assert (after["1"]["run"], after["2"]["run"]) == ("r1", "r2")
    assert answered_since(answered, after, "r3").empty


def test_the_audit_spot_checks_only_the_items_given() -> None:
    labels = pd.DataFrame({"item_id": [1, 1, 2, 2, 3, 3, 4, 4], "annotator_id": ["a", "b"] * 4,
                           "label": ["ham", "spam", "ham", "ham", "spam", "spam", "ham", "ham"]})
    everything = run_audit(labels, method="majority", spot_check_fraction=1.0).metrics["review"]
    assert everything["spot_check"] == [1, 2, 3, 4]
    new_only = run_audit(labels, method="majority", spot_check_fraction=1.0, spot_check_among=[2, 3])
    assert new_only.metrics["review"]["spot_check"] == [2, 3]
    nothing_new = run_audit(labels, method="majority", spot_check_fraction=1.0, spot_check_among=[])
    assert nothing_new.metrics["review"]["spot_check"] == []
    assert nothing_new.metrics["review"]["n_disagreements"] == 1  # the rest of the audit is unchanged
