"""The annotation table on object storage: fixed Parquet schemas, one folder per snapshot, a pointer.

Layout under ``<storage_uri>/collect/``::

    snapshots/<run>/annotations.parquet         one row per annotation and control (main project)
    snapshots/<run>/tasks.parquet               one row per task, with its data as JSON
    snapshots/<run>/review_annotations.parquet  the review project's answers (same columns)
    snapshots/<run>/review_tasks.parquet        the review project's tasks (what incremental collect
                                                checks the review project against)
    snapshots/<run>/manifest.json               written last: a folder with it is complete
    latest.json                                 {"snapshot": "snapshots/<run>", ...}

A run always writes the same folder, whole, so a re-run replaces its snapshot. The schema
is fixed, so an empty project gives empty files with the same columns. ``latest.json`` is
collect's to rebuild: when it is broken, or lost while snapshots exist, the next collect
points it again at the snapshot with the latest ``run_after`` (and logs a warning saying so).
"""

from __future__ import annotations

import io
import logging
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from airflow.sdk import ObjectStoragePath

from labelloop.layout import Layout
from labelloop.state import (StateError, encode_json, parse_json, read_json, read_versioned, uri_of, write_atomically,
                             write_if, write_json)

log = logging.getLogger(__name__)
_TIME = pa.timestamp("us", tz="UTC")
ANNOTATIONS_SCHEMA = pa.schema([
    ("task_id", pa.int64()), ("item_id", pa.string()), ("item_hash", pa.string()),
    ("annotation_id", pa.int64()), ("annotator_id", pa.int64()), ("annotator_email", pa.string()),
    ("control", pa.string()), ("label", pa.string()), ("result", pa.string()),
    ("lead_time", pa.float64()), ("created_at", _TIME), ("updated_at", _TIME),
    ("was_cancelled", pa.bool_()), ("ground_truth", pa.bool_()),
    ("prediction_model_version", pa.string()), ("prediction_score", pa.float64()),
    ("gold_label", pa.string()), ("known_label", pa.string()),
    ("review_status", pa.string()), ("reviewed_by", pa.string()), ("reviewed_at", _TIME),
    ("source_task_id", pa.int64()),
])  # fmt: skip
TASKS_SCHEMA = pa.schema([
    ("task_id", pa.int64()), ("item_id", pa.string()), ("item_hash", pa.string()),
    ("known_label", pa.string()), ("gold_label", pa.string()), ("n_annotations", pa.int64()),
    ("n_cancelled", pa.int64()), ("n_predictions", pa.int64()), ("created_at", _TIME),
    ("source_task_id", pa.int64()), ("data", pa.string()),
])  # fmt: skip

REBUILD = "run the collect DAG: it rebuilds latest.json from the snapshot folders"
#: How often ``point_latest`` reads and decides again when other collects keep moving the pointer.
MOVE_ATTEMPTS = 20
FILES = {"annotations": ANNOTATIONS_SCHEMA, "tasks": TASKS_SCHEMA, "review_annotations": ANNOTATIONS_SCHEMA}


def _time(value: Any) -> datetime | None:
    """Label Studio writes ISO 8601 with a ``Z``; keep the instant, in UTC."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts from ``export``) as an Arrow table of exactly ``schema``."""
    times = [f.name for f in schema if pa.types.is_timestamp(f.type)]
    rows = [{**row, **{name: _time(row.get(name)) for name in times}} for row in rows]
    return pa.Table.from_pylist(rows, schema=schema)


