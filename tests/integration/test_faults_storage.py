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
