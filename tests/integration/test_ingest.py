"""Ingest against a real Label Studio, from a local folder and from an S3 API server (moto).

Every record ends imported, duplicate or quarantined, the counts add up, a second run
imports nothing, and neither a Label Studio restart nor a crash mid-run loses or
duplicates a task.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from labelloop.hooks.labelstudio import LabelStudioHook
from labelloop.ingest.pipeline import Ingest
from labelloop.layout import storage_path
from labelloop.taskdata import HASH_FIELD
from labelloop.project import ensure_project
from labelloop.spec import load_spec

pytestmark = pytest.mark.integration
SMS = Path(__file__).resolve().parents[2] / "include" / "demo" / "sms-spam" / "messages.jsonl"
UNIQUE_SMS = len({json.loads(line)["text"] for line in SMS.open()})


def tasks_in(hook, project_id: int) -> list:
    return list(hook.iter_tasks(project_id))


def summary_of(spec, run_key: str) -> dict:
    path = storage_path(spec.storage_uri, spec.source.conn_id) / "ingest" / "runs" / run_key / "summary.json"
    return json.loads(path.read_text())


def assert_one_task_per_content(hook, project_id: int, expected: int) -> None:
    hashes = Counter(task.data[HASH_FIELD] for task in tasks_in(hook, project_id))
    assert len(hashes) == expected
    assert max(hashes.values()) == 1, "a content hash appears on more than one task"


def test_sms_lands_once_and_a_second_run_imports_nothing(run_dag, labelstudio_hook, make_spec, tmp_path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(SMS, raw / "messages.jsonl")
    path = make_spec()
    spec = load_spec(path)

    first = run_dag(path, "ingest")
    assert first.state == "success"
    project = labelstudio_hook.find_project(spec.title)
    summary = summary_of(spec, first.run_id.replace(":", "_").replace("+", "_"))
    assert summary["read"] == 4444
    assert summary["imported"] == UNIQUE_SMS == 4165
    assert summary["duplicate"] == 4444 - UNIQUE_SMS
    assert summary["quarantined"] == 0 and summary["balanced"]
    assert_one_task_per_content(labelstudio_hook, project.id, UNIQUE_SMS)

    second = run_dag(path, "ingest")
    assert second.state == "success"
    assert labelstudio_hook.task_count(project.id) == UNIQUE_SMS
    later = summary_of(spec, second.run_id.replace(":", "_").replace("+", "_"))
    assert (later["objects"], later["read"], later["imported"]) == (0, 0, 0)


BAD_JSONL = "\n".join([
    json.dumps({"id": "g1", "text": "good one", "label": "spam"}),
    '{"id": "m1", "text": "broken',                                   # malformed JSON
    json.dumps({"id": "u1", "text": "unknown label", "label": "eggs"}),
    json.dumps({"id": "o1", "text": "x" * 70_000}),                     # over max_record_bytes
    json.dumps({"id": "g2", "text": "good two"}),
    json.dumps({"id": "d1", "text": "good one"}),                       # duplicate content
]) + "\n"


def test_bad_input_over_s3_is_quarantined_with_reasons(labelstudio_hook, make_spec, s3_bucket) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    s3 = S3Hook(aws_conn_id="aws_default")
    objects = {
        "raw/batch1.jsonl": BAD_JSONL.encode(),
        "raw/no_text_column.csv": b"id,body\n1,hello\n2,world\n",
        "raw/latin1.jsonl": '{"id": "l1", "text": "déjà vu, café"}\n'.encode("latin-1"),
        "raw/array.json": json.dumps([{"id": "a1", "text": "from an array"}, {"id": "a2"}]).encode(),
        "raw/notes.txt": b"not a format we read\n",
    }
    for key, body in objects.items():
        s3.load_bytes(body, key=key, bucket_name=s3_bucket)
    spec = load_spec(make_spec(source_uri=f"s3://{s3_bucket}/raw/", storage_uri=f"s3://{s3_bucket}/labelloop"))
    project_id, _ = ensure_project(labelstudio_hook, spec)

    summary = Ingest(spec, labelstudio_hook, "manual__bad").run(project_id)

    assert (summary["read"], summary["imported"], summary["duplicate"], summary["quarantined"]) == (11, 3, 1, 7)
    assert summary["balanced"]
    assert [s["object"] for s in summary["skipped_objects"]] == [f"s3://{s3_bucket}/raw/notes.txt"]
    reasons = []
    for key in s3.list_keys(bucket_name=s3_bucket, prefix="labelloop/ingest/quarantine/manual__bad/"):
        reasons += [json.loads(line) for line in s3.read_key(key, bucket_name=s3_bucket).splitlines()]
    by_source = Counter(Path(row["source"]).name for row in reasons)
    assert by_source == {"batch1.jsonl": 3, "no_text_column.csv": 2, "latin1.jsonl": 1, "array.json": 1}
    text = " | ".join(f"{Path(r['source']).name}:{r['line']}:{r['reason']}" for r in reasons)
    assert "batch1.jsonl:2:malformed JSON" in text
    assert "batch1.jsonl:3:unknown label 'eggs'" in text
    assert "batch1.jsonl:4:record is 70,0" in text
    assert "no_text_column.csv:2:required field 'text' is missing" in text
    assert "latin1.jsonl:1:not UTF-8: byte 0xe9" in text
    assert "array.json:2:required field 'text'" in text
    assert sorted(t.data["text"] for t in tasks_in(labelstudio_hook, project_id)) == [
        "from an array", "good one", "good two"]

    again = Ingest(spec, labelstudio_hook, "manual__bad").run(project_id)  # re-run: same receipt
    assert {k: again[k] for k in ("read", "imported", "duplicate", "quarantined")} == \
           {k: summary[k] for k in ("read", "imported", "duplicate", "quarantined")}
    assert labelstudio_hook.task_count(project_id) == 3


def write_messages(folder: Path, count: int, files: int = 2) -> int:
    """Split the first ``count`` SMS lines over ``files`` objects; returns unique contents."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = SMS.read_text().splitlines()[:count]
    for index in range(files):
        (folder / f"part-{index}.jsonl").write_text("\n".join(lines[index::files]) + "\n")
    return len({json.loads(line)["text"] for line in lines})


