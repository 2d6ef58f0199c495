"""The collect and audit DAGs are wired to the right assets and schedules (parse time only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule

from labelloop.factory import (
    annotations_asset,
    audit_dag,
    collect_dag,
    labeled_asset,
    quality_passed_asset,
    tasks_asset,
)
from labelloop.spec import load_spec

SPEC = Path(__file__).resolve().parents[2] / "include" / "projects" / "sms_spam.yaml"


def watched(condition: Any) -> dict[str, Any]:
    """The assets of a schedule's condition, by name, with what their watchers' triggers serialize."""
    return {asset.name: [(watcher.name, watcher.trigger.serialize()) for watcher in asset.watchers]
            for asset in condition.objects}


def test_collect_runs_on_its_cron_after_ingest_and_when_people_annotate() -> None:
    spec = load_spec(SPEC)
    dag = collect_dag(spec)
    assert dag.dag_id == "labelloop__sms_spam__collect" and dag.max_active_runs == 1
    timetable = dag.timetable
    assert isinstance(timetable, AssetOrTimeSchedule)
    assert watched(timetable.asset_condition) == {
        tasks_asset(spec).name: [],
        "labelloop__sms_spam__labeled": [("labelloop__sms_spam__annotations_watch", (
            "labelloop.triggers.labelstudio.LabelStudioAnnotationsChangedTrigger",
            {"title": spec.title, "poll_interval": 60.0, "labelstudio_conn_id": "labelstudio_default",
             "storage_uri": spec.storage_uri, "storage_conn_id": "aws_default"}))],
    }
    assert labeled_asset(spec).name == "labelloop__sms_spam__labeled"
    assert dag.get_task("collect").outlets == [annotations_asset(spec)]


def test_collect_without_cron_or_watch_waits_for_ingest_only() -> None:
    spec = load_spec(SPEC)
    no_cron = spec.model_copy(update={"schedules": spec.schedules.model_copy(update={"collect": None})})
    assert set(watched(collect_dag(no_cron).timetable.asset_condition)) == {
        tasks_asset(spec).name, labeled_asset(spec).name}
    neither = no_cron.model_copy(update={"collect": spec.collect.model_copy(update={"watch_seconds": None})})
    assert collect_dag(neither).timetable.asset_condition == tasks_asset(spec)


def test_audit_listens_to_collect_and_only_the_gate_emits() -> None:
    spec = load_spec(SPEC)
    dag = audit_dag(spec)
    assert dag.dag_id == "labelloop__sms_spam__audit"
    assert dag.timetable.asset_condition == annotations_asset(spec)
    assert {task.task_id: task.outlets for task in dag.tasks} == {
        "audit": [], "route": [], "gate": [quality_passed_asset(spec)]}
    assert dag.get_task("gate").upstream_task_ids == {"audit"}
    assert dag.get_task("gate").retries == 0
    assert isinstance(quality_passed_asset(spec), Asset)
    assert quality_passed_asset(spec).name == "labelloop__sms_spam__quality_passed"
