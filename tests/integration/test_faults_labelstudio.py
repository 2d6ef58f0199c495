"""Label Studio misbehaving at every stage, through the fault proxy in front of the real server.

One project goes through the loop with the hook pointed at the proxy: ingest's imports lose
their answers (dropped mid-answer, a 500, a timeout after the server did the work), collect's
export is refused, polled through 500s and its download cut off, review routing's project
create and import lose their answers, and the pre-label refresh's prediction import gets a 502
after landing. Then Label Studio itself restarts during an incremental collect. Every stage
completes exactly once or fails naming Label Studio and completes on the retry; nothing is
there twice (tasks, review tasks, predictions, projects), and a failed collect moves no pointer.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from labelloop.audit.routing import review_title
from labelloop.audit.run import audit_latest, route_audit
from labelloop.collect.snapshot import collect
from labelloop.collect.table import latest_path, snapshot_folder
from labelloop.dev.simulate import label_queue
from labelloop.hooks.labelstudio import LabelStudioError, LabelStudioHook
from labelloop.ingest.pipeline import Ingest
from labelloop.layout import storage_path
from labelloop.model.retrain import refresh_prelabels
from labelloop.project import ensure_project
from labelloop.settings import LABELSTUDIO_CONN_ID
from labelloop.spec import load_spec
from labelloop.state import read_json
from labelloop.taskdata import HASH_FIELD

from tests.faults.proxy import FaultProxy
from tests.unit.test_backend_app import register_champion

pytestmark = pytest.mark.integration
SMS = Path(__file__).resolve().parents[2] / "include" / "demo" / "sms-spam" / "messages.jsonl"
IMPORT, PROJECTS = r"/api/projects/\d+/import$", r"/api/projects/?$"
EXPORTS, POLL, DOWNLOAD = r"/exports/?$", r"/exports/\d+/?$", r"/exports/\d+/download"


@pytest.fixture
def proxy(labelstudio: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The proxy in front of the session's Label Studio, and a connection ``labelstudio_faults`` to it."""
    token = json.loads(os.environ[f"AIRFLOW_CONN_{LABELSTUDIO_CONN_ID.upper()}"])["password"]
    with FaultProxy(labelstudio.url) as running:
        monkeypatch.setenv("AIRFLOW_CONN_LABELSTUDIO_FAULTS", json.dumps(
            {"conn_type": "labelstudio", "host": running.url, "password": token}))
        yield running


def one_each(hook: LabelStudioHook, project_id: int) -> Counter:
    """Tasks per content hash; asserts none is there twice."""
    hashes = Counter(task.data[HASH_FIELD] for task in hook.iter_tasks(project_id))
    assert hashes and max(hashes.values()) == 1, "a content hash appears on more than one task"
    return hashes


def collected(spec: Any, run: str) -> dict[str, Any] | None:
    return read_json(snapshot_folder(storage_path(spec.storage_uri, None), run) / "manifest.json", None)


