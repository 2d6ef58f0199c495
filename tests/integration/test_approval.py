"""Human sign-off before promotion, on a real Airflow: scheduler, triggerer and REST API.

`dag.test()` cannot answer a human-in-the-loop task (it parks it and waits for someone), so
this test runs `airflow standalone` exactly as the embedded stack does (its own SQLite DB,
LocalExecutor, the spec folder holding one test spec), with real MLflow and Label Studio
servers. A person's answer is posted through Airflow's HITL REST endpoint, the one the
Required Actions page uses.

What comes in is a passed audit written straight to the object store (the consensus of the
SMS collection's own labels): this test is about the promotion gate, not about labeling,
which test_loop.py covers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from labelloop.audit.run import CONSENSUS_SCHEMA
from labelloop.collect.table import TASKS_SCHEMA, to_table, write_parquet
from labelloop.dev.demo import Airflow
from labelloop.layout import storage_path
from labelloop.ingest.state import write_json
from labelloop.ingest.validate import content_hash
from labelloop.model.prelabel import CHAMPION
from labelloop.model.registry import champion_history
from labelloop.project import ensure_project
from labelloop.settings import LABELSTUDIO_CONN_ID, MLFLOW_CONN_ID
from labelloop.spec import ProjectSpec, load_spec
from labelloop.dev.stack import airflow_server, free_port

from tests.conftest import SMS, TOKEN

pytestmark = pytest.mark.integration
GOLD, SMALL, LARGE = 400, 60, 1500


def seed_passed_audit(spec: ProjectSpec, run: str, records: list[dict[str, Any]], n_gold: int) -> None:
    """A collect snapshot and an audit that passed the gate, as the collect and audit DAGs write them."""
    root = storage_path(spec.storage_uri, None)
    tasks, consensus = [], []
    for task_id, record in enumerate(records, start=1):
        gold = task_id <= n_gold
        item = {"task_id": task_id, "item_id": record["id"], "item_hash": content_hash({"text": record["text"]})}
        tasks.append({**item, "known_label": record["label"], "gold_label": record["label"] if gold else None,
                      "n_annotations": 3, "n_cancelled": 0, "n_predictions": 0, "source_task_id": None,
                      "data": json.dumps({"text": record["text"]})})
        consensus.append({**item, "label": record["label"], "confidence": 0.99,
                          "source": "gold" if gold else "consensus"})
    write_parquet(root / "collect" / "snapshots" / run / "tasks.parquet", to_table(tasks, TASKS_SCHEMA))
    write_parquet(root / "audit" / run / "consensus.parquet", to_table(consensus, CONSENSUS_SCHEMA))
    write_json(root / "audit" / "passed.json", {"audit": run, "snapshot": run, "summary": "seeded by the test"})


@pytest.fixture(scope="module")
def approval_stack(labelstudio: Any, mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`airflow standalone` whose DAG folder sees one spec, with require_approval set."""
    import yaml

    from tests.conftest import REPO

    folder = tmp_path_factory.mktemp("approval")
    raw = yaml.safe_load((REPO / "include" / "projects" / "sms_spam.yaml").read_text())
    name = f"approval_{time.time_ns() % 10**8}"
    raw.update(name=name, title=f"test {name}", labeling_config=str(REPO / "include" / raw["labeling_config"]),
               guidelines=str(REPO / "include" / raw["guidelines"]), storage_uri=f"file://{folder / 'store'}")
    raw["source"]["uri"] = f"file://{folder / 'raw'}/"
    raw["model"].update(name=name, require_approval=True, min_score=0.5, promotion_margin=0.01)
    raw["schedules"] = {"ingest": None, "collect": None}
    (folder / "projects").mkdir()
    spec_path = folder / "projects" / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    connections = {LABELSTUDIO_CONN_ID: {"conn_type": "labelstudio", "host": labelstudio.url, "password": TOKEN},
                   MLFLOW_CONN_ID: {"conn_type": "http", "host": mlflow_server.url}}
    server = airflow_server(folder / "stack", free_port(), connections)
    server.env["LABELLOOP_PROJECTS_DIR"] = str(spec_path.parent)
    server.start()
    try:
        yield load_spec(spec_path), Airflow(server.url), server.log_path
    finally:
        server.stop()


def answer(airflow: Airflow, scheduler_log: Path, dag_id: str, run_id: str, option: str) -> dict[str, Any]:
    """Answer the approval once the scheduler has seen the task park, as a person's answer would.

    Airflow 3.3.2 race (seen in this test): the parked task's process reports its exit to the
    scheduler a second or, on a busy machine, more than six seconds later. An answer that lands
    before that report is handled makes the scheduler queue the resume under the same
    try number, then read the late report as the resumed task dying ("task state changed
    externally"): it retries and asks again. A person cannot answer that fast; a script can,
    so this waits for the scheduler's own log line about that report.
    """
    wait_parked(airflow, scheduler_log, dag_id, run_id)
    detail = airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails")
    airflow.respond(dag_id, run_id, "approve", [option])
    return detail


