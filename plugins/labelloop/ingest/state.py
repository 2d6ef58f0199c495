"""What ingest remembers between runs, kept in object storage beside the data.

Layout under ``<storage_uri>/ingest/``::

    manifest.json                       objects already processed: path -> fingerprint, run
    index.json.gz                       content hash -> run that imported it (one per task)
    runs/<run>/objects/<obj>.json       an object finished by this run, with its counts
    runs/<run>/batches/<n>.json         a batch committed to Label Studio (hash -> task id, source)
    runs/<run>/pending/<n>.json         a batch marked before it is sent (a few at once): settled on resume
    runs/<run>/plan.json                a fanned-out run's groups of objects (see ``groups``)
    runs/<run>/groups/<g>/...           group g's own journal (batches/, pending/) and its
                                        summary.json (the entries of the objects it finished)
    runs/<run>/summary.json             the run's counts
    quarantine/<run>/<obj>.jsonl        records that were refused, with their reasons

The per-run files make a killed run resumable without re-reading what it finished; the
manifest and index are rewritten once at the end of each run (by the one task that reduces a
fanned-out run's groups, so mapped tasks finishing in any order never race on them). Reading and writing them is
``labelloop.state``'s: a broken file is a ``StateError`` saying what to do, here per file.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

from airflow.sdk import ObjectStoragePath

from labelloop.layout import MANIFEST, Layout, run_key
from labelloop.state import is_local, json_files, read_json, uri_of, write_json

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
    size: int = 0
    #: Why ingest does not read it (a symbolic link, a FIFO...); None for a regular file.
    refused: str | None = None

    @property
    def name(self) -> str:
        """The object's URI without the connection id (``s3://bucket/key``)."""
        return uri_of(self.path)

    @property
    def key(self) -> str:
        """A short stable file name for per-object state."""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", self.path.name)[-80:]
        return f"{stem}-{hashlib.sha1(self.name.encode()).hexdigest()[:10]}"


def _modified(info: dict[str, Any]) -> datetime:
    stamp = info.get("LastModified") or info.get("mtime") or info.get("last_modified") or 0
    if isinstance(stamp, datetime):
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(float(stamp), tz=timezone.utc)


