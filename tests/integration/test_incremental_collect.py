"""Incremental collect against a real Label Studio: after annotations are added, changed and deleted,
a cancelled one skipped, a task deleted and predictions imported for an old task, the merged table
must equal a full export row for row, having fetched only the changed tasks.

The old collect exported everything every run and recorded no mode, fetched count or watermark.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from labelloop.collect import merge, snapshot
from labelloop.collect.snapshot import CollectMismatch, collect
from labelloop.collect.table import ANNOTATIONS_SCHEMA, latest_snapshot, read_parquet, read_snapshot, write_parquet
from labelloop.collect.table import from_frame
from labelloop.ingest.pipeline import Ingest
from labelloop.layout import storage_path
from labelloop.ingest.state import read_json
from labelloop.project import ensure_project
from labelloop.spec import load_spec

pytestmark = pytest.mark.integration
SMS = Path(__file__).resolve().parents[2] / "include" / "demo" / "sms-spam" / "messages.jsonl"


def choice(spec, label: str) -> list[dict]:
    return [{"from_name": spec.control_name, "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def run(spec, hook, n: int, **kwargs) -> dict:
    return collect(spec, hook, f"manual__2026-02-0{n}T00:00:00+00:00", f"2026-02-0{n}T00:00:00+00:00", **kwargs)


def full_export(spec, hook, project_id: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    side = snapshot._full(hook, project_id, "test full export", spec.control_names)
    return side.annotations, side.tasks


def test_incremental_collect_equals_a_full_export(labelstudio_hook, make_spec, tmp_path, monkeypatch) -> None:
    hook = labelstudio_hook
    # At 20 tasks the defaults (a 5-minute overlap, whole ranges of 256 tasks) would re-fetch them all.
    monkeypatch.setattr(merge, "SAFETY_OVERLAP", timedelta(0))
    monkeypatch.setattr(merge, "LEAF_TASKS", 2)
    rows = [json.loads(line) for line in SMS.open()][:20]
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "sms.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = load_spec(make_spec(collect={"full_every": 3}))
    project_id, _ = ensure_project(hook, spec)
    assert Ingest(spec, hook, "manual__seed").run(project_id)["imported"] == 20
    ids = sorted(task.id for task in hook.iter_tasks(project_id))
    made = {task: hook.create_annotation(task, choice(spec, "spam"), lead_time=1.0) for task in ids[:6]}

    first = run(spec, hook, 1)
    assert first["mode"] == "full" and first["fetched_tasks"]["main"] == 20 and first["watermarks"]["main"]

    hook.create_annotation(ids[6], choice(spec, "ham"), lead_time=2.0)               # added
    hook.client.annotations.update(made[ids[0]].id, result=choice(spec, "ham"))       # changed
    hook.client.annotations.delete(made[ids[1]].id)                                   # deleted
    hook.create_annotation(ids[7], [], was_cancelled=True)                            # skipped
    hook.client.tasks.delete(ids[2])                                                  # task deleted
    hook.client.projects.import_predictions(project_id, request=[                     # not stamped on the task
        {"task": ids[9], "model_version": "m1", "score": 0.5, "result": choice(spec, "spam")}])

    second = run(spec, hook, 2)
    assert second["mode"] == "incremental" and second["base"] == first["run"]
    assert second["fetched_tasks"]["main"] <= 8, "only changed tasks (and re-checked id ranges) are fetched"
    assert second["rechecked_ranges"]["main"], "the deleted task and the new prediction were found by counts"
    root = storage_path(spec.storage_uri, None)
    merged = read_snapshot(latest_snapshot(root))
    annotations, tasks = full_export(spec, hook, project_id)
    pd.testing.assert_frame_equal(merged["annotations"], annotations)
    pd.testing.assert_frame_equal(merged["tasks"], tasks)
    assert ids[2] not in set(merged["tasks"]["task_id"]) and made[ids[1]].id not in set(annotations["annotation_id"])
    assert merged["annotations"].set_index("task_id").loc[ids[0], "label"] == "ham"

    # A quiet run fetches nothing (the overlap is 0 here) and changes nothing.
    third = run(spec, hook, 3)
    assert third["mode"] == "incremental" and third["fetched_tasks"]["main"] == 0 and not third["rechecked_ranges"]
    pd.testing.assert_frame_equal(read_snapshot(latest_snapshot(root))["annotations"], annotations)

    # Every full_every-th run reconciles; so does full=True. A table that drifted fails loudly, by task.
    folder = latest_snapshot(root)
    drifted = read_parquet(folder / "annotations.parquet")
    drifted.loc[drifted["task_id"] == ids[4], "label"] = "ham"
    write_parquet(folder / "annotations.parquet", from_frame(drifted, ANNOTATIONS_SCHEMA))
    with pytest.raises(CollectMismatch, match=rf"tasks {{'main': \[{ids[4]}\]}}"):
        run(spec, hook, 4)
    fourth = read_json(latest_snapshot(root) / "manifest.json", {})
    assert fourth["mode"] == "reconcile" and fourth["differing_tasks"] == {"main": [ids[4]]}
    pd.testing.assert_frame_equal(read_snapshot(latest_snapshot(root))["annotations"], annotations)
    fifth = run(spec, hook, 5, full=True)
    assert fifth["mode"] == "reconcile" and fifth["differing_tasks"] == {}

    # Annotators keep working during a reconciliation: an answer submitted after the incremental
    # export and before the full one is a change, not a difference (the soak on Airflow failed
    # here), and the snapshot holds it. The real _full runs; only the answer is slipped in first.
    full_export_of = snapshot._full

    def answer_then_export(*args, **kwargs):
        if not answered:
            answered.append(hook.create_annotation(ids[10], choice(spec, "spam"), lead_time=1.0))
        return full_export_of(*args, **kwargs)

    answered: list = []
    monkeypatch.setattr(snapshot, "_full", answer_then_export)
    sixth = run(spec, hook, 6, full=True)
    assert answered and sixth["mode"] == "reconcile" and sixth["differing_tasks"] == {}
    table = read_snapshot(latest_snapshot(root))["annotations"]
    assert answered[0].id in set(table["annotation_id"])
