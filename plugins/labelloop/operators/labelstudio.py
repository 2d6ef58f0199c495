"""Operators on a Label Studio project: set it up, wait for people, get their answers out.

Thin wrappers over the code the setup and collect DAGs are built from (``labelloop.project``,
``labelloop.collect.snapshot``), so a task of yours and a labelloop DAG share the project's
snapshots in the spec's ``storage_uri``. Example DAG: docs/provider.md.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator

from labelloop import settings
from labelloop.operators.base import SpecOperator, as_flag, fails_without_retry
from labelloop.operators.links import LabelStudioProjectLink
from labelloop.triggers.labelstudio import COUNTED, LabelStudioAnnotationsTrigger, LabelStudioExportTrigger

if TYPE_CHECKING:
    from labelloop.hooks.labelstudio import LabelStudioHook


class LabelStudioProjectOperator(SpecOperator):
    """Create the spec's Label Studio project, or bring it in line with the spec (title, labeling
    config, instructions, annotators per task), connect the pre-label backend and, for image
    projects, the image storage (the setup DAG's ``ensure_project``). Safe to run any time.
    Returns ``project_id``, ``created``, ``ml_backend`` and ``image_storage``."""

    operator_extra_links = (LabelStudioProjectLink(),)
    ui_color = "#ffe3cc"

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.ingest.images import connect_image_storage
        from labelloop.project import connect_backend, ensure_project

        spec = self.load_spec()
        project_id, created = ensure_project(self.hook, spec)
        LabelStudioProjectLink.persist(context, self.hook.project_url(project_id))
        return {"project_id": project_id, "created": created, "ml_backend": connect_backend(self.hook, project_id),
                "image_storage": connect_image_storage(self.hook, spec, project_id)}


class LabelStudioExportOperator(SpecOperator):
    """Snapshot the project's annotations (and its review project's) into Parquet tables under
    ``<storage_uri>/collect/`` (the collect DAG's ``collect``); returns the snapshot's manifest.
    ``full=True`` asks for a full reconciliation now, whatever the spec's collect settings say
    (templated: the collect DAG passes ``"{{ params.full }}"``). Its outlets' asset events carry
    the snapshot's id and counts.

    ``deferrable=True`` (the default): an export snapshot Label Studio has not built within
    ``grace`` seconds is waited for by ``LabelStudioExportTrigger`` in the triggerer (one status call
    per ``poll_interval``), so the worker slot is free meanwhile; the task resumes and writes the
    snapshot (``labelloop.operators.exports``); ``export_timeout`` bounds each such wait.
    ``deferrable=False`` waits in the worker (up to ``LabelStudioHook.wait_export``'s 30 minutes).
    """

    template_fields = (*SpecOperator.template_fields, "full")
    operator_extra_links = (LabelStudioProjectLink(),)
    ui_color = "#ffe3cc"

    def __init__(self, *, full: bool | str = False, deferrable: bool = True, grace: float = 5.0,
                 poll_interval: float = 5.0, export_timeout: timedelta = timedelta(minutes=30),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if grace < 0 or poll_interval <= 0:
            raise ValueError(f"{self.task_id}: grace ({grace!r}) must be >= 0 and poll_interval "
                             f"({poll_interval!r}) > 0 seconds")
        self.full = full
        self.deferrable = deferrable
        self.grace = grace
        self.poll_interval = poll_interval
        self.export_timeout = export_timeout

    @fails_without_retry
    def execute(self, context: Any) -> dict[str, Any]:
        if not self.deferrable:
            return self._collect(context, self.hook)
        return self._collect_or_defer(context, [])

    @fails_without_retry
    def execute_complete(self, context: Any, event: dict[str, Any] | None = None,
                         started: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Resumed by the trigger: a built snapshot lets collect go on; anything else fails the task."""
        from airflow.sdk.exceptions import AirflowException

        from labelloop.operators.exports import ResumableExports

        if not event or event.get("status") != "success":
            ResumableExports(started=started, labelstudio_conn_id=self.labelstudio_conn_id).clean_up()
            raise AirflowException(f"{self.task_id}: {(event or {}).get('message', f'no event (got {event!r})')}")
        return self._collect_or_defer(context, started or [])

    def _collect_or_defer(self, context: Any, started: list[dict[str, Any]]) -> dict[str, Any]:
        from labelloop.operators.exports import ExportPending, ResumableExports

        hook = ResumableExports(started=started, grace=self.grace, labelstudio_conn_id=self.labelstudio_conn_id)
        try:
            result = self._collect(context, hook)
        except ExportPending as pending:
            self.log.info("%s; deferring to the triggerer", pending)
            self.defer(trigger=LabelStudioExportTrigger(
                project_id=pending.pending["project_id"], export_id=pending.pending["export_id"],
                poll_interval=self.poll_interval, labelstudio_conn_id=self.labelstudio_conn_id,
                deadline=time.time() + self.export_timeout.total_seconds()),
                method_name="execute_complete", kwargs={"started": pending.started},
                timeout=self.export_timeout)
        except BaseException:
            hook.clean_up()
            raise
        hook.clean_up()
        return result

    def _collect(self, context: Any, hook: LabelStudioHook) -> dict[str, Any]:
        from labelloop.collect.snapshot import collect

        result = collect(self.load_spec(), hook, context["run_id"],
                         context["dag_run"].run_after.isoformat(), full=as_flag(self.full, f"{self.task_id}: full"))
        if result["project_id"] is not None:
            LabelStudioProjectLink.persist(context, hook.project_url(result["project_id"]))
        self.log.info("snapshot %s: %s -> %s%s", result["run"], result["counts"], result["uri"],
                      "" if result["latest"] else " (a later run owns collect/latest.json; left as is)")
        self.describe_outlets(context, {"snapshot": result["snapshot"], "counts": result["counts"]})
        return result


class WaitForAnnotationsOperator(BaseOperator):
    """Wait, deferred (no worker slot held), until a project has enough annotated tasks.

    Give ``min_annotated`` (a number of tasks) or ``min_share`` (a share of the project's tasks,
    0 < share <= 1), or both (both must hold). ``count="annotated"`` counts tasks with at least one
    annotation; ``count="finished"`` those with every answer the project asks for. The triggerer
    makes one Label Studio call per ``poll_interval``. Returns the last progress it saw.
    """

    template_fields = ("project_id", "labelstudio_conn_id")
    operator_extra_links = (LabelStudioProjectLink(),)
    ui_color = "#ffe3cc"

    def __init__(self, *, project_id: int | str, min_annotated: int | None = None,
                 min_share: float | None = None, count: Literal["annotated", "finished"] = "annotated",
                 poll_interval: float = 60.0, wait_timeout: timedelta | None = None,
                 labelstudio_conn_id: str = settings.LABELSTUDIO_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if min_annotated is None and min_share is None:
            raise ValueError(f"{self.task_id}: give min_annotated (tasks) or min_share (0 < share <= 1)")
        if min_share is not None and not 0 < min_share <= 1:
            raise ValueError(f"{self.task_id}: min_share is {min_share!r}; give a share in (0, 1]")
        if min_annotated is not None and min_annotated < 1:
            raise ValueError(f"{self.task_id}: min_annotated is {min_annotated!r}; give a number of tasks >= 1")
        if count not in COUNTED:
            raise ValueError(f"{self.task_id}: count is {count!r}; accepted: {sorted(COUNTED)}")
        self.project_id = project_id  # templated: "{{ ti.xcom_pull(task_ids='import')['project_id'] }}"
        self.min_annotated = min_annotated
        self.min_share = min_share
        self.count = count
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.labelstudio_conn_id = labelstudio_conn_id

    def execute(self, context: Any) -> None:
        from labelloop.hooks.labelstudio import LabelStudioHook

        project_id = int(self.project_id)
        hook = LabelStudioHook(labelstudio_conn_id=self.labelstudio_conn_id)
        LabelStudioProjectLink.persist(context, hook.project_url(project_id))
        self.defer(
            trigger=LabelStudioAnnotationsTrigger(
                project_id=project_id, min_annotated=self.min_annotated, min_share=self.min_share,
                count=self.count, poll_interval=self.poll_interval,
                labelstudio_conn_id=self.labelstudio_conn_id,
                deadline=None if self.wait_timeout is None else time.time() + self.wait_timeout.total_seconds()),
            method_name="execute_complete",
            timeout=self.wait_timeout,
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """The trigger's event: success carries the progress; anything else fails the task."""
        from airflow.sdk.exceptions import AirflowException

        if not event or event.get("status") != "success":
            message = (event or {}).get("message", f"no event (got {event!r})")
            raise AirflowException(f"waiting for annotations on project {self.project_id}: {message}")
        progress = {key: value for key, value in event.items() if key != "status"}
        self.log.info("project %s: %s of %s tasks %s (wanted %s)", progress["project_id"], progress["counted"],
                      progress["tasks"], self.count, progress["target"])
        return progress
