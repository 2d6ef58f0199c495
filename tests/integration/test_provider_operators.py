"""labelloop's operators and trigger in a DAG of someone else's, against real servers.

A user's pipeline (extract -> labelloop import -> people annotate -> deferred wait -> export ->
audit -> training) runs with dag.test(), which also runs the deferred wait's trigger in-process
(serialized and rebuilt from its classpath, as the triggerer does). Each operator must leave what
the matching labelloop DAG task leaves: tasks in Label Studio and the ingest journal, a snapshot,
an audit. The trigger is also polled directly: it must not fire below the threshold.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
import pytest

from labelloop.dev import simulate
from labelloop.collect.table import latest_snapshot, read_parquet, read_snapshot
from labelloop.layout import storage_path
from labelloop.layout import run_key
from labelloop.operators import (
    AuditOperator,
    LabelStudioExportOperator,
    LabelStudioImportOperator,
    WaitForAnnotationsOperator,
)
from labelloop.project import ensure_project
from labelloop.spec import load_spec
from labelloop.triggers.labelstudio import LabelStudioAnnotationsTrigger

pytestmark = pytest.mark.integration
PER_LABEL = 4  # 8 tasks, 3 answers each
SMS = Path(__file__).resolve().parents[2] / "include" / "demo" / "sms-spam" / "messages.jsonl"


def xcom(run: Any, task_id: str, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id,
                                                 key=key)).first()
        return None if row is None else XComModel.deserialize_value(row)


def register(dag: Any) -> None:
    """Write a DAG defined in a test to the metadata DB, as the DAG processor would have:
    dag.test() creates its run only for a serialized DAG, and parses only the dags folder."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    with create_session() as session:
        update_dag_parsing_results_in_db("dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None,
                                         set(), session=session)


def sms_lines(per_label: int) -> str:
    rows = [json.loads(line) for line in SMS.open()]
    chosen = [r for r in rows if r["label"] == "spam"][:per_label] + [r for r in rows if r["label"] == "ham"][:per_label]
    return "".join(json.dumps(row) + "\n" for row in chosen)


@pytest.mark.timeout(600)  # a wait that never fires must fail the test, not hang the suite
def test_operators_in_a_users_dag(airflow_db, labelstudio, labelstudio_hook, make_spec, s3_bucket,
                                  monkeypatch) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk import DAG, task

    path = make_spec(source_uri=f"s3://{s3_bucket}/raw/", storage_uri=f"s3://{s3_bucket}/labelloop", model=None,
                     annotation={"gold_fraction": 0.5})
    spec = load_spec(path)
    hook = labelstudio_hook

    with DAG(dag_id=f"user_pipeline_{spec.name}", schedule=None, start_date=pendulum.datetime(2026, 1, 1),
             catchup=False) as dag:

        @task
        def extract() -> None:
            """Someone's extract job: new records land in the spec's source folder."""
            S3Hook(aws_conn_id="aws_default").load_string(sms_lines(PER_LABEL), key="raw/sms.jsonl",
                                                           bucket_name=s3_bucket)

        to_labelstudio = LabelStudioImportOperator(task_id="to_labelstudio", spec_path=str(path))

        @task
        def people_annotate(summary: dict[str, Any]) -> int:
            """Stands in for the annotators (real Label Studio users, real annotations)."""
            made = simulate.label_queue(hook, spec, summary["project_id"], 2 * PER_LABEL, (1.0, 0.95, 0.9),
                                        prefix=spec.name.replace("_", "-"))
            assert made > 0, f"the annotators found no task with a known label in {summary}"  # else the wait waits
            return made

        wait = WaitForAnnotationsOperator(
            task_id="wait_for_annotations",
            project_id="{{ ti.xcom_pull(task_ids='to_labelstudio')['project_id'] }}",
            min_share=0.8, count="annotated", poll_interval=1, wait_timeout=timedelta(minutes=2))
        export = LabelStudioExportOperator(task_id="export", spec_path=str(path))
        audit = AuditOperator(task_id="audit", spec_path=str(path), fail_on_gate=False)

        @task
        def train(outcome: dict[str, Any]) -> int:
            """Someone's training job reads the audited consensus."""
            return len(read_parquet(storage_path(outcome["uri"], "aws_default") / "consensus.parquet"))

        extract() >> to_labelstudio
        people_annotate(to_labelstudio.output) >> wait >> export >> audit
        train(audit.output)

    register(dag)
    monkeypatch.setenv("LABELLOOP_PROJECTS_DIR", str(path.parent))  # dag.test() re-parses the dags folder
    run = dag.test()
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert set(states.values()) == {"success"}, states

    # Import: the tasks, the project link, and the ingest journal the ingest DAG would leave.
    summary = xcom(run, "to_labelstudio")
    project_id = summary["project_id"]
    assert summary["imported"] == 2 * PER_LABEL and summary["balanced"]
    assert hook.find_project(spec.title).id == project_id and hook.task_count(project_id) == 2 * PER_LABEL
    assert xcom(run, "to_labelstudio", "labelstudio_project_url") == f"{labelstudio.url}/projects/{project_id}/data"
    root = storage_path(spec.storage_uri, "aws_default")
    assert (root / "ingest" / "manifest.json").exists()

    # The deferred wait fired once 80% of the tasks had answers.
    waited = xcom(run, "wait_for_annotations")
    assert (waited["tasks"], waited["count"], waited["target"]) == (2 * PER_LABEL, "annotated", 7)
    assert waited["counted"] >= waited["target"]

    # Export: this run's snapshot is the latest, with every answer.
    folder = latest_snapshot(root)
    assert folder.name == run_key(run.run_id) == xcom(run, "export")["run"]
    assert len(read_snapshot(folder)["annotations"]) == 3 * 2 * PER_LABEL

    # Audit: report, metrics, consensus and verdict, as the audit DAG writes them.
    outcome = xcom(run, "audit")
    out = root / "audit" / run_key(run.run_id)
    assert {p.name for p in out.iterdir()} == {"report.html", "metrics.json", "consensus.parquet", "gate.json"}
    assert outcome["counts"]["annotations"] == 3 * 2 * PER_LABEL and "routed" in outcome
    assert json.loads((root / "audit" / "latest.json").read_text())["audit"] == run_key(run.run_id)
    assert ("passed" in outcome) == outcome["gate"]["passed"]
    assert xcom(run, "train") == 2 * PER_LABEL


