"""The bad-input table (tests/unit/test_bad_input.py) through a real ingest run: every kind as
its own object on an S3 API server (moto's, over HTTP), imported into a real Label Studio.

Per object the summary's counts add up (read = imported + duplicate + quarantined) and match
the table, each quarantined record carries the table's reason at its line, and nothing is
written outside the storage root. Object keys with ``../`` in them are read as the literal
keys they are; symlinks in a local source folder are not followed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from labelloop.ingest.pipeline import Ingest
from labelloop.project import ensure_project
from labelloop.spec import load_spec
from tests.unit.test_bad_input import OK, RECORDS, jsonl

KINDS = [kind for kind in RECORDS if kind.spec == "sms_spam"]
#: Keys that look like path traversal: S3 keys are flat strings, so each is one object of its own.
TRAVERSAL = {"raw/../../escaped.jsonl": {"text": "key with ../ in it"},
             "raw/sub/../../../etc/passwd.jsonl": {"text": "another ../ key"}}


def test_every_bad_input_kind_through_a_real_ingest(labelstudio_hook, make_spec, s3_bucket) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    s3 = S3Hook(aws_conn_id="aws_default")
    for kind in KINDS:
        s3.load_bytes(kind.payload, key=f"raw/{kind.name}", bucket_name=s3_bucket)
    for key, record in TRAVERSAL.items():
        s3.load_bytes(jsonl(record), key=key, bucket_name=s3_bucket)
    s3.load_bytes(jsonl({"text": "outside the source prefix"}), key="escaped.jsonl", bucket_name=s3_bucket)
    spec = load_spec(make_spec(source_uri=f"s3://{s3_bucket}/raw/", storage_uri=f"s3://{s3_bucket}/labelloop"))
    project_id, _ = ensure_project(labelstudio_hook, spec)

    summary = Ingest(spec, labelstudio_hook, "manual__../../bad_input").run(project_id)

    assert summary["balanced"] and summary["skipped_objects"] == []
    assert summary["read"] == summary["imported"] + summary["duplicate"] + summary["quarantined"]
    entries = {entry["object"].removeprefix(f"s3://{s3_bucket}/"): entry for entry in summary["per_object"]}
    quarantine: dict[str, dict[int, str]] = defaultdict(dict)
    for key in s3.list_keys(bucket_name=s3_bucket, prefix="labelloop/ingest/quarantine/"):
        for line in s3.read_key(key, bucket_name=s3_bucket).splitlines():
            row = json.loads(line)
            quarantine[row["source"].removeprefix(f"s3://{s3_bucket}/")][row["line"]] = row["reason"]
    accepted = 0
    for kind in KINDS:
        entry, reasons = entries[f"raw/{kind.name}"], quarantine.get(f"raw/{kind.name}", {})
        assert entry["read"] == entry["imported"] + entry["duplicate"] + entry["quarantined"], kind.kind
        if kind.outcomes is None:  # the truncated gzip: what was read, then one reason for the rest
            assert entry["quarantined"] == 1 and entry["read"] > 10, entry
            accepted += entry["read"] - 1
            continue
        expected = [reason for reason in kind.outcomes if reason is not OK]
        assert (entry["read"], entry["quarantined"]) == (len(kind.outcomes), len(expected)), (kind.kind, entry)
        got = [reasons[line] for line in sorted(reasons)]
        assert len(got) == len(expected) and all(e in g for e, g in zip(expected, got)), (kind.kind, got)
        accepted += len(kind.outcomes) - len(expected)
    accepted += len(TRAVERSAL)

    texts = sorted(task.data["text"] for task in labelstudio_hook.iter_tasks(project_id))
    assert len(texts) == len(set(texts)) == summary["imported"]  # one task per content
    assert summary["imported"] + summary["duplicate"] == accepted
    sources = {task.data["labelloop_source"] for task in labelstudio_hook.iter_tasks(project_id)}
    assert {f"s3://{s3_bucket}/{key}#1" for key in TRAVERSAL} <= sources  # the literal keys were read
    assert "outside the source prefix" not in texts
    # Everything ingest wrote is under the storage root, including for a run id with ../ in it.
    written = set(s3.list_keys(bucket_name=s3_bucket)) - {f"raw/{k.name}" for k in KINDS} - set(TRAVERSAL)
    assert written - {"escaped.jsonl"} and all(key.startswith("labelloop/ingest/") for key in written - {"escaped.jsonl"})


def test_symlinks_in_a_local_source_are_not_followed(labelstudio_hook, make_spec, tmp_path) -> None:
    raw, outside = tmp_path / "raw", tmp_path / "outside"
    raw.mkdir()
    outside.mkdir()
    (outside / "secret.jsonl").write_bytes(jsonl({"text": "secret outside the source"}))
    (raw / "link.jsonl").symlink_to(outside / "secret.jsonl")  # a file link pointing out
    (raw / "linked_dir").symlink_to(outside, target_is_directory=True)  # a folder link pointing out
    (raw / "real.jsonl").write_bytes(jsonl({"text": "a real object"}))
    (raw / "inner_link.jsonl").symlink_to(raw / "real.jsonl")  # even a link that stays inside
    before = {path.name: path.read_bytes() for path in outside.iterdir()}
    spec = load_spec(make_spec(source_uri=f"file://{raw}/", storage_uri=f"file://{tmp_path / 'store'}"))
    project_id, _ = ensure_project(labelstudio_hook, spec)

    summary = Ingest(spec, labelstudio_hook, "manual__symlinks").run(project_id)

    assert [Path(entry["object"]).name for entry in summary["per_object"]] == ["real.jsonl"]
    assert (summary["read"], summary["imported"], summary["quarantined"]) == (1, 1, 0)
    assert [task.data["text"] for task in labelstudio_hook.iter_tasks(project_id)] == ["a real object"]
    assert {path.name: path.read_bytes() for path in outside.iterdir()} == before  # nothing written outside
    assert all(path.resolve().is_relative_to(tmp_path / "store") for path in (tmp_path / "store").rglob("*"))
