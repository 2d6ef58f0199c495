"""Flattening recorded Label Studio exports (tests/data/labelstudio-export) into the tidy table."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from labelloop.collect.export import annotation_rows, answer, choice_result, snapshot_counts, task_rows
from labelloop.collect.table import ANNOTATIONS_SCHEMA, TASKS_SCHEMA, to_table

DATA = Path(__file__).resolve().parents[1] / "data" / "labelstudio-export"


@pytest.fixture
def project() -> list[dict]:
    return json.loads((DATA / "project.json").read_text())


@pytest.fixture
def review() -> list[dict]:
    return json.loads((DATA / "review-project.json").read_text())


def by_annotation(rows: list[dict]) -> dict[int, dict]:
    return {row["annotation_id"]: row for row in rows}


def test_one_row_per_annotation_with_annotator_label_and_item(project) -> None:
    rows = annotation_rows(project, ["label"])
    assert set(rows[0]) == set(ANNOTATIONS_SCHEMA.names)
    assert [(r["task_id"], r["annotator_email"], r["label"]) for r in rows] == [
        (1, "sim0@example.org", "spam"), (1, "sim1@example.org", "ham"), (1, "admin@labelloop.local", "spam"),
        (2, "sim0@example.org", "ham"), (2, "sim1@example.org", None),
    ]
    first = by_annotation(rows)[1]
    assert (first["annotator_id"], first["item_id"], first["lead_time"]) == (2, "1", 3.5)
    assert first["item_hash"] == "h1" and first["source_task_id"] is None
    assert (first["gold_label"], first["known_label"]) == ("spam", "spam")
    assert (first["prediction_model_version"], first["prediction_score"]) == ("m1", 0.9)
    assert first["created_at"] == "2026-11-28T18:10:42.444959Z"


def test_skips_ground_truth_and_labels_that_are_not_gold(project) -> None:
    rows = by_annotation(annotation_rows(project, ["label"]))
    assert rows[4]["was_cancelled"] and rows[4]["label"] is None
    assert rows[5]["ground_truth"] and not rows[1]["ground_truth"]
    # Task 2 has no known label; task 3 (no annotations) has one but is not gold.
    assert rows[3]["gold_label"] is None and rows[3]["known_label"] is None
    tasks = {row["task_id"]: row for row in task_rows(project)}
    assert (tasks[3]["known_label"], tasks[3]["gold_label"], tasks[3]["item_id"]) == ("ham", None, None)
    assert (tasks[1]["n_annotations"], tasks[2]["n_annotations"], tasks[2]["n_cancelled"]) == (3, 1, 1)
    assert json.loads(tasks[1]["data"])["text"] == "win a prize now"


def test_every_control_gets_a_row_and_unknown_controls_are_kept(project) -> None:
    rows = annotation_rows(project, ["other_control"])
    other = [r for r in rows if r["control"] == "other_control"]
    assert len(other) == 5 and {r["label"] for r in other} == {None} and {r["result"] for r in other} == {"[]"}
    # A control the config does not name is not dropped: its results stay, verbatim.
    kept = [r for r in rows if r["control"] == "label"]
    assert {r["label"] for r in kept} == {"spam", "ham"}
    assert all(json.loads(r["result"])[0]["from_name"] == "label" for r in kept)


def test_spans_every_chosen_label_and_comments_are_kept_verbatim(project) -> None:
    """Nothing is flattened away: offsets, several labels and free text come back as given."""
    tasks = copy.deepcopy(project)
    spans = [{"from_name": "ner", "to_name": "text", "type": "labels", "id": "s1",
              "value": {"start": 0, "end": 3, "text": "win", "labels": ["MISC"]}},
             {"from_name": "ner", "to_name": "text", "type": "labels", "id": "s2",
              "value": {"start": 6, "end": 11, "text": "prize", "labels": ["PER"]}}]
    tags = [{"from_name": "tags", "to_name": "text", "type": "choices", "value": {"choices": ["b", "a"]}}]
    comment = [{"from_name": "note", "to_name": "text", "type": "textarea", "value": {"text": ["unclear <b>", "é"]}}]
    tasks[0]["annotations"][0]["result"] = spans + tags + comment
    rows = [r for r in annotation_rows(tasks, ["ner", "tags", "note", "label"]) if r["annotation_id"] == 1]
    by_control = {r["control"]: r for r in rows}
    assert sorted(by_control) == ["label", "ner", "note", "tags"]
    assert json.loads(by_control["ner"]["result"]) == spans and by_control["ner"]["label"] is None
    assert json.loads(by_control["tags"]["result"]) == tags and by_control["tags"]["label"] == "a|b"
    assert json.loads(by_control["note"]["result"]) == comment
    assert by_control["label"]["result"] == "[]"  # its answer was replaced above: no result, one row


def test_review_project_rows_point_at_the_main_task(review) -> None:
    rows = annotation_rows(review, ["label"])
    assert len(rows) == 1
    row = rows[0]
    assert (row["task_id"], row["source_task_id"], row["label"], row["lead_time"]) == (34, 20, "spam", 7.25)
    # Several predictions, none of the project's model version: nothing was shown as "the" prediction.
    assert row["prediction_model_version"] is None


def test_review_decisions_from_an_enterprise_export(project) -> None:
    """Community exports have no reviews; an Enterprise-shaped one gives the last decision."""
    tasks = copy.deepcopy(project)
    tasks[0]["annotations"][0]["reviews"] = [
        {"id": 1, "accepted": False, "created_at": "2026-01-02T00:00:00Z", "created_by": {"id": 9, "email": "rev@x"}},
        {"id": 2, "accepted": True, "created_at": "2026-01-03T00:00:00Z", "created_by": {"id": 9, "email": "rev@x"}},
    ]
    row = by_annotation(annotation_rows(tasks, ["label"]))[1]
    assert (row["review_status"], row["reviewed_by"], row["reviewed_at"]) == ("accepted", "rev@x", "2026-01-03T00:00:00Z")
    assert by_annotation(annotation_rows(project, ["label"]))[1]["review_status"] is None


def test_completed_by_as_a_bare_id_still_flattens(project) -> None:
    tasks = copy.deepcopy(project)
    for annotation in tasks[0]["annotations"]:
        annotation["completed_by"] = annotation["completed_by"]["id"]
    row = annotation_rows(tasks, ["label"])[0]
    assert (row["annotator_id"], row["annotator_email"]) == (2, None)


def test_answers_of_other_tag_kinds() -> None:
    assert answer({"choices": ["b", "a"]}) == "a|b"
    assert answer({"labels": ["PER"], "start": 0, "end": 3}) == "PER"
    assert answer({"taxonomy": [["animal", "cat"]]}) == "animal/cat"
    assert answer({"rating": 4}) == "4"
    assert answer({}) is None
    assert choice_result("label", "text", "a|b")[0]["value"] == {"choices": ["a", "b"]}


def test_tables_have_the_schema_even_when_empty(project) -> None:
    table = to_table(annotation_rows(project, ["label"]), ANNOTATIONS_SCHEMA)
    assert table.schema == ANNOTATIONS_SCHEMA and table.num_rows == 5
    assert table.column("created_at")[0].as_py() == datetime(2026, 11, 28, 18, 10, 42, 444959, tzinfo=timezone.utc)
    empty = to_table([], ANNOTATIONS_SCHEMA)
    assert empty.schema == ANNOTATIONS_SCHEMA and empty.num_rows == 0
    assert to_table(task_rows(project), TASKS_SCHEMA).num_rows == 3


def test_counts(project, review) -> None:
    counts = snapshot_counts(annotation_rows(project, ["label"]), task_rows(project), annotation_rows(review, ["label"]))
    assert counts == {"tasks": 3, "labelled_tasks": 2, "annotations": 4, "cancelled": 1, "rows": 5,
                      "annotators": 3, "review_annotations": 1}


def test_snapshot_is_rewritten_by_its_run_and_latest_only_moves_forward(project, tmp_path) -> None:
    from airflow.sdk import ObjectStoragePath

    from labelloop.collect.table import latest_snapshot, point_latest, read_snapshot, write_snapshot

    root = ObjectStoragePath(f"file://{tmp_path}")
    tables = {"annotations": to_table(annotation_rows(project, ["label"]), ANNOTATIONS_SCHEMA),
              "tasks": to_table(task_rows(project), TASKS_SCHEMA),
              "review_annotations": to_table([], ANNOTATIONS_SCHEMA)}
    assert latest_snapshot(root) is None
    for _ in range(2):  # a re-run writes the same folder
        write_snapshot(root, "run_b", tables, {"run": "run_b"})
        assert point_latest(root, "run_b", "2026-01-02T00:00:00+00:00", {})
    assert [p.name for p in (root / "collect" / "snapshots").iterdir()] == ["run_b"]
    write_snapshot(root, "run_a", tables, {"run": "run_a"})
    assert not point_latest(root, "run_a", "2026-01-01T00:00:00+00:00", {})  # an older run re-run
    folder = latest_snapshot(root)
    assert folder.name == "run_b"
    read = read_snapshot(folder)
    assert len(read["annotations"]) == 5 and len(read["review_annotations"]) == 0
    assert list(read["review_annotations"].columns) == ANNOTATIONS_SCHEMA.names
    assert str(read["annotations"]["task_id"].dtype) == "Int64"


def test_prediction_an_annotation_started_from(project) -> None:
    tasks = copy.deepcopy(project)
    annotation = tasks[0]["annotations"][1]
    annotation["prediction"] = {}
    assert annotation_rows(tasks, ["label"])[1]["prediction_model_version"] is None
    annotation["parent_prediction"] = 1
    assert annotation_rows(tasks, ["label"])[1]["prediction_model_version"] == "m1"


def test_merge_replaces_the_rows_of_changed_tasks_and_drops_deleted_annotations(project) -> None:
    from labelloop.collect.merge import differing_tasks, merge, ordered
    from labelloop.collect.table import to_frame

    def frame(tasks: list[dict]):
        return ordered(to_frame(to_table(annotation_rows(tasks, ["label"]), ANNOTATIONS_SCHEMA)))

    changed = copy.deepcopy(project)
    changed[0]["annotations"] = changed[0]["annotations"][:1]  # two annotations of task 1 deleted
    merged = merge(frame(project), frame([changed[0]]), {changed[0]["id"]})
    assert differing_tasks(frame(changed), merged) == []
    assert differing_tasks(frame(project), merged) == [1]


def test_stale_ranges_find_a_deleted_task_by_bisection_with_few_count_queries() -> None:
    from labelloop.collect.merge import Totals, stale_ranges

    ours, gone, asked = list(range(1, 10_001)), 4_321, []

    def count(ids):
        return lambda low, high: Totals(sum(low <= i <= high for i in ids), 0, 0)

    def theirs(low: int, high: int) -> Totals:
        asked.append((low, high))
        return count([i for i in ours if i != gone])(low, high)

    [(low, high)] = stale_ranges(ours, count(ours), theirs, leaf=16)
    assert low <= gone <= high and high - low < 32 and len(asked) < 2 * 14
