"""The Label Studio project a spec describes, created or brought up to date idempotently."""

from __future__ import annotations

from typing import Any

from labelloop import settings
from labelloop.connections import url_of
from labelloop.hooks.labelstudio import LabelStudioHook
from labelloop.spec import ProjectSpec
from labelloop.taskdata import PRIORITY_FIELD


def project_settings(spec: ProjectSpec) -> dict[str, Any]:
    """Everything labelloop owns in the project; other settings are left as people set them."""
    return {
        "description": spec.description,
        "label_config": spec.labeling_config_xml,
        "expert_instruction": spec.guidelines_html,
        "show_instruction": bool(spec.guidelines_html),
        "maximum_annotations": spec.annotation.annotators_per_task,
        "show_skip_button": spec.annotation.show_skip_button,
        # Overlap applies to every task: each gets annotators_per_task answers.
        "overlap_cohort_percentage": 100,
        # The labeling stream follows the Data Manager view's order (see QUEUE_VIEW).
        "sampling": "Sequential sampling",
    }


QUEUE_VIEW = "labelloop: most uncertain first"


def ensure_project(hook: LabelStudioHook, spec: ProjectSpec) -> tuple[int, bool]:
    """(project id, created?) for the spec's project, with its labeling-order view."""
    project, created = hook.upsert_project(spec.title, **project_settings(spec))
    hook.ensure_view(project.id, QUEUE_VIEW, ordering=[f"-tasks:data.{PRIORITY_FIELD}"])
    return project.id, created


def connect_backend(hook: LabelStudioHook, project_id: int, conn_id: str = settings.BACKEND_CONN_ID) -> int | None:
    """Register the pre-label ML backend named by the connection, when there is one."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    return hook.ensure_ml_backend(project_id, url_of(conn), "labelloop champion", conn.login, conn.password)
