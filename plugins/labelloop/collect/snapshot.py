"""Collect: bring the project (and its review project) from Label Studio into one table snapshot.

Three modes (the manifest records which):

- ``full``: export every task (the first collect, or after a change of schema or project);
- ``incremental``: export only the tasks Label Studio stamped as updated since the previous
  snapshot's watermark, and merge them into its tables; then compare Label Studio's counts with
  ours and re-fetch the id ranges that disagree (deleted tasks, predictions imported for old tasks);
- ``reconcile`` (every ``collect.full_every`` runs, or the DAG param ``full``): both, and the
  incremental table must equal the full export row for row, else the run fails naming the tasks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from labelloop.audit.routing import review_title
from labelloop.collect import merge
from labelloop.collect.export import annotation_rows, snapshot_counts, task_rows
from labelloop.collect.table import (
    ANNOTATIONS_SCHEMA, TASKS_SCHEMA, from_frame, point_latest, previous_snapshot, read_parquet, snapshot_folder,
    to_frame, to_table, write_snapshot,
)  # fmt: skip
from labelloop.hooks.labelstudio import LabelStudioHook, id_ranges_filter, updated_after_filter
from labelloop.layout import Layout
from labelloop.layout import run_key
from labelloop.spec import ProjectSpec
from labelloop.state import StateError

log = logging.getLogger(__name__)
SCHEMA_VERSION = 3  # 3: watermarks in the manifest and a review_tasks table (incremental collect)
#: More disagreeing id ranges than this and one full export is cheaper than re-fetching them.
MAX_STALE_RANGES = 64
#: Table names of each side of a snapshot: (annotations, tasks).
SIDES = {"main": ("annotations", "tasks"), "review": ("review_annotations", "review_tasks")}


class CollectMismatch(StateError):
    """The incremental table differs from a full export: a defect to look into, not to retry."""


@dataclass
class Side:
    """One Label Studio project's part of a snapshot."""

    project_id: int | None
    annotations: pd.DataFrame
    tasks: pd.DataFrame
    watermark: str | None
    fetched: int  # tasks exported in this run
    rechecked: list[tuple[int, int]] = field(default_factory=list)
    differing: list[int] = field(default_factory=list)
    updated: dict[int, str | None] = field(default_factory=dict)  # task id -> updated_at (full exports)


