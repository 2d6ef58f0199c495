"""State files in object storage (file:// here; S3 in tests/integration/test_state_files.py).

A broken state file is a StateError naming its URI and what to do (the task then fails
without retrying); collect rebuilds its own pointer from the snapshot folders; a write that
is cut off half-way leaves the old content.
"""

from __future__ import annotations

import json
import logging
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from labelloop.audit.run import audit_latest
from labelloop.collect.export import annotation_rows, snapshot_counts, task_rows
from labelloop.collect.table import (
    ANNOTATIONS_SCHEMA, TASKS_SCHEMA, latest_snapshot, point_latest, read_latest, read_parquet, to_table,
    write_parquet, write_snapshot,
)
from labelloop.operators.base import fails_without_retry
from labelloop.ingest.state import IngestState
from labelloop.spec import load_spec
from labelloop.state import StateError, read_json, write_json

REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "tests" / "data" / "labelstudio-export" / "project.json"
CORRUPT = {
    "invalid UTF-8": (b'{"s3://raw/a.jsonl": {"fingerprint": "etag:\xff\xfe"}}', "is not UTF-8 text (byte 43: invalid start byte)"),
    "invalid JSON": (b'{"s3://raw/a.jsonl": {"fingerprint": "etag:1", "ru', "is not valid JSON (line 1, column"),
    "empty": (b"", "is empty"),
    "wrong type": (b'["s3://raw/a.jsonl"]', "holds a JSON array where a JSON object belongs"),
}


@pytest.fixture
def root(tmp_path: Path) -> ObjectStoragePath:
    return ObjectStoragePath(f"file://{tmp_path / 'store'}")


def put(path: ObjectStoragePath, raw: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)


# Reads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CORRUPT)
def test_a_corrupt_manifest_names_its_uri_and_what_to_do(root, case) -> None:
    raw, problem = CORRUPT[case]
    manifest = root / "ingest" / "manifest.json"
    put(manifest, raw)
    with pytest.raises(StateError) as caught:
        IngestState(root, "manual__1")
    message = str(caught.value)
    assert message.startswith(f"state file file://{manifest.path} {problem}")
    assert "or delete it, and the next ingest re-reads every source object" in message


def test_the_task_fails_at_once_on_a_broken_state_file_and_retries_anything_else(root) -> None:
    """The boundary the DAG factory puts around every task that reads state."""
    put(root / "ingest" / "manifest.json", CORRUPT["invalid UTF-8"][0])
    ingest = fails_without_retry(lambda: IngestState(root, "manual__1"))
    with pytest.raises(AirflowFailException, match=r"state file file://.*/ingest/manifest.json is not UTF-8"):
        ingest()

    def storage_down() -> None:
        raise ConnectionError("S3 did not answer")

    with pytest.raises(ConnectionError):  # the weather, not the file: Airflow retries it
        fails_without_retry(storage_down)()


def test_a_truncated_index_is_named_and_ingest_can_rebuild_it(root) -> None:
    write_json(root / "ingest" / "index.json.gz", {"h1": "run"})
    index = root / "ingest" / "index.json.gz"
    put(index, index.read_bytes()[:-6])
    with pytest.raises(StateError, match=r"index.json.gz is not a complete gzip file .*rebuilds it from the tasks"):
        IngestState(root, "manual__1")


def test_a_missing_file_is_the_default_and_a_leftover_temporary_file_is_no_journal(root) -> None:
    state = IngestState(root, "manual__1")
    assert (state.manifest, state.index, state.pending_batches()) == ({}, {}, [])
    put(state.run_dir / "objects" / ".a.json.0123456789ab.tmp", b'{"object": "half')
    assert state.finished_objects() == {}
    put(state.run_dir / "batches" / "00000000.json", b'{"seq": 0, "tasks": {')
    with pytest.raises(StateError, match=r"batches/00000000.json is not valid JSON .*delete it and clear"):
        state.committed_batches()


def test_batches_in_flight_each_keep_their_marker_until_committed(root) -> None:
    """Two batches are sent at once, so each has its own pending marker; the single marker of
    earlier versions is still settled."""
    state = IngestState(root, "manual__1")
    first, second = state.begin_batch(0, ["a"]), state.begin_batch(1, ["b"])
    put(state.run_dir / "pending.json", json.dumps({"seq": 7, "batch_id": "manual__1:7", "hashes": ["c"]}).encode())
    assert [(batch["seq"], batch["batch_id"]) for batch in state.pending_batches()] == [
        (0, first), (1, second), (7, "manual__1:7")]
    state.commit_batch(1, second, {"b": {"id": 2, "source": "x#1"}})
    state.drop_old_marker()
    assert [batch["seq"] for batch in state.pending_batches()] == [0]
    assert [batch["seq"] for batch in state.committed_batches()] == [1]


# Collect's pointer ------------------------------------------------------------------------