def fingerprint_of(info: dict[str, Any]) -> str:
    """Which version of an object ``info`` (a listing's or an open file's details) describes: its ETag,
    else its size and modification time."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    return f"etag:{etag}" if etag else f"size:{info.get('size')}:mtime:{_modified(info).timestamp()}"


def _refusal(info: dict[str, Any]) -> str:
    if info.get("islink"):
        return (f"a symbolic link (to {info.get('destination')}): not followed, so no link leads ingest out of "
                f"the source; copy the file into the source folder instead")
    return "not a regular file (a FIFO, socket or device): not read; put a regular file there instead"


def list_objects(folder: ObjectStoragePath) -> Iterator[SourceObject]:
    """Every object under ``folder`` with a fingerprint (ETag or size+mtime), in one listing; what is
    not a regular file (a local symbolic link, even one to a folder) comes with why it is refused.

    A folder that does not exist yet is an empty source (nothing has landed); a bucket that does
    not exist is a mistake, which an object store would otherwise also answer with an empty listing."""
    if not folder.exists():
        bucket = folder.path.split("/", 1)[0]
        if not is_local(folder) and not folder.fs.exists(bucket):
            raise FileNotFoundError(f"source {uri_of(folder)}: bucket {bucket!r} does not exist, or the "
                                    f"connection's credentials cannot see it; create it or fix source.uri")
        return
    for path, info in sorted(folder.fs.find(folder.path, detail=True).items()):
        kind = info.get("type", "file")
        if kind == "directory":
            continue
        full = folder / path.removeprefix(folder.path.rstrip("/")).lstrip("/")
        yield SourceObject(full, fingerprint_of(info), _modified(info), int(info.get("size") or 0),
                           None if kind == "file" and not info.get("islink") else _refusal(info))


class ObjectChanged(OSError):
    """The object is no longer the version that was listed: reading on would take records from another."""

    def __init__(self, obj: SourceObject, now: str | None) -> None:
        self.now = now
        super().__init__(f"it changed after it was listed (listed as {obj.fingerprint}, now "
                         f"{now or 'another version'})")


def changed_since_listed(obj: SourceObject) -> ObjectChanged | None:
    """``ObjectChanged`` when the store now holds another version of ``obj`` (asked afresh), else None
    (the same version, or the store cannot say: gone, denied)."""
    obj.path.fs.invalidate_cache(obj.path.path)
    try:
        now = fingerprint_of(obj.path.fs.info(obj.path.path))
    except Exception:  # the read's own error says what is wrong
        return None
    return ObjectChanged(obj, now) if now != obj.fingerprint else None


@contextmanager
def open_listed(obj: SourceObject) -> Iterator[IO[bytes]]:
    """The object's bytes, pinned to the version the listing saw: any other is ``ObjectChanged``, at
    the open or during the read, before a byte of it is used.

    An object store's file is opened on a fresh look (not a cached listing), and s3fs sends its ETag
    with every ranged GET (``If-Match``), so a rewrite during the read fails the next GET. A local
    file is checked (fstat: size and mtime) after every read: a replacing rename leaves the open file
    the listed one, and a rewrite in place is seen at the read that could hold its bytes. Other stores
    are checked at the open only."""
    obj.path.fs.invalidate_cache(obj.path.path)
    with obj.path.open("rb") as stream:
        if is_local(obj.path):
            checked = _Checked(obj, stream)
            checked.check()
            yield checked
            return
        details = getattr(stream, "details", None)  # fsspec's remote files: what their reads ask for
        if isinstance(details, dict) and fingerprint_of(details) != obj.fingerprint:
            raise ObjectChanged(obj, fingerprint_of(details))
        yield stream


class _Checked(io.RawIOBase):
    """A local file whose version (fstat) is checked against the listed one after every read."""

    def __init__(self, obj: SourceObject, stream: IO[bytes]) -> None:
        self.obj, self.stream = obj, stream

    def readable(self) -> bool:
        return True

    def check(self) -> None:
        stat = os.fstat(self.stream.fileno())
        now = fingerprint_of({"size": stat.st_size, "mtime": stat.st_mtime})
        if now != self.obj.fingerprint:
            raise ObjectChanged(self.obj, now)

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(len(buffer))
        self.check()
        buffer[: len(data)] = data
        return len(data)


class IngestState:
    """Manifest, hash index and the per-run journal of one project."""

    def __init__(self, storage_root: ObjectStoragePath, run_id: str, group: int | None = None) -> None:
        self.root = Layout(storage_root).ingest
        self.run = run_key(run_id)
        self.run_dir = self.root / "runs" / self.run
        self.group = group
        #: Where this task journals its batches: the run's folder, or its group's in a fanned-out run.
        self.journal = self.run_dir if group is None else self.group_dir(group)
        self.manifest_path = Layout(storage_root).path(MANIFEST)
        self.manifest: dict[str, dict[str, Any]] = read_json(self.manifest_path, {}, expect=dict,
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

    def group_dir(self, group: int) -> ObjectStoragePath:
        return self.run_dir / "groups" / f"{group:04d}"

    def quarantine_path(self, obj: SourceObject) -> ObjectStoragePath:
        return self.root / "quarantine" / self.run / f"{obj.key}.jsonl"

    # Batches ------------------------------------------------------------------------------

    def committed_batches(self, journal: ObjectStoragePath | None = None) -> list[dict[str, Any]]:
        """The batches committed in ``journal`` (default: this task's own journal)."""
        batches = (self._journal(path) for path in json_files((journal or self.journal) / "batches"))
        return sorted((batch for batch in batches if batch), key=lambda batch: batch["seq"])

    def run_batches(self) -> list[dict[str, Any]]:
        """Every batch this run committed, in the run's journal and in each group's."""
        groups = self.run_dir / "groups"
        journals = [self.run_dir, *(sorted(groups.iterdir(), key=lambda path: path.name) if groups.exists() else [])]
        return [batch for journal in journals for batch in self.committed_batches(journal)]

    def pending_batches(self) -> list[dict[str, Any]]:
        """This task's batches in flight when it was interrupted, oldest first. (``pending.json``
        is the single marker earlier labelloop versions wrote, settled the same way.)"""
        markers = [*json_files(self.journal / "pending"), self.journal / "pending.json"]
        batches = (self._journal(path) for path in markers)
        return sorted((batch for batch in batches if batch), key=lambda batch: batch["seq"])

    @staticmethod
    def _journal(path: ObjectStoragePath) -> dict[str, Any] | None:
        return read_json(path, None, expect=dict, remedy=JOURNAL_REMEDY)

    def _pending_path(self, seq: int) -> ObjectStoragePath:
        return self.journal / "pending" / f"{seq:08d}.json"

    def begin_batch(self, seq: int, hashes: list[str]) -> str:
        """Mark a batch in flight before it is sent, so a resumed run looks up what landed."""
        batch_id = f"{self.run}:{seq}" if self.group is None else f"{self.run}:g{self.group}:{seq}"
        write_json(self._pending_path(seq), {"seq": seq, "batch_id": batch_id, "hashes": hashes})
        return batch_id

    def commit_batch(self, seq: int, batch_id: str, tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Record a landed batch: content hash -> {task id, source object#line}."""
        batch = {"seq": seq, "batch_id": batch_id, "tasks": tasks}
        write_json(self.journal / "batches" / f"{seq:08d}.json", batch)
        self._pending_path(seq).unlink(missing_ok=True)
        return batch

    def drop_old_marker(self) -> None:
        """Remove the single marker of earlier versions (``pending.json``) once its batch is settled."""
        (self.journal / "pending.json").unlink(missing_ok=True)

    # End of run ---------------------------------------------------------------------------

    def save_index(self) -> None:
        write_json(self.root / "index.json.gz", self.index)

    def save_group(self, finished: dict[str, dict[str, Any]]) -> None:
        """A group's receipt: the entries of its objects, merged into the manifest by the reduce."""
        entries = sorted(finished.values(), key=lambda entry: entry["object"])
        write_json(self.journal / "summary.json", {"group": self.group, "objects": entries})

    def group_entries(self, group: int) -> list[dict[str, Any]] | None:
        """Group ``group``'s object entries, or None when it has not finished."""
        receipt = self._journal(self.group_dir(group) / "summary.json")
        return None if receipt is None else receipt["objects"]

    def save(self, finished: dict[str, dict[str, Any]], summary: dict[str, Any]) -> None:
        """Publish the run: index first, then manifest, then the summary (the run's receipt)."""
        self.save_index()
        for entry in finished.values():
            self.manifest[entry["object"]] = {"fingerprint": entry["fingerprint"], "run": entry["run"]}
        write_json(self.manifest_path, self.manifest)
        write_json(self.run_dir / "summary.json", summary)
