"""The embedded stack's scheduler killed (SIGKILL) with a DAG run in progress, then started again.

`airflow standalone` as the embedded stack runs it (labelloop.dev.stack.airflow_server), Label Studio
behind the test's fault proxy. The proxy holds one call of a running task (an ingest group's import,
collect's export download) so the kill lands while that task runs and other tasks wait. Only the
scheduler process dies: its LocalExecutor workers live on, orphaned, still running their tasks (as
when the kernel's OOM killer picks the scheduler). The scheduler is started again the way standalone
starts it (``standalone_scheduler``: same command, same environment) after its heartbeat went stale,
so the new one marks the dead one failed and resets its task instances: the held task runs a second
time while the orphaned attempt may still be alive. The run must complete, every record once.

One setting differs from the embedded stack: ``scheduler_health_check_threshold`` is 10 s (30 s by
default), so the dead scheduler is declared dead after 10 s instead of 30 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from labelloop import settings
from labelloop.collect.table import latest_path
from labelloop.dev.demo import Airflow
from labelloop.dev.production import component_healthy
from labelloop.dev.simulate import label_queue
from labelloop.dev.stack import Server, airflow_server, free_port, standalone_scheduler
from labelloop.layout import run_key, storage_path
from labelloop.project import ensure_project
from labelloop.spec import ProjectSpec, load_spec
from labelloop.state import read_json

from tests.conftest import REPO, TOKEN
from tests.faults.proxy import FaultProxy
from tests.integration.test_faults_labelstudio import DOWNLOAD, IMPORT, collected, one_each
from tests.integration.test_ingest import write_messages

pytestmark = pytest.mark.integration
THRESHOLD = 10  # seconds without a heartbeat before a scheduler counts as dead
HOLD = 30  # seconds the proxy holds the call the task is in when the scheduler dies


@dataclass
class Stack:
    spec: ProjectSpec
    server: Server
    proxy: FaultProxy
    airflow: Airflow
    schedulers: list[Server] = field(default_factory=list)  # the ones the test started
    orphans: list[int] = field(default_factory=list)  # killed schedulers' workers (no server stops them)


@pytest.fixture(scope="module")
def restart_stack(labelstudio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("restart")
    raw = yaml.safe_load((REPO / "include" / "projects" / "sms_spam.yaml").read_text())
    name = f"restart_{time.time_ns() % 10**8}"
    raw.update(name=name, title=f"test {name}", labeling_config=str(REPO / "include" / raw["labeling_config"]),
               guidelines=str(REPO / "include" / raw["guidelines"]), storage_uri=f"file://{folder / 'store'}",
               import_batch_size=25, schedules={"ingest": None, "collect": None},
               ingest={"group_bytes": 1, "max_groups": 16}, collect={"watch_seconds": None})
    raw["source"]["uri"] = f"file://{folder / 'raw'}/"
    raw.pop("model", None)  # no registry: ingest imports without pre-labels
    (folder / "projects").mkdir()
    spec_path = folder / "projects" / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with FaultProxy(labelstudio.url) as proxy:
        connections = {settings.LABELSTUDIO_CONN_ID: {"conn_type": "labelstudio", "host": proxy.url,
                                                      "password": TOKEN}}
        server = airflow_server(folder / "stack", free_port(), connections)
        server.env.update({settings.PROJECTS_DIR_ENV: str(spec_path.parent),
                           "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": str(THRESHOLD)})
        server.start()
        stack = Stack(load_spec(spec_path), server, proxy, Airflow(server.url))
        try:
            yield stack
        finally:
            for scheduler in stack.schedulers:
                scheduler.stop()
            server.stop()  # standalone's process group: its components
            for pid in stack.orphans:  # the killed schedulers' LocalExecutor workers, idle or not
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def scheduler_pid(stack: Stack) -> int:
    """The running scheduler: the last one the test started, else standalone's own."""
    if stack.schedulers:
        return stack.schedulers[-1].process.pid  # type: ignore[union-attr]
    (child,) = [p for p in psutil.Process(stack.server.process.pid).children()  # type: ignore[union-attr]
                if p.cmdline()[-1:] == ["scheduler"]]
    return child.pid