def test_labelstudio_faults_at_every_stage_leave_everything_once(
        proxy, labelstudio, labelstudio_hook, mlflow_server, make_spec, tmp_path) -> None:
    lines = SMS.read_text().splitlines()[:200]
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "messages.jsonl").write_text("\n".join(lines) + "\n")
    unique = len({json.loads(line)["text"] for line in lines})
    spec = load_spec(make_spec(import_batch_size=40, annotation={"annotators_per_task": 3, "gold_fraction": 0.2},
                               model={"name": f"faults_ls_{tmp_path.name[-8:]}"}))
    project_id, _ = ensure_project(labelstudio_hook, spec)
    faulty = LabelStudioHook("labelstudio_faults", timeout=5)
    direct = labelstudio_hook

    # Ingest: three of five import POSTs land but their answers are lost, or never land.
    proxy.drop(path=IMPORT, method="POST")                       # landed, cut off mid-answer
    proxy.fail(500, path=IMPORT, method="POST")                  # refused before landing
    proxy.delay(8, path=IMPORT, method="POST")                   # landed, the client timed out
    summary = Ingest(spec, faulty, "manual__faults").run(project_id)
    assert proxy.faults(IMPORT) == 3
    assert (summary["read"], summary["imported"], summary["duplicate"]) == (200, unique, 200 - unique)
    assert len(one_each(direct, project_id)) == unique

    # Collect: the export create refused, the poll answered 500 twice, the download cut off.
    labelled = label_queue(direct, spec, project_id, 30, [0.9, 0.95, 1.0], seed=3, prefix="faults")
    assert labelled == 90
    proxy.fail(503, path=EXPORTS, method="POST", retry_after=1)
    proxy.fail(500, path=POLL, method="GET", times=2, retry_after=1)
    proxy.drop(path=DOWNLOAD, method="GET")
    root = storage_path(spec.storage_uri, None)
    with pytest.raises(LabelStudioError, match=rf"Label Studio at {proxy.url} .*reading the answer to GET "
                                               rf"/api/projects/{project_id}/exports/\d+/download"):
        collect(spec, faulty, "manual__collect1", "2026-12-01T10:00:00+00:00")
    assert proxy.faults(EXPORTS) == 1 and proxy.faults(POLL) == 2 and proxy.faults(DOWNLOAD) == 1
    assert collected(spec, "manual__collect1") is None and not latest_path(root).exists()  # nothing claimed
    first = collect(spec, faulty, "manual__collect1", "2026-12-01T10:00:00+00:00")  # the retry
    assert first["latest"] and first["counts"]["labelled_tasks"] == 30 and first["counts"]["annotations"] == 90
    assert list(direct.client.projects.exports.list(project_id)) == []  # both attempts deleted their export

    # Review routing: the review project's create and its import both land with their answers lost.
    outcome = audit_latest(spec, "manual__audit1")
    proxy.drop(path=PROJECTS, method="POST")
    proxy.fail(502, path=IMPORT, method="POST", after_forward=True)
    routed = route_audit(spec, faulty, outcome)
    assert proxy.faults(PROJECTS) == 1 and proxy.faults(IMPORT) == 4
    assert routed["routed"] == routed["selected"] > 0
    reviews = [p for p in direct.client.projects.list(title=review_title(spec)) if p.title == review_title(spec)]
    assert len(reviews) == 1, "the review project was created twice"
    assert len(one_each(direct, reviews[0].id)) == routed["routed"]
    again = route_audit(spec, faulty, outcome)
    assert (again["routed"], again["already_routed"]) == (0, routed["selected"])

    # Pre-label refresh: the prediction import lands and answers 502; two task updates fail first.
    version = register_champion(mlflow_server.url, spec.model.name)
    model_version = f"{spec.model.name}:{version}"
    proxy.fail(502, path=r"/import/predictions$", method="POST", after_forward=True)
    proxy.fail(500, path=r"/api/tasks/\d+/?$", method="PATCH", times=2)
    refreshed = refresh_prelabels(spec, faulty, mlflow_server.url)
    assert proxy.faults(r"/import/predictions$") == 1 and proxy.faults(r"/api/tasks/") == 2
    unlabeled = list(direct.iter_unlabeled_tasks(project_id))
    per_task = Counter(p["model_version"] if isinstance(p, dict) else p.model_version
                       for task in unlabeled for p in task.predictions or [])
    assert refreshed["refreshed"] == len(unlabeled) == unique - 30
    assert per_task == {model_version: len(unlabeled)}, "a task holds its prediction twice"
    assert refresh_prelabels(spec, faulty, mlflow_server.url)["reason"] == "already refreshed for this version"

    # Label Studio restarts while an incremental collect polls its export.
    assert label_queue(direct, spec, project_id, 10, [1.0, 1.0, 1.0], seed=4, prefix="faults") == 30
    hold = proxy.delay(3, path=POLL, method="GET", after_forward=False)
    result: dict[str, Any] = {}

    def run_collect() -> None:
        try:
            result["collect"] = collect(spec, faulty, "manual__collect2", "2026-12-01T11:00:00+00:00")
        except Exception as error:  # examined below
            result["error"] = error

    worker = threading.Thread(target=run_collect)
    worker.start()
    deadline = time.monotonic() + 120
    while hold.used == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hold.used == 1, "collect never polled its export"
    labelstudio.stop()
    labelstudio.start()
    worker.join(timeout=300)
    assert proxy.requests(POLL, faulted=True)[-1].fault in ("delay", "upstream down")
    if "error" in result:  # Label Studio took longer than the hook's retries: a clear failure, then the retry
        assert isinstance(result["error"], LabelStudioError) and proxy.url in str(result["error"])
        assert read_json(latest_path(root), None)["run"] == "manual__collect1"  # the pointer did not move
        result["collect"] = collect(spec, faulty, "manual__collect2", "2026-12-01T11:00:00+00:00")
    second = result["collect"]
    assert second["mode"] == "incremental" and second["latest"]
    assert (second["counts"]["labelled_tasks"], second["counts"]["annotations"]) == (40, 120)
    assert read_json(latest_path(root), None)["run"] == "manual__collect2"
    assert list(direct.client.projects.exports.list(project_id)) == []
    assert len(one_each(direct, project_id)) == unique
