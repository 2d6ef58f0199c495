"""What the browser tests put in place before a person acts: the SMS records, a collect
snapshot as the collect DAG writes it, and the run a click in the UI started."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from labelloop.spec import ProjectSpec

from tests.conftest import SMS


def sms_records() -> list[dict[str, Any]]:
    """The SMS collection, one record per text (as ingest de-duplicates them)."""
    records = [json.loads(line) for line in SMS.read_text().splitlines()]
    return list({record["text"]: record for record in records}.values())


def seed_collect_snapshot(spec: ProjectSpec, run: str, records: list[dict[str, Any]], n_gold: int,
                          accuracies: dict[str, float]) -> None:
    """A collect snapshot as the collect DAG writes it from a Label Studio export: every record
    answered by every annotator, right with its accuracy (seeded), the first ``n_gold`` gold."""
    from labelloop.collect.export import annotation_rows, snapshot_counts, task_rows
    from labelloop.collect.table import ANNOTATIONS_SCHEMA, TASKS_SCHEMA, point_latest, to_table, write_snapshot
    from labelloop.layout import storage_path
    from labelloop.ingest.validate import content_hash
    from labelloop.taskdata import HASH_FIELD, ID_FIELD

    rng = random.Random(7)
    labels = spec.labels
    tasks = []
    for task_id, record in enumerate(records, start=1):
        annotations = []
        for n, (email, accuracy) in enumerate(accuracies.items()):
            right = rng.random() < accuracy
            answer = record["label"] if right else next(label for label in labels if label != record["label"])
            annotations.append({
                "id": task_id * 10 + n, "completed_by": {"id": n + 2, "email": email}, "was_cancelled": False,
                "ground_truth": False, "created_at": "2026-12-01T12:00:00Z", "updated_at": "2026-12-01T12:00:00Z",
                "lead_time": 2.0, "result": [{"from_name": spec.control_names[0], "to_name": "text",
                                              "type": "choices", "value": {"choices": [answer]}}]})
        tasks.append({"id": task_id, "annotations": annotations, "predictions": [],
                      "meta": {"label": record["label"], "gold": task_id <= n_gold},
                      "data": {"text": record["text"], ID_FIELD: record["id"],
                               HASH_FIELD: content_hash({"text": record["text"]})}})
    annotations, items = annotation_rows(tasks, spec.control_names), task_rows(tasks)
    counts = snapshot_counts(annotations, items, [])
    tables = {"annotations": to_table(annotations, ANNOTATIONS_SCHEMA), "tasks": to_table(items, TASKS_SCHEMA),
              "review_annotations": to_table([], ANNOTATIONS_SCHEMA)}
    root = storage_path(spec.storage_uri, None)
    write_snapshot(root, run, tables, {"schema_version": 1, "run": run, "run_after": "2026-12-01T12:00:00+00:00",
                                       "counts": counts})
    point_latest(root, run, "2026-12-01T12:00:00+00:00", counts)


def new_run(airflow: Any, dag_id: str, known: set[str], timeout: float = 120) -> dict[str, Any]:
    """The first run of ``dag_id`` not in ``known`` (one a person just triggered in the UI)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = airflow.call("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"]
        fresh = [run for run in runs if run["dag_run_id"] not in known]
        if fresh:
            return fresh[0]
        time.sleep(1)
    raise AssertionError(f"no new run of {dag_id} within {timeout:.0f} s of triggering it in the UI")
