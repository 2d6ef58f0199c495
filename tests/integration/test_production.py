"""The production profile is the real thing: Celery workers, Postgres everywhere, S3 artifacts.

One start for the module (the ``production_stack`` session fixture, ~2-3 minutes on 2 cores):
a spec whose source is on the profile's S3 server is set up and ingested through Airflow's REST
API (logged in as the admin, as docker-compose's Simple auth manager asks), and the evidence is
read where it lands: the Celery workers' logs, Label Studio's and MLflow's Postgres databases
and the S3 bucket. The generated secrets are registered with the session's secret scan
(conftest). Postgres and Redis must be on the machine: without them these tests fail.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import psycopg2
import pytest
import yaml

from labelloop.hooks.labelstudio import LabelStudioHook
from labelloop.production import BUCKET, WORKERS, ProductionProfile, registered_workers
from labelloop.spec import load_spec
from labelloop.stack import StackError, free_port

from tests.conftest import SMS

pytestmark = pytest.mark.integration
SAMPLE = 40  # SMS messages ingested, in GROUPS objects of one group each (plus one message in two)
GROUPS = 4


def query(profile: ProductionProfile, database: str, statement: str, *params: Any) -> list[tuple]:
    """Read a component's own Postgres database, logged in as its role."""
    with psycopg2.connect(profile.database_url(database), connect_timeout=5) as connection:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall()


def s3(profile: ProductionProfile) -> Any:
    return boto3.client("s3", endpoint_url=profile.url("s3"), region_name="us-east-1",
                        aws_access_key_id=profile.secrets["s3_access_key"],
                        aws_secret_access_key=profile.secrets["s3_secret_key"])


def test_missing_postgres_or_redis_says_how_to_start_it(tmp_path: Path) -> None:
    profile = ProductionProfile.create(tmp_path)
    working_postgres = profile.postgres_admin_url
    profile.postgres_admin_url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(StackError, match=r"needs PostgreSQL .*`pg_ctlcluster 15 main start`"):
        profile.require_services()
    profile.postgres_admin_url = working_postgres
    profile.redis_url = f"redis://127.0.0.1:{free_port()}"
    with pytest.raises(StackError, match=r"needs Redis .*`redis-server --daemonize yes"):
        profile.require_services()


def test_setup_and_ingest_run_on_celery_workers_into_postgres(
    production_stack: ProductionProfile, make_spec: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = production_stack
    print(f"\nproduction profile started in {profile.started_in:.0f} s; RSS MiB: "
          + ", ".join(f"{name} {mib:.0f}" for name, mib in profile.rss_mib().items()))
    for conn_id, conn in profile.connections().items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))

    # Both Celery workers are registered on the profile's Redis broker.
    assert registered_workers(profile.broker_url) == {profile.worker_name(n) for n in range(1, WORKERS + 1)}

    # A spec whose raw objects are on the profile's S3 server, in the folder its DAG processor reads.
    key = uuid.uuid4().hex[:10]
    path = make_spec(source_uri=f"s3://{BUCKET}/raw/{key}/", storage_uri=f"s3://{BUCKET}/labelloop/{key}",
                     schedules={"ingest": None, "collect": None}, ingest={"group_bytes": 1},
                     import_batch_size=5)
    spec_path = profile.projects_dir / path.name
    spec_path.write_text(path.read_text())
    spec = load_spec(spec_path)
    lines = SMS.read_text().splitlines()[:SAMPLE]
    shared = json.dumps({"id": "shared", "text": "one message in the first and the last object"})
    for n in range(GROUPS):
        body = [shared] if n == GROUPS - 1 else []
        body += lines[n::GROUPS] + ([shared] if n == 0 else [])
        s3(profile).put_object(Bucket=BUCKET, Key=f"raw/{key}/part-{n}.jsonl", Body="\n".join(body).encode())
    unique = len({json.loads(line)["text"] for line in lines}) + 1

    airflow = profile.airflow_client()
    runs = {kind: airflow.run(f"{spec.dag_prefix}__{kind}", timeout=600)["run_id"] for kind in ("setup", "ingest")}

    # Every task instance ran on one of the Celery workers: its log names the task instance's id.
    worker_logs = {n: (profile.state_dir / "logs" / f"airflow-worker{n}.log").read_text(errors="replace")
                   for n in range(1, WORKERS + 1)}
    for kind, run_id in runs.items():
        dag_id = f"{spec.dag_prefix}__{kind}"
        for ti in airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]:
            assert ti["state"] in {"success", "skipped"}, ti
            if ti["state"] == "skipped":
                continue
            assert ti["queue"] == "default" and ti["hostname"], ti
            ran_on = [n for n, log in worker_logs.items() if "Executing workload in Celery" in log and ti["id"] in log]
            assert len(ran_on) == 1, f"{dag_id}.{ti['task_id']} ({ti['id']}) not in exactly one worker log: {ran_on}"

    # The ingest fanned out: one mapped task per object, each ran on a worker (checked above).
    ingest_tis = airflow.call("GET", f"/dags/{spec.dag_prefix}__ingest/dagRuns/{runs['ingest']}/taskInstances")
    mapped = [ti for ti in ingest_tis["task_instances"] if ti["task_id"] == "ingest_group"]
    assert sorted(ti["map_index"] for ti in mapped) == list(range(GROUPS))
    assert {ti["state"] for ti in mapped} == {"success"}

    # Every unique message is exactly one task in Label Studio's Postgres database.
    summary = airflow.xcom(f"{spec.dag_prefix}__ingest", runs["ingest"], "reduce_summaries")
    assert (summary["groups"], summary["read"], summary["imported"]) == (GROUPS, SAMPLE + 2, unique)
    assert summary["balanced"]
    hook = LabelStudioHook()
    project = hook.find_project(spec.title)
    assert hook.task_count(project.id) == unique
    assert query(profile, "labelstudio", "SELECT count(*), count(DISTINCT data->>'labelloop_hash') FROM task "
                 "WHERE project_id = %s", project.id) == [(unique, unique)]
    # Airflow's own metadata is in Postgres too.
    assert query(profile, "airflow", "SELECT count(*) FROM dag_run WHERE dag_id = %s",
                 f"{spec.dag_prefix}__ingest") == [(1,)]


def test_mlflow_keeps_runs_in_postgres_and_artifacts_in_s3(
    production_stack: ProductionProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    profile = production_stack
    monkeypatch.setenv("MLFLOW_TRACKING_URI", profile.url("mlflow"))
    client = MlflowClient(profile.url("mlflow"))
    name = f"production-{uuid.uuid4().hex[:8]}"
    run = client.create_run(client.create_experiment(name))
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert query(profile, "mlflow", "SELECT count(*) FROM experiments WHERE name = %s", name) == [(1,)]
    keys = [obj["Key"] for obj in s3(profile).list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")["Contents"]]
    assert any(key.endswith(f"{run.info.run_id}/artifacts/note.txt") for key in keys), keys

