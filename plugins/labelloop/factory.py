"""The DAG factory: each project spec becomes its DAGs, built from labelloop's operators.

What a DAG here runs is what a user composes from ``labelloop.operators`` in a DAG of their own;
the few ``@task`` functions left are this factory's glue (asset events, the sign-off branch).
Parse time reads only the spec files (YAML + the labeling config XML): no network, no
database, no connections, no heavy imports. Tasks import what they need when they run.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, task

from labelloop.layout import LATEST_SNAPSHOT, MANIFEST, PRELABELS, QUALITY_PASSED, asset_uri
from labelloop.operators import (
    AuditOperator,
    FinishIngestOperator,
    IngestGroupOperator,
    LabelStudioExportOperator,
    LabelStudioProjectOperator,
    PlanIngestOperator,
    PromoteCandidateOperator,
    QualityGateOperator,
    RefreshPrelabelsOperator,
    RollbackChampionOperator,
    RouteReviewOperator,
    TrainCandidateOperator,
)
from labelloop.operators.ingest import RUN_CUTOFF
from labelloop.spec import ProjectSpec, SpecError, load_specs

START = pendulum.datetime(2026, 1, 1, tz="UTC")
DEFAULT_ARGS = {"owner": "labelloop", "retries": 3, "retry_delay": timedelta(seconds=30),
                "retry_exponential_backoff": True}


def project_dag(spec: ProjectSpec, stage: str, *, description: str, schedule: Any, doc_md: str = "",
                retries: int | None = None, tag: str | None = None, **kwargs: Any) -> DAG:
    """What every labelloop DAG shares: its id, start, no catch-up, one run at a time (runs of a
    stage share the project's state in object storage), tags, retries with backoff."""
    return DAG(
        dag_id=f"{spec.dag_prefix}__{stage}", description=description, schedule=schedule,
        start_date=START, catchup=False, max_active_runs=1,
        default_args=DEFAULT_ARGS if retries is None else {**DEFAULT_ARGS, "retries": retries},
        tags=["labelloop", spec.name, tag or stage], doc_md=doc_md, **kwargs,
    )


def tasks_asset(spec: ProjectSpec) -> Asset:
    """Updated whenever ingest adds tasks to the project; collect listens to it."""
    return Asset(name=f"labelloop__{spec.name}__tasks", uri=asset_uri(spec, MANIFEST),
                 group="labelloop")


def annotations_asset(spec: ProjectSpec) -> Asset:
    """Updated by every collect run (a new annotation table snapshot); audit listens to it."""
    return Asset(name=f"labelloop__{spec.name}__annotations", uri=asset_uri(spec, LATEST_SNAPSHOT),
                 group="labelloop")


def quality_passed_asset(spec: ProjectSpec) -> Asset:
    """Updated only when an audit passes the quality gate; retraining listens to it."""
    return Asset(name=f"labelloop__{spec.name}__quality_passed", uri=asset_uri(spec, QUALITY_PASSED),
                 group="labelloop")


def setup_dag(spec: ProjectSpec) -> DAG:
    with project_dag(
        spec, "setup",
        description=f"Create or update the Label Studio project '{spec.title}' from its spec",
        schedule=None,
        doc_md=f"Brings the Label Studio project **{spec.title}** in line with `{spec.spec_path}`: "
               "title, labeling config, instructions, annotators per task. Safe to run any time.",
    ) as dag:
        LabelStudioProjectOperator(task_id="ensure_project", spec_path=spec.spec_path)
    return dag


def ingest_dag(spec: ProjectSpec) -> DAG:
    with project_dag(
        spec, "ingest",
        description=f"Raw objects under {spec.source.uri} become tasks of '{spec.title}'",
        schedule=spec.schedules.ingest,
        doc_md="Lists new objects and splits them into groups (`ingest.group_bytes`, at most "
               "`ingest.max_groups`; a small run is one group). Each group is one mapped `ingest_group` "
               "task: it validates and de-duplicates its records, pre-labels them with the champion model "
               "when there is one, and imports them in journaled batches. `reduce_summaries` deletes any "
               "content two groups both imported (keeping the lowest task id), writes the manifest and "
               "the run summary (its XCom). Every record ends imported, duplicate or quarantined. "
               "`announce` updates the tasks Asset (collect listens) only when tasks were imported.",
    ) as dag:
        plan = PlanIngestOperator(task_id="list_groups", spec_path=spec.spec_path, modified_before=RUN_CUTOFF)
        results = IngestGroupOperator.partial(task_id="ingest_group", spec_path=spec.spec_path).expand(
            group=plan.output)
        summary = FinishIngestOperator(task_id="reduce_summaries", spec_path=spec.spec_path, groups=results.output)

        @task(outlets=[tasks_asset(spec)])
        def announce(summary: dict[str, Any], **context: Any) -> None:
            """Start collect only when there are new tasks. Airflow records an outlet's asset event
            only for a task that succeeds, so a run that imported nothing skips here."""
            from airflow.sdk.exceptions import AirflowSkipException

            if not summary["imported"]:
                raise AirflowSkipException(
                    f"ingest {summary['run']} imported no tasks: collect is not started")
            context["outlet_events"][tasks_asset(spec)].extra = {"run": summary["run"],
                                                                 "imported": summary["imported"]}

        announce(summary.output)
    return dag


def labeled_asset(spec: ProjectSpec) -> Asset:
    """Updated by the triggerer when people annotated in Label Studio (``collect.watch_seconds``):
    an ``AssetWatcher`` polls the project, no webhook needed; collect listens to it."""
    from airflow.sdk import AssetWatcher

    from labelloop.triggers.labelstudio import LabelStudioAnnotationsChangedTrigger

    trigger = LabelStudioAnnotationsChangedTrigger(title=spec.title, poll_interval=spec.collect.watch_seconds,
                                                   storage_uri=spec.storage_uri, storage_conn_id=spec.source.conn_id)
    return Asset(name=f"labelloop__{spec.name}__labeled", group="labelloop",
                 watchers=[AssetWatcher(name=f"labelloop__{spec.name}__annotations_watch", trigger=trigger)])


def _collect_schedule(spec: ProjectSpec) -> Any:
    """After every ingest that added tasks, when people annotated (the watched asset), and on the
    spec's cron: the fallback, should the triggerer be down."""
    assets = tasks_asset(spec) if spec.collect.watch_seconds is None else tasks_asset(spec) | labeled_asset(spec)
    if spec.schedules.collect is None:
        return assets
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(spec.schedules.collect, timezone="UTC"),
                               assets=assets)


