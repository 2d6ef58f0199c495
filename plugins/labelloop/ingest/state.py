"""What ingest remembers between runs, kept in object storage beside the data.

Layout under ``<storage_uri>/ingest/``::

    manifest.json                       objects already processed: path -> fingerprint, run
    index.json.gz                       content hash -> run that imported it (one per task)
    runs/<run>/objects/<obj>.json       an object finished by this run, with its counts
    runs/<run>/batches/<n>.json         a batch committed to Label Studio (hash -> task id, source)
    runs/<run>/pending.json             the batch in flight: settled on resume
    runs/<run>/summary.json             the run's counts
    quarantine/<run>/<obj>.jsonl        records that were refused, with their reasons

The per-run files make a killed run resumable without re-reading what it finished; the
manifest and index are rewritten once at the end of each run. Reading and writing them is
``labelloop.state``'s: a broken file is a ``StateError`` saying what to do, here per file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import ObjectStoragePath

from labelloop.state import json_files, read_json, uri_of, write_json

MANIFEST_REMEDY = ("restore it from a backup or an earlier object version; or delete it, and the next ingest "
                   "re-reads every source object (the hash index keeps their records from being imported "
                   "twice: they count as duplicates)")
INDEX_REMEDY = "delete it: the next ingest rebuilds it from the tasks in Label Studio"
JOURNAL_REMEDY = ("delete it and clear the failed ingest task: the run redoes that step, and tasks already "
                  "in Label Studio are recognised by content hash, so none is imported twice")


@dataclass(frozen=True)
class SourceObject:
    path: ObjectStoragePath
    fingerprint: str
    modified: datetime

    @property
    def name(self) -> str:
        """The object's URI without the connection id (``s3://bucket/key``)."""
        return uri_of(self.path)

    @property
    def key(self) -> str:
        """A short stable file name for per-object state."""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", self.path.name)[-80:]
        return f"{stem}-{hashlib.sha1(self.name.encode()).hexdigest()[:10]}"


def run_key(run_id: str) -> str:
    """A run id made safe for object keys (``scheduled__2026-01-01T00:00:00+00:00``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)


def _modified(info: dict[str, Any]) -> datetime:
    stamp = info.get("LastModified") or info.get("mtime") or info.get("last_modified") or 0
    if isinstance(stamp, datetime):
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(float(stamp), tz=timezone.utc)


def list_objects(folder: ObjectStoragePath) -> Iterator[SourceObject]:
    """Every object under ``folder`` with a fingerprint (ETag or size+mtime), in one listing."""
    if not folder.exists():
        return
    for path, info in sorted(folder.fs.find(folder.path, detail=True).items()):
        if info.get("type", "file") != "file":
            continue
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        modified = _modified(info)
        fingerprint = f"etag:{etag}" if etag else f"size:{info.get('size')}:mtime:{modified.timestamp()}"
        full = folder / path.removeprefix(folder.path.rstrip("/")).lstrip("/")
        yield SourceObject(full, fingerprint, modified)


class IngestState:
    """Manifest, hash index and the per-run journal of one project."""

    def __init__(self, storage_root: ObjectStoragePath, run_id: str) -> None:
        self.root = storage_root / "ingest"
        self.run = run_key(run_id)
        self.run_dir = self.root / "runs" / self.run
        self.manifest: dict[str, dict[str, Any]] = read_json(self.root / "manifest.json", {}, expect=dict,
                                                             remedy=MANIFEST_REMEDY)
        self.index: dict[str, str] = read_json(self.root / "index.json.gz", {}, expect=dict, remedy=INDEX_REMEDY)

    # Objects ------------------------------------------------------------------------------

    def is_new(self, obj: SourceObject) -> bool:
        """Not yet processed, changed since, or claimed by this very run (a re-run redoes it)."""
        seen = self.manifest.get(obj.name)
        return seen is None or seen["fingerprint"] != obj.fingerprint or seen["run"] == self.run

    def finished_objects(self) -> dict[str, dict[str, Any]]:
        """Objects this run already finished before it was interrupted."""
        done = (self._journal(path) for path in json_files(self.run_dir / "objects"))
        return {entry["object"]: entry for entry in done if entry}

    def finish_object(self, obj: SourceObject, counts: dict[str, int]) -> dict[str, Any]:
        entry = {"object": obj.name, "fingerprint": obj.fingerprint, "run": self.run, **counts}
        write_json(self.run_dir / "objects" / f"{obj.key}.json", entry)
        return entry

    def quarantine_path(self, obj: SourceObject) -> ObjectStoragePath:
        return self.root / "quarantine" / self.run / f"{obj.key}.jsonl"

    # Batches ------------------------------------------------------------------------------

    def committed_batches(self) -> list[dict[str, Any]]:
        batches = (self._journal(path) for path in json_files(self.run_dir / "batches"))
        return sorted((batch for batch in batches if batch), key=lambda batch: batch["seq"])

    def pending_batch(self) -> dict[str, Any] | None:
        return self._journal(self.run_dir / "pending.json")

    @staticmethod
    def _journal(path: ObjectStoragePath) -> dict[str, Any] | None:
        return read_json(path, None, expect=dict, remedy=JOURNAL_REMEDY)

    def begin_batch(self, seq: int, hashes: list[str]) -> str:
        batch_id = f"{self.run}:{seq}"
        write_json(self.run_dir / "pending.json", {"seq": seq, "batch_id": batch_id, "hashes": hashes})
        return batch_id

    def commit_batch(self, seq: int, batch_id: str, tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Record a landed batch: content hash -> {task id, source object#line}."""
        batch = {"seq": seq, "batch_id": batch_id, "tasks": tasks}
        write_json(self.run_dir / "batches" / f"{seq:08d}.json", batch)
        (self.run_dir / "pending.json").unlink(missing_ok=True)
        return batch

    # End of run ---------------------------------------------------------------------------

    def save(self, finished: dict[str, dict[str, Any]], summary: dict[str, Any]) -> None:
        """Publish the run: index first, then manifest, then the summary (the run's receipt)."""
        write_json(self.root / "index.json.gz", self.index)
        for entry in finished.values():
            self.manifest[entry["object"]] = {"fingerprint": entry["fingerprint"], "run": entry["run"]}
        write_json(self.root / "manifest.json", self.manifest)
        write_json(self.run_dir / "summary.json", summary)