def wait_parked(airflow: Airflow, scheduler_log: Path, dag_id: str, run_id: str) -> None:
    """Until the approval awaits input and the scheduler has handled its task's exit (see ``answer``)."""
    airflow.wait_for_task(dag_id, run_id, "approve", {"awaiting_input"})
    ti = airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/approve")
    parked = (f"Received executor event with state success for task instance TaskInstanceKey(dag_id='{dag_id}', "
              f"task_id='approve', run_id='{run_id}', try_number={ti['try_number']}")
    deadline = time.monotonic() + 120
    while parked not in scheduler_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"the scheduler never saw approve park: {parked!r} not in {scheduler_log}"
        time.sleep(0.5)


def test_promotion_waits_for_a_person_who_can_approve_or_reject(approval_stack: Any, labelstudio_hook: Any) -> None:
    spec, airflow, scheduler_log = approval_stack
    dag_id = f"{spec.dag_prefix}__retrain"
    client = MlflowClient()
    ensure_project(labelstudio_hook, spec)  # the refresh after a promotion re-predicts its tasks
    records = [json.loads(line) for line in SMS.read_text().splitlines()]
    records = list({r["text"]: r for r in records}.values())  # one task per text, as ingest makes

    # 1. A first model above the floor: promotion waits; a person approves it.
    seed_passed_audit(spec, "small", records[:GOLD + SMALL], GOLD)
    run_id = airflow.trigger(dag_id)
    airflow.wait_for_task(dag_id, run_id, "approve", {"awaiting_input"})
    assert not _has_champion(client, spec.model.name)  # nothing moves before the answer
    detail = answer(airflow, scheduler_log, dag_id, run_id, "Approve")
    assert detail["subject"] == f"Promote {spec.model.name} version 1?"
    assert "| metric | candidate | champion |" in detail["body"] and "MLflow run:" in detail["body"]
    assert detail["options"] == ["Approve", "Reject"] and detail["defaults"] == ["Reject"]
    assert airflow.wait_for_run(dag_id, run_id, timeout=300) == "success"
    states = airflow.task_states(dag_id, run_id)
    assert (states["promote"], states["refresh"]) == ("success", "success")
    assert client.get_model_version_by_alias(spec.model.name, CHAMPION).version == "1"
    assert client.get_model_version(spec.model.name, "1").tags["validation_status"] == "approved"
    (moved,) = champion_history(client, spec.model.name)
    assert moved["version"] == "1" and moved["by"].endswith(" in Airflow") and moved["by"] != "retrain DAG"

    # 2. A better candidate (25x the labels): the person rejects it; the champion stays.
    seed_passed_audit(spec, "large", records[:GOLD + LARGE], GOLD)
    run_id = airflow.trigger(dag_id)
    airflow.wait_for_task(dag_id, run_id, "approve", {"awaiting_input"})
    candidate = client.get_model_version(spec.model.name, "2")
    assert float(candidate.tags["candidate_score"]) >= float(candidate.tags["champion_score"]) + 0.01
    answer(airflow, scheduler_log, dag_id, run_id, "Reject")
    assert airflow.wait_for_run(dag_id, run_id, timeout=300) == "success"
    states = airflow.task_states(dag_id, run_id)
    assert (states["promote"], states["refresh"], states["record_rejection"]) == ("skipped", "skipped", "success")
    approve = airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/approve")
    assert approve["try_number"] == 1  # asked once: the answer was not lost to a retry
    assert client.get_model_version_by_alias(spec.model.name, CHAMPION).version == "1"
    assert client.get_model_version(spec.model.name, "2").tags["validation_status"].startswith("rejected by ")
    assert len(champion_history(client, spec.model.name)) == 1

    # 3. A candidate that is not better is never put to a person.
    seed_passed_audit(spec, "small-again", records[:GOLD + SMALL], GOLD)
    run_id = airflow.trigger(dag_id, {"force": True})
    assert airflow.wait_for_run(dag_id, run_id, timeout=300) == "success"
    states = airflow.task_states(dag_id, run_id)
    assert (states["needs_sign_off"], states["approve"], states["promote"]) == ("success", "skipped", "skipped")
    assert client.get_model_version(spec.model.name, "3").tags["validation_status"] == "rejected"
    assert client.get_model_version_by_alias(spec.model.name, CHAMPION).version == "1"


def _has_champion(client: MlflowClient, name: str) -> bool:
    from labelloop.model.registry import champion_version

    return champion_version(client, name) is not None

