"""Waiting without a worker, and collecting when people annotate, on a real Airflow.

The deferral test runs ``airflow standalone`` (scheduler, triggerer, DAG processor, API server;
LocalExecutor on its own SQLite DB) with ``AIRFLOW__CORE__PARALLELISM=1``: one task slot. While
a ``WaitForAnnotationsOperator`` is deferred, a task of another DAG runs and finishes in that slot;
only then is the annotation made that ends the wait. The same Airflow shows event-driven collection:
the collect DAG has no cron and no webhook is configured, yet an annotation made in Label Studio
starts a collect run through the annotations watcher (``collect.watch_seconds``). Label Studio is
the session's real server. The watcher itself is also driven directly: every change fires, and a
restarted watcher fires on its first poll for what the latest collect snapshot (on moto's S3) lacks.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import yaml

from labelloop.collect.snapshot import collect
from labelloop.collect.table import latest_snapshot, read_snapshot
from labelloop.dev.demo import Airflow
from labelloop.dev.stack import airflow_server, free_port
from labelloop.layout import Layout
from labelloop.project import ensure_project
from labelloop.settings import LABELSTUDIO_CONN_ID
from labelloop.spec import load_spec
from labelloop.triggers.labelstudio import LabelStudioAnnotationsChangedTrigger

from tests.conftest import REPO, TOKEN

pytestmark = pytest.mark.integration
WATCH_SECONDS = 2.0

OTHER_DAGS = '''
"""Test DAGs: a deferred wait, and another DAG's task that must find the single slot free."""
import pendulum
from datetime import timedelta
from airflow.sdk import DAG, task
from labelloop.operators import WaitForAnnotationsOperator

with DAG(dag_id="deferral_wait", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False):
    WaitForAnnotationsOperator(task_id="wait", project_id="{{ dag_run.conf['project_id'] }}", min_annotated=1,
                               poll_interval=1, wait_timeout=timedelta(minutes=10))

with DAG(dag_id="deferral_other", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False):

    @task
    def meanwhile() -> str:
        return "ran while the wait was deferred"

    meanwhile()