def write_parquet(path: ObjectStoragePath, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_atomically(path, buffer.getvalue())


def from_frame(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """A frame read by ``to_frame`` (or merged from such frames) back as a table of exactly ``schema``."""
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Nullable dtypes, so integer ids with gaps stay integers."""
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)


def read_parquet(path: ObjectStoragePath) -> pd.DataFrame:
    """The table in a snapshot file; a file that is not Parquet (truncated, overwritten) is a StateError
    naming it, not a bare Arrow error."""
    try:
        return to_frame(pq.read_table(io.BytesIO(path.read_bytes())))
    except pa.ArrowException as error:
        raise StateError(path, f"is not a readable Parquet file ({error})",
                         f"delete the folder {uri_of(path.parent)} and run the stage that wrote it again (the "
                         f"collect DAG for a snapshot: it builds on the snapshot before, or exports in full; "
                         f"the audit DAG for an audit)") from error


def snapshot_folder(root: ObjectStoragePath, run: str) -> ObjectStoragePath:
    return Layout(root).snapshot(run)


def write_snapshot(root: ObjectStoragePath, run: str, tables: dict[str, pa.Table],
                   manifest: dict[str, Any]) -> ObjectStoragePath:
    """Write (or rewrite) the snapshot folder of run ``run``; the manifest goes last, and an earlier
    attempt's goes first, so a folder never claims files it does not hold yet."""
    folder = snapshot_folder(root, run)
    (folder / "manifest.json").unlink(missing_ok=True)
    for name, table in tables.items():
        write_parquet(folder / f"{name}.parquet", table)
    write_json(folder / "manifest.json", manifest)
    return folder


def latest_path(root: ObjectStoragePath) -> ObjectStoragePath:
    return Layout(root).latest_snapshot


def _pointer(run: str, run_after: str, counts: dict[str, int]) -> dict[str, Any]:
    return {"run": run, "snapshot": f"snapshots/{run}", "run_after": run_after, "counts": counts}


def read_latest(root: ObjectStoragePath) -> dict[str, Any] | None:
    """The pointer as collect wrote it, or None when there is none; StateError when it is broken."""
    path = latest_path(root)
    return _decode_latest(path, read_versioned(path)[0])


def _decode_latest(path: ObjectStoragePath, raw: bytes | None) -> dict[str, Any] | None:
    pointer = parse_json(path, raw, None, expect=dict, remedy=REBUILD)
    if pointer is not None and not isinstance(pointer.get("run"), str):
        raise StateError(path, "names no snapshot run (no string field 'run')", REBUILD)
    return pointer


def snapshot_manifests(root: ObjectStoragePath) -> dict[str, dict[str, Any]]:
    """Run -> manifest of every complete snapshot. A folder without a manifest is unfinished and a
    broken manifest is not trusted: both are left out, the broken one with a warning."""
    folder = Layout(root).snapshots
    if not folder.exists():
        return {}
    manifests = {}
    for snapshot in sorted(folder.iterdir(), key=lambda path: path.name):
        try:
            manifest = read_json(snapshot / "manifest.json", None, expect=dict)
        except StateError as error:
            log.warning("snapshot %s left out: %s", snapshot.name, error)
            continue
        if manifest is not None:
            manifests[snapshot.name] = manifest
    return manifests


def _pointer_or_rebuilt(root: ObjectStoragePath, run: str, raw: bytes | None) -> tuple[dict[str, Any] | None, bool]:
    """The current pointer (``raw``, as read), else one rebuilt from the snapshots of runs other than
    ``run`` (the one being written); the flag says it was rebuilt, so it must be written back even if
    ``run`` loses."""
    uri = uri_of(latest_path(root))
    try:
        current = _decode_latest(latest_path(root), raw)
    except StateError as error:
        current, problem = None, error.problem
    else:
        if current is not None:
            return current, False
        problem = None  # no pointer: a first collect, unless other snapshots exist
    others = {name: manifest for name, manifest in snapshot_manifests(root).items() if name != run}
    if others:
        name, manifest = max(others.items(), key=lambda item: str(item[1].get("run_after", "")))
        log.warning("%s %s: rebuilt it from %d snapshot manifest(s); the latest is %s (run_after %s)",
                    uri, problem or "is missing although snapshot folders exist", len(others), name,
                    manifest.get("run_after"))
        return _pointer(name, str(manifest.get("run_after", "")), manifest.get("counts", {})), True
    if problem:
        log.warning("%s %s and no other snapshot exists: it now points at snapshot %s", uri, problem, run)
    return None, False


def point_latest(root: ObjectStoragePath, run: str, run_after: str, counts: dict[str, int]) -> bool:
    """Move ``latest.json`` to this snapshot unless a later run already owns it (re-runs of old runs).

    A broken or lost pointer is rebuilt from the snapshot folders first, so a bad pointer never
    blocks collect, nor lets an old run's re-run take the pointer from a later snapshot. The move is
    a compare-and-swap (``labelloop.state.write_if``): a collect that moved the pointer after this one
    read it makes this one read and decide again, so two collects at once leave the later
    ``run_after`` latest (on S3 and local storage; elsewhere it is check-then-write, see ``write_if``).
    """
    path = latest_path(root)
    for _ in range(MOVE_ATTEMPTS):
        raw, tag = read_versioned(path)
        current, rebuilt = _pointer_or_rebuilt(root, run, raw)
        later = bool(current) and str(current.get("run_after", "")) > run_after
        if later and not rebuilt:
            return False
        if write_if(path, encode_json(path, current if later else _pointer(run, run_after, counts)), tag):
            return not later
        log.info("%s was moved by another collect while this one (%s) decided: deciding again", uri_of(path), run)
    raise RuntimeError(f"{uri_of(path)} changed under every one of {MOVE_ATTEMPTS} attempts of collect {run} to move "
                       f"it (a store whose conditional writes never match?); latest.json is unchanged")


def latest_snapshot(root: ObjectStoragePath) -> ObjectStoragePath | None:
    """The folder of the latest complete snapshot, or None before the first collect.

    Readers other than collect do not repair the pointer: a broken one is a StateError that
    tells the person to run collect, which rebuilds it.
    """
    path = latest_path(root)
    pointer = read_latest(root)
    if pointer is None:
        snapshots = Layout(root).snapshots
        if snapshots.exists() and any(snapshots.iterdir()):
            raise StateError(path, f"is missing although snapshot folders exist under {uri_of(snapshots)}", REBUILD)
        return None
    folder = snapshot_folder(root, pointer["run"])
    if not (folder / "manifest.json").exists():
        raise StateError(path, f"points to {uri_of(folder)}, which has no manifest.json (an unfinished snapshot)",
                         "re-run the collect DAG to write a complete snapshot")
    return folder


def previous_snapshot(root: ObjectStoragePath, run: str, run_after: str) -> tuple[str, dict[str, Any]] | None:
    """(run, manifest) of the complete snapshot an incremental collect of ``run`` builds on: the latest
    one of an earlier run. The pointer answers in one read; a re-run, or a broken or lost pointer,
    falls back to the manifests of every snapshot."""
    try:
        pointer = read_latest(root)
    except StateError:
        pointer = None
    if pointer and pointer["run"] != run and str(pointer.get("run_after", "")) <= run_after:
        manifest = read_json(snapshot_folder(root, pointer["run"]) / "manifest.json", None, expect=dict)
        if manifest is not None:
            return pointer["run"], manifest
    earlier = {name: manifest for name, manifest in snapshot_manifests(root).items()
               if name != run and str(manifest.get("run_after", "")) <= run_after}
    if not earlier:
        return None
    return max(earlier.items(), key=lambda item: str(item[1].get("run_after", "")))


def read_snapshot(folder: ObjectStoragePath) -> dict[str, pd.DataFrame]:
    """Every table of a snapshot by name (``annotations``, ``tasks``, ``review_annotations``)."""
    return {name: read_parquet(folder / f"{name}.parquet") for name in FILES}
