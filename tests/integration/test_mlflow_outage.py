"""MLflow goes down mid-loop: nothing waits minutes, nothing is decided on a failed read.

A dedicated MLflow server (not the session's, so it can be stopped) backs a real project on
Label Studio: ingest, simulated labeling, collect, audit and retrain make a first champion.
Then MLflow stops. The retrain step and the registry watch must fail in seconds naming the
server (they used to take minutes, and the watch reported success with "no champion"); the
audit must complete without its MLflow run; ingest imports without pre-labels and says so.
After MLflow is back, no alias moved and the registry watch pre-labels what ingest left.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow import MlflowClient

from labelloop.audit.run import audit_latest
from labelloop.factory import retrain_dag
from labelloop.layout import storage_path
from labelloop.model.prelabel import CHAMPION, RegistryError
from labelloop.operators import TrainCandidateOperator
from labelloop.settings import MLFLOW_CONN_ID
from labelloop.dev.simulate import label_queue
from labelloop.spec import load_spec
from labelloop.dev.stack import free_port, mlflow_server

pytestmark = pytest.mark.integration
SMS = Path(__file__).resolve().parents[2] / "include" / "demo" / "sms-spam" / "messages.jsonl"
FAST = 60  # seconds: MLflow's default retries took ~4 minutes per call, 18 minutes per retrain


@pytest.fixture
def own_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An MLflow server of this test's own; the connection and MLFLOW_TRACKING_URI point at it."""
    server = mlflow_server(tmp_path / "mlflow-stack", free_port()).start()
    monkeypatch.setenv(f"AIRFLOW_CONN_{MLFLOW_CONN_ID.upper()}", json.dumps({"conn_type": "http", "host": server.url}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    yield server
    server.stop()


def write_raw(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(lines) + "\n")


def returned(run: Any, task_id: str) -> Any:
    """What a task of a dag.test() run returned (its XCom)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id,
                                                 key="return_value")).first()
        return XComModel.deserialize_value(row)


def tasks_from(hook: Any, project_id: int, source: str) -> list[Any]:
    return [t for t in hook.iter_tasks(project_id, fields="all") if source in t.data["labelloop_source"]]


def has_prediction(task: Any, model_version: str) -> bool:
    return any((p["model_version"] if isinstance(p, dict) else p.model_version) == model_version
               for p in task.predictions or [])


def test_mlflow_outage(run_dag, labelstudio_hook, own_mlflow, make_spec, tmp_path, caplog) -> None:
    lines = SMS.read_text().splitlines()
    write_raw(tmp_path / "raw", "round1.jsonl", lines[:400])
    path = make_spec(annotation={"annotators_per_task": 3, "gold_fraction": 0.15},
                     quality={"min_gold_accuracy": 0.5, "min_kappa": 0.1, "min_alpha": 0.1},
                     model={"name": f"outage_{tmp_path.name[-8:]}", "promotion_margin": 0.0, "min_score": 0.5})
    spec = load_spec(path)
    name, url = spec.model.name, own_mlflow.url
    client = MlflowClient(tracking_uri=url, registry_uri=url)

    # A first champion, with MLflow up.
    assert run_dag(path, "ingest").state == "success"
    project = labelstudio_hook.find_project(spec.title)
    assert label_queue(labelstudio_hook, spec, project.id, 150, [0.9, 0.95, 1.0], seed=1, prefix="outage") == 450
    for stage in ("collect", "audit", "retrain"):
        assert run_dag(path, stage).state == "success", stage
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"

    own_mlflow.stop()
    stopped = re.escape(f"MLflow at {url} failed")

    # The retrain DAG's train step: not "already trained" skipped, not "first model": a fast failure.
    train = retrain_dag(spec).task_dict["train"]
    assert isinstance(train, TrainCandidateOperator)
    started = time.monotonic()
    with pytest.raises(RegistryError, match=stopped):
        TrainCandidateOperator(task_id=train.task_id, spec_path=train.spec_path).execute(
            {"ti": SimpleNamespace(dag_id=retrain_dag(spec).dag_id)})
    assert time.monotonic() - started < FAST

    # The registry watch fails (it used to succeed with "no champion").
    started = time.monotonic()
    assert run_dag(path, "registry_watch").state == "failed"
    assert time.monotonic() - started < FAST

    # The audit completes without its MLflow run, and says so.
    root = storage_path(spec.storage_uri, spec.source.conn_id)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="labelloop.audit.run"):
        outcome = audit_latest(spec, "manual__during_outage")
    assert time.monotonic() - started < FAST
    assert outcome["mlflow_run_id"] is None and isinstance(outcome["gate"]["passed"], bool)
    written = {p.name for p in (root / "audit" / outcome["audit"]).iterdir()}
    assert written >= {"report.html", "metrics.json", "gate.json"}
    assert any("not logged to MLflow" in r.getMessage() and url in r.getMessage() for r in caplog.records)

    # Ingest keeps annotators supplied: tasks without pre-labels, flagged, left to the refresh.
    write_raw(tmp_path / "raw", "round2.jsonl", lines[400:460])
    ingest = run_dag(path, "ingest")
    assert ingest.state == "success"
    summary = returned(ingest, "reduce_summaries")
    assert summary["prelabels"].startswith("NONE, left to the next refresh") and url in summary["prelabels"]
    round2 = tasks_from(labelstudio_hook, project.id, "round2.jsonl")
    assert len(round2) == summary["imported"] > 50 and not any(t.predictions for t in round2)

    # MLflow back: nothing was registered or moved meanwhile; the watch pre-labels round 2.
    own_mlflow.start()
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"
    watch = run_dag(path, "registry_watch")
    assert watch.state == "success"
    assert returned(watch, "refresh_if_moved")["refreshed"] == len(round2)
    round2 = tasks_from(labelstudio_hook, project.id, "round2.jsonl")
    assert all(has_prediction(t, f"{name}:1") for t in round2)
    again = run_dag(path, "registry_watch")  # once done, it is done
    assert returned(again, "refresh_if_moved")["reason"] == "already refreshed for this version"
