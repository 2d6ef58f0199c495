"""Wait for people to annotate, in the triggerer: one cheap Label Studio call per poll.

Each poll reads one project (``GET /api/projects/<id>``) and its counters: ``task_number``,
``num_tasks_with_annotations`` (tasks with at least one annotation) and ``finished_task_number``
(tasks with every answer the project asks for). No task list, no export.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from labelloop import settings

#: What ``count`` may name -> the project counter it reads.
COUNTED = {"annotated": "num_tasks_with_annotations", "finished": "finished_task_number"}
#: Answers that no later poll can change: fail the wait at once instead of polling on.
FINAL_STATUS = {400, 401, 403, 404}


def progress(project: Any, count: str, min_annotated: int | None, min_share: float | None) -> dict[str, Any]:
    """Where a project stands against the wait's thresholds (both must hold when both are given)."""
    tasks = int(project.task_number or 0)
    counted = int(getattr(project, COUNTED[count]) or 0)
    wanted = [min_annotated or 0]
    if min_share is not None:
        wanted.append(max(1, math.ceil(min_share * tasks)))
    target = max(wanted)
    return {"project_id": int(project.id), "tasks": tasks, "counted": counted, "count": count,
            "target": target, "reached": tasks > 0 and counted >= target}


class LabelStudioAnnotationsTrigger(BaseTrigger):
    """Fires once the project has ``min_annotated`` counted tasks and/or ``min_share`` of its tasks.

    Yields ``{"status": "success", **progress}``, or ``{"status": "error", "message": ...}`` when
    the connection is missing, Label Studio refuses for good (no project, bad token), or
    ``deadline`` (epoch seconds) passes: the trigger ends its own wait, so it is bounded even
    where nothing enforces the task's timeout (``dag.test()`` runs triggers inline without one).
    Network failures and 5xx answers are logged and polled through.
    """

    def __init__(self, project_id: int, min_annotated: int | None = None, min_share: float | None = None,
                 count: str = "annotated", poll_interval: float = 60.0,
                 labelstudio_conn_id: str = settings.LABELSTUDIO_CONN_ID, deadline: float | None = None) -> None:
        super().__init__()
        self.deadline = deadline
        self.project_id = project_id
        self.min_annotated = min_annotated
        self.min_share = min_share
        self.count = count
        self.poll_interval = poll_interval
        self.labelstudio_conn_id = labelstudio_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {
            "project_id": self.project_id, "min_annotated": self.min_annotated, "min_share": self.min_share,
            "count": self.count, "poll_interval": self.poll_interval,
            "labelstudio_conn_id": self.labelstudio_conn_id, "deadline": self.deadline,
        })

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import httpx
        from airflow.sdk import BaseHook
        from label_studio_sdk import AsyncLabelStudio
        from label_studio_sdk.core.api_error import ApiError

        from labelloop.hooks.labelstudio import CONNECT_TIMEOUT, base_url_of

        where = f"project {self.project_id} (connection {self.labelstudio_conn_id!r})"
        try:
            conn = await BaseHook.aget_connection(self.labelstudio_conn_id)
            base_url = base_url_of(conn, self.labelstudio_conn_id)
        except Exception as error:  # no such connection (AirflowNotFoundException), or no host/token
            yield TriggerEvent({"status": "error", "message": f"{where}: {type(error).__name__}: {error}"})
            return
        # The SDK exchanges a personal access token for an access token itself (a sync call, made
        # once per token lifetime); a legacy token is sent as is.
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=CONNECT_TIMEOUT)) as http:
            client = AsyncLabelStudio(base_url=base_url, api_key=conn.password, httpx_client=http, max_retries=0)
            while True:
                try:
                    project = await client.projects.get(self.project_id)
                except ApiError as error:
                    if error.status_code in FINAL_STATUS:
                        yield TriggerEvent({"status": "error", "message": (
                            f"Label Studio at {base_url} answered {error.status_code} for {where}: "
                            f"{error.body}. Check the project id and the connection's API token.")})
                        return
                    self.log.warning("Label Studio at %s answered %s for %s; polling on", base_url,
                                     error.status_code, where)
                except httpx.TransportError as error:
                    self.log.warning("Label Studio at %s unreachable for %s (%s: %s); polling on", base_url,
                                     where, type(error).__name__, error)
                else:
                    state = progress(project, self.count, self.min_annotated, self.min_share)
                    if state.pop("reached"):
                        yield TriggerEvent({"status": "success", **state})
                        return
                    self.log.info("project %s: %s of %s tasks %s, waiting for %s", self.project_id,
                                  state["counted"], state["tasks"], self.count, state["target"])
                    if self.deadline is not None and time.time() >= self.deadline:
                        yield TriggerEvent({"status": "error", "message": (
                            f"{where}: {state['counted']} of {state['tasks']} tasks {self.count} when the wait "
                            f"timed out; it waited for {state['target']}")})
                        return
                await asyncio.sleep(self.poll_interval)