def _frames(tasks: list[dict[str, Any]], controls: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    annotations = to_frame(to_table(annotation_rows(tasks, controls), ANNOTATIONS_SCHEMA))
    return merge.ordered(annotations), merge.ordered(to_frame(to_table(task_rows(tasks), TASKS_SCHEMA)))


def _full(hook: LabelStudioHook, project_id: int, title: str, controls: list[str]) -> Side:
    started, tasks = hook.export_selected(project_id, title)
    annotations, items = _frames(tasks, controls)
    return Side(project_id, annotations, items, started, len(tasks),
                updated={int(task["id"]): task.get("updated_at") for task in tasks})


def _incremental(hook: LabelStudioHook, project_id: int, title: str, controls: list[str],
                 annotations: pd.DataFrame, items: pd.DataFrame, watermark: str) -> Side:
    """The previous tables with the changed tasks replaced, then checked against Label Studio's counts."""
    started, changed = hook.export_selected(project_id, title,
                                            updated_after_filter(merge.changed_since(watermark)))
    fresh_annotations, fresh_items = _frames(changed, controls)
    replaced = {task["id"] for task in changed}
    annotations = merge.merge(annotations, fresh_annotations, replaced)
    items = merge.merge(items, fresh_items, replaced)
    side = Side(project_id, annotations, items, started, len(changed))

    def theirs(low: int, high: int) -> merge.Totals:
        return merge.Totals(*hook.task_totals(project_id, id_ranges_filter([(low, high)])))

    stale = merge.stale_ranges(items["task_id"].tolist(), lambda low, high: merge.local_totals(side.tasks, low, high),
                               theirs)
    if not stale:
        return side
    if len(stale) > MAX_STALE_RANGES:
        log.warning("project %s: counts differ in %d id ranges; exporting it whole", project_id, len(stale))
        return _full(hook, project_id, title, controls)
    _, again = hook.export_selected(project_id, title, id_ranges_filter(stale))
    fresh_annotations, fresh_items = _frames(again, controls)
    replaced = {task["id"] for task in again} | merge.in_ranges(items["task_id"].tolist(), stale)
    log.info("project %s: counts differed in id ranges %s; re-fetched %d tasks there", project_id, stale, len(again))
    return Side(project_id, merge.merge(annotations, fresh_annotations, replaced),
                merge.merge(items, fresh_items, replaced), started, side.fetched + len(again), stale)


def _empty() -> Side:
    annotations, items = _frames([], [])
    return Side(None, annotations, items, None, 0)


def _collect_side(hook: LabelStudioHook, spec: ProjectSpec, key: str, title: str, run: str, mode: str,
                  base: tuple[str, dict[str, Any]] | None, root: Any) -> Side:
    project = hook.find_project(title)
    if project is None:
        log.info("no Label Studio project titled %r yet: nothing to collect from it", title)
        return _empty()
    controls, name = spec.control_names, f"labelloop collect {run}"
    previous = base[1] if base else {}
    watermark = (previous.get("watermarks") or {}).get(key)
    same_project = previous.get("project_ids", {}).get(key) == project.id
    if mode == "full" or not same_project or watermark is None:
        return _full(hook, project.id, name, controls)
    folder = snapshot_folder(root, base[0])  # type: ignore[index]
    annotations_file, tasks_file = SIDES[key]
    side = _incremental(hook, project.id, name, controls, read_parquet(folder / f"{annotations_file}.parquet"),
                        read_parquet(folder / f"{tasks_file}.parquet"), watermark)
    if mode == "reconcile":
        full = _full(hook, project.id, name, controls)
        differing = (set(merge.differing_tasks(full.annotations, side.annotations))
                     | set(merge.differing_tasks(full.tasks, side.tasks)))
        # Annotators keep working while the two exports run: only what did not change since the
        # incremental export started must be equal (the snapshot holds the later, full export).
        full.differing = merge.unchanged_since(differing, full.updated, side.watermark)  # type: ignore[arg-type]
        if len(full.differing) < len(differing):
            log.info("project %s: %d tasks changed while the two exports ran; not counted as differences",
                     project.id, len(differing) - len(full.differing))
        full.fetched += side.fetched
        return full
    return side


def _mode(spec: ProjectSpec, base: tuple[str, dict[str, Any]] | None, full: bool) -> str:
    if base is None or base[1].get("schema_version") != SCHEMA_VERSION:
        return "full"
    if full or int(base[1].get("since_full", 0)) + 1 >= spec.collect.full_every:
        return "reconcile"
    return "incremental"


def collect(spec: ProjectSpec, hook: LabelStudioHook, run_id: str, run_after: str,
            full: bool = False) -> dict[str, Any]:
    """Write the snapshot of run ``run_id`` (rewriting it on a re-run) and move the latest pointer.
    ``full`` asks for a reconciliation now, whatever ``collect.full_every`` says."""
    run = run_key(run_id)
    root = Layout.of(spec).root
    base = previous_snapshot(root, run, run_after)
    mode = _mode(spec, base, full)
    sides = {key: _collect_side(hook, spec, key, title, run, mode, base, root)
             for key, title in (("main", spec.title), ("review", review_title(spec)))}
    main, review = sides["main"], sides["review"]
    counts = snapshot_counts(main.annotations.to_dict("records"), main.tasks.to_dict("records"),
                             review.annotations.to_dict("records"))
    since_full = 0 if mode != "incremental" else int(base[1].get("since_full", 0)) + 1  # type: ignore[index]
    differing = {key: side.differing for key, side in sides.items() if side.differing}
    manifest = {
        "schema_version": SCHEMA_VERSION, "run": run, "run_id": run_id, "run_after": run_after,
        "project_id": main.project_id, "review_project_id": review.project_id, "counts": counts,
        "mode": mode, "base": base[0] if base else None, "since_full": since_full,
        "project_ids": {key: side.project_id for key, side in sides.items()},
        "watermarks": {key: side.watermark for key, side in sides.items()},
        "fetched_tasks": {key: side.fetched for key, side in sides.items()},
        "rechecked_ranges": {key: side.rechecked for key, side in sides.items() if side.rechecked},
        "differing_tasks": differing,
    }  # fmt: skip
    tables = {}
    for key, side in sides.items():
        annotations_file, tasks_file = SIDES[key]
        tables[annotations_file] = from_frame(side.annotations, ANNOTATIONS_SCHEMA)
        tables[tasks_file] = from_frame(side.tasks, TASKS_SCHEMA)
    folder = write_snapshot(root, run, tables, manifest)
    latest = point_latest(root, run, run_after, counts)
    if differing:  # the snapshot holds the full export, so readers get the truth; the run still fails
        raise CollectMismatch(folder / "manifest.json", f"records an incremental table that differs from the "
                              f"full export in tasks {differing}", "the snapshot now holds the full export; "
                              "report the task ids (a change Label Studio did not stamp on the task)")
    return {**manifest, "snapshot": f"snapshots/{run}", "uri": str(folder), "latest": latest}