'''


def answer(spec: Any) -> list[dict[str, Any]]:
    return [{"from_name": spec.control_name, "to_name": spec.object_name, "type": "choices",
             "value": {"choices": [spec.labels[0]]}}]


def changes(trigger: LabelStudioAnnotationsChangedTrigger, act: list[Any], wait: float) -> list[dict[str, Any]]:
    """Run the watcher; after its first polls do each of ``act`` in turn. Per step: the last event in
    the ``wait`` seconds after it, ``{}`` for none (one annotation update stamps its task three
    times in one request, and on a loaded server a poll may see a stamp in between)."""

    async def watch() -> list[dict[str, Any]]:
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def consume() -> None:
            async with aclosing(trigger.run()) as stream:
                async for event in stream:
                    await events.put(event.payload)

        consumer = asyncio.create_task(consume())
        seen: list[dict[str, Any]] = []
        try:
            for step in [None, *act]:
                if step is not None:
                    await asyncio.to_thread(step)
                await asyncio.sleep(wait)
                window = [events.get_nowait() for _ in range(events.qsize())]
                seen.append(window[-1] if window else {})
        finally:
            consumer.cancel()
        return seen

    return asyncio.run(watch())


def test_watcher_fires_on_new_changed_and_deleted_annotations(labelstudio_hook, make_spec) -> None:
    hook = labelstudio_hook
    spec = load_spec(make_spec(model=None))
    project_id, _ = ensure_project(hook, spec)
    hook.client.projects.import_tasks(project_id, request=[{"data": {"text": f"message {i}"}} for i in range(3)])
    first, second = [task.id for task in hook.iter_tasks(project_id)][:2]
    trigger = LabelStudioAnnotationsChangedTrigger(title=spec.title, poll_interval=0.3)
    made: list[Any] = []

    seen = changes(trigger, [
        lambda: made.append(hook.create_annotation(first, answer(spec))),
        lambda: hook.client.annotations.update(made[0].id, result=[{**answer(spec)[0], "value": {
            "choices": [spec.labels[-1]]}}]),
        lambda: None,
        lambda: hook.client.annotations.delete(made[0].id),
        lambda: hook.create_annotation(second, answer(spec)),
    ], wait=3)
    assert seen[0] == {} and seen[3] == {}  # the first poll only records where it stands; no change: no event
    assert [event.get("annotations") for event in seen] == [None, 1, 1, None, 0, 1]
    assert all(event["project_id"] == project_id and event["tasks"] == 3 for event in seen if event)
    assert seen[1]["updated_at"] < seen[2]["updated_at"]  # an edit changes only the newest updated_at


def test_a_restarted_watcher_fires_for_what_the_latest_snapshot_lacks(labelstudio_hook, make_spec,
                                                                      s3_bucket, capfd) -> None:
    hook = labelstudio_hook
    spec = load_spec(make_spec(model=None, storage_uri=f"s3://{s3_bucket}/labelloop"))
    project_id, _ = ensure_project(hook, spec)
    hook.client.projects.import_tasks(project_id, request=[{"data": {"text": f"message {i}"}} for i in range(3)])
    first, second, third = [task.id for task in hook.iter_tasks(project_id)]

    def started() -> list[dict[str, Any]]:
        """A fresh watcher (a triggerer start) with the kwargs the DAG factory gives: its first poll's
        event, then whether a second poll fires too (the collect the first caused has not run)."""
        trigger = LabelStudioAnnotationsChangedTrigger(title=spec.title, poll_interval=0.3,
                                                       storage_uri=spec.storage_uri,
                                                       storage_conn_id=spec.source.conn_id)
        return changes(trigger, [lambda: None], wait=5)

    def collected(n: int) -> None:  # the real collect: snapshot, watermark, latest.json
        collect(spec, hook, f"manual__2026-03-0{n}T00:00:00+00:00", f"2026-03-0{n}T00:00:00+00:00")

    assert started() == [{}, {}], "tasks but no annotation and no snapshot: nothing to collect"
    hook.create_annotation(first, answer(spec))
    assert [event.get("annotations") for event in started()] == [1, None], "no snapshot holds the annotation"
    collected(1)
    assert started() == [{}, {}], "the latest snapshot holds the project as it stands"

    made = hook.create_annotation(second, answer(spec))  # while no watcher runs
    old_style = LabelStudioAnnotationsChangedTrigger(title=spec.title, poll_interval=0.3)
    assert changes(old_style, [], wait=3) == [{}], "without storage_uri the first poll only records"
    seen = started()
    assert seen[1] == {} and seen[0] == {"project_id": project_id, "tasks": 3, "annotations": 2,
                                         "updated_at": seen[0]["updated_at"]}
    collected(2)
    assert started() == [{}, {}]

    hook.client.annotations.delete(made.id)
    assert [event.get("annotations") for event in started()] == [1, None]
    collected(3)
    assert started() == [{}, {}]

    hook.client.tasks.delete(third)  # stamps no task that is left: only the totals tell
    assert [event.get("tasks") for event in started()] == [2, None]
    collected(4)
    assert started() == [{}, {}]

    Layout.of(spec).latest_snapshot.write_bytes(b'{"run": ')  # a broken pointer: collect rebuilds it
    capfd.readouterr()
    assert [event.get("annotations") for event in started()] == [1, None]
    assert "cannot tell whether the latest snapshot" in capfd.readouterr().out  # the watcher's warning
    collected(5)
    assert started() == [{}, {}]


def test_deferred_wait_frees_the_only_slot_and_annotations_start_collect(labelstudio, labelstudio_hook,
                                                                         tmp_path: Path) -> None:
    hook = labelstudio_hook
    raw = yaml.safe_load((REPO / "include" / "projects" / "sms_spam.yaml").read_text())
    name = f"deferral_{time.time_ns() % 10**8}"
    raw.update(name=name, title=f"test {name}", labeling_config=str(REPO / "include" / raw["labeling_config"]),
               guidelines=str(REPO / "include" / raw["guidelines"]), storage_uri=f"file://{tmp_path / 'store'}",
               model=None, schedules={"ingest": None, "collect": None}, collect={"watch_seconds": WATCH_SECONDS})
    raw["source"]["uri"] = f"file://{tmp_path / 'raw'}/"
    (tmp_path / "projects").mkdir()
    spec_path = tmp_path / "projects" / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = load_spec(spec_path)
    project_id, _ = ensure_project(hook, spec)
    hook.client.projects.import_tasks(project_id, request=[{"data": {"text": f"message {i}"}} for i in range(3)])
    tasks = [task.id for task in hook.iter_tasks(project_id)]

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "labelloop_projects.py").write_text((REPO / "dags" / "labelloop_projects.py").read_text())
    (dags / "deferral_dags.py").write_text(OTHER_DAGS)
    connections = {LABELSTUDIO_CONN_ID: {"conn_type": "labelstudio", "host": labelstudio.url, "password": TOKEN}}
    server = airflow_server(tmp_path / "stack", free_port(), connections)
    server.env.update({"AIRFLOW__CORE__PARALLELISM": "1", "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                       "LABELLOOP_PROJECTS_DIR": str(spec_path.parent)})
    server.start()
    try:
        airflow = Airflow(server.url)

        # 1. The wait defers; another DAG's task then runs in the single slot and finishes.
        waiting = airflow.trigger("deferral_wait", {"project_id": project_id})
        airflow.wait_for_task("deferral_wait", waiting, "wait", {"deferred"}, timeout=300)
        other = airflow.trigger("deferral_other")
        assert airflow.wait_for_run("deferral_other", other, timeout=300) == "success"
        assert airflow.task_states("deferral_wait", waiting)["wait"] == "deferred"  # still waiting, slot free

        # 2. Event-driven collection: the watcher has seen the project; an annotation starts collect.
        collect = f"{spec.dag_prefix}__collect"
        airflow.unpause(collect)
        wait_for_log(server.log_path, f"watching project {spec.title!r}")
        assert airflow.call("GET", f"/dags/{collect}/dagRuns")["total_entries"] == 0
        before = airflow.now()
        hook.create_annotation(tasks[0], answer(spec))  # also ends the wait of step 1
        started = time.monotonic()
        run = airflow.wait_for_triggered_run(collect, before, timeout=300)
        assert run["state"] == "success" and run["run_id"].startswith("asset_triggered__"), run
        took = time.monotonic() - started
        assert airflow.wait_for_run("deferral_wait", waiting, timeout=300) == "success"
    finally:
        server.stop()
    print(f"collect run finished {took:.1f} s after the annotation (watch every {WATCH_SECONDS} s)")
    folder = latest_snapshot(Layout.of(spec).root)
    assert len(read_snapshot(folder)["annotations"]) == 1
    assert json.loads((folder / "manifest.json").read_text())["run_id"] == run["run_id"]


def wait_for_log(log: Path, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {log}"
        time.sleep(1)
