"""Ingest: new raw objects become Label Studio tasks, each record accounted for exactly once.

Every record read ends as imported, duplicate (its content is already a task) or
quarantined (with its reason); the counts add up per object and per run. The work is
journaled in object storage (see ``state``), so a re-run changes nothing and a run killed
half-way resumes without duplicates.

Reading, validation, hashing and pre-labeling overlap with the imports (``_ImportQueue``): the
run marks the next batch in flight in the journal and prepares it while one is POSTed, and a
recording thread commits the sent batches to the journal in order, off the POSTs' path.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from airflow.sdk import ObjectStoragePath

from labelloop.hooks.labelstudio import LabelStudioHook, data_filter
from labelloop.ingest.images import image_object_record
from labelloop.ingest.readers import RawRecord, format_of, read_records
from labelloop.ingest.state import (IngestState, ObjectChanged, SourceObject, changed_since_listed, list_objects,
                                   open_listed)
from labelloop.ingest.validate import InvalidRecord, RecordValidator, content_hash
from labelloop.layout import storage_path
from labelloop.ordering import priorities, unit
from labelloop.spec import ProjectSpec
from labelloop.taskdata import BATCH_FIELD, HASH_FIELD, ID_FIELD, PRIORITY_FIELD, SOURCE_FIELD

log = logging.getLogger(__name__)

#: Pre-labels for a batch of task data dicts: one prediction (or None) per task.
Predictor = Callable[[list[dict[str, Any]]], list[dict[str, Any] | None]]
COUNTS = ("read", "imported", "duplicate", "quarantined")


def is_gold(content: str, fraction: float) -> bool:
    """A stable pseudo-random choice by content hash: the same item is gold in every run."""
    return fraction > 0 and unit(content) < fraction


class ObjectReadError(RuntimeError):
    """A source object could not be read from the store; the message names it and what to check."""


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
        #: (object#line, content hash) of every record earlier attempts of this run imported: both, since
        #: an object rewritten between attempts holds other records at the same lines.
        self.committed: set[tuple[str, str]] = set()
        self.next_seq = 0
        self.queue: _ImportQueue | None = None

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
            if obj.refused:
                skipped.append({"object": obj.name, "reason": obj.refused})
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
        with _ImportQueue(self.hook.imports_in_flight) as self.queue:
            for obj in objects:
                if obj.name in earlier:
                    finished[obj.name] = earlier[obj.name]
                    continue
                self._read_object(obj, format_of(obj.path.name))
                self._flush_if_full()
            self._flush()
            for entries in self.queue.drain():
                finished.update((entry["object"], entry) for entry in entries or [])
        self.queue = None
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
        for pending in self.state.pending_batches():
            landed = {task.data[HASH_FIELD]: {"id": task.id, "source": task.data.get(SOURCE_FIELD)}
                      for task in self.hook.iter_tasks(self.project_id, query=data_filter(BATCH_FIELD, pending["batch_id"]))}
            log.info("settling interrupted batch %s: %d of %d tasks had landed",
                     pending["batch_id"], len(landed), len(pending["hashes"]))
            batch = self.state.commit_batch(pending["seq"], pending["batch_id"], landed)
            self._remember(batch)
            self.next_seq = max(self.next_seq, batch["seq"] + 1)
        self.state.drop_old_marker()

    def _remember(self, batch: dict[str, Any]) -> None:
        self.state.index.update(dict.fromkeys(batch["tasks"], self.state.run))
        self.committed.update((task["source"], key) for key, task in batch["tasks"].items())

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
        with _LazyWriter(self.state.quarantine_path(obj)) as bad:
            for raw in self._records(obj, fmt):
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

    def _records(self, obj: SourceObject, fmt: str) -> Iterator[RawRecord]:
        """The object's records; an image object is one record, whose bytes the validator reads."""
        if fmt == "image":
            yield image_object_record(obj.name, self.spec)
            return
        try:
            with open_listed(obj) as stream:
                yield from read_records(stream, fmt, self.spec.source.max_record_bytes)
        except Exception as error:  # the store's (denied, gone, cut off), not the records': those are quarantined
            changed = error if isinstance(error, ObjectChanged) else changed_since_listed(obj)
            if changed:
                problem, after = (f": {changed}: ingest stopped rather than take records of two versions. Clear "
                                  f"the run from list_groups on"), "the new listing reads the new version whole"
            else:
                problem, after = (f" ({type(error).__name__}: {error}). Check that it still exists and that "
                                  f"connection {self.spec.source.conn_id!r} may read it, then clear the run from "
                                  f"list_groups on"), "the new listing leaves out what is gone"
            raise ObjectReadError(f"reading {obj.name} failed{problem}: {after}, and records imported so far "
                                  f"are recognised, not imported twice") from error

    def _accept(self, fields: dict[str, Any], source: str, pending: _Pending) -> None:
        record = self.validator.validate(fields)
        key = record.content_hash
        if (source, key) in self.committed:
            pending.counts["imported"] += 1  # an earlier attempt of this run imported it
        elif key in self.state.index or key in self.buffered_hashes:
            pending.counts["duplicate"] += 1
        else:
            pending.counts["imported"] += 1
            self.buffered_hashes.add(key)
            data = {**record.data, HASH_FIELD: key, ID_FIELD: record.item_id, SOURCE_FIELD: source}
            # The item id and source are in the data; meta holds what annotators must not see.
            meta = {"label": record.label,
                    "gold": record.label is not None and is_gold(key, self.spec.annotation.gold_fraction)}
            self.buffer.append({"data": data, "meta": meta})

    # Importing ----------------------------------------------------------------------------

    def _import_full_batches(self) -> None:
        size = self.spec.import_batch_size
        while len(self.buffer) >= size:
            batch, self.buffer = self.buffer[:size], self.buffer[size:]
            self._import(batch)

    def _flush_if_full(self) -> None:
        """Import full batches; objects are finished only when nothing of theirs is left unsent."""
        self._import_full_batches()
        if not self.buffer:
            self._finish_awaiting()

    def _flush(self) -> None:
        if self.buffer:
            self._import(self.buffer)
            self.buffer = []
        self._finish_awaiting()

    def _finish_awaiting(self) -> None:
        """Objects whose records are all sent get their completion marker once those batches are
        committed: the import thread writes it after them (it runs its steps in order)."""
        done, self.awaiting = self.awaiting, []
        if done:
            self._queue().submit(lambda: [self.state.finish_object(pending.obj, pending.counts) for pending in done])

    def _queue(self) -> _ImportQueue:
        if self.queue is None:
            raise RuntimeError("batches are imported only inside Ingest.process")
        return self.queue

    def _import(self, tasks: list[dict[str, Any]]) -> None:
        """Pre-label and order a batch here, then queue its journaled import."""
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
        # Marked in flight here, while the batch before is being sent, so the marker costs the
        # POSTs nothing; a batch marked but never sent settles on resume as an empty one.
        batch_id = self.state.begin_batch(seq, [task["data"][HASH_FIELD] for task in tasks])
        for task in tasks:
            task["data"][BATCH_FIELD] = batch_id
        self._queue().submit(lambda ids: self._record(seq, batch_id, tasks, ids), send=lambda: self._send(batch_id, tasks))

    def _send(self, batch_id: str, tasks: list[dict[str, Any]]) -> dict[str, int]:
        """On a sending thread: the POST; content hash -> task id. Fresh: its pending marker was
        written by this attempt, so no earlier attempt sent it."""
        return self.hook.import_batch(self.project_id, tasks, batch_id, key_field=HASH_FIELD,
                                      batch_field=BATCH_FIELD, fresh=True)

    def _record(self, seq: int, batch_id: str, tasks: list[dict[str, Any]], ids: dict[str, int]) -> None:
        """On the recording thread, in batch order: commit a sent batch to the journal. The
        reading thread only tests membership in the sets this updates, which the GIL keeps whole;
        a hash moves into the index before it leaves ``buffered_hashes``."""
        sources = {task["data"][HASH_FIELD]: task["data"][SOURCE_FIELD] for task in tasks}
        batch = self.state.commit_batch(seq, batch_id, {key: {"id": ids[key], "source": sources[key]} for key in ids})
        self._remember(batch)
        self.buffered_hashes.difference_update(sources)
        log.info("batch %s: %d tasks imported", batch_id, len(tasks))


