"""The annotation table on object storage: fixed Parquet schemas, one folder per snapshot, a pointer.

Layout under ``<storage_uri>/collect/``::

    snapshots/<run>/annotations.parquet         one row per annotation result (main project)
    snapshots/<run>/tasks.parquet               one row per task, with its data as JSON
    snapshots/<run>/review_annotations.parquet  the review project's answers (same columns)
    snapshots/<run>/manifest.json               written last: a folder with it is complete
    latest.json                                 {"snapshot": "snapshots/<run>", ...}

A run always writes the same folder, whole, so a re-run replaces its snapshot. The schema
is fixed, so an empty project gives empty files with the same columns.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from airflow.sdk import ObjectStoragePath

from labelloop.ingest.state import read_json, write_json

_TIME = pa.timestamp("us", tz="UTC")
ANNOTATIONS_SCHEMA = pa.schema([
    ("task_id", pa.int64()), ("item_id", pa.string()), ("item_hash", pa.string()),
    ("annotation_id", pa.int64()), ("annotator_id", pa.int64()), ("annotator_email", pa.string()),
    ("label", pa.string()), ("lead_time", pa.float64()), ("created_at", _TIME), ("updated_at", _TIME),
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

COLLECT = "collect"
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
    """One whole-object write (object stores have no partial files to clean up)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Nullable dtypes, so integer ids with gaps stay integers."""
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)


def read_parquet(path: ObjectStoragePath) -> pd.DataFrame:
    return to_frame(pq.read_table(io.BytesIO(path.read_bytes())))


def snapshot_folder(root: ObjectStoragePath, run: str) -> ObjectStoragePath:
    return root / COLLECT / "snapshots" / run


def write_snapshot(root: ObjectStoragePath, run: str, tables: dict[str, pa.Table],
                   manifest: dict[str, Any]) -> ObjectStoragePath:
    """Write (or rewrite) the snapshot folder of run ``run``; the manifest goes last."""
    folder = snapshot_folder(root, run)
    for name, table in tables.items():
        write_parquet(folder / f"{name}.parquet", table)
    write_json(folder / "manifest.json", manifest)
    return folder


def point_latest(root: ObjectStoragePath, run: str, run_after: str, counts: dict[str, int]) -> bool:
    """Move ``latest.json`` to this snapshot unless a later run already owns it (re-runs of old runs)."""
    path = root / COLLECT / "latest.json"
    current = read_json(path, {})
    if current and current.get("run_after", "") > run_after:
        return False
    write_json(path, {"run": run, "snapshot": f"snapshots/{run}", "run_after": run_after, "counts": counts})
    return True


def latest_snapshot(root: ObjectStoragePath) -> ObjectStoragePath | None:
    """The folder of the latest complete snapshot, or None before the first collect."""
    pointer = read_json(root / COLLECT / "latest.json", {})
    if not pointer:
        return None
    folder = snapshot_folder(root, pointer["run"])
    if not (folder / "manifest.json").exists():
        raise FileNotFoundError(f"{root / COLLECT / 'latest.json'} points to {folder}, which has no "
                                f"manifest.json; re-run the collect DAG to write a complete snapshot")
    return folder


def read_snapshot(folder: ObjectStoragePath) -> dict[str, pd.DataFrame]:
    """Every table of a snapshot by name (``annotations``, ``tasks``, ``review_annotations``)."""
    return {name: read_parquet(folder / f"{name}.parquet") for name in FILES}
