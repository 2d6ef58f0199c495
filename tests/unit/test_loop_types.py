"""Multi-label choices and named-entity spans through the loop's ingest check, audit, gate
and review routing, on tables made from hand-written Label Studio tasks (as collect makes them)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import yaml

from labelloop.audit.gate import evaluate_gate
from labelloop.audit.prepare import answered_at, control_answers, gold_answers, task_data
from labelloop.audit.routing import review_tasks, select_for_review
from labelloop.audit.run import CONSENSUS_SCHEMA, consensus_table, report_html
from labelloop.collect.export import annotation_rows, task_rows
from labelloop.collect.table import ANNOTATIONS_SCHEMA, TASKS_SCHEMA, to_frame, to_table
from labelloop.ingest.validate import InvalidRecord, RecordValidator
from labelloop.spec import Quality, SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]
PROJECTS = REPO / "include" / "projects"
TEXTS = {1: "Wayne Ferreira beat Thomas Enqvist in Toronto", 2: "Reuters reported from London", 3: "No names here ."}
WHO = ("a@x", "b@x", "c@x")


def frame(rows: list[dict], schema: pa.Schema) -> pd.DataFrame:
    return to_frame(to_table(rows, schema))


def span(start: int, end: int, label: str, text: str) -> dict:
    return {"from_name": "entities", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": end, "text": text[start:end], "labels": [label]}}


def ls_task(task_id: int, answers: dict[str, list[dict]], gold: str | None = None,
            source: int | None = None) -> dict:
    """A Label Studio export task; ``answers``: annotator e-mail -> results."""
    data = {"text": TEXTS[source or task_id], "labelloop_hash": f"h{task_id}"}
    if source is not None:
        data["labelloop_task_id"] = source
    return {"id": task_id, "data": data, "meta": {"label": gold, "gold": gold is not None},
            "annotations": [{"id": task_id * 10 + n, "completed_by": {"id": n, "email": who}, "result": result,
                             "was_cancelled": False, "created_at": "2026-11-28T18:10:42Z",
                             "updated_at": f"2026-11-28T18:10:4{n}Z"}
                            for n, (who, result) in enumerate(answers.items())]}


def spans_tasks() -> list[dict]:
    t1, t2 = TEXTS[1], TEXTS[2]
    per1, per2, loc = span(0, 14, "PER", t1), span(20, 34, "PER", t1), span(38, 45, "LOC", t1)
    return [
        # a and b agree; c misses a name and labels Toronto ORG
        ls_task(1, {"a@x": [per1, per2, loc], "b@x": [per1, per2, loc], "c@x": [per1, span(38, 45, "ORG", t1)]},
                gold=json.dumps([[0, 14, "PER"], [20, 34, "PER"], [38, 45, "LOC"]])),
        ls_task(2, {"a@x": [span(0, 7, "ORG", t2), span(22, 28, "LOC", t2)],
                    "b@x": [span(0, 7, "ORG", t2), span(22, 28, "LOC", t2)], "c@x": [span(0, 7, "ORG", t2)]}),
        ls_task(3, {who: [] for who in WHO}),  # all three: nothing to mark, a real answer
    ]


@pytest.fixture
def ner():
    return load_spec(PROJECTS / "conll_ner.yaml")


@pytest.fixture
def types():
    return load_spec(PROJECTS / "conll_entity_types.yaml")


def test_shipped_specs_carry_spans_and_multiple_choices(ner, types) -> None:
    assert (ner.task_type.kind, ner.control_name, ner.comment_controls) == ("spans", "entities", ["comment"])
    assert (types.task_type.kind, types.labels) == ("multichoice", ["PER", "ORG", "LOC", "MISC"])
    first = json.loads((REPO / "include" / "demo" / "conll-ner" / "sentences.jsonl").open().readline())
    assert RecordValidator(ner).validate(first).label == json.dumps(first["entities"])


def test_the_audited_control_cannot_be_a_comment(tmp_path) -> None:
    raw = yaml.safe_load((PROJECTS / "conll_ner.yaml").read_text())
    raw.update(control_name="comment", labeling_config=str(REPO / "include" / raw["labeling_config"]),
               guidelines=str(REPO / "include" / raw["guidelines"]))
    path = tmp_path / "ner.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match="control_name 'comment' is a comment <TextArea name='comment'>, which is "
                                        "listed, not audited"):
        load_spec(path)


@pytest.mark.parametrize(("known", "reason"), [
    ([[0, 99, "PER"]], "span 0-99 ends past the text, which has 14 characters"),
    ([[5, 5, "PER"]], "span start 5 is not before its end 5"),
    ([[0, 5, "DATE"]], "label 'DATE' is not offered by <Labels name='entities'>"),
    ([[0, 5]], "a known span is [start, end, label]"),
    ("[[0, 5, 'PER']]", "is not JSON"),
    ({"start": 0}, "known spans are a list of [start, end, label]"),
])
def test_known_spans_are_checked_against_the_text_and_the_config(ner, known, reason) -> None:
    validator = RecordValidator(ner)
    with pytest.raises(InvalidRecord) as error:
        validator.validate({"id": "s1", "text": "Wayne Ferreira", "entities": known})
    assert str(error.value).startswith("field 'entities': ") and reason in str(error.value)


def test_known_spans_and_label_sets_are_kept_as_json_text(ner, types) -> None:
    ls_result = [{"value": {"start": 0, "end": 5, "text": "Wayne", "labels": ["PER"]}}]
    assert RecordValidator(ner).validate({"text": "Wayne Ferreira", "entities": ls_result}).label == '[[0, 5, "PER"]]'
    assert RecordValidator(ner).validate({"text": "Wayne Ferreira", "entities": []}).label == "[]"
    assert RecordValidator(ner).validate({"text": "Wayne Ferreira"}).label is None
    validator = RecordValidator(types)
    assert validator.validate({"text": "t", "entity_types": ["PER", "LOC"]}).label == '["PER", "LOC"]'
    with pytest.raises(InvalidRecord, match="label 'DATE' is not offered by <Choices name='entity_types'>"):
        validator.validate({"text": "t", "entity_types": ["DATE"]})
    with pytest.raises(InvalidRecord, match="is a list of labels"):
        validator.validate({"text": "t", "entity_types": {"PER": True}})


def f1(said: set, truth: set) -> float:
    return 2 * len(said & truth) / (len(said) + len(truth))


def test_spans_audit_from_the_snapshot_tables(ner) -> None:
    tasks = spans_tasks()
    annotations = frame(annotation_rows(tasks, ner.control_names), ANNOTATIONS_SCHEMA)
    table = frame(task_rows(tasks), TASKS_SCHEMA)
    task_type, data = ner.task_type, task_data(table)
    answers = control_answers(annotations, task_type, data)
    assert len(answers) == (3 + 3 + 2) + (2 + 2 + 1) + 3  # spans, and one empty row per "nothing" answer
    gold = gold_answers(table, task_type, data, answers["item_id"])
    assert gold["item_id"].tolist() == [1, 1, 1]
    # A reviewer's spans for item 2 come back as the adjudicated answer.
    review = frame(annotation_rows([ls_task(20, {"r@x": [span(0, 7, "ORG", TEXTS[2])]}, source=2)],
                                   ner.control_names), ANNOTATIONS_SCHEMA)
    adjudicated = control_answers(review, task_type, data, key="source_task_id", one_per_item=True)
    result = task_type.loop_audit(answers, gold, adjudicated, seed=1, spot_check_fraction=1.0,
                                  spot_check_among=None, low_confidence_threshold=0.5, run_id="r1", data=data)
    metrics = result.metrics

    truth = {(0, 14, "PER"), (20, 34, "PER"), (38, 45, "LOC")}
    c_spans = {(0, 14, "PER"), (38, 45, "ORG")}
    scores = {row["annotator_id"]: row["f1"] for row in metrics["annotators"]}
    assert scores == pytest.approx({"a@x": 1.0, "b@x": 1.0, "c@x": f1(c_spans, truth)})
    assert metrics["review"]["n_disagreements"] == 2  # items 1 and 2; all agree on item 3
    assert sorted(metrics["review"]["spot_check"]) == [1, 2, 3]
    assert metrics["consensus"]["sources"] == {"gold": 1, "adjudicated": 1, "consensus": 1}
    assert metrics["counts"]["annotators"] == 3

    out = consensus_table(task_type, result, table)
    assert out.schema == CONSENSUS_SCHEMA
    rows = out.to_pandas().set_index("task_id")
    final = {task: {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in json.loads(result)}
             for task, result in rows["result"].items()}
    assert final == {1: truth, 2: {(0, 7, "ORG")}, 3: set()}
    assert rows["source"].to_dict() == {1: "gold", 2: "adjudicated", 3: "consensus"}
    assert rows["label"].isna().all() and rows.loc[1, "item_hash"] == "h1"

    gate = evaluate_gate({**metrics}, Quality(min_gold_f1=0.95, min_span_f1=0.5), task_type)
    pooled = 2 * (3 + 3 + 1) / ((3 + 3 + 2) + 3 * 3)
    assert [check.threshold_name for check in gate.failed] == ["min_gold_f1"]
    assert gate.summary("ner").startswith("quality gate FAILED for ner: <Labels name='entities'>: "
                                          f"annotators' exact-span F1 on gold {pooled:.3f} < min_gold_f1 0.950")
    assert "annotators below it: c@x 0.40 (n=1)" in gate.summary("ner")

    html = report_html(task_type, {**metrics, "comments": []}, [])
    assert "<h2>&lt;Labels name=&#x27;entities&#x27;&gt;</h2>" in html and "pairwise" in html


def test_spans_review_tasks_show_each_annotators_spans(ner) -> None:
    tasks = spans_tasks()
    annotations = frame(annotation_rows(tasks, ner.control_names), ANNOTATIONS_SCHEMA)
    table = frame(task_rows(tasks), TASKS_SCHEMA)
    answers = control_answers(annotations, ner.task_type, task_data(table))
    consensus = pd.DataFrame({"item_id": [1, 2, 3], "label": [None] * 3, "result": ["[]"] * 3,
                              "confidence": [1.0, 0.4, 0.9], "source": ["gold", "consensus", "consensus"]})
    selected = select_for_review(answers, consensus, [3], [2], ner.task_type.disagreements(answers))
    assert selected == {2: ["low_confidence", "disagreement"], 3: ["spot_check"]}  # item 1 is gold: settled
    made = review_tasks(ner, selected, answers, consensus, table, "r1")
    shown = {p["model_version"]: [(r["value"]["start"], r["value"]["end"], r["value"]["text"], r["value"]["labels"])
                                  for r in p["result"]] for p in made[0]["predictions"]}
    assert shown == {"a@x": [(0, 7, "Reuters", ["ORG"]), (22, 28, "London", ["LOC"])],
                     "b@x": [(0, 7, "Reuters", ["ORG"]), (22, 28, "London", ["LOC"])],
                     "c@x": [(0, 7, "Reuters", ["ORG"])]}
    assert {r["from_name"] for p in made[0]["predictions"] for r in p["result"]} == {"entities"}
    assert [p["result"] for p in made[1]["predictions"]] == [[], [], []]  # "nothing" shown as such
    assert made[0]["meta"]["consensus"] == []


def test_an_empty_span_answer_counts_as_answered(ner) -> None:
    annotations = frame(annotation_rows(spans_tasks(), ner.control_names), ANNOTATIONS_SCHEMA)
    assert sorted(answered_at(annotations, ner.task_type).index) == [1, 2, 3]
    assert sorted(answered_at(annotations).index) == []  # the single-choice rule sees no label


def choices(*labels: str) -> list[dict]:
    return [{"from_name": "entity_types", "to_name": "text", "type": "choices", "value": {"choices": list(labels)}}]


def test_multiple_choice_audit_gate_and_review(types) -> None:
    tasks = [ls_task(1, {"a@x": choices("PER", "LOC"), "b@x": choices("PER", "LOC"), "c@x": choices("PER")},
                     gold=json.dumps(["PER", "LOC"])),
             ls_task(2, {"a@x": choices("ORG"), "b@x": choices("ORG", "LOC"), "c@x": choices("ORG")}),
             ls_task(3, {"a@x": [], "b@x": [], "c@x": []})]
    annotations = frame(annotation_rows(tasks, types.control_names), ANNOTATIONS_SCHEMA)
    table = frame(task_rows(tasks), TASKS_SCHEMA)
    task_type, data = types.task_type, task_data(table)
    answers = control_answers(annotations, task_type, data)
    gold = gold_answers(table, task_type, data, answers["item_id"])
    result = task_type.loop_audit(answers, gold, None, seed=0, spot_check_fraction=0.0, spot_check_among=None,
                                  low_confidence_threshold=0.0, run_id="r1", data=data)
    metrics = result.metrics
    # Per-label (Hamming) accuracy on the gold item: a and b 4/4 cells, c 3/4.
    assert {r["annotator_id"]: r["accuracy"] for r in metrics["annotators"]} == {"a@x": 1.0, "b@x": 1.0, "c@x": 0.75}
    assert metrics["review"] == {"spot_check": [], "low_confidence": [], "n_disagreements": 2}
    rows = consensus_table(task_type, result, table).to_pandas().set_index("task_id")
    assert rows.loc[1, "label"] == "LOC|PER" and rows.loc[1, "source"] == "gold"
    assert json.loads(rows.loc[3, "result"]) == [] and pd.isna(rows.loc[3, "label"])

    gate = evaluate_gate(metrics, Quality(min_gold_hamming_accuracy=0.95, min_label_alpha=-1,
                                          min_consensus_confidence=0), task_type)
    assert [c.threshold_name for c in gate.failed] == ["min_gold_hamming_accuracy"]
    assert "gold Hamming accuracy 0.917 < min_gold_hamming_accuracy 0.950 (short by 0.033)" in gate.summary("t")

    made = review_tasks(types, {2: ["disagreement"]}, answers,
                        pd.DataFrame({"item_id": [2], "label": ["ORG"], "result": ["[]"], "confidence": [0.6],
                                      "source": ["consensus"]}), table, "r1")
    assert [(p["model_version"], p["result"][0]["value"]["choices"]) for p in made[0]["predictions"]] == [
        ("a@x", ["ORG"]), ("b@x", ["ORG", "LOC"]), ("c@x", ["ORG"])]
