"""A run that finds many new objects fans out: one group of objects per parallel task, then one
reduce that merges the groups' receipts into the run's manifest, index and summary.

Exact de-duplication across groups, without locks: each group imports what is new to the hash
index and to itself, so the same content in two groups may land twice. Every imported task is
journaled (content hash -> task id) before its group finishes, so the reduce, which runs once
after every group, sees each hash's copies; it keeps the lowest task id, deletes the others and
counts their records as duplicates. The decision is a function of the journals alone: a reduce
that is retried, or groups that finished in any order, reach the same tasks and counts.
Parallel imports touch no shared row (each POST inserts its own tasks; a Postgres deadlock or
other 5xx is retried by ``LabelStudioHook.import_batch`` after it looked which tasks landed).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from labelloop.hooks.labelstudio import LabelStudioHook
from labelloop.ingest.pipeline import Ingest
from labelloop.layout import storage_path
from labelloop.ingest.state import SourceObject
from labelloop.state import StateError, read_json, write_json
from labelloop.spec import ProjectSpec

log = logging.getLogger(__name__)


def split_into_groups(objects: list[SourceObject], group_bytes: int, max_groups: int) -> list[list[SourceObject]]:
    """Consecutive objects of about ``group_bytes`` per group, at most ``max_groups`` groups (the
    last takes the rest), and always one group: a run with nothing new still has a receipt."""
    groups: list[list[SourceObject]] = [[]]
    filled = 0
    for obj in objects:
        if groups[-1] and filled + obj.size > group_bytes and len(groups) < max_groups:
            groups.append([])
            filled = 0
        groups[-1].append(obj)
        filled += obj.size
    return groups


def losing_copies(batches: list[dict[str, Any]]) -> dict[int, str]:
    """Tasks of the same content imported more than once: task id -> source (``object#line``)
    of every copy but the one with the lowest task id."""
    copies: dict[str, set[tuple[int, str]]] = {}
    for batch in batches:
        for key, task in batch["tasks"].items():
            copies.setdefault(key, set()).add((int(task["id"]), task["source"]))
    return {task_id: source for same in copies.values() for task_id, source in sorted(same)[1:]}


def object_of(source: str) -> str:
    return source.rsplit("#", 1)[0]


# Between tasks (XCom holds plain JSON) ---------------------------------------------------------

def group_payload(objects: list[SourceObject]) -> list[dict[str, Any]]:
    return [{"name": obj.name, "fingerprint": obj.fingerprint, "modified": obj.modified.isoformat(),
             "size": obj.size} for obj in objects]


def objects_of(spec: ProjectSpec, payload: list[dict[str, Any]]) -> list[SourceObject]:
    return [SourceObject(storage_path(item["name"], spec.source.conn_id), item["fingerprint"],
                         datetime.fromisoformat(item["modified"]), int(item["size"])) for item in payload]


# The tasks' work -----------------------------------------------------------------------------

def plan_groups(spec: ProjectSpec, hook: LabelStudioHook, run_id: str, project_id: int,
                cutoff: datetime | None) -> list[dict[str, Any]]:
    """List the run's new objects and split them; the plan is kept for the reduce."""
    ingest = Ingest(spec, hook, run_id)
    ingest.project_id = project_id
    ingest.reconcile_index()  # once, here: groups import in parallel and only read the index
    ingest.state.save_index()
    objects, skipped = ingest.new_objects(cutoff)
    groups = split_into_groups(objects, spec.ingest.group_bytes, spec.ingest.max_groups)
    write_json(ingest.state.run_dir / "plan.json", {"project_id": project_id, "groups": len(groups),
                                                    "skipped_objects": skipped})
    return [{"group": number, "project_id": project_id, "objects": group_payload(group)}
            for number, group in enumerate(groups)]


def reduce_groups(spec: ProjectSpec, hook: LabelStudioHook, run_id: str) -> dict[str, Any]:
    """Merge the planned groups' receipts: cross-group copies deleted and counted as duplicates,
    then index, manifest and summary written, as a one-task run writes them."""
    ingest = Ingest(spec, hook, run_id)
    state = ingest.state
    plan = read_json(state.run_dir / "plan.json", None, expect=dict)
    if plan is None:
        raise StateError(state.run_dir / "plan.json", "does not exist", "clear the run's list_groups task")
    finished: dict[str, dict[str, Any]] = {}
    for group in range(plan["groups"]):
        entries = state.group_entries(group)
        if entries is None:
            raise RuntimeError(f"ingest {state.run}: group {group} has no receipt at "
                               f"{state.group_dir(group)}/summary.json; clear its ingest_group task")
        finished.update((entry["object"], dict(entry)) for entry in entries)
    batches = state.run_batches()
    losers = losing_copies(batches)
    hook.delete_tasks(sorted(losers))
    for source in losers.values():
        entry = finished.get(object_of(source))
        if entry is not None:  # its object is in this plan (a re-planned run may have moved it)
            entry["imported"] -= 1
            entry["duplicate"] += 1
    for batch in batches:
        state.index.update(dict.fromkeys(batch["tasks"], state.run))
    ingest.project_id = plan["project_id"]
    summary = ingest.summarize(finished, plan["skipped_objects"])
    summary["groups"] = plan["groups"]
    summary["cross_group_duplicates"] = len(losers)
    state.save(finished, summary)
    if losers:
        log.info("ingest %s: %d tasks imported by two groups; kept the lowest id of each, deleted %s",
                 state.run, len(losers), sorted(losers))
    return summary

