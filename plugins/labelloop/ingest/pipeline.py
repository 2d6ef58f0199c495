"""Ingest: new raw objects become Label Studio tasks, each record accounted for exactly once.

Every record read ends as imported, duplicate (its content is already a task) or
quarantined (with its reason); the counts add up per object and per run. The work is
journaled in object storage (see ``state``), so a re-run changes nothing and a run killed
half-way resumes without duplicates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from airflow.sdk import ObjectStoragePath

from labelloop.hooks.labelstudio import LabelStudioHook, data_filter
from labelloop.ingest.readers import format_of, read_records
from labelloop.ingest.state import IngestState, SourceObject, list_objects
from labelloop.ingest.validate import (
    BATCH_FIELD, HASH_FIELD, ID_FIELD, PRIORITY_FIELD, InvalidRecord, RecordValidator, content_hash,
)
from labelloop.ordering import priorities, unit
from labelloop.spec import ProjectSpec

log = logging.getLogger(__name__)

#: Pre-labels for a batch of task data dicts: one prediction (or None) per task.
Predictor = Callable[[list[dict[str, Any]]], list[dict[str, Any] | None]]
COUNTS = ("read", "imported", "duplicate", "quarantined")


def storage_path(uri: str, conn_id: str | None) -> ObjectStoragePath:
    """Local folders need no connection; object stores take the spec's."""
    return ObjectStoragePath(uri, conn_id=conn_id if not uri.startswith("file://") else None)


def is_gold(content: str, fraction: float) -> bool:
    """A stable pseudo-random choice by content hash: the same item is gold in every run."""
    return fraction > 0 and unit(content) < fraction


@dataclass
class _Pending:
    """An object whose records are read but not all committed to Label Studio yet."""

    obj: SourceObject
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))


