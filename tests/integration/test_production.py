"""The production profile is the real thing: Celery workers, Postgres everywhere, S3 artifacts.

One start for the module (the ``production_stack`` fixture, ~3 minutes on 2 shared cores). Specs
whose sources are on the profile's S3 server run through Airflow's REST API (logged in as the
admin, as docker-compose's Simple auth manager asks): two projects' whole loops at once on the
same two workers, then a worker killed mid-ingest and mid-collect. The evidence is read where it
lands: the Celery workers' logs, Label Studio's, MLflow's and Airflow's Postgres databases and
the S3 bucket. The generated secrets are registered with the session's secret scan (conftest).
Postgres and Redis must be on the machine: without them these tests fail.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from labelloop.dev.production import BUCKET, WORKERS, ProductionProfile, registered_workers
from labelloop.dev.stack import StackError, free_port
from labelloop.hooks.labelstudio import LabelStudioHook
from labelloop.layout import run_key
from labelloop.spec import load_spec

from tests.conftest import SMS

pytestmark = pytest.mark.integration


def query(profile: ProductionProfile, database: str, statement: str, *params: Any) -> list[tuple]:
    """Read a component's own Postgres database, logged in as its role."""
    with psycopg2.connect(profile.database_url(database), connect_timeout=5) as connection:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall()


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
    keys = [obj["Key"] for obj in profile.s3_client().list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")["Contents"]]
    assert any(key.endswith(f"{run.info.run_id}/artifacts/note.txt") for key in keys), keys



# --- the whole loop, two projects at once -----------------------------------------------------------

ACCURACIES = [0.75, 0.8, 0.85, 0.9, 0.95]
MESSAGES, OBJECTS, LABELED = 200, 4, 40  # per project: one mapped ingest group per object (group_bytes 1)


def loop_spec(make_spec: Any, profile: ProductionProfile, key: str, **overrides: Any) -> Any:
    """A spec like sms_spam on the profile's S3 server, in the folder its DAG processor reads."""
    settings = {"schedules": {"ingest": None, "collect": None}, "ingest": {"group_bytes": 1},
                "import_batch_size": 25,
                "annotation": {"annotators_per_task": 3, "gold_fraction": 0.15, "reorder_on_promotion": 50},
                "quality": {"min_gold_accuracy": 0.6, "min_kappa": 0.05, "min_alpha": 0.05},
                "model": {"name": f"production_{key}", "metric": "macro_f1", "promotion_margin": 0.005,
                          "min_score": 0.3}} | overrides
    path = make_spec(source_uri=f"s3://{BUCKET}/raw/{key}/", storage_uri=f"s3://{BUCKET}/labelloop/{key}", **settings)
    spec_path = profile.projects_dir / path.name
    spec_path.write_text(path.read_text())
    return load_spec(spec_path)


def run_project_loop(profile: ProductionProfile, spec: Any, key: str, lines: list[str], prefix: str) -> dict[str, Any]:
    """One project's loop, driven through Airflow's REST API as a team would: the raw objects
    land, ingest fans out, the simulated annotators label, a manual collect's Asset event starts
    audit, whose passed gate starts retrain (train, promote, refresh). Then a forced retrain on the
    same data: an equal candidate, which must not be promoted. Collect stays paused until the
    labeling is done, so the ingest's own Asset event does not start a collect of unlabeled tasks."""
    from labelloop.dev.simulate import label_queue

    airflow, hook = profile.airflow_client(), LabelStudioHook()
    dag = {stage: f"{spec.dag_prefix}__{stage}" for stage in ("setup", "ingest", "collect", "audit", "retrain")}
    shared = [shared_message(key)]
    for n in range(OBJECTS):  # the shared message ends the first object and starts the last
        body = (shared if n == OBJECTS - 1 else []) + lines[n::OBJECTS] + (shared if n == 0 else [])
        profile.s3_client().put_object(Bucket=BUCKET, Key=f"raw/{key}/part-{n}.jsonl", Body="\n".join(body).encode())
    setup = airflow.run(dag["setup"], timeout=1200)["run_id"]
    for stage in ("audit", "retrain"):
        airflow.unpause(dag[stage])
    ingest = airflow.run(dag["ingest"], timeout=1200)["run_id"]
    tis = airflow.call("GET", f"/dags/{dag['ingest']}/dagRuns/{ingest}/taskInstances")["task_instances"]
    project_id = hook.find_project(spec.title).id
    seen: dict[str, Any] = {
        "ingest": airflow.xcom(dag["ingest"], ingest, "reduce_summaries"),
        "groups": sorted(ti["map_index"] for ti in tis if ti["task_id"] == "ingest_group"),
        "answers": label_queue(hook, spec, project_id, LABELED, ACCURACIES, seed=1, prefix=prefix)}
    started = airflow.now()
    collect = airflow.run(dag["collect"], timeout=1200)["run_id"]
    seen["collect"] = airflow.xcom(dag["collect"], collect, "collect")
    audit = airflow.wait_for_triggered_run(dag["audit"], after=started, timeout=1200)
    assert audit["state"] == "success", f"{spec.name}: audit {audit} (the quality gate failed?)"
    retrain = airflow.wait_for_triggered_run(dag["retrain"], after=started, timeout=1200, worked="train")
    assert retrain["state"] == "success", f"{spec.name}: retrain {retrain}"
    forced = airflow.run(dag["retrain"], conf={"force": True}, timeout=1200)["run_id"]
    for name, run_id in (("first", retrain["run_id"]), ("again", forced)):
        seen[name] = {task_id: airflow.xcom(dag["retrain"], run_id, task_id)
                      for task_id in ("train", "promote", "refresh")}
    seen["runs"] = [(dag["setup"], setup), (dag["ingest"], ingest), (dag["collect"], collect),
                    (dag["audit"], audit["run_id"]), (dag["retrain"], retrain["run_id"]), (dag["retrain"], forced)]
    return seen


def shared_message(key: str) -> str:
    return json.dumps({"id": "shared", "text": f"one message of {key} in the first and the last object"})


def assert_ran_on_celery_workers(profile: ProductionProfile, airflow: Any, dag_id: str, run_id: str) -> None:
    """Every task instance of the run ran on exactly one of the Celery workers: its log names the id."""
    worker_logs = {n: (profile.state_dir / "logs" / f"airflow-worker{n}.log").read_text(errors="replace")
                   for n in range(1, WORKERS + 1)}
    for ti in airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]:
        assert ti["state"] in {"success", "skipped"}, ti
        if ti["state"] == "skipped":
            continue
        assert ti["queue"] == "default" and ti["hostname"], ti
        ran_on = [n for n, log in worker_logs.items() if "Executing workload in Celery" in log and ti["id"] in log]
        assert len(ran_on) == 1, f"{dag_id}.{ti['task_id']} ({ti['id']}) not in exactly one worker log: {ran_on}"


