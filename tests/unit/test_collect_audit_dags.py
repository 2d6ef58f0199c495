"""The collect and audit DAGs are wired to the right assets and schedules (parse time only)."""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import Asset, AssetOrTimeSchedule

from labelloop.factory import (
    annotations_asset,
    audit_dag,
    collect_dag,
    quality_passed_asset,
    tasks_asset,
)
from labelloop.spec import load_spec

SPEC = Path(__file__).resolve().parents[2] / "include" / "projects" / "sms_spam.yaml"


def test_collect_runs_on_its_cron_and_after_ingest() -> None:
    spec = load_spec(SPEC)
    dag = collect_dag(spec)
    assert dag.dag_id == "labelloop__sms_spam__collect" and dag.max_active_runs == 1
    timetable = dag.timetable
    assert isinstance(timetable, AssetOrTimeSchedule)
    assert timetable.asset_condition == tasks_asset(spec)
    assert dag.get_task("collect").outlets == [annotations_asset(spec)]


def test_collect_without_cron_waits_for_ingest_only() -> None:
    spec = load_spec(SPEC).model_copy(update={"schedules": load_spec(SPEC).schedules.model_copy(
        update={"collect": None})})
    assert collect_dag(spec).timetable.asset_condition == tasks_asset(spec)


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
