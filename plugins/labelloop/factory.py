"""The DAG factory: each project spec becomes its DAGs.

Parse time reads only the spec files (YAML + the labeling config XML): no network, no
database, no connections, no heavy imports. Tasks import what they need when they run.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, task

from labelloop.spec import ProjectSpec, load_specs

START = pendulum.datetime(2026, 1, 1, tz="UTC")
DEFAULT_ARGS = {"owner": "labelloop", "retries": 3, "retry_delay": timedelta(seconds=30),
                "retry_exponential_backoff": True}


def tasks_asset(spec: ProjectSpec) -> Asset:
    """Updated whenever ingest adds tasks to the project; collect listens to it."""
    return Asset(name=f"labelloop__{spec.name}__tasks", uri=f"{spec.storage_uri}/ingest/manifest.json",
                 group="labelloop")


def annotations_asset(spec: ProjectSpec) -> Asset:
    """Updated by every collect run (a new annotation table snapshot); audit listens to it."""
    return Asset(name=f"labelloop__{spec.name}__annotations", uri=f"{spec.storage_uri}/collect/latest.json",
                 group="labelloop")


def quality_passed_asset(spec: ProjectSpec) -> Asset:
    """Updated only when an audit passes the quality gate; retraining listens to it."""
    return Asset(name=f"labelloop__{spec.name}__quality_passed", uri=f"{spec.storage_uri}/audit/passed.json",
                 group="labelloop")


def _load(spec_path: str) -> ProjectSpec:
    from labelloop.spec import load_spec

    return load_spec(Path(spec_path))


def setup_dag(spec: ProjectSpec) -> DAG:
    with DAG(
        dag_id=f"{spec.dag_prefix}__setup",
        description=f"Create or update the Label Studio project '{spec.title}' from its spec",
        schedule=None,
        start_date=START,
        catchup=False,
        default_args=DEFAULT_ARGS,
        tags=["labelloop", spec.name, "setup"],
        doc_md=f"Brings the Label Studio project **{spec.title}** in line with `{spec.spec_path}`: "
               "title, labeling config, instructions, annotators per task. Safe to run any time.",
    ) as dag:

        @task
        def ensure_project(spec_path: str) -> dict[str, Any]:
            from labelloop.hooks.labelstudio import LabelStudioHook
            from labelloop.project import ensure_project as ensure

            project_id, created = ensure(LabelStudioHook(), _load(spec_path))
            return {"project_id": project_id, "created": created}

        ensure_project(str(spec.spec_path))
    return dag


def ingest_dag(spec: ProjectSpec) -> DAG:
    with DAG(
        dag_id=f"{spec.dag_prefix}__ingest",
        description=f"Raw objects under {spec.source.uri} become tasks of '{spec.title}'",
        schedule=spec.schedules.ingest,
        start_date=START,
        catchup=False,
        max_active_runs=1,  # runs share the project's manifest and hash index
        default_args=DEFAULT_ARGS,
        tags=["labelloop", spec.name, "ingest"],
        doc_md="Lists new objects, validates and de-duplicates their records, pre-labels them with "
               "the champion model when there is one, and imports them in batches. Every record "
               "ends imported, duplicate or quarantined; see the run summary in the task's XCom.",
    ) as dag:

        @task(outlets=[tasks_asset(spec)])
        def ingest(spec_path: str, **context: Any) -> dict[str, Any]:
            from labelloop.hooks.labelstudio import LabelStudioHook
            from labelloop.ingest.pipeline import Ingest, ingest_counts_line
            from labelloop.model.prelabel import load_predictor
            from labelloop.project import ensure_project

            spec = _load(spec_path)
            hook = LabelStudioHook()
            project_id, _ = ensure_project(hook, spec)
            run = context["dag_run"]
            # Scheduled runs take objects modified before their interval's end; a person who
            # triggers by hand wants what is there now.
            cutoff = run.run_after if run.run_type == "manual" else context.get("data_interval_end") or run.run_after
            summary = Ingest(spec, hook, context["run_id"], predictor=load_predictor(spec)).run(project_id, cutoff)
            print(f"ingest {summary['run']}: {summary['objects']} objects; {ingest_counts_line(summary)}")
            for skipped in summary["skipped_objects"]:
                print(f"skipped object {skipped['object']}: {skipped['reason']}")
            if not summary["balanced"]:
                raise RuntimeError(f"counts do not add up: {ingest_counts_line(summary)}")
            return {key: value for key, value in summary.items() if key != "per_object"}

        ingest(str(spec.spec_path))
    return dag


def _collect_schedule(spec: ProjectSpec) -> Any:
    """After every ingest that added tasks, and on the spec's cron (people annotate in between)."""
    if spec.schedules.collect is None:
        return tasks_asset(spec)
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(spec.schedules.collect, timezone="UTC"),
                               assets=tasks_asset(spec))