def storage_texts(profile: ProductionProfile, key: str) -> dict[str, str]:
    """Every JSON state file under one project's storage_uri: key -> text."""
    client, texts = profile.s3_client(), {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"labelloop/{key}/"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".json"):
                texts[obj["Key"]] = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read().decode()
    return texts


def miscounted_tasks(profile: ProductionProfile, project_id: int) -> list[tuple]:
    """Tasks whose stored annotation counter differs from their annotations (should be none)."""
    return query(profile, "labelstudio",
                 "SELECT t.id, t.total_annotations, count(c.id) FROM task t LEFT JOIN task_completion c "
                 "ON c.task_id = t.id AND NOT c.was_cancelled WHERE t.project_id = %s "
                 "GROUP BY t.id, t.total_annotations HAVING t.total_annotations <> count(c.id)", project_id)


def test_two_projects_run_the_whole_loop_at_once_on_the_celery_workers(
    production_stack: ProductionProfile, make_spec: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two specs (their own data, annotators, projects and models) run ingest -> annotators ->
    collect -> audit -> retrain -> promote -> refresh at the same time on the same two Celery
    workers. The embedded loop test's assertions hold for each, and neither sees the other."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow import MlflowClient

    from labelloop.model.prelabel import CHAMPION

    profile = production_stack
    print(f"\nproduction profile started in {profile.started_in:.0f} s; RSS MiB: "
          + ", ".join(f"{name} {mib:.0f}" for name, mib in profile.rss_mib().items()))
    for conn_id, conn in profile.connections().items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    assert registered_workers(profile.broker_url) == {profile.worker_name(n) for n in range(1, WORKERS + 1)}
    lines = SMS.read_text().splitlines()
    projects = {}
    for n, prefix in enumerate(("alpha", "beta")):
        key = f"{prefix}{uuid.uuid4().hex[:6]}"
        projects[key] = {"spec": loop_spec(make_spec, profile, key), "prefix": prefix,
                         "lines": lines[n * MESSAGES:(n + 1) * MESSAGES]}
    with ThreadPoolExecutor(max_workers=len(projects)) as pool:
        futures = {key: pool.submit(run_project_loop, profile, p["spec"], key, p["lines"], p["prefix"])
                   for key, p in projects.items()}
        evidence = {key: future.result() for key, future in futures.items()}

    hook, client = LabelStudioHook(), MlflowClient(profile.url("mlflow"))
    airflow = profile.airflow_client()
    for key, project in projects.items():
        spec, seen = project["spec"], evidence[key]
        for dag_id, run_id in seen["runs"]:
            assert_ran_on_celery_workers(profile, airflow, dag_id, run_id)
        assert query(profile, "airflow", "SELECT count(*) FROM dag_run WHERE dag_id = %s",
                     f"{spec.dag_prefix}__ingest") == [(1,)]  # Airflow's own metadata is in Postgres
        texts = {json.loads(line)["text"] for line in [*project["lines"], shared_message(key)]}
        # Ingest fanned out over 4 mapped groups; every record ended in exactly one bucket, the
        # message in two groups included.
        summary, read = seen["ingest"], MESSAGES + 2
        assert seen["groups"] == list(range(OBJECTS)) and summary["groups"] == OBJECTS, summary
        assert summary["balanced"] and summary["read"] == read, summary
        assert (summary["imported"], summary["duplicate"], summary["quarantined"]) == (
            len(texts), read - len(texts), 0), summary
        # One task per unique record, in Label Studio's Postgres database.
        project_id = hook.find_project(spec.title).id
        assert hook.task_count(project_id) == len(texts)
        assert query(profile, "labelstudio", "SELECT count(*), count(DISTINCT data->>'labelloop_hash') FROM task "
                     "WHERE project_id = %s", project_id) == [(len(texts), len(texts))]
        # Every answer is in the collected table and in Label Studio's own counters.
        assert seen["answers"] == 3 * LABELED
        counts = seen["collect"]["counts"]
        assert (counts["tasks"], counts["labelled_tasks"], counts["annotations"]) == (
            len(texts), LABELED, 3 * LABELED), counts
        assert miscounted_tasks(profile, project_id) == []
        # The first model was promoted and refreshed the pre-labels; an equal one was not promoted.
        first, again = seen["first"], seen["again"]
        assert (first["train"]["version"], first["promote"]["promoted"]) == ("1", True), first
        assert first["refresh"]["refreshed"] > 0, first["refresh"]
        assert (again["train"]["version"], again["train"]["champion_version"]) == ("2", "1"), again["train"]
        assert again["train"]["candidate"] == again["train"]["champion"], again["train"]  # same data, same model
        assert (again["train"]["promote"], again["promote"]["promoted"]) == (False, False), again
        assert client.get_model_version_by_alias(spec.model.name, CHAMPION).version == "1"
        tags = client.get_model_version(spec.model.name, "2").tags
        assert tags["validation_status"] == "rejected", tags
        unlabeled = [t for t in hook.iter_tasks(project_id, fields="all") if not t.annotations]
        assert unlabeled and all(any(_model_version(p) == f"{spec.model.name}:1" for p in t.predictions)
                                 for t in unlabeled)
        # No cross-talk: its tasks come from its own objects, its model has only its own versions,
        # its state files name no other project.
        sources = query(profile, "labelstudio", "SELECT DISTINCT split_part(data->>'labelloop_source', '#', 1) "
                        "FROM task WHERE project_id = %s", project_id)
        assert sorted(row[0] for row in sources) == [f"s3://{BUCKET}/raw/{key}/part-{n}.jsonl" for n in range(OBJECTS)]
        assert sorted(v.version for v in client.search_model_versions(f"name = '{spec.model.name}'")) == ["1", "2"]
        state = storage_texts(profile, key)
        others = [other for other in projects if other != key]
        assert state and not [path for path, text in state.items()
                              if any(other in text or projects[other]["spec"].name in text for other in others)]


def _model_version(prediction: Any) -> str:
    return prediction["model_version"] if isinstance(prediction, dict) else prediction.model_version


# --- a Celery worker killed mid-task ------------------------------------------------------------------

def copies(lines: list[str], copy: int) -> list[str]:
    """The messages again, each text marked as copy ``copy`` (so every copy is new content)."""
    records = [json.loads(line) for line in lines]
    return [json.dumps({**r, "id": f"{r['id']}-{copy}", "text": f"{r['text']} (copy {copy})"}) for r in records]


def running_instances(airflow: Any, dag_id: str, run_id: str, task_id: str, ready: Any,
                      timeout: float = 600) -> list[dict[str, Any]]:
    """The running instances of ``task_id`` (with their pid) once ``ready()`` holds, polled closely."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tis = airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        running = [ti for ti in tis if ti["task_id"] == task_id and ti["state"] == "running" and ti["pid"]]
        assert not [ti for ti in tis if ti["task_id"] == task_id and ti["state"] == "success"], \
            f"{task_id} finished before the kill could land: make its input larger"
        if running and ready():
            return running
        time.sleep(0.3)
    raise AssertionError(f"{dag_id}.{task_id} never ran with the condition met within {timeout:.0f} s")


def kill_workers_running(profile: ProductionProfile, instances: list[dict[str, Any]]) -> set[int]:
    """SIGKILL the workers these task instances run on (each worker's whole process tree), then
    start them again under the same names: the retries may land on either worker."""
    workers = {profile.worker_of(ti["pid"]) for ti in instances}
    assert None not in workers, f"task pids {[ti['pid'] for ti in instances]} are under no worker of the profile"
    for number in sorted(workers):
        killed = profile.kill_worker(number)
        print(f"killed worker {number}: {len(killed)} processes, running {[ti['task_id'] for ti in instances]}")
    for number in sorted(workers):
        profile.worker_server(number).start()
    return workers


def test_a_worker_killed_mid_ingest_group_and_mid_collect_is_retried(
    production_stack: ProductionProfile, make_spec: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL the Celery worker running an ingest group once its first batches are in Label
    Studio, then the one running the project's first collect once its export snapshot exists in
    Label Studio: each task fails by missing heartbeats, Airflow retries it (on the other worker
    or the restarted one), and every record still ends exactly once (journal, Label Studio and
    the collected table agree)."""
    from labelloop.collect.export import choice_result
    from labelloop.dev.simulate import ensure_annotators, simulate_labels

    profile = production_stack
    for conn_id, conn in profile.connections().items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    airflow, hook = profile.airflow_client(), LabelStudioHook()
    lines = SMS.read_text().splitlines()
    # Two objects (one group each) of all messages, marked apart, in small batches: a group takes a while.
    key = f"delta{uuid.uuid4().hex[:6]}"
    spec = loop_spec(make_spec, profile, key, import_batch_size=100)
    for copy in range(2):
        profile.s3_client().put_object(Bucket=BUCKET, Key=f"raw/{key}/copy-{copy}.jsonl",
                               Body="\n".join(copies(lines, copy)).encode())
    unique = 2 * len({json.loads(line)["text"] for line in lines})

    ingest_dag, collect_dag = f"{spec.dag_prefix}__ingest", f"{spec.dag_prefix}__collect"
    ingest_run = airflow.trigger(ingest_dag)
    landed: list[int] = []

    def first_batches_landed() -> bool:
        project = hook.find_project(spec.title)
        landed.append(hook.task_count(project.id) if project else 0)
        return landed[-1] > 0

    killed_groups = running_instances(airflow, ingest_dag, ingest_run, "ingest_group", first_batches_landed)
    kill_workers_running(profile, killed_groups)
    assert 0 < landed[-1] < unique
    airflow.wait_for_run(ingest_dag, ingest_run, timeout=1200)
    assert_retried(airflow, ingest_dag, ingest_run, killed_groups)

    # Every record ended exactly once: the run's counts, Label Studio's tasks and the journal agree.
    summary = airflow.xcom(ingest_dag, ingest_run, "reduce_summaries")
    assert summary["balanced"] and summary["groups"] == 2, summary
    assert (summary["read"], summary["imported"], summary["quarantined"]) == (2 * len(lines), unique, 0), summary
    project_id = hook.find_project(spec.title).id
    task_ids = {row[0] for row in query(profile, "labelstudio", "SELECT id FROM task WHERE project_id = %s",
                                        project_id)}
    hashes = query(profile, "labelstudio", "SELECT count(DISTINCT data->>'labelloop_hash') FROM task "
                   "WHERE project_id = %s", project_id)
    assert (len(task_ids), hashes, hook.task_count(project_id)) == (unique, [(unique,)], unique)
    journal = storage_texts(profile, key)
    run_folder = f"labelloop/{key}/ingest/runs/{run_key(ingest_run)}/"
    assert not [path for path in journal if path.startswith(run_folder) and "/pending/" in path]  # none in flight
    journaled = [task["id"] for path, text in journal.items() if path.startswith(run_folder) and "/batches/" in path
                 for task in json.loads(text)["tasks"].values()]
    assert sorted(journaled) == sorted(task_ids)  # every task journaled once: none lost, none twice

    # The first collect exports every task: kill it once Label Studio holds its export snapshot.
    # (Ten tasks answered directly: label_queue would list and export all 8,888 tasks first.)
    truth = dict(query(profile, "labelstudio", "SELECT id, meta->>'label' FROM task WHERE project_id = %s "
                       "ORDER BY id LIMIT 10", project_id))
    users = [user.id for user in ensure_annotators(hook, 3, prefix="delta")]
    answers = simulate_labels(truth, list(zip(users, ACCURACIES)), 3, spec.labels, seed=3)
    for task_id, user_id, label in answers:
        hook.create_annotation(task_id, choice_result(spec.control_name, spec.object_name, label), completed_by=user_id)
    collect_run = airflow.trigger(collect_dag)

    def export_started() -> bool:
        return query(profile, "labelstudio", "SELECT count(*) FROM data_export_export WHERE project_id = %s",
                     project_id) != [(0,)]

    killed_collect = running_instances(airflow, collect_dag, collect_run, "collect", export_started)
    kill_workers_running(profile, killed_collect)
    airflow.wait_for_run(collect_dag, collect_run, timeout=1200)
    assert_retried(airflow, collect_dag, collect_run, killed_collect)
    assert registered_workers(profile.broker_url) == {profile.worker_name(n) for n in range(1, WORKERS + 1)}

    # The retried collect holds every answer, and a reconciliation finds it equal to a full export.
    result = airflow.xcom(collect_dag, collect_run, "collect")
    assert (result["counts"]["annotations"], result["counts"]["tasks"]) == (len(answers), unique), result["counts"]
    reconcile = airflow.run(collect_dag, conf={"full": True}, timeout=1200)["run_id"]
    checked = airflow.xcom(collect_dag, reconcile, "collect")
    assert (checked["mode"], checked["differing_tasks"], checked["counts"]) == ("reconcile", {}, result["counts"])


def assert_retried(airflow: Any, dag_id: str, run_id: str, killed: list[dict[str, Any]]) -> None:
    """Each killed try failed and a later one succeeded."""
    tis = {(ti["task_id"], ti["map_index"]): ti for ti in
           airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]}
    for ti in killed:
        now = tis[(ti["task_id"], ti["map_index"])]
        assert (now["state"], now["try_number"] > ti["try_number"]) == ("success", True), (ti, now)