def collect_dag(spec: ProjectSpec) -> DAG:
    from airflow.sdk import Param

    with project_dag(
        spec, "collect",
        description=f"Snapshot the annotations of '{spec.title}' into a Parquet table",
        schedule=_collect_schedule(spec),
        doc_md="Exports the tasks of the project and its review project changed since the last snapshot "
               "(Label Studio export snapshots of a Data Manager filter on `updated_at`), merges them into "
               "the previous table, flattened to one row per annotation and control, and writes "
               f"`{spec.storage_uri}/collect/snapshots/<run>/` plus `collect/latest.json`. Every "
               f"{spec.collect.full_every} runs (or with the param `full`) a full export must equal the "
               "merged table row for row. A re-run rewrites its own snapshot. Columns: docs/collect-audit.md.",
        params={"full": Param(False, type="boolean",
                              description="reconcile now: export the whole project and compare it with the "
                                          "incremental table")},
    ) as dag:
        LabelStudioExportOperator(task_id="collect", spec_path=spec.spec_path, full="{{ params.full }}",
                                  outlets=[annotations_asset(spec)])
    return dag


def audit_dag(spec: ProjectSpec) -> DAG:
    with project_dag(
        spec, "audit",
        description=f"Agreement, consensus, review routing and the quality gate for '{spec.title}'",
        schedule=annotations_asset(spec),
        doc_md="Audits the latest collect snapshot (gold accuracy, kappa, Krippendorff's alpha, "
               f"{spec.quality.consensus} consensus with adjudications), writes "
               f"`{spec.storage_uri}/audit/<run>/` (report.html, metrics.json, consensus.parquet, "
               "gate.json) and an MLflow run when the `mlflow_default` connection exists, routes "
               "doubtful items to the review project, and passes or fails the quality gate. Only a "
               "pass updates the asset retraining listens to. Details: docs/collect-audit.md.",
    ) as dag:
        audit = AuditOperator(task_id="audit", spec_path=spec.spec_path, route_review=False, link_review=True,
                              apply_gate=False)
        RouteReviewOperator(task_id="route", spec_path=spec.spec_path, outcome=audit.output)
        QualityGateOperator(task_id="gate", spec_path=spec.spec_path, outcome=audit.output,
                            outlets=[quality_passed_asset(spec)], retries=0)
    return dag


def prelabels_asset(spec: ProjectSpec) -> Asset:
    """Updated when the project's pre-labels were refreshed for a new champion."""
    return Asset(name=f"labelloop__{spec.name}__prelabels", uri=asset_uri(spec, PRELABELS),
                 group="labelloop")


