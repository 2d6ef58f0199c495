"""Object storage misbehaving: the S3 API server (moto's) behind the fault proxy, a real Label Studio.

Ingest runs through the same functions as the DAG's tasks (``plan_ingest`` = list_groups,
``ingest_group``, ``finish_ingest`` = reduce_summaries) on a connection whose endpoint is the
proxy: a missing source bucket, throttling (503 SlowDown), access denied on one object, a
transfer cut off mid-object, an object deleted between listing and reading. Then collect's
state: a corrupt Parquet snapshot and a corrupt journal file. Each fault is retried away or
fails naming the object and the fix; after the fix the rerun is clean, and every record is
one task. (Corrupt manifests and collect pointers: tests/integration/test_state_files.py.)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from labelloop.collect.snapshot import collect
from labelloop.collect.table import read_latest, read_snapshot, snapshot_folder
from labelloop.ingest.job import finish_ingest, ingest_group, plan_ingest
from labelloop.ingest.pipeline import Ingest, ObjectReadError
from labelloop.ingest.state import IngestState
from labelloop.layout import storage_path
from labelloop.project import ensure_project
from labelloop.settings import AWS_CONN_ID
from labelloop.spec import load_spec
from labelloop.state import StateError
from labelloop.taskdata import HASH_FIELD

from tests.faults.proxy import FaultProxy, s3_error

pytestmark = pytest.mark.integration
SMS = Path(__file__).resolve().parents[2] / "include" / "demo" / "sms-spam" / "messages.jsonl"
CONN = "aws_faults"


@pytest.fixture
def s3_proxy(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The proxy in front of the session's S3 server, and a connection ``aws_faults`` to it."""
    from airflow.sdk.io import store

    connection = json.loads(os.environ[f"AIRFLOW_CONN_{AWS_CONN_ID.upper()}"])
    with FaultProxy(s3_server) as proxy:
        connection["extra"] = {**connection["extra"], "endpoint_url": proxy.url}
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", json.dumps(connection))
        store._STORE_CACHE.clear()  # Airflow keeps one filesystem per connection id for the process
        yield proxy
        store._STORE_CACHE.clear()


def texts_of(lines: list[str]) -> set[str]:
    return {json.loads(line)["text"] for line in lines}