class Ingest:
    """One ingest run of one project (built per task run; holds the run's journal)."""

    def __init__(self, spec: ProjectSpec, hook: LabelStudioHook, run_id: str,
                 predictor: Predictor | None = None, generation: int = 0, group: int | None = None) -> None:
        self.spec = spec
        self.hook = hook
        self.validator = RecordValidator(spec)
        self.predictor = predictor
        self.generation = generation  # of the queue's order: see labelloop.ordering
        self.state = IngestState(storage_path(spec.storage_uri, spec.source.conn_id), run_id, group)
        self.project_id: int | None = None
        self.buffer: list[dict[str, Any]] = []
        self.buffered_hashes: set[str] = set()
        self.awaiting: list[_Pending] = []
        self.committed_sources: set[str] = set()
        self.next_seq = 0

    # Run ----------------------------------------------------------------------------------

    def run(self, project_id: int, cutoff: datetime | None = None) -> dict[str, Any]:
        """Ingest objects modified before ``cutoff`` (the data interval's end) not yet processed,
        all in this task (the DAG fans a run out with ``run_group`` instead)."""
        self.project_id = project_id
        self.reconcile_index()
        objects, skipped = self.new_objects(cutoff)
        finished = self.process(objects)
        summary = self.summarize(finished, skipped)
        self.state.save(finished, summary)
        return summary

    def run_group(self, project_id: int, objects: list[SourceObject]) -> dict[str, dict[str, Any]]:
        """Ingest one group of a fanned-out run; its receipt waits for the reduce (``groups``)."""
        self.project_id = project_id
        finished = self.process(objects)
        self.state.save_group(finished)
        return finished

    def new_objects(self, cutoff: datetime | None) -> tuple[list[SourceObject], list[dict[str, str]]]:
        """Objects this run takes (by name), and those it skips with the reason."""
        source = storage_path(self.spec.source.uri, self.spec.source.conn_id)
        taken: list[SourceObject] = []
        skipped: list[dict[str, str]] = []
        for obj in list_objects(source):
            if cutoff is not None and obj.modified >= cutoff:
                continue  # belongs to a later data interval
            if not self.state.is_new(obj):
                continue
            fmt = format_of(obj.path.name)
            if fmt not in self.spec.source.formats:
                skipped.append({"object": obj.name, "reason": f"format {fmt or 'unknown'} is not in source.formats "
                                f"{self.spec.source.formats}; rename it or add the format"})
                continue
            taken.append(obj)
        return taken, skipped

    def process(self, objects: list[SourceObject]) -> dict[str, dict[str, Any]]:
        """Read and import ``objects``; those an earlier attempt of this run finished are not read
        again. Returns each object's entry (its counts)."""
        self._resume()
        earlier = self.state.finished_objects()
        finished: dict[str, dict[str, Any]] = {}
        for obj in objects:
            if obj.name in earlier:
                finished[obj.name] = earlier[obj.name]
                continue
            self._read_object(obj, format_of(obj.path.name))
            for entry in self._flush_if_full():
                finished[entry["object"]] = entry
        for entry in self._flush():
            finished[entry["object"]] = entry
        return finished

    def summarize(self, finished: dict[str, dict[str, Any]], skipped: list[dict[str, str]]) -> dict[str, Any]:
        mine = [entry for entry in finished.values() if entry["run"] == self.state.run]
        totals = {name: sum(entry[name] for entry in mine) for name in COUNTS}
        return {
            "run": self.state.run, "project_id": self.project_id, "objects": len(mine), **totals,
            "balanced": totals["read"] == totals["imported"] + totals["duplicate"] + totals["quarantined"],
            "per_object": sorted(mine, key=lambda entry: entry["object"]),
            "skipped_objects": skipped,
            "quarantine": str(self.state.root / "quarantine" / self.state.run),
        }

    # Resume -------------------------------------------------------------------------------

    def _resume(self) -> None:
        """Take back what earlier attempts of this run committed (in any group's journal: a re-run
        may group the objects differently), and settle this task's interrupted batch."""
        for batch in self.state.run_batches():
            self._remember(batch)
        self.next_seq = max((batch["seq"] + 1 for batch in self.state.committed_batches()), default=0)
        pending = self.state.pending_batch()
        if pending:
            landed = {task.data[HASH_FIELD]: {"id": task.id, "source": task.data.get("labelloop_source")}
                      for task in self.hook.iter_tasks(self.project_id, query=data_filter(BATCH_FIELD, pending["batch_id"]))}
            log.info("settling interrupted batch %s: %d of %d tasks had landed",
                     pending["batch_id"], len(landed), len(pending["hashes"]))
            batch = self.state.commit_batch(pending["seq"], pending["batch_id"], landed)
            self._remember(batch)
            self.next_seq = max(self.next_seq, batch["seq"] + 1)

    def _remember(self, batch: dict[str, Any]) -> None:
        self.state.index.update(dict.fromkeys(batch["tasks"], self.state.run))
        self.committed_sources.update(task["source"] for task in batch["tasks"].values())

    def reconcile_index(self) -> None:
        """Trust the index only while it counts what Label Studio holds; else rebuild it from there."""
        in_labelstudio = self.hook.task_count(self.project_id)
        if in_labelstudio == len(self.state.index):
            return
        log.info("hash index has %d entries, Label Studio %d tasks: rebuilding it from Label Studio",
                 len(self.state.index), in_labelstudio)
        fields = list(self.spec.source.fields)
        rebuilt = {}
        for task in self.hook.iter_tasks(self.project_id):
            data = task.data or {}
            key = data.get(HASH_FIELD) or content_hash({name: data[name] for name in fields if name in data})
            rebuilt[key] = self.state.index.get(key, "labelstudio")
        self.state.index = rebuilt

    # Reading ------------------------------------------------------------------------------

    def _read_object(self, obj: SourceObject, fmt: str) -> None:
        pending = _Pending(obj)
        with obj.path.open("rb") as stream, _LazyWriter(self.state.quarantine_path(obj)) as bad:
            for raw in read_records(stream, fmt, self.spec.source.max_record_bytes):
                pending.counts["read"] += 1
                source = f"{obj.name}#{raw.line}"
                if raw.error is None:
                    try:
                        self._accept(raw.fields, source, pending)
                        self._import_full_batches()  # stream: never hold a whole object
                        continue
                    except InvalidRecord as error:
                        reason = str(error)
                else:
                    reason = raw.error
                pending.counts["quarantined"] += 1
                bad.write({"source": obj.name, "line": raw.line, "reason": reason, "record": raw.raw,
                           "run": self.state.run})
        self.awaiting.append(pending)

    def _accept(self, fields: dict[str, Any], source: str, pending: _Pending) -> None:
        record = self.validator.validate(fields)
        key = record.content_hash
        if source in self.committed_sources:
            pending.counts["imported"] += 1  # an earlier attempt of this run imported it
        elif key in self.state.index or key in self.buffered_hashes:
            pending.counts["duplicate"] += 1
        else:
            pending.counts["imported"] += 1
            self.buffered_hashes.add(key)
            data = {**record.data, HASH_FIELD: key, ID_FIELD: record.item_id, "labelloop_source": source}
            meta = {"item_id": record.item_id, "source": source, "label": record.label,
                    "gold": record.label is not None and is_gold(key, self.spec.annotation.gold_fraction)}
            self.buffer.append({"data": data, "meta": meta})

    # Importing ----------------------------------------------------------------------------

    def _import_full_batches(self) -> None:
        size = self.spec.import_batch_size
        while len(self.buffer) >= size:
            batch, self.buffer = self.buffer[:size], self.buffer[size:]
            self._import(batch)

    def _flush_if_full(self) -> list[dict[str, Any]]:
        """Import full batches; objects are finished only when nothing of theirs is left unsent."""
        self._import_full_batches()
        return [] if self.buffer else self._finish_awaiting()

    def _flush(self) -> list[dict[str, Any]]:
        if self.buffer:
            self._import(self.buffer)
            self.buffer = []
        return self._finish_awaiting()

    def _finish_awaiting(self) -> list[dict[str, Any]]:
        """Objects whose every record is now committed get their completion marker."""
        entries = [self.state.finish_object(pending.obj, pending.counts) for pending in self.awaiting]
        self.awaiting = []
        return entries

    def _import(self, tasks: list[dict[str, Any]]) -> None:
        predictions = self.predictor([task["data"] for task in tasks]) if self.predictor else [None] * len(tasks)
        stratum = self.spec.annotation.stratify_by
        ordered = priorities([task["data"][HASH_FIELD] for task in tasks], predictions,
                             random_share=self.spec.annotation.random_share, n_labels=len(self.spec.labels),
                             strata=[task["data"].get(stratum) for task in tasks] if stratum else None,
                             generation=self.generation)
        for task, prediction, value in zip(tasks, predictions, ordered):
            if prediction is not None:
                task["predictions"] = [prediction]
            task["data"][PRIORITY_FIELD] = value
        seq = self.next_seq
        self.next_seq += 1
        hashes = [task["data"][HASH_FIELD] for task in tasks]
        batch_id = self.state.begin_batch(seq, hashes)
        for task in tasks:
            task["data"][BATCH_FIELD] = batch_id
        # Fresh: its pending marker was written just now, so no earlier attempt sent it.
        ids = self.hook.import_batch(self.project_id, tasks, batch_id, key_field=HASH_FIELD,
                                     batch_field=BATCH_FIELD, fresh=True)
        sources = {task["data"][HASH_FIELD]: task["data"]["labelloop_source"] for task in tasks}
        batch = self.state.commit_batch(seq, batch_id, {key: {"id": ids[key], "source": sources[key]} for key in ids})
        self._remember(batch)
        self.buffered_hashes.difference_update(hashes)
        log.info("batch %s: %d tasks imported", batch_id, len(tasks))


class _LazyWriter:
    """JSONL writer that creates its folder and file only when the first line comes, so a run
    with nothing to quarantine leaves no empty quarantine folder behind."""

    def __init__(self, path: ObjectStoragePath) -> None:
        self.path = path
        self.stream: IO[str] | None = None

    def __enter__(self) -> _LazyWriter:
        self.path.unlink(missing_ok=True)  # a re-read of the object rewrites its quarantine whole
        return self

    def write(self, row: dict[str, Any]) -> None:
        if self.stream is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.stream = self.path.open("w", encoding="utf-8")
        # A refused record may hold an unpaired surrogate: written as its JSON escape, not a crash.
        line = json.dumps(row, ensure_ascii=False).encode("utf-8", errors="backslashreplace").decode()
        self.stream.write(line + "\n")

    def __exit__(self, *exc: object) -> None:
        if self.stream is not None:
            self.stream.close()


def ingest_counts_line(summary: dict[str, Any]) -> str:
    return ", ".join(f"{name} {summary[name]:,}" for name in COUNTS)
