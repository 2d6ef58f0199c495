"""The worker killed (SIGKILL) inside each stage, then the stage run again: it completes once.

Each stage runs the function its DAG task calls, in a child Python process, with Label Studio or
MLflow behind the test's fault proxy; the proxy holds the next call of the stage (its export
download, its review import, its alias move, its prediction import) so the kill lands mid-stage,
after a side effect the test can see. The retry then runs the stage as Airflow's retry would (same
run id, the upstream task's XCom), and the state is checked: nothing twice, the latest snapshot
pointer valid, the champion alias right. Last, a manual and a scheduled collect of one project race.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from labelloop import factory
from labelloop.audit.routing import review_title
from labelloop.audit.run import audit_latest, mark_passed, route_audit
from labelloop.collect.snapshot import collect
from labelloop.collect.table import latest_path
from labelloop.ingest.pipeline import Ingest
from labelloop.dev.simulate import label_queue
from labelloop.layout import storage_path
from labelloop.model.retrain import NothingToTrain, promote, refresh_prelabels, retrain
from labelloop.project import ensure_project
from labelloop.spec import load_spec
from labelloop.state import read_json

from tests.faults.proxy import FaultProxy
from tests.integration.test_faults_labelstudio import DOWNLOAD, IMPORT, collected, one_each, proxy  # noqa: F401
from tests.integration.test_faults_mlflow import ALIAS, champion, history
from tests.integration.test_faults_storage import CONN as S3_CONN, s3_proxy  # noqa: F401
from tests.integration.test_ingest import write_messages

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
HOLD = 300  # seconds the proxy holds the call the stage is killed in: far longer than the test waits
PREDICTIONS = r"/import/predictions$"


def run_stage(stage: str, spec_path: str, run_id: str, out: str, mlflow_url: str = "", run_after: str = "") -> None:
    """In the child process: the stage as its DAG task calls it, Label Studio behind the proxy.
    ``out`` gets what the task would return to XCom before its downstream part starts."""
    from labelloop.hooks.labelstudio import LabelStudioHook

    spec, hook = load_spec(Path(spec_path)), LabelStudioHook("labelstudio_faults")
    if stage == "collect":
        result = collect(spec, hook, run_id, run_after)
    elif stage == "audit":  # the audit task, its XCom, then the route task
        result = audit_latest(spec, run_id)
        Path(out).write_text(json.dumps(result))
        result = route_audit(spec, hook, result)
    elif stage == "retrain":  # the train task, its XCom, then the promote task
        result = retrain(spec, mlflow_url)
        Path(out).write_text(json.dumps(result))
        result = {"promoted": promote(spec, mlflow_url, result, "retrain DAG")}
    elif stage == "refresh":
        result = refresh_prelabels(spec, hook, mlflow_url)
    else:
        raise ValueError(f"unknown stage {stage!r}: collect, audit, retrain or refresh")
    Path(out).write_text(json.dumps(result))


def start_stage(stage: str, spec_path: Path, run_id: str, out: Path, go: Path | None = None,
                **kwargs: str) -> subprocess.Popen[str]:
    """A child Python process running ``run_stage`` (the connections come with the environment);
    with ``go``, it imports everything, then waits for that file to exist before it starts."""
    code = ("import json, sys, time; from pathlib import Path; from tests.integration.test_worker_kills import run_stage\n"
            "while sys.argv[2] and not Path(sys.argv[2]).exists(): time.sleep(0.05)\n"
            "run_stage(**json.loads(sys.argv[1]))")
    arguments = {"stage": stage, "spec_path": str(spec_path), "run_id": run_id, "out": str(out), **kwargs}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)])}
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(arguments), str(go or "")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when(child: subprocess.Popen[str], mid_stage: Callable[[], bool], what: str, timeout: float = 240) -> None:
    """SIGKILL the child once ``mid_stage()`` holds; fails if the stage ends or never gets there."""
    deadline = time.monotonic() + timeout
    while not mid_stage():
        if child.poll() is not None:
            raise AssertionError(f"the stage ended before {what}:\n{child.stdout.read()}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    child.stdout.close()  # type: ignore[union-attr]


def finish(child: subprocess.Popen[str]) -> None:
    output, _ = child.communicate(timeout=300)
    assert child.returncode == 0, output


def exports(hook: Any, project_id: int) -> list[Any]:
    return list(hook.client.projects.exports.list(project_id))


def review_projects(hook: Any, spec: Any) -> list[Any]:
    return [p for p in hook.client.projects.list(title=review_title(spec)) if p.title == review_title(spec)]


def versions(client: MlflowClient, name: str) -> list[str]:
    return sorted(v.version for v in client.search_model_versions(f"name='{name}'"))


def names(folder: Any) -> list[str]:
    """The files in a storage folder as they are now (s3fs keeps listings of the test's process)."""
    folder.fs.invalidate_cache()
    return sorted(path.name for path in folder.iterdir())


def predictions_per_version(hook: Any, project_id: int) -> tuple[int, Counter]:
    tasks = list(hook.iter_unlabeled_tasks(project_id))
    return len(tasks), Counter(p["model_version"] if isinstance(p, dict) else p.model_version
                               for task in tasks for p in task.predictions or [])


def test_a_stage_killed_midway_completes_once_on_retry(
        proxy, labelstudio_hook, mlflow_server, make_spec, tmp_path) -> None:  # noqa: F811
    unique = write_messages(tmp_path / "raw", 240, files=1)
    path = make_spec(import_batch_size=60, annotation={"annotators_per_task": 3, "gold_fraction": 0.25},
                     quality={"min_gold_accuracy": 0.5, "min_kappa": 0.0, "min_alpha": 0.0},
                     model={"name": f"kills_{tmp_path.name[-8:]}", "min_score": 0.0, "promotion_margin": 0.0})
    spec, hook = load_spec(path), labelstudio_hook
    project_id, _ = ensure_project(hook, spec)
    assert Ingest(spec, hook, "manual__ingest").run(project_id)["imported"] == unique
    assert label_queue(hook, spec, project_id, 80, [0.9, 0.95, 1.0], seed=5, prefix="kills") == 240
    root, out = storage_path(spec.storage_uri, None), tmp_path / "xcom.json"

    # Collect, killed while it downloads its export snapshot: the export exists in Label Studio.
    held = proxy.delay(HOLD, path=DOWNLOAD, method="GET", after_forward=False)
    child = start_stage("collect", path, "manual__collect", out, run_after="2026-12-01T10:00:00+00:00")
    kill_when(child, lambda: held.used == 1 and bool(exports(hook, project_id)), "the export downloading")
    assert collected(spec, "manual__collect") is None and not latest_path(root).exists()  # nothing claimed
    assert len(exports(hook, project_id)) == 1  # the killed worker could not delete its export
    proxy.clear()
    first = collect(spec, hook, "manual__collect", "2026-12-01T10:00:00+00:00")  # Airflow's retry
    assert first["latest"] and (first["counts"]["labelled_tasks"], first["counts"]["annotations"]) == (80, 240)
    assert read_json(latest_path(root), None)["run"] == "manual__collect"
    assert exports(hook, project_id) == []  # the retry deleted the killed attempt's export, then its own

    # Audit and routing, killed after the review import landed but before routing recorded it.
    proxy.delay(HOLD, path=IMPORT, method="POST", after_forward=True)

    child = start_stage("audit", path, "manual__audit", out)
    kill_when(child, lambda: any(hook.task_count(p.id) for p in review_projects(hook, spec)),
              "the first review tasks imported")
    outcome = json.loads(out.read_text())  # the audit task's XCom: the route task is what was killed
    proxy.clear()
    assert audit_latest(spec, "manual__audit")["gate"] == outcome["gate"]  # a re-run of audit agrees
    routed = route_audit(spec, hook, outcome)  # the retry of route
    assert routed["selected"] > 0 and routed["routed"] + routed["already_routed"] == routed["selected"]
    assert routed["already_routed"] > 0  # the killed attempt's import did land: the retry found it
    reviews = review_projects(hook, spec)
    assert len(reviews) == 1 and len(one_each(hook, reviews[0].id)) == routed["selected"]
    assert outcome["gate"]["passed"], outcome["gate"]["summary"]
    mark_passed(spec, outcome)

    # Retrain, killed after registering version 1 and while the alias move is held (not done).
    client, name = MlflowClient(mlflow_server.url, mlflow_server.url), spec.model.name
    with FaultProxy(mlflow_server.url) as registry:
        alias = registry.delay(HOLD, path=ALIAS, method="POST", after_forward=False)
        out.unlink()
        child = start_stage("retrain", path, "manual__retrain", out, mlflow_url=registry.url)
        kill_when(child, lambda: alias.used == 1, "the alias move")
    assert versions(client, name) == ["1"]
    assert client.get_registered_model(name).aliases == {} and history(client, name) == []
    trained = json.loads(out.read_text())  # the train task's XCom
    assert trained["promote"] and trained["version"] == "1"
    assert promote(spec, mlflow_server.url, trained, "retrain DAG")  # the retry of promote
    assert champion(client, name) == "1" and [m["version"] for m in history(client, name)] == ["1"]
    with pytest.raises(NothingToTrain, match="already trained on this data"):  # a new run registers nothing
        retrain(spec, mlflow_server.url)
    assert versions(client, name) == ["1"]

    # Refresh, killed after its predictions landed in Label Studio, before its marker recorded them.
    proxy.delay(HOLD, path=PREDICTIONS, method="POST", after_forward=True)
    child = start_stage("refresh", path, "manual__refresh", out, mlflow_url=mlflow_server.url)
    kill_when(child, lambda: bool(predictions_per_version(hook, project_id)[1]), "the first predictions")
    proxy.clear()
    refreshed = refresh_prelabels(spec, hook, mlflow_server.url)  # the retry
    unlabeled, per_version = predictions_per_version(hook, project_id)
    assert unlabeled == unique - 80 and per_version == {f"{name}:1": unlabeled}, "a task holds its prediction twice"
    assert refreshed["model_version"] == f"{name}:1" and refreshed["refreshed"] < unlabeled  # some had landed
    assert refresh_prelabels(spec, hook, mlflow_server.url)["reason"] == "already refreshed for this version"
    assert len(one_each(hook, project_id)) == unique


def test_a_manual_and_a_scheduled_collect_racing_leave_the_later_one_latest(
        proxy, labelstudio_hook, make_spec, tmp_path) -> None:  # noqa: F811
    write_messages(tmp_path / "raw", 60, files=1)
    path = make_spec()
    spec, hook = load_spec(path), labelstudio_hook
    assert all(dag.max_active_runs == 1 for dag in factory.build_dags(path.parent).values())  # what forbids it
    project_id, _ = ensure_project(hook, spec)
    Ingest(spec, hook, "manual__ingest").run(project_id)
    assert label_queue(hook, spec, project_id, 10, [1.0, 1.0, 1.0], seed=6, prefix="race") == 30
    root = storage_path(spec.storage_uri, None)

    # Both runs at once anyway (a second scheduler, a cleared run): the scheduled one is held at its
    # download while the manual one (a later run_after) runs whole; then the scheduled one finishes.
    held = proxy.delay(20, path=DOWNLOAD, method="GET", after_forward=False)
    go_scheduled, go_manual = tmp_path / "go-scheduled", tmp_path / "go-manual"
    scheduled = start_stage("collect", path, "scheduled__2026-12-01T12:00:00+00:00", tmp_path / "scheduled.json",
                            go=go_scheduled, run_after="2026-12-01T12:00:00+00:00")
    manual = start_stage("collect", path, "manual__2026-12-01T12:00:30+00:00", tmp_path / "manual.json",
                         go=go_manual, run_after="2026-12-01T12:00:30+00:00")
    go_scheduled.touch()
    deadline = time.monotonic() + 120
    while held.used == 0 and time.monotonic() < deadline and scheduled.poll() is None:
        time.sleep(0.1)
    assert held.used == 1, "the scheduled run never reached its download"
    go_manual.touch()
    finish(manual)
    assert scheduled.poll() is None, "the runs did not overlap: the scheduled one ended first"
    finish(scheduled)
    results = [json.loads((tmp_path / f"{kind}.json").read_text()) for kind in ("scheduled", "manual")]
    assert [r["counts"] for r in results] == [results[0]["counts"]] * 2
    assert results[0]["counts"]["annotations"] == 30
    latest = read_json(latest_path(root), None)
    assert latest["run"] == results[1]["run"]  # the later run_after keeps the pointer although it finished first
    assert results[1]["latest"] and not results[0]["latest"]
    assert all(collected(spec, r["run"]) is not None for r in results)
    assert exports(hook, project_id) == []


def test_audit_and_retrain_killed_before_their_outputs_are_done_complete_once_on_retry(
        proxy, s3_proxy, s3_bucket, labelstudio_hook, mlflow_server, make_spec, tmp_path,  # noqa: F811
        monkeypatch) -> None:
    from labelloop.layout import Layout

    write_messages(tmp_path / "raw", 120, files=1)
    path = make_spec(storage_uri=f"s3://{s3_bucket}/kills", source={"conn_id": S3_CONN},
                     annotation={"annotators_per_task": 3, "gold_fraction": 0.25},
                     quality={"min_gold_accuracy": 0.5, "min_kappa": 0.0, "min_alpha": 0.0},
                     model={"name": f"akills_{tmp_path.name[-8:]}", "min_score": 0.0, "promotion_margin": 0.0})
    spec, hook = load_spec(path), labelstudio_hook
    project_id, _ = ensure_project(hook, spec)
    Ingest(spec, hook, "manual__ingest").run(project_id)
    assert label_queue(hook, spec, project_id, 60, [0.9, 0.95, 1.0], seed=7, prefix="akills") == 180
    collect(spec, hook, "manual__collect", "2026-12-01T10:00:00+00:00")
    layout, out, run = Layout.of(spec), tmp_path / "xcom.json", "manual__audit"
    folder = layout.audit_run(run)
    client, name = MlflowClient(mlflow_server.url, mlflow_server.url), spec.model.name

    # Audit killed while it writes its outputs (the S3 upload of metrics.json held): a partial folder.
    held = s3_proxy.delay(HOLD, path=rf"/audit/{run}/metrics\.json$", method="PUT", after_forward=False)
    kill_when(start_stage("audit", path, run, out), lambda: held.used == 1, "the upload of metrics.json")
    s3_proxy.clear()
    assert names(folder) == ["consensus.parquet"]  # no gate.json: not complete
    assert "latest.json" not in names(layout.audit)

    # Killed again while it logs to MLflow: every file written, latest.json not yet; an MLflow run open.
    mlflow_conn = os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"]
    with FaultProxy(mlflow_server.url) as registry:
        monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "http", "host": registry.url}))
        batch = registry.delay(HOLD, path=r"/runs/log-batch$", method="POST", after_forward=False)
        kill_when(start_stage("audit", path, run, out), lambda: batch.used == 1, "the audit's MLflow log")
        monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_conn)
    assert names(folder) == ["consensus.parquet", "gate.json", "metrics.json", "report.html"]
    assert "latest.json" not in names(layout.audit) and not out.exists()  # not taken as done

    outcome = audit_latest(spec, run)  # Airflow's retry of the audit task
    layout.audit.fs.invalidate_cache()
    assert read_json(layout.audit / "latest.json", None)["audit"] == run
    assert json.loads((folder / "gate.json").read_text()) == outcome["gate"] and outcome["gate"]["passed"]
    quality = client.get_experiment_by_name(f"labelloop/{spec.name}/quality").experiment_id
    (logged,) = client.search_runs([quality], filter_string=f"tags.labelloop_run = '{run}'")
    assert logged.info.run_id == outcome["mlflow_run_id"] and logged.info.status == "FINISHED"
    assert logged.data.params and logged.data.metrics["gate_passed"] == 1.0  # params of the killed attempt's run
    routed = route_audit(spec, hook, outcome)
    assert routed["selected"] > 0 and (routed["routed"], routed["already_routed"]) == (routed["selected"], 0)
    (review,) = review_projects(hook, spec)
    assert len(one_each(hook, review.id)) == routed["selected"]
    again = route_audit(spec, hook, outcome)  # a retry of route: each item already there, once
    assert (again["routed"], again["already_routed"]) == (0, routed["selected"])
    mark_passed(spec, outcome)

    # Retrain killed while it uploads the model (no version yet), then after its version landed
    # (the registration's answer held): neither attempt decided anything.
    with FaultProxy(mlflow_server.url) as registry:
        upload = registry.delay(HOLD, path=r"/mlflow-artifacts/artifacts/.+/model\.pkl$", method="PUT",
                                after_forward=False)
        kill_when(start_stage("retrain", path, "manual__retrain", out, mlflow_url=registry.url),
                  lambda: upload.used == 1, "the model upload")
        assert client.search_registered_models(f"name='{name}'") == [] or versions(client, name) == []
        registry.clear()
        created = registry.delay(HOLD, path=r"/model-versions/create$", method="POST", after_forward=True)
        kill_when(start_stage("retrain", path, "manual__retrain", out, mlflow_url=registry.url),
                  lambda: created.used == 1 and bool(client.search_model_versions(f"name='{name}'")),
                  "the version registered")
    assert versions(client, name) == ["1"] and "validation_status" not in client.get_model_version(name, "1").tags
    assert client.get_registered_model(name).aliases == {} and not out.exists()

    trained = retrain(spec, mlflow_server.url)  # Airflow's retry of train: it decides on version 1
    assert versions(client, name) == ["1"], "the retry registered a second version for one run"
    assert trained["version"] == "1" and trained["promote"]
    tags = client.get_model_version(name, "1").tags
    assert tags["validation_status"] == "approved" and tags["train_digest"] == trained["train_digest"]
    training = client.get_experiment_by_name(f"labelloop/{spec.name}/training").experiment_id
    statuses = sorted(r.info.status for r in client.search_runs([training]))
    assert statuses == ["FINISHED", "KILLED"], statuses  # the upload's orphan run marked, not left RUNNING
    assert client.get_registered_model(name).aliases == {}  # the champion moves only in promote
    assert promote(spec, mlflow_server.url, trained, "retrain DAG") and champion(client, name) == "1"
    with pytest.raises(NothingToTrain, match="already trained on this data"):
        retrain(spec, mlflow_server.url)
    assert versions(client, name) == ["1"] and [m["version"] for m in history(client, name)] == ["1"]