def test_labelstudio_restart_mid_import_loses_and_duplicates_nothing(
        labelstudio, labelstudio_hook, make_spec, tmp_path) -> None:
    unique = write_messages(tmp_path / "raw", 3000)
    spec = load_spec(make_spec(import_batch_size=100))
    project_id, _ = ensure_project(labelstudio_hook, spec)
    batches = storage_path(spec.storage_uri, None) / "ingest" / "runs" / "manual__restart" / "batches"
    result: dict = {}

    def ingest() -> None:
        try:
            result["summary"] = Ingest(spec, labelstudio_hook, "manual__restart").run(project_id)
        except Exception as error:  # surfaced by the assertion below
            result["error"] = error

    worker = threading.Thread(target=ingest)
    worker.start()
    deadline = time.monotonic() + 120
    while not (batches.exists() and len(list(batches.iterdir())) >= 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    labelstudio.stop()   # mid-import: the next batches hit a dead server
    time.sleep(2)
    labelstudio.start()
    worker.join(timeout=600)

    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert (summary["read"], summary["imported"], summary["quarantined"]) == (3000, unique, 0)
    assert_one_task_per_content(labelstudio_hook, project_id, unique)


class Crash(RuntimeError):
    pass


def hook_with_imports_in_flight(monkeypatch: pytest.MonkeyPatch, in_flight: int) -> LabelStudioHook:
    """A hook whose connection sets the extra ``imports_in_flight``, as a deployment would."""
    from labelloop.settings import LABELSTUDIO_CONN_ID

    variable = f"AIRFLOW_CONN_{LABELSTUDIO_CONN_ID.upper()}"
    monkeypatch.setenv(variable, json.dumps({**json.loads(os.environ[variable]),
                                             "extra": {"imports_in_flight": in_flight}}))
    hook = LabelStudioHook()
    assert hook.imports_in_flight == in_flight
    return hook


@pytest.mark.parametrize("in_flight", [1, 2])
def test_killed_run_resumes_without_duplicates(labelstudio, make_spec, tmp_path, monkeypatch, in_flight) -> None:
    labelstudio_hook = hook_with_imports_in_flight(monkeypatch, in_flight)
    unique = write_messages(tmp_path / "raw", 1500, files=3)
    spec = load_spec(make_spec(import_batch_size=200))
    project_id, _ = ensure_project(labelstudio_hook, spec)

    # First attempt dies right after its 4th batch landed, before the batch was journaled:
    # the worst moment, as if the worker was killed while Label Studio answered. The batch sent
    # after it may land too, and the one prepared behind it is marked but never sent.
    from labelloop.ingest import state as state_module

    original = state_module.IngestState.commit_batch

    def commit_then_die(self, seq, batch_id, tasks):
        if seq == 3:
            raise Crash("worker killed")
        return original(self, seq, batch_id, tasks)

    monkeypatch.setattr(state_module.IngestState, "commit_batch", commit_then_die)
    with pytest.raises(Crash):
        Ingest(spec, labelstudio_hook, "manual__crash").run(project_id)
    pending = [batch["seq"] for batch in Ingest(spec, labelstudio_hook, "manual__crash").state.pending_batches()]
    assert pending == list(range(3, 3 + len(pending))) and 1 <= len(pending) <= 2 + in_flight
    landed = labelstudio_hook.task_count(project_id)  # batch 3 landed; every batch that landed is marked
    assert landed % 200 == 0 and 4 <= landed // 200 <= 3 + len(pending), (landed, pending)

    monkeypatch.setattr(state_module.IngestState, "commit_batch", original)
    summary = Ingest(spec, labelstudio_hook, "manual__crash").run(project_id)  # the retry
    assert (summary["read"], summary["imported"], summary["duplicate"]) == (1500, unique, 1500 - unique)
    assert_one_task_per_content(labelstudio_hook, project_id, unique)

    # Another run, and a re-run of the first: nothing changes in Label Studio.
    assert Ingest(spec, labelstudio_hook, "manual__later").run(project_id)["imported"] == 0
    assert Ingest(spec, labelstudio_hook, "manual__crash").run(project_id)["imported"] == unique
    assert labelstudio_hook.task_count(project_id) == unique


def test_tasks_added_outside_labelloop_are_not_imported_again(labelstudio_hook, make_spec, tmp_path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jsonl").write_text(json.dumps({"id": "1", "text": "typed by hand"}) + "\n")
    spec = load_spec(make_spec())
    project_id, _ = ensure_project(labelstudio_hook, spec)
    labelstudio_hook.client.projects.import_tasks(project_id, request=[{"data": {"text": "typed by hand"}}])

    summary = Ingest(spec, labelstudio_hook, "manual__outside").run(project_id)
    assert (summary["imported"], summary["duplicate"]) == (0, 1)
    assert labelstudio_hook.task_count(project_id) == 1


DEEP_LINE = '{"id": "deep", "text": ' + "[" * 10_000 + "]" * 10_000 + "}"  # 20 KB; json.loads recurses


def test_hostile_lines_are_quarantined_and_the_run_goes_on(
        run_dag, labelstudio_hook, make_spec, tmp_path) -> None:
    """A 10,000-deep line once crashed every attempt of the run, and every later run."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a_good.jsonl").write_text(json.dumps({"id": "g1", "text": "good before"}) + "\n")
    good = [json.dumps({"id": f"m{i}", "text": f"mixed {i}"}) for i in (1, 2)]
    (raw / "b_mixed.jsonl").write_text(f"{good[0]}\n{DEEP_LINE}\n{good[1]}\n")
    nul_line = '{"id": "z2", "text": "nul \\u0000 here"}'  # the JSON escape, as a producer writes it
    (raw / "c_packed.jsonl.gz").write_bytes(gzip.compress(
        (json.dumps({"id": "z1", "text": "from gzip"}) + "\n" + nul_line + "\n").encode()))
    (raw / "d_array.json").write_text('[{"id": "a1", "text": "from an array"}, ' + DEEP_LINE + "]")
    path = make_spec()
    spec = load_spec(path)

    first = run_dag(path, "ingest")
    assert first.state == "success"
    summary = summary_of(spec, first.run_id.replace(":", "_").replace("+", "_"))
    assert (summary["read"], summary["imported"], summary["duplicate"], summary["quarantined"]) == (8, 5, 0, 3)
    assert summary["balanced"] and summary["skipped_objects"] == []
    project = labelstudio_hook.find_project(spec.title)
    assert sorted(task.data["text"] for task in tasks_in(labelstudio_hook, project.id)) == [
        "from an array", "from gzip", "good before", "mixed 1", "mixed 2"]
    quarantine = tmp_path / "store" / "ingest" / "quarantine" / summary["run"]
    rows = [json.loads(line) for file in quarantine.iterdir() for line in file.read_text().splitlines()]
    reasons = {(Path(row["source"]).name, row["line"]): row["reason"] for row in rows}
    assert reasons.keys() == {("b_mixed.jsonl", 2), ("c_packed.jsonl.gz", 2), ("d_array.json", 2)}
    assert reasons["b_mixed.jsonl", 2].startswith("JSON nested deeper than 64 levels")
    assert reasons["c_packed.jsonl.gz", 2].startswith("field 'text' contains a NUL character")
    assert reasons["d_array.json", 2] == reasons["b_mixed.jsonl", 2]

    (raw / "e_later.csv.gz").write_bytes(gzip.compress(b"id,text\nl1,later\n"))
    second = run_dag(path, "ingest")
    assert second.state == "success"
    later = summary_of(spec, second.run_id.replace(":", "_").replace("+", "_"))
    assert (later["objects"], later["read"], later["imported"], later["skipped_objects"]) == (1, 1, 1, [])
    assert not (quarantine.parent / later["run"]).exists()  # nothing quarantined: no empty folder


def test_fanned_out_run_imports_each_content_once_across_groups(
        run_dag, labelstudio_hook, make_spec, tmp_path) -> None:
    """One group per object (``ingest.group_bytes: 1``). The same message in two groups is one
    task whether the groups run one after the other (DAG run) or at once (as two workers do),
    and a group retried after the reduce changes nothing."""
    from labelloop.ingest.job import finish_ingest, ingest_group, plan_ingest
    from labelloop.layout import run_key

    raw = tmp_path / "raw"
    raw.mkdir()
    lines = SMS.read_text().splitlines()[:220]
    shared = [json.dumps({"id": f"shared{n}", "text": f"the same message in two groups ({n})"}) for n in (1, 2)]
    for index in range(5):
        (raw / f"part-{index}.jsonl").write_text("\n".join(lines[index:100:5] + shared[:index in (0, 4)]) + "\n")
    path = make_spec(ingest={"group_bytes": 1, "max_groups": 8}, import_batch_size=7)
    spec = load_spec(path)
    texts = {json.loads(line)["text"] for line in [*lines[:100], shared[0]]}

    first = run_dag(path, "ingest")
    assert first.state == "success"
    summary = summary_of(spec, run_key(first.run_id))
    assert summary["groups"] == 5 and summary["balanced"]
    assert (summary["objects"], summary["read"], summary["imported"], summary["duplicate"]) == (
        5, 102, len(texts), 102 - len(texts))
    project_id = labelstudio_hook.find_project(spec.title).id
    assert_one_task_per_content(labelstudio_hook, project_id, len(texts))
    manifest = json.loads((tmp_path / "store" / "ingest" / "manifest.json").read_text())
    assert sorted(Path(name).name for name in manifest) == [f"part-{index}.jsonl" for index in range(5)]

    # Two groups at once: the first has the message last, the second first. The second starts
    # while the first is importing, so neither has seen the other's copy: the reduce keeps one.
    (raw / "later-0.jsonl").write_text("\n".join(lines[100:200] + shared[1:]) + "\n")
    (raw / "later-1.jsonl").write_text("\n".join(shared[1:] + lines[200:220]) + "\n")
    texts |= {json.loads(line)["text"] for line in [*lines[100:], shared[1]]}
    run = "manual__concurrent"
    groups = plan_ingest(spec, labelstudio_hook, run, None)
    assert [len(group["objects"]) for group in groups] == [1, 1]
    first_group = threading.Thread(target=ingest_group, args=(spec, labelstudio_hook, run, groups[0]))
    first_group.start()
    batches = tmp_path / "store" / "ingest" / "runs" / run / "groups" / "0000" / "batches"
    deadline = time.monotonic() + 60
    while not (batches.exists() and any(batches.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.01)
    results = [ingest_group(spec, labelstudio_hook, run, groups[1])]
    first_group.join(timeout=120)
    concurrent = finish_ingest(spec, labelstudio_hook, run, results)
    assert concurrent["cross_group_duplicates"] == 1, "both groups should have imported the shared message"
    assert (concurrent["read"], concurrent["balanced"]) == (122, True)
    assert concurrent["imported"] + concurrent["duplicate"] == 122
    assert_one_task_per_content(labelstudio_hook, project_id, len(texts))

    # The second group retried twice, as if its worker died after importing but before its
    # receipt (the finished-object markers gone), and the reduce again: nothing changes.
    shutil.rmtree(tmp_path / "store" / "ingest" / "runs" / run / "objects")
    for _ in range(2):
        assert ingest_group(spec, labelstudio_hook, run, groups[1])["read"] == 21
    again = finish_ingest(spec, labelstudio_hook, run, results)
    assert {k: again[k] for k in ("read", "imported", "duplicate", "quarantined", "cross_group_duplicates")} == \
           {k: concurrent[k] for k in ("read", "imported", "duplicate", "quarantined", "cross_group_duplicates")}
    assert_one_task_per_content(labelstudio_hook, project_id, len(texts))

    second = run_dag(path, "ingest")
    assert second.state == "success"
    later = summary_of(spec, run_key(second.run_id))
    assert (later["groups"], later["objects"], later["read"], later["imported"]) == (1, 0, 0, 0)
    assert labelstudio_hook.task_count(project_id) == len(texts)