def write_collect_run(root: ObjectStoragePath, run: str, run_after: str) -> bool:
    """What collect.snapshot.collect does after the export: the snapshot, then the pointer."""
    tasks = json.loads(EXPORT.read_text())
    annotations, items = annotation_rows(tasks, ["label"]), task_rows(tasks)
    counts = snapshot_counts(annotations, items, [])
    tables = {"annotations": to_table(annotations, ANNOTATIONS_SCHEMA), "tasks": to_table(items, TASKS_SCHEMA),
              "review_annotations": to_table([], ANNOTATIONS_SCHEMA)}
    write_snapshot(root, run, tables, {"schema_version": 1, "run": run, "run_after": run_after, "counts": counts})
    return point_latest(root, run, run_after, counts)


BROKEN_POINTERS = {
    "invalid UTF-8": b'{"run": "\xff"}',
    "invalid JSON": b'{"run": "run_b", "snap',
    "no run": b'{"snapshot": 3}',
    "missing": None,
}


@pytest.mark.parametrize("case", BROKEN_POINTERS)
def test_collect_rebuilds_a_broken_pointer_from_its_snapshots_and_audit_proceeds(root, tmp_path, case,
                                                                                caplog) -> None:
    spec = load_spec(REPO / "include" / "projects" / "sms_spam.yaml").model_copy(
        update={"storage_uri": f"file://{tmp_path / 'store'}"})
    with caplog.at_level(logging.WARNING, logger="labelloop"):
        assert write_collect_run(root, "run_a", "2026-01-01T00:00:00+00:00")
        assert write_collect_run(root, "run_b", "2026-01-02T00:00:00+00:00")
    assert not caplog.records  # a first collect finds no pointer: nothing to warn about
    pointer = root / "collect" / "latest.json"
    if BROKEN_POINTERS[case] is None:
        pointer.unlink()
    else:
        put(pointer, BROKEN_POINTERS[case])

    # Audit does not guess: it fails naming the pointer, and says collect rebuilds it.
    with pytest.raises(StateError) as caught:
        audit_latest(spec, "manual__audit_1")
    assert str(caught.value).startswith(f"state file file://{pointer.path} ")
    assert str(caught.value).endswith("run the collect DAG: it rebuilds latest.json from the snapshot folders")

    # Collect is not blocked by it. A re-run of the older run rebuilds the pointer from the
    # snapshot manifests, so it still points at the later snapshot, and says so.
    with caplog.at_level(logging.WARNING, logger="labelloop"):
        assert not write_collect_run(root, "run_a", "2026-01-01T00:00:00+00:00")
    assert read_latest(root)["run"] == "run_b" and latest_snapshot(root).name == "run_b"
    [warning] = [record.getMessage() for record in caplog.records]
    assert f"file://{pointer.path}" in warning and "rebuilt it from 1 snapshot manifest(s); the latest is run_b" in warning

    outcome = audit_latest(spec, "manual__audit_2")
    assert outcome["snapshot"] == "run_b" and outcome["counts"]["annotations"] > 0


def test_a_broken_pointer_with_no_other_snapshot_is_replaced_by_this_run(root, caplog) -> None:
    put(root / "collect" / "latest.json", b"\x00\x01")
    with caplog.at_level(logging.WARNING, logger="labelloop"):
        assert write_collect_run(root, "run_a", "2026-01-01T00:00:00+00:00")
    assert read_latest(root)["run"] == "run_a"
    assert "no other snapshot exists: it now points at snapshot run_a" in caplog.text


# Writes -----------------------------------------------------------------------------------


@contextmanager
def disk_full_after(size: int) -> Iterator[None]:
    """Files cannot grow past ``size`` bytes: the kernel writes that much, then refuses (EFBIG),
    as a full disk or a worker killed mid-write leaves a file. (Python ignores SIGXFSZ.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_an_interrupted_json_write_leaves_the_old_content(root) -> None:
    path = root / "ingest" / "manifest.json"
    old = {"s3://raw/a.jsonl": {"fingerprint": "etag:1", "run": "r1"}}
    write_json(path, old)
    new = {f"s3://raw/{n}.jsonl": {"fingerprint": f"etag:{n}", "run": "r2"} for n in range(200)}
    with disk_full_after(4096), pytest.raises(OSError, match="File too large"):
        write_json(path, new)
    assert read_json(path, None) == old
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]  # no temporary file left behind
    write_json(path, new)
    assert read_json(path, None) == new


def test_an_interrupted_parquet_write_leaves_the_old_table(root) -> None:
    path = root / "collect" / "snapshots" / "run_a" / "tasks.parquet"
    tasks = task_rows(json.loads(EXPORT.read_text()))
    write_parquet(path, to_table(tasks[:1], TASKS_SCHEMA))
    big = to_table([{**tasks[0], "task_id": n, "data": json.dumps({"text": f"message {n} " * 20})}
                    for n in range(500)], TASKS_SCHEMA)
    with disk_full_after(path.stat().st_size + 1024), pytest.raises(OSError, match="File too large"):
        write_parquet(path, big)
    assert len(read_parquet(path)) == 1