def next_event(trigger: LabelStudioAnnotationsTrigger, timeout: float) -> Any:
    """The trigger's first event, or None when it is still waiting after ``timeout`` seconds."""

    async def first() -> Any:
        try:
            return await asyncio.wait_for(anext(trigger.run()), timeout)
        except TimeoutError:
            return None

    return asyncio.run(first())


def test_trigger_fires_once_enough_tasks_are_annotated(labelstudio_hook, make_spec) -> None:
    hook = labelstudio_hook
    spec = load_spec(make_spec(model=None))
    project_id, _ = ensure_project(hook, spec)
    hook.client.projects.import_tasks(project_id, request=[{"data": {"text": f"message {i}"}} for i in range(4)])
    tasks = [task.id for task in hook.iter_tasks(project_id)]
    result = [{"from_name": spec.control_name, "to_name": spec.object_name, "type": "choices",
               "value": {"choices": [spec.labels[0]]}}]

    trigger = LabelStudioAnnotationsTrigger(project_id=project_id, min_annotated=2, poll_interval=0.2)
    classpath, kwargs = trigger.serialize()
    assert classpath == "labelloop.triggers.labelstudio.LabelStudioAnnotationsTrigger"
    from airflow.sdk.module_loading import import_string

    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)

    assert next_event(rebuilt, timeout=2) is None  # nothing annotated
    hook.create_annotation(tasks[0], result)
    assert next_event(rebuilt, timeout=2) is None  # 1 of the 2 wanted
    hook.create_annotation(tasks[1], result)
    event = next_event(rebuilt, timeout=10)
    assert event.payload == {"status": "success", "project_id": project_id, "tasks": 4, "counted": 2,
                             "count": "annotated", "target": 2}

    # A share of the project's tasks; a project that is not there fails the wait at once.
    assert next_event(LabelStudioAnnotationsTrigger(project_id, min_share=0.75, poll_interval=0.2), 2) is None
    assert next_event(LabelStudioAnnotationsTrigger(project_id, min_share=0.5, poll_interval=0.2), 10).payload[
        "counted"] == 2
    missing = next_event(LabelStudioAnnotationsTrigger(10**9, min_annotated=1, poll_interval=0.2), 10).payload
    assert missing["status"] == "error" and "answered 404" in missing["message"]