def kill_and_restart_scheduler(stack: Stack) -> list[int]:
    """SIGKILL the scheduler alone, wait until the API server reports it dead, start it again;
    returns the pids of its orphaned LocalExecutor workers (still alive after the kill)."""
    pid = scheduler_pid(stack)
    workers = [child.pid for child in psutil.Process(pid).children()]
    os.kill(pid, signal.SIGKILL)
    scheduler_up = component_healthy(stack.server.url, "scheduler")
    deadline = time.monotonic() + 60
    while scheduler_up():
        assert time.monotonic() < deadline, "the API server still reports the killed scheduler healthy"
        time.sleep(1)
    orphans = [worker for worker in workers if psutil.pid_exists(worker)]
    stack.orphans += orphans
    stack.schedulers.append(standalone_scheduler(stack.server).start())
    return orphans


def states(stack: Stack, dag_id: str, run_id: str) -> dict[str, list[str]]:
    """Each task's state, every map index of a mapped task."""
    found: dict[str, list[str]] = {}
    for ti in stack.airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]:
        found.setdefault(ti["task_id"], []).append(str(ti["state"]))
    return found


def tries(stack: Stack, dag_id: str, run_id: str, task_id: str) -> list[int]:
    return sorted(ti["try_number"] for ti in stack.airflow.call(
        "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"] if ti["task_id"] == task_id)


def xcom(stack: Stack, dag_id: str, run_id: str, task_id: str) -> Any:
    entry = stack.airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/"
                                      "return_value")
    value = entry["value"]
    return json.loads(value) if isinstance(value, str) else value


def wait_for(condition: Any, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.5)


def test_the_scheduler_killed_mid_run_and_started_again_completes_the_run_once(
        restart_stack: Stack, labelstudio_hook: Any) -> None:
    stack, hook = restart_stack, labelstudio_hook
    spec, prefix = stack.spec, stack.spec.dag_prefix
    unique = write_messages(Path(spec.source.uri.removeprefix("file://")), 300, files=6)
    project_id, _ = ensure_project(hook, spec)

    # Ingest: six groups, four run at a time; one group's first import lands, its answer held.
    ingest = f"{prefix}__ingest"
    held = stack.proxy.delay(HOLD, path=IMPORT, method="POST", after_forward=True)
    run_id = stack.airflow.trigger(ingest)
    wait_for(lambda: held.used == 1, "an ingest group's first import")
    at_kill = states(stack, ingest, run_id)
    orphans = kill_and_restart_scheduler(stack)
    assert orphans, "no LocalExecutor worker outlived the scheduler"
    assert "running" in at_kill["ingest_group"] and at_kill["reduce_summaries"] != ["success"], at_kill
    assert stack.airflow.wait_for_run(ingest, run_id, timeout=600) == "success"
    summary = xcom(stack, ingest, run_id, "reduce_summaries")
    assert len(one_each(hook, project_id)) == unique, "a record is missing or on two tasks"
    assert summary["imported"] == unique and summary["balanced"] and summary["read"] == 300, summary
    assert summary["groups"] == 6 and states(stack, ingest, run_id)["announce"] == ["success"]
    print(f"ingest: at the kill {at_kill}; ingest_group tries {tries(stack, ingest, run_id, 'ingest_group')}; "
          f"{len(orphans)} orphaned workers; summary read {summary['read']} imported {summary['imported']} "
          f"duplicate {summary['duplicate']} cross-group {summary['cross_group_duplicates']}")

    # Collect: killed again (the restarted scheduler this time) while the export download is held.
    assert label_queue(hook, spec, project_id, 30, [1.0, 1.0, 1.0], seed=8, prefix="restart") == 90
    collect = f"{prefix}__collect"
    held = stack.proxy.delay(HOLD, path=DOWNLOAD, method="GET", after_forward=False)
    run_id = stack.airflow.trigger(collect)
    wait_for(lambda: held.used == 1, "collect's export download")
    at_kill = states(stack, collect, run_id)
    assert at_kill["collect"] == ["running"], at_kill
    kill_and_restart_scheduler(stack)
    assert stack.airflow.wait_for_run(collect, run_id, timeout=600) == "success"
    result = xcom(stack, collect, run_id, "collect")
    assert (result["counts"]["labelled_tasks"], result["counts"]["annotations"]) == (30, 90), result["counts"]
    latest = read_json(latest_path(storage_path(spec.storage_uri, None)), None)
    assert result["latest"] and latest["run"] == run_key(run_id) == result["run"], latest
    assert collected(spec, run_key(run_id)) is not None
    wait_for(lambda: list(hook.client.projects.exports.list(project_id)) == [], "no export left in Label Studio",
             timeout=HOLD + 30)  # (the orphaned attempt, if alive, deletes its own when its download ends)
    assert len(one_each(hook, project_id)) == unique
    print(f"collect: tries {tries(stack, collect, run_id, 'collect')}; counts {result['counts']}")
