"""Wait on Label Studio from the triggerer: one cheap Label Studio call per poll, no worker held.

- ``LabelStudioAnnotationsTrigger`` reads one project (``GET /api/projects/<id>``) and its counters:
  ``task_number``, ``num_tasks_with_annotations`` (tasks with at least one annotation) and
  ``finished_task_number`` (tasks with every answer the project asks for). No task list, no export.
- ``LabelStudioExportTrigger`` reads one export snapshot's status until Label Studio built it.
- ``LabelStudioAnnotationsChangedTrigger`` (an ``AssetWatcher``'s) reads a one-task page of the
  project's task list, newest change first: its totals and the latest ``updated_at`` change whenever
  an annotation is created, changed or deleted, so collect can run when people labeled something;
  on a start it also reads the latest collect snapshot's manifest, to catch changes made meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from datetime import datetime
from typing import Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

from labelloop import settings

log = logging.getLogger(__name__)
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


def classpath(trigger: BaseTrigger) -> str:
    return f"{type(trigger).__module__}.{type(trigger).__qualname__}"


def error(message: str) -> TriggerEvent:
    return TriggerEvent({"status": "error", "message": message})


async def poll(conn_id: str, where: str, interval: float,
               call: Callable[[Any], Awaitable[Any]]) -> AsyncIterator[Any]:
    """Yield ``call(client)``'s answer every ``interval`` seconds, with the async SDK client.

    A lasting failure (no connection, a 4xx that no later poll changes) is yielded as an error
    ``TriggerEvent`` and ends the polling; network failures and 5xx answers are logged and polled
    through. The caller decides from each answer whether to stop.
    """
    import httpx
    from airflow.sdk import BaseHook
    from label_studio_sdk import AsyncLabelStudio
    from label_studio_sdk.core.api_error import ApiError

    from labelloop.hooks.labelstudio import CONNECT_TIMEOUT, base_url_of

    try:
        conn = await BaseHook.aget_connection(conn_id)
        base_url = base_url_of(conn, conn_id)
    except Exception as failure:  # no such connection (AirflowNotFoundException), or no host/token
        yield error(f"{where}: {type(failure).__name__}: {failure}")
        return
    # The SDK exchanges a personal access token for an access token itself (a sync call, made
    # once per token lifetime); a legacy token is sent as is.
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=CONNECT_TIMEOUT)) as http:
        client = AsyncLabelStudio(base_url=base_url, api_key=conn.password, httpx_client=http, max_retries=0)
        while True:
            try:
                answer = await call(client)
            except ApiError as failure:
                if failure.status_code in FINAL_STATUS:
                    yield error(f"Label Studio at {base_url} answered {failure.status_code} for {where}: "
                                f"{failure.body}. Check the ids and the connection's API token.")
                    return
                log.warning("Label Studio at %s answered %s for %s; polling on", base_url,
                            failure.status_code, where)
            except httpx.TransportError as failure:
                log.warning("Label Studio at %s unreachable for %s (%s: %s); polling on", base_url,
                            where, type(failure).__name__, failure)
            else:
                yield answer
            await asyncio.sleep(interval)


def overdue(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


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
        return (classpath(self), {
            "project_id": self.project_id, "min_annotated": self.min_annotated, "min_share": self.min_share,
            "count": self.count, "poll_interval": self.poll_interval,
            "labelstudio_conn_id": self.labelstudio_conn_id, "deadline": self.deadline,
        })

    async def run(self) -> AsyncIterator[TriggerEvent]:
        where = f"project {self.project_id} (connection {self.labelstudio_conn_id!r})"
        async with aclosing(poll(self.labelstudio_conn_id, where, self.poll_interval,
                                 lambda client: client.projects.get(self.project_id))) as answers:
            async for answer in answers:
                if isinstance(answer, TriggerEvent):
                    yield answer
                    return
                state = progress(answer, self.count, self.min_annotated, self.min_share)
                if state.pop("reached"):
                    yield TriggerEvent({"status": "success", **state})
                    return
                self.log.info("project %s: %s of %s tasks %s, waiting for %s", self.project_id,
                              state["counted"], state["tasks"], self.count, state["target"])
                if overdue(self.deadline):
                    yield error(f"{where}: {state['counted']} of {state['tasks']} tasks {self.count} when the wait "
                                f"timed out; it waited for {state['target']}")
                    return


class LabelStudioExportTrigger(BaseTrigger):
    """Fires once Label Studio has built export snapshot ``export_id`` of project ``project_id``.

    Yields ``{"status": "success", "project_id", "export_id"}``, or ``{"status": "error", ...}``
    when the snapshot failed, Label Studio refuses for good, or ``deadline`` (epoch seconds) passes.
    """

    def __init__(self, project_id: int, export_id: int, poll_interval: float = 5.0,
                 labelstudio_conn_id: str = settings.LABELSTUDIO_CONN_ID, deadline: float | None = None) -> None:
        super().__init__()
        self.project_id = project_id
        self.export_id = export_id
        self.poll_interval = poll_interval
        self.labelstudio_conn_id = labelstudio_conn_id
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (classpath(self), {
            "project_id": self.project_id, "export_id": self.export_id, "poll_interval": self.poll_interval,
            "labelstudio_conn_id": self.labelstudio_conn_id, "deadline": self.deadline,
        })

    async def run(self) -> AsyncIterator[TriggerEvent]:
        where = (f"export snapshot {self.export_id} of project {self.project_id} "
                 f"(connection {self.labelstudio_conn_id!r})")
        def status(client: Any) -> Awaitable[Any]:
            return client.projects.exports.get(self.project_id, self.export_id)

        async with aclosing(poll(self.labelstudio_conn_id, where, self.poll_interval, status)) as answers:
            async for answer in answers:
                if isinstance(answer, TriggerEvent):
                    yield answer
                    return
                status = str(answer.status or "")
                if status == "completed":
                    yield TriggerEvent({"status": "success", "project_id": self.project_id,
                                        "export_id": self.export_id})
                    return
                if status == "failed":
                    yield error(f"{where} failed; see the Label Studio server log")
                    return
                if overdue(self.deadline):
                    yield error(f"{where} is still {status or 'pending'} at the deadline")
                    return
                self.log.info("%s is %s", where, status or "pending")


#: The Data Manager query of a one-task page holding the project's most recently changed task.
LATEST_CHANGE_QUERY = json.dumps({"ordering": ["-tasks:updated_at"]})


def fingerprint(page: Any) -> dict[str, Any]:
    """What changes whenever an annotation is created, changed or deleted: the project's totals and
    its newest task ``updated_at`` (Label Studio stamps the task on every annotation change)."""
    answer = page.response
    latest = (answer.tasks or [None])[0]
    updated = getattr(latest, "updated_at", None) if latest is not None else None
    return {"tasks": int(answer.total or 0), "annotations": int(answer.total_annotations or 0),
            "updated_at": updated.isoformat() if hasattr(updated, "isoformat") else updated}


def behind(now: dict[str, Any], project_id: int, manifest: dict[str, Any] | None) -> str | None:
    """Why the latest snapshot (its ``manifest``; None before the first collect) may not hold the
    project as it stands (``now``, a ``fingerprint``), or None when it does.

    Its watermark is when Label Studio started the snapshot's export: a task stamped later may be
    missing from it. A deleted task leaves no stamp, so the totals are compared too.
    Before the first collect only annotations call for one (ingest starts collect for new tasks).
    """
    if manifest is None:
        return "annotations and no snapshot yet" if now["annotations"] else None
    held_project = (manifest.get("project_ids") or {}).get("main")
    if held_project != project_id:
        return f"the latest snapshot is of project {held_project}"
    watermark = (manifest.get("watermarks") or {}).get("main")
    if watermark is None:
        return "the latest snapshot records no watermark"
    changed = now["updated_at"]
    if changed is not None and datetime.fromisoformat(changed) > datetime.fromisoformat(watermark):
        return f"a task changed at {changed}, after the latest snapshot's export started ({watermark})"
    counts = manifest.get("counts") or {}
    held = {"tasks": counts.get("tasks"), "annotations": counts.get("annotations")}
    if held != {"tasks": now["tasks"], "annotations": now["annotations"]}:
        return f"the latest snapshot holds {held}"
    return None


def latest_manifest(storage_uri: str, storage_conn_id: str | None) -> dict[str, Any] | None:
    """The manifest of the snapshot ``collect/latest.json`` points at, None before the first collect;
    StateError when the pointer or the manifest is broken (sync I/O: call it in a thread)."""
    from labelloop.collect.table import latest_snapshot
    from labelloop.layout import storage_path
    from labelloop.state import read_json

    folder = latest_snapshot(storage_path(storage_uri, storage_conn_id))
    return None if folder is None else read_json(folder / "manifest.json", None, expect=dict)


class LabelStudioAnnotationsChangedTrigger(BaseEventTrigger):
    """For an ``AssetWatcher``: yields an event each time the project titled ``title`` changed.

    Each poll is one call, a one-task page of the project's task list newest change first
    (``fingerprint``); an event carries the new fingerprint. No webhooks: nothing is lost when Label
    Studio fails to deliver one. A project not created yet, a refused token or a network failure
    are logged and polled through: a watcher must keep watching.

    The first poll after a start has no previous poll to compare with. With ``storage_uri`` (the
    spec's, and ``storage_conn_id``) it compares the project with the latest collect snapshot
    (``behind``) and fires at once when that may miss a change, so annotations made while no
    triggerer ran are collected on restart; a pointer that cannot be read is logged and counts as a
    change (one collect, which rebuilds or reports it). Without ``storage_uri`` the first poll only
    records where the project stands and such changes are left to the cron fallback. Later polls
    compare with the previous one, so a collect still running from an event causes no more events.
    """

    def __init__(self, title: str, poll_interval: float = 60.0,
                 labelstudio_conn_id: str = settings.LABELSTUDIO_CONN_ID, storage_uri: str | None = None,
                 storage_conn_id: str | None = None) -> None:
        super().__init__()
        self.title = title
        self.poll_interval = poll_interval
        self.labelstudio_conn_id = labelstudio_conn_id
        self.storage_uri = storage_uri
        self.storage_conn_id = storage_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (classpath(self), {"title": self.title, "poll_interval": self.poll_interval,
                                  "labelstudio_conn_id": self.labelstudio_conn_id,
                                  "storage_uri": self.storage_uri, "storage_conn_id": self.storage_conn_id})

    async def _behind_snapshot(self, now: dict[str, Any], project_id: int) -> str | None:
        """``behind`` the latest snapshot, read in a thread (object storage I/O is sync); never raises."""
        assert self.storage_uri is not None
        try:
            manifest = await asyncio.to_thread(latest_manifest, self.storage_uri, self.storage_conn_id)
            return behind(now, project_id, manifest)
        except Exception as failure:  # a broken pointer (StateError), an unreachable store, a bad manifest
            self.log.warning("cannot tell whether the latest snapshot under %s holds project %s (%s: %s); "
                             "counting it as changed", self.storage_uri, project_id,
                             type(failure).__name__, failure)
            return f"the latest snapshot cannot be read ({type(failure).__name__})"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        where = f"project {self.title!r} (connection {self.labelstudio_conn_id!r})"
        project_id: int | None = None

        async def look(client: Any) -> Any:
            nonlocal project_id
            if project_id is None:  # found once; a project made later is found on a later poll
                pager = await client.projects.list(title=self.title, page_size=100)
                titled = sorted([project.id async for project in pager if project.title == self.title])
                if not titled:
                    return None
                project_id = titled[0]  # the oldest, should there be twins
            return await client.tasks.list(project=project_id, fields="task_only", page_size=1,
                                           query=LATEST_CHANGE_QUERY)

        seen: dict[str, Any] | None = None
        while True:
            async with aclosing(poll(self.labelstudio_conn_id, where, self.poll_interval, look)) as answers:
                async for answer in answers:
                    if isinstance(answer, TriggerEvent):  # a lasting refusal: say so, then try again later
                        self.log.warning("%s", answer.payload["message"])
                        break
                    if answer is None:
                        self.log.info("%s does not exist yet", where)
                        continue
                    now = fingerprint(answer)
                    if seen is None:
                        self.log.info("watching %s (id %s) for annotations: %s", where, project_id, now)
                        change = (None if self.storage_uri is None
                                  else await self._behind_snapshot(now, project_id))
                    else:
                        change = None if now == seen else "since the previous poll"
                    if change is not None:
                        self.log.info("%s changed (%s): %s", where, change, now)
                        yield TriggerEvent({"project_id": project_id, **now})
                    seen = now
            project_id = None
            await asyncio.sleep(self.poll_interval)