def test_object_storage_faults_fail_naming_the_object_and_the_rerun_is_clean(
        s3_proxy, s3_bucket, labelstudio_hook, make_spec) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk import ObjectStoragePath

    direct = S3Hook(aws_conn_id=AWS_CONN_ID)
    hook, bucket = labelstudio_hook, s3_bucket
    source = {"conn_id": CONN}

    # A source bucket that does not exist is not an empty source.
    missing = load_spec(make_spec(source_uri=f"s3://{bucket}-gone/raw/", storage_uri=f"s3://{bucket}/gone",
                                  source=source))
    with pytest.raises(FileNotFoundError, match=rf"source s3://{bucket}-gone/raw: bucket '{bucket}-gone' does "
                                                r"not exist, or the connection's credentials cannot see it"):
        Ingest(missing, hook, "manual__gone").run(ensure_project(hook, missing)[0])

    lines = SMS.read_text().splitlines()
    parts = {"a": lines[:60], "b": lines[60:120], "c": lines[120:180]}
    for name, part in parts.items():
        direct.load_bytes(("\n".join(part) + "\n").encode(), key=f"raw/{name}.jsonl", bucket_name=bucket)
    spec = load_spec(make_spec(source_uri=f"s3://{bucket}/raw/", storage_uri=f"s3://{bucket}/labelloop",
                               source=source, import_batch_size=25))
    project_id, _ = ensure_project(hook, spec)
    run = "manual__s3faults"

    # Throttled three times (retried by the S3 client), then access denied on b: the task fails naming it.
    slow_down = s3_error("SlowDown", "Please reduce your request rate.")
    s3_proxy.fail(503, body=slow_down, content_type="application/xml", times=3, retry_after=1)
    s3_proxy.fail(403, path=rf"/{bucket}/raw/b\.jsonl$", method="GET", times=None, content_type="application/xml",
                  body=s3_error("AccessDenied", "Access Denied"))
    [group] = plan_ingest(spec, hook, run, None)
    assert [Path(obj["name"]).name for obj in group["objects"]] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    with pytest.raises(ObjectReadError, match=rf"^reading s3://{bucket}/raw/b\.jsonl failed \(PermissionError: "
                                              rf"Access Denied\)\. Check that it still exists and that connection "
                                              rf"'{CONN}' may read it"):
        ingest_group(spec, hook, run, group)
    assert [seen.status for seen in s3_proxy.requests(faulted=True)][:3] == [503] * 3

    # The retry: b's transfer is cut off once (the client reads it again), but c was deleted after
    # the listing, so the task fails naming c; a new listing leaves c out and the run completes.
    s3_proxy.clear()
    s3_proxy.drop(path=rf"/{bucket}/raw/b\.jsonl$", method="GET")
    direct.delete_objects(bucket=bucket, keys=["raw/c.jsonl"])
    with pytest.raises(ObjectReadError, match=rf"^reading s3://{bucket}/raw/c\.jsonl failed \(FileNotFoundError"):
        ingest_group(spec, hook, run, group)
    assert [seen.fault for seen in s3_proxy.requests(r"/b\.jsonl$", faulted=True)].count("drop") == 1
    groups = plan_ingest(spec, hook, run, None)
    assert [Path(obj["name"]).name for group in groups for obj in group["objects"]] == ["a.jsonl", "b.jsonl"]
    results = [ingest_group(spec, hook, run, group) for group in groups]
    summary = finish_ingest(spec, hook, run, results)
    expected = texts_of(parts["a"] + parts["b"])
    assert (summary["read"], summary["imported"], summary["duplicate"]) == (120, len(expected), 120 - len(expected))
    assert summary["balanced"]
    tasks = list(hook.iter_tasks(project_id))
    assert {task.data["text"] for task in tasks} == expected
    assert max(Counter(task.data[HASH_FIELD] for task in tasks).values()) == 1

    # A corrupt journal file fails the reduce naming it; restored, the reduce gives the same receipt.
    root = storage_path(spec.storage_uri, CONN)
    journal = sorted(root.fs.find((root / "ingest" / "runs" / run).path))
    batch = ObjectStoragePath(f"s3://{next(key for key in journal if '/batches/' in key)}", conn_id=CONN)
    original = batch.read_bytes()
    batch.write_bytes(original[: len(original) // 2])
    with pytest.raises(StateError, match=rf"^state file s3://{bucket}/labelloop/ingest/runs/{run}/.*batches/.* "
                                         r"is not valid JSON"):
        finish_ingest(spec, hook, run, results)
    batch.write_bytes(original)
    assert finish_ingest(spec, hook, run, results)["imported"] == summary["imported"]

    # A corrupt Parquet snapshot: the next collect fails naming the file and the fix; after the fix it is clean.
    first = collect(spec, hook, "manual__c1", "2026-12-01T10:00:00+00:00")
    tasks_file = snapshot_folder(root, "manual__c1") / "tasks.parquet"
    tasks_file.write_bytes(tasks_file.read_bytes()[:100])
    with pytest.raises(StateError, match=rf"^state file s3://{bucket}/labelloop/collect/snapshots/manual__c1/"
                                         r"tasks.parquet is not a readable Parquet file .*: delete the folder "
                                         rf"s3://{bucket}/labelloop/collect/snapshots/manual__c1 and run"):
        collect(spec, hook, "manual__c2", "2026-12-01T11:00:00+00:00")
    assert read_latest(root)["run"] == "manual__c1"  # the failed collect claimed nothing
    root.fs.rm(snapshot_folder(root, "manual__c1").path, recursive=True)  # the fix the message gives
    second = collect(spec, hook, "manual__c2", "2026-12-01T11:00:00+00:00")
    assert second["mode"] == "full" and second["latest"] and second["counts"] == first["counts"]
    assert len(read_snapshot(snapshot_folder(root, "manual__c2"))["tasks"]) == len(expected)


def padded(version: str, count: int) -> bytes:
    """``count`` records of about 60 KB (``pad`` is not a spec field: the tasks stay small)."""
    return b"".join(json.dumps({"text": f"{version} record {number}", "pad": "x" * 60_000}).encode() + b"\n"
                    for number in range(count))


def test_an_object_rewritten_while_ingest_reads_it_is_never_read_as_two_versions(
        s3_proxy, s3_bucket, labelstudio_hook, make_spec) -> None:
    """Rewritten between listing and reading, then again between two ranged GETs of one read: each
    time the task fails naming the object and both versions, before a record of the other version
    is used; the next listing reads the newest version whole, each of its records once."""
    import threading

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    direct = S3Hook(aws_conn_id=AWS_CONN_ID)
    hook, bucket, key = labelstudio_hook, s3_bucket, "raw/r.jsonl"
    spec = load_spec(make_spec(source_uri=f"s3://{bucket}/raw/", storage_uri=f"s3://{bucket}/labelloop",
                               source={"conn_id": CONN}, import_batch_size=25))
    project_id, _ = ensure_project(hook, spec)
    run = "manual__rewritten"
    storage_path(spec.source.uri, CONN).fs.default_block_size = 5 << 20  # s3fs's least: 2 ranged GETs here
    versions = {name: padded(name, 140) for name in ("v1", "v2", "v3")}  # 8.4 MB each, no line alike
    direct.load_bytes(versions["v1"], key=key, bucket_name=bucket)

    def etag() -> str:
        return direct.head_object(key, bucket)["ETag"].strip('"')

    # Between the listing and the read (the plan is another task): v2 replaces v1.
    [group] = plan_ingest(spec, hook, run, None)
    listed = etag()
    direct.load_bytes(versions["v2"], key=key, bucket_name=bucket, replace=True)
    with pytest.raises(ObjectReadError, match=rf"^reading s3://{bucket}/{key} failed: it changed after it was "
                                              rf"listed \(listed as etag:{listed}, now etag:{etag()}\): ingest "
                                              r"stopped rather than take records of two versions"):
        ingest_group(spec, hook, run, group)
    assert hook.task_count(project_id) == 0

    # During the read: the second ranged GET is held until v3 has replaced v2 (If-Match fails it).
    [group] = plan_ingest(spec, hook, run, None)
    listed = etag()
    s3_proxy.delay(0, path=rf"/{key}$", method="GET", after_forward=False)  # the first GET passes
    s3_proxy.delay(3, path=rf"/{key}$", method="GET", after_forward=False)

    def rewrite_after_the_first_get() -> None:
        while not s3_proxy.requests(rf"/{key}$", "GET"):
            threading.Event().wait(0.05)
        direct.load_bytes(versions["v3"], key=key, bucket_name=bucket, replace=True)

    writer = threading.Thread(target=rewrite_after_the_first_get)
    writer.start()
    with pytest.raises(ObjectReadError, match=rf"^reading s3://{bucket}/{key} failed: it changed after it was "
                                              rf"listed \(listed as etag:{listed}, now etag:"):
        ingest_group(spec, hook, run, group)
    writer.join()
    assert [seen.status for seen in s3_proxy.requests(rf"/{key}$", "GET")][:2] == [206, 412]
    v2_tasks = [task.data["text"] for task in hook.iter_tasks(project_id)]
    assert v2_tasks and v2_tasks == [f"v2 record {number}" for number in range(len(v2_tasks))]  # read before the change

    # The next listing reads v3 whole: each record of it once, though the run committed v2's first lines.
    s3_proxy.clear()
    groups = plan_ingest(spec, hook, run, None)
    summary = finish_ingest(spec, hook, run, [ingest_group(spec, hook, run, group) for group in groups])
    assert (summary["objects"], summary["read"], summary["imported"], summary["balanced"]) == (1, 140, 140, True)
    manifest = IngestState(storage_path(spec.storage_uri, CONN), run).manifest
    assert manifest[f"s3://{bucket}/{key}"]["fingerprint"] == f"etag:{etag()}"  # the version read
    texts = Counter(task.data["text"] for task in hook.iter_tasks(project_id))
    assert max(texts.values()) == 1
    assert set(texts) == {f"v3 record {number}" for number in range(140)} | set(v2_tasks)  # no v1, all of v3


def test_symlinks_in_a_local_source_are_skipped_objects_with_their_reason(labelstudio_hook, make_spec,
                                                                           tmp_path) -> None:
    from labelloop.ingest.job import ingest_report

    raw, outside = tmp_path / "raw", tmp_path / "outside"
    raw.mkdir()
    outside.mkdir()
    (outside / "secret.jsonl").write_text('{"text": "secret outside the source"}\n')
    (raw / "real.jsonl").write_text('{"text": "a real object"}\n')
    (raw / "link.jsonl").symlink_to(outside / "secret.jsonl")
    (raw / "linked_dir").symlink_to(outside, target_is_directory=True)
    spec = load_spec(make_spec(source_uri=f"file://{raw}/", storage_uri=f"file://{tmp_path / 'store'}"))
    run = "manual__links"

    groups = plan_ingest(spec, labelstudio_hook, run, None)
    summary = finish_ingest(spec, labelstudio_hook, run, [ingest_group(spec, labelstudio_hook, run, group)
                                                           for group in groups])

    reason = "not followed, so no link leads ingest out of the source; copy the file into the source folder instead"
    assert summary["skipped_objects"] == [
        {"object": f"file://{raw}/link.jsonl", "reason": f"a symbolic link (to {outside}/secret.jsonl): {reason}"},
        {"object": f"file://{raw}/linked_dir", "reason": f"a symbolic link (to {outside}): {reason}"}]
    assert (summary["objects"], summary["read"], summary["imported"], summary["balanced"]) == (1, 1, 1, True)
    assert f"skipped object file://{raw}/link.jsonl: a symbolic link" in "\n".join(ingest_report(summary))
    assert [task.data["text"] for task in labelstudio_hook.iter_tasks(summary["project_id"])] == ["a real object"]


def test_two_collects_racing_for_latest_json_on_s3_leave_the_later_run_after(s3_bucket) -> None:
    """PutObject with If-Match / If-None-Match: the one that read a pointer another moved since
    reads and decides again (the check-then-write it replaces lost about half of these rounds)."""
    from tests.unit.test_versioned_storage import race_for_latest

    race_for_latest(storage_path(f"s3://{s3_bucket}/labelloop", AWS_CONN_ID), 30)