def retrain_dag(spec: ProjectSpec) -> DAG:
    from airflow.sdk import Param

    with project_dag(
        spec, "retrain",
        description=f"Train, register and maybe promote the pre-label model of '{spec.title}'",
        schedule=quality_passed_asset(spec),
        retries=1,
        params={
            "force": Param(False, type="boolean", description="train even if this data was already trained on"),
            "dry_run": Param(False, type="boolean", description="train and evaluate only: register nothing"),
        },
        doc_md="Builds the training set from the last audit that passed the gate (consensus above the "
               "confidence floor and adjudicated answers; never gold items), trains the spec's model, "
               "logs it to MLflow and registers a version, evaluates it and the champion on the same "
               "gold items, and moves the `champion` alias only when the candidate is better by the "
               "spec's margin" + (" and a person approved it under Required Actions" if spec.model and
                                  spec.model.require_approval else "") + ". Then refreshes pre-labels.",
    ) as dag:
        path = spec.spec_path
        sign_off = spec.model is not None and spec.model.require_approval
        train = TrainCandidateOperator(task_id="train", spec_path=path, force="{{ params.force }}",
                                       dry_run="{{ params.dry_run }}")
        promote = PromoteCandidateOperator(task_id="promote", spec_path=path, outcome=train.output,
                                           approval_task_id="approve" if sign_off else None)
        train >> promote
        if sign_off:
            from airflow.providers.standard.operators.hitl import ApprovalOperator
            from airflow.sdk import TriggerRule

            @task.short_circuit(ignore_downstream_trigger_rules=False)
            def needs_sign_off(outcome: dict[str, Any]) -> bool:
                """Only a candidate that would be promoted is put to a person; otherwise promote skips."""
                return bool(outcome and outcome.get("promote"))

            approval = ApprovalOperator(
                task_id="approve",
                subject=f"Promote {spec.model.name} version {{{{ ti.xcom_pull(task_ids='train')['version'] }}}}?",
                body="{{ ti.xcom_pull(task_ids='train')['body'] }}",
                response_timeout=timedelta(days=7),
                defaults=ApprovalOperator.REJECT,  # no answer in a week: the champion stays
            )

            @task(trigger_rule=TriggerRule.NONE_FAILED)
            def record_rejection(spec_path: str, outcome: dict[str, Any], **context: Any) -> None:
                """A rejection skips `promote`; this runs either way and tags the candidate when rejected.

                (A rejecting ApprovalOperator pushes no XCom: it skips its downstream by raising, so
                "rejected" is read from `promote` not having run although the decision was to promote.)
                """
                from labelloop.model.prelabel import required_tracking_uri
                from labelloop.model.retrain import reject
                from labelloop.spec import load_spec

                if outcome and outcome.get("promote") and context["ti"].xcom_pull(task_ids="promote") is None:
                    reject(load_spec(Path(spec_path)), required_tracking_uri(), outcome,
                           by="sign-off in Airflow (Reject, or no answer in 7 days)")

            needs_sign_off(train.output) >> approval >> promote
            promote >> record_rejection(str(path), train.output)
        promote >> RefreshPrelabelsOperator(task_id="refresh", spec_path=path, outlets=[prelabels_asset(spec)])
    return dag


def registry_watch_dag(spec: ProjectSpec) -> DAG:
    with project_dag(
        spec, "registry_watch",
        description=f"Refresh pre-labels of '{spec.title}' when the champion alias moved (from anywhere)",
        schedule=timedelta(minutes=5),
        retries=0,
        doc_md="A cheap check: one registry call. When `champion` points at a version whose pre-labels "
               "were not refreshed yet (a promotion, a rollback, a move in the MLflow UI), re-predicts "
               "the unannotated tasks.",
        tag="retrain",
    ) as dag:
        RefreshPrelabelsOperator(task_id="refresh_if_moved", spec_path=spec.spec_path,
                                 outlets=[prelabels_asset(spec)])
    return dag


def rollback_dag(spec: ProjectSpec) -> DAG:
    from airflow.sdk import Param

    with project_dag(
        spec, "rollback",
        description=f"Point the champion of '{spec.title}' back at a named earlier version",
        schedule=None,
        params={"version": Param(type="string", description="registered model version to make champion")},
        retries=0,
        tag="retrain",
    ) as dag:
        rollback = RollbackChampionOperator(task_id="rollback", spec_path=spec.spec_path,
                                            version="{{ params.version }}")
        rollback >> RefreshPrelabelsOperator(task_id="refresh", spec_path=spec.spec_path,
                                             outlets=[prelabels_asset(spec)])
    return dag


def build_dags(folder: Path | None = None) -> dict[str, DAG]:
    """The DAGs of every valid spec. Broken specs are left out here and reported by
    ``check_specs`` from a DAG file of their own, so they cannot take the others down."""
    dags: dict[str, DAG] = {}
    for spec in load_specs(folder, errors=[]):
        builders = [setup_dag, ingest_dag, collect_dag, audit_dag]
        if spec.model is not None:
            builders += [retrain_dag, registry_watch_dag, rollback_dag]
        for dag in (build(spec) for build in builders):
            dags[dag.dag_id] = dag
    return dags


def check_specs(folder: Path | None = None) -> None:
    """Raise one SpecError naming every broken spec: Airflow shows it as that file's import error."""
    errors: list[SpecError] = []
    load_specs(folder, errors=errors)
    if errors:
        raise SpecError(f"{len(errors)} project spec(s) are broken and have no DAGs until fixed "
                        f"(the other projects run):\n" + "\n".join(f"- {error}" for error in errors))