def collect_dag(spec: ProjectSpec) -> DAG:
    with DAG(
        dag_id=f"{spec.dag_prefix}__collect",
        description=f"Snapshot the annotations of '{spec.title}' into a Parquet table",
        schedule=_collect_schedule(spec),
        start_date=START,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["labelloop", spec.name, "collect"],
        doc_md="Exports the project and its review project with Label Studio export snapshots "
               "(create, poll, download), flattens them to one row per annotation result and writes "
               f"`{spec.storage_uri}/collect/snapshots/<run>/` plus `collect/latest.json`. A re-run "
               "rewrites its own snapshot. Columns: docs/collect-audit.md.",
    ) as dag:

        @task(outlets=[annotations_asset(spec)])
        def collect(spec_path: str, **context: Any) -> dict[str, Any]:
            from labelloop.collect.snapshot import collect as collect_snapshot
            from labelloop.hooks.labelstudio import LabelStudioHook

            run_after = context["dag_run"].run_after.isoformat()
            result = collect_snapshot(_load(spec_path), LabelStudioHook(), context["run_id"], run_after)
            print(f"collect {result['run']}: {result['counts']} -> {result['uri']}"
                  + ("" if result["latest"] else " (a later run owns collect/latest.json; left as is)"))
            context["outlet_events"][annotations_asset(spec)].extra = {
                "snapshot": result["snapshot"], "counts": result["counts"]}
            return result

        collect(str(spec.spec_path))
    return dag


def audit_dag(spec: ProjectSpec) -> DAG:
    with DAG(
        dag_id=f"{spec.dag_prefix}__audit",
        description=f"Agreement, consensus, review routing and the quality gate for '{spec.title}'",
        schedule=annotations_asset(spec),
        start_date=START,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["labelloop", spec.name, "audit"],
        doc_md="Audits the latest collect snapshot (gold accuracy, kappa, Krippendorff's alpha, "
               f"{spec.quality.consensus} consensus with adjudications), writes "
               f"`{spec.storage_uri}/audit/<run>/` (report.html, metrics.json, consensus.parquet, "
               "gate.json) and an MLflow run when the `mlflow_default` connection exists, routes "
               "doubtful items to the review project, and passes or fails the quality gate. Only a "
               "pass updates the asset retraining listens to. Details: docs/collect-audit.md.",
    ) as dag:

        @task
        def audit(spec_path: str, **context: Any) -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

            from labelloop.audit.run import NothingToAudit, audit_latest
            from labelloop.quality import InputError

            try:
                outcome = audit_latest(_load(spec_path), context["run_id"])
            except NothingToAudit as reason:
                raise AirflowSkipException(str(reason)) from None
            except InputError as error:  # the data, not the weather: retrying cannot help
                raise AirflowFailException(f"the latest snapshot cannot be audited: {error}") from None
            print(f"audit {outcome['audit']} of snapshot {outcome['snapshot']}: report at "
                  f"{outcome['uri']}/report.html; {outcome['gate']['summary']}")
            return outcome

        @task
        def route(spec_path: str, outcome: dict[str, Any]) -> dict[str, Any]:
            from labelloop.audit.run import route_audit
            from labelloop.hooks.labelstudio import LabelStudioHook

            routed = route_audit(_load(spec_path), LabelStudioHook(), outcome)
            print(f"review: {routed['selected']} items selected {routed['reasons']}, {routed['routed']} newly "
                  f"routed to project {routed['review_project_id']}")
            return routed

        @task(outlets=[quality_passed_asset(spec)], retries=0)
        def gate(spec_path: str, outcome: dict[str, Any], **context: Any) -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowFailException

            from labelloop.audit.gate import gate_notifier
            from labelloop.audit.run import mark_passed

            verdict = outcome["gate"]
            if not verdict["passed"]:
                gate_notifier()({**context, "quality_gate": verdict})
                raise AirflowFailException(verdict["summary"])
            pointer = mark_passed(_load(spec_path), outcome)
            context["outlet_events"][quality_passed_asset(spec)].extra = pointer
            print(verdict["summary"])
            return pointer

        outcome = audit(str(spec.spec_path))
        route(str(spec.spec_path), outcome)
        gate(str(spec.spec_path), outcome)
    return dag


def build_dags(folder: Path | None = None) -> dict[str, DAG]:
    dags: dict[str, DAG] = {}
    for spec in load_specs(folder):
        for dag in (setup_dag(spec), ingest_dag(spec), collect_dag(spec), audit_dag(spec)):
            dags[dag.dag_id] = dag
    return dags
