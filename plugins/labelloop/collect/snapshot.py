"""Collect: export the project (and its review project) from Label Studio into one table snapshot."""

from __future__ import annotations

import logging
from typing import Any

from labelloop.audit.routing import review_title
from labelloop.collect.export import annotation_rows, snapshot_counts, task_rows
from labelloop.collect.table import ANNOTATIONS_SCHEMA, TASKS_SCHEMA, point_latest, to_table, write_snapshot
from labelloop.hooks.labelstudio import LabelStudioHook
from labelloop.ingest.pipeline import storage_path
from labelloop.ingest.state import run_key
from labelloop.spec import ProjectSpec

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2  # 2: a row per annotation and control, with its results verbatim


def _export(hook: LabelStudioHook, title: str, run: str) -> tuple[int | None, list[dict[str, Any]]]:
    """(project id, exported tasks); a project that does not exist yet has no tasks."""
    project = hook.find_project(title)
    if project is None:
        log.info("no Label Studio project titled %r yet: nothing to export from it", title)
        return None, []
    return project.id, hook.export_snapshot(project.id, f"labelloop collect {run}")


def collect(spec: ProjectSpec, hook: LabelStudioHook, run_id: str, run_after: str) -> dict[str, Any]:
    """Write the snapshot of run ``run_id`` (rewriting it on a re-run) and move the latest pointer."""
    run = run_key(run_id)
    project_id, tasks = _export(hook, spec.title, run)
    review_id, review_tasks = _export(hook, review_title(spec), run)
    annotations = annotation_rows(tasks, spec.control_names)
    reviews = annotation_rows(review_tasks, spec.control_names)
    items = task_rows(tasks)
    counts = snapshot_counts(annotations, items, reviews)
    manifest = {
        "schema_version": SCHEMA_VERSION, "run": run, "run_id": run_id, "run_after": run_after,
        "project_id": project_id, "review_project_id": review_id, "counts": counts,
    }  # fmt: skip
    root = storage_path(spec.storage_uri, spec.source.conn_id)
    tables = {"annotations": to_table(annotations, ANNOTATIONS_SCHEMA), "tasks": to_table(items, TASKS_SCHEMA),
              "review_annotations": to_table(reviews, ANNOTATIONS_SCHEMA)}
    folder = write_snapshot(root, run, tables, manifest)
    latest = point_latest(root, run, run_after, counts)
    return {**manifest, "snapshot": f"snapshots/{run}", "uri": str(folder), "latest": latest}