class _ImportQueue:
    """Import steps in the order given. A step may have a ``send`` (the POST), run on one of
    ``in_flight`` sending threads as soon as it is submitted; its ``record`` runs on the one
    recording thread, in submission order, with the send's result. At most ``in_flight`` steps
    wait behind the one recording (``submit`` blocks past that). A failure stops every send and
    record not started yet, so no batch goes out after one whose outcome is unknown (beyond the
    ones already in flight, which the journal marks); the error is raised in the caller at the
    next ``submit`` or at ``drain``."""

    def __init__(self, in_flight: int) -> None:
        self.ahead = in_flight
        self.senders = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="labelloop-send")
        self.recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labelloop-record")
        self.inflight: deque[Future[Any]] = deque()
        self.results: list[Any] = []
        self.failed: BaseException | None = None

    def submit(self, record: Callable[..., Any], send: Callable[[], Any] | None = None) -> None:
        while len(self.inflight) > self.ahead:
            self.wait_oldest()
        if send is None:
            self.inflight.append(self.recorder.submit(self._run, record))
            return
        sent = self.senders.submit(self._run, send)
        self.inflight.append(self.recorder.submit(self._run, lambda: record(sent.result())))

    def wait_oldest(self) -> None:
        """Block until the oldest step is recorded (re-raising its error)."""
        self.results.append(self.inflight.popleft().result())

    def drain(self) -> list[Any]:
        """Wait for every step; their results in order."""
        while self.inflight:
            self.wait_oldest()
        return self.results

    def _run(self, step: Callable[[], Any]) -> Any:
        if self.failed is not None:
            raise RuntimeError("not run: an earlier import step failed") from self.failed
        try:
            return step()
        except BaseException as error:
            if self.failed is None:
                self.failed = error
            raise

    def __enter__(self) -> _ImportQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        # On an error, the sends already running finish (their batches are marked in flight either
        # way) and the waiting steps are dropped: the next attempt settles and resumes from the journal.
        self.senders.shutdown(wait=True, cancel_futures=True)
        self.recorder.shutdown(wait=True, cancel_futures=True)


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
