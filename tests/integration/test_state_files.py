"""Broken state files at the task: a real Airflow run (dag.test) against a real Label Studio.

A corrupt state file fails its task on the first try, naming the file, instead of being
retried three times with backoff; a corrupt collect pointer no longer blocks collect, and
audit runs again after it. On S3 (moto) a state write is one PUT and a read names s3:// URIs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelloop.layout import storage_path
from labelloop.project import ensure_project
from labelloop.spec import load_spec
from labelloop.state import StateError, read_json, write_json

pytestmark = pytest.mark.integration


def task_states(run) -> dict[str, tuple[str, int]]:
    return {ti.task_id: (str(ti.state), ti.try_number) for ti in run.get_task_instances()}


def test_a_corrupt_manifest_fails_ingest_at_once_naming_the_file(run_dag, labelstudio, make_spec, tmp_path,
                                                                 capfd) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jsonl").write_text(json.dumps({"id": "1", "text": "hello"}) + "\n")
    path = make_spec()
    manifest = Path(load_spec(path).storage_uri.removeprefix("file://")) / "ingest" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(b'{"file:///raw/a.jsonl": {"fingerprint": "\xff\xfe"}}')

    run = run_dag(path, "ingest")
    assert run.state == "failed"
    assert task_states(run)["list_groups"] == ("failed", 1)  # no retry: try 1 of 4 was the last
    out = capfd.readouterr()
    assert f"state file file://{manifest} is not UTF-8 text" in out.out + out.err


def test_a_corrupt_collect_pointer_fails_audit_once_and_collect_repairs_it(run_dag, labelstudio_hook,
                                                                           make_spec) -> None:
    path = make_spec()
    spec = load_spec(path)
    ensure_project(labelstudio_hook, spec)
    assert run_dag(path, "collect").state == "success"
    pointer = storage_path(spec.storage_uri, None) / "collect" / "latest.json"
    pointer.write_bytes(b'{"run": "manual__')

    audit = run_dag(path, "audit")
    assert task_states(audit)["audit"] == ("failed", 1)
    assert run_dag(path, "collect").state == "success"  # collect is not blocked by it
    assert read_json(pointer, None)["run"]
    audit = run_dag(path, "audit")
    assert task_states(audit)["audit"] == ("skipped", 1)  # past the pointer: an empty project has nothing to audit


def test_state_on_s3_is_one_object_and_errors_name_its_uri(s3_bucket) -> None:
    from airflow.sdk import ObjectStoragePath

    from labelloop.ingest.state import IngestState
    from labelloop.settings import AWS_CONN_ID

    root = ObjectStoragePath(f"s3://{s3_bucket}/store", conn_id=AWS_CONN_ID)
    write_json(root / "ingest" / "manifest.json", {"s3://raw/a.jsonl": {"fingerprint": "etag:1", "run": "r1"}})
    assert [p.name for p in (root / "ingest").iterdir()] == ["manifest.json"]  # one PUT, no temporary object
    assert IngestState(root, "manual__1").manifest["s3://raw/a.jsonl"]["run"] == "r1"

    (root / "ingest" / "manifest.json").write_bytes(b'{"s3://raw/a.jsonl": ')
    with pytest.raises(StateError, match=rf"^state file s3://{s3_bucket}/store/ingest/manifest.json is not valid JSON"):
        IngestState(root, "manual__1")
