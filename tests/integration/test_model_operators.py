"""The model operators in a DAG of someone else's: train a candidate, promote it, refresh pre-labels.

Real MLflow and Label Studio; what comes in is a passed audit written straight to the object store
(as test_approval.py seeds it): this test is about the operators leaving what the retrain DAG leaves.
"""

from __future__ import annotations

import json
import uuid

import pendulum
import pytest
from mlflow import MlflowClient

from labelloop.model.prelabel import CHAMPION
from labelloop.model.registry import champion_history
from labelloop.operators.links import MLflowRunLink
from labelloop.operators import (
    PromoteCandidateOperator,
    RefreshPrelabelsOperator,
    RollbackChampionOperator,
    TrainCandidateOperator,
)
from labelloop.project import ensure_project
from labelloop.spec import load_spec

from tests.conftest import SMS
from tests.integration.test_approval import GOLD, SMALL, seed_passed_audit
from tests.integration.test_provider_operators import register, xcom

pytestmark = pytest.mark.integration


def test_train_promote_refresh_operators(airflow_db, labelstudio_hook, mlflow_server, make_spec,
                                         monkeypatch) -> None:
    from airflow.sdk import DAG

    model = f"m_{uuid.uuid4().hex[:8]}"
    path = make_spec(model={"name": model, "min_score": 0.5, "require_approval": False})
    spec = load_spec(path)
    project_id, _ = ensure_project(labelstudio_hook, spec)
    labelstudio_hook.client.projects.import_tasks(project_id, request=[{"data": {"text": "win a free prize now"}}])
    records = list({r["text"]: r for r in map(json.loads, SMS.read_text().splitlines())}.values())
    seed_passed_audit(spec, "seeded", records[:GOLD + SMALL], GOLD)

    with DAG(dag_id=f"user_model_{spec.name}", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
             catchup=False) as dag:
        train = TrainCandidateOperator(task_id="train", spec_path=str(path))
        promote = PromoteCandidateOperator(task_id="promote", spec_path=str(path), outcome=train.output)
        refresh = RefreshPrelabelsOperator(task_id="refresh", spec_path=str(path))
        promote >> refresh

    register(dag)
    monkeypatch.setenv("LABELLOOP_PROJECTS_DIR", str(path.parent))
    run = dag.test()
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert set(states.values()) == {"success"}, states

    outcome = xcom(run, "train")
    assert outcome["version"] == "1" and outcome["promote"] and "| metric | candidate | champion |" in outcome["body"]
    assert xcom(run, "promote") == {"promoted": True, "version": "1"}
    client = MlflowClient()
    assert client.get_model_version_by_alias(model, CHAMPION).version == "1"
    # The task's "MLflow run" link: the UI's direct run page of the run that trained version 1.
    assert xcom(run, "train", MLflowRunLink.xcom_key) == f"{mlflow_server.url}/#/runs/{outcome['run_id']}"
    assert client.get_model_version(model, "1").run_id == outcome["run_id"]
    refreshed = xcom(run, "refresh")
    assert refreshed["refreshed"] == 1, refreshed  # the project's one unannotated task
    (task,) = labelstudio_hook.iter_tasks(project_id)
    predictions = list(labelstudio_hook.client.predictions.list(task=task.id))
    assert [p.model_version for p in predictions] == [refreshed["model_version"]]

    # Roll back: a forced retrain registers version 2 (equal data: not promoted), a person makes it
    # champion by hand (in the MLflow UI, say), and the operator points the alias back at 1.
    with DAG(dag_id=f"user_rollback_{spec.name}", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
             catchup=False, params={"version": "1"}) as back:
        RollbackChampionOperator(task_id="rollback", spec_path=str(path), version="{{ params.version }}")
    with DAG(dag_id=f"user_retrain_{spec.name}", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
             catchup=False) as again:
        TrainCandidateOperator(task_id="train", spec_path=str(path), force=True)
    register(again)
    register(back)
    assert str(again.test().get_task_instances()[0].state) == "success"
    client.set_registered_model_alias(model, CHAMPION, "2")
    assert str(back.test().get_task_instances()[0].state) == "success"
    assert client.get_model_version_by_alias(model, CHAMPION).version == "1"
    moved = champion_history(client, model)[-1]
    assert (moved["version"], moved["by"]) == ("1", f"user_rollback_{spec.name}.rollback"), moved

    with pytest.raises(ValueError, match="TrainCandidateOperator's output"):
        PromoteCandidateOperator(task_id="p", spec_path=str(path), outcome="not an outcome").execute({})
