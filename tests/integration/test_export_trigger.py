"""The deferrable export against a real Label Studio: its trigger, and the operator's defer/resume cycle.

The operator is driven the way Airflow drives it (execute -> TaskDeferred -> the trigger, rebuilt
from its serialized form, runs -> execute_complete with the event and the deferral's kwargs).
Two stand-ins, for what cannot run here: the task instance's XCom push (outside a running task
there is no supervisor to push to), and the first status read of each snapshot, reported as
``in_progress``: Label Studio Community builds a snapshot inside the request that creates it, and
Enterprise, which builds them in its task queue, is not available here. Every other call, the
trigger's polls included, goes to the real server.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from types import SimpleNamespace
from typing import Any

import pendulum
import pytest

from labelloop.collect.table import latest_snapshot, read_snapshot
from labelloop.layout import Layout
from labelloop.operators import LabelStudioExportOperator
from labelloop.project import ensure_project
from labelloop.spec import load_spec
from labelloop.triggers.labelstudio import LabelStudioExportTrigger

pytestmark = pytest.mark.integration


def events(trigger: Any, timeout: float = 30) -> Any:
    """The first event of the trigger rebuilt from ``serialize()`` (as the triggerer rebuilds it)."""
    from airflow.sdk.module_loading import import_string

    classpath, kwargs = trigger.serialize()
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)

    async def first() -> Any:
        async with aclosing(rebuilt.run()) as stream:
            return await asyncio.wait_for(anext(stream), timeout)

    return asyncio.run(first())


def annotated_project(hook: Any, spec: Any, tasks: int) -> int:
    project_id, _ = ensure_project(hook, spec)
    hook.client.projects.import_tasks(project_id, request=[{"data": {"text": f"message {i}"}} for i in range(tasks)])
    result = [{"from_name": spec.control_name, "to_name": spec.object_name, "type": "choices",
               "value": {"choices": [spec.labels[0]]}}]
    for task in hook.iter_tasks(project_id):
        hook.create_annotation(task.id, result)
    return project_id


def test_export_trigger_fires_when_the_snapshot_is_built(labelstudio_hook, make_spec) -> None:
    hook = labelstudio_hook
    project_id = annotated_project(hook, load_spec(make_spec(model=None)), 3)
    export_id = hook.create_export(project_id, "trigger test")

    event = events(LabelStudioExportTrigger(project_id=project_id, export_id=export_id, poll_interval=0.2))
    assert event.payload == {"status": "success", "project_id": project_id, "export_id": export_id}
    assert len(hook.download_export(project_id, export_id)) == 3

    missing = events(LabelStudioExportTrigger(project_id=project_id, export_id=10**9, poll_interval=0.2)).payload
    assert missing["status"] == "error" and "answered 404" in missing["message"]
    overdue = events(LabelStudioExportTrigger(project_id=10**9, export_id=1, labelstudio_conn_id="no_such_conn"))
    assert overdue.payload["status"] == "error" and "no_such_conn" in overdue.payload["message"]


class TaskInstance:
    """Stand-in for the running task instance: records what the operator pushes."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def test_export_operator_defers_each_snapshot_and_resumes(labelstudio_hook, make_spec, monkeypatch) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    from labelloop.operators.exports import ResumableExports, export_key

    real_status, seen = ResumableExports.export_status, set()

    def queued_first(self: ResumableExports, project_id: int, export_id: int) -> str:
        """Enterprise's queue: a snapshot is not built yet when first asked about (see the docstring)."""
        if export_id not in seen:
            seen.add(export_id)
            return "in_progress"
        return real_status(self, project_id, export_id)

    monkeypatch.setattr(ResumableExports, "export_status", queued_first)
    hook = labelstudio_hook
    path = make_spec(model=None)
    spec = load_spec(path)
    project_id = annotated_project(hook, spec, 4)
    operator = LabelStudioExportOperator(task_id="export", spec_path=str(path), grace=0, poll_interval=0.2)
    context = {"run_id": "manual__deferred", "dag_run": SimpleNamespace(run_after=pendulum.now("UTC")),
               "ti": TaskInstance()}

    # Resuming reuses the snapshot started before the deferral: one made before a 5th annotation
    # holds 4 answers, where a new export would hold 5. (The first collect: one full export.)
    run = "manual__resumed"
    key = export_key(project_id, f"labelloop collect {run}", None)
    export = hook.client.projects.exports.create(project_id, title=f"labelloop collect {run}",
                                                 serialization_options=hook.EXPORT_OPTIONS)
    started = [{"key": key, "project_id": project_id, "export_id": export.id, "view_id": None,
                "created_at": export.created_at.isoformat()}]
    hook.create_annotation(next(iter(hook.iter_tasks(project_id))).id, [{
        "from_name": spec.control_name, "to_name": spec.object_name, "type": "choices",
        "value": {"choices": [spec.labels[-1]]}}])
    seen.add(export.id)
    earlier = {**context, "run_id": run, "dag_run": SimpleNamespace(run_after=pendulum.now("UTC").subtract(hours=1))}
    resumed = operator.execute_complete(earlier, {"status": "success"}, started=started)
    assert resumed["counts"]["annotations"] == 4 and resumed["mode"] == "full"
    assert list(hook.client.projects.exports.list(project_id)) == []

    # An attempt of this run killed mid-export (SIGKILL runs no ``finally``) left its snapshot
    # and view behind: the next attempt deletes them, not just the ones it starts itself.
    title = f"labelloop collect {context['run_id']}"
    hook.client.projects.exports.create(project_id, title=title, serialization_options=hook.EXPORT_OPTIONS)
    hook.client.views.create(project=project_id, data={"title": title, "filters": {"conjunction": "and", "items": []}})
    deferrals, step = 0, lambda: operator.execute(context)
    while True:
        try:
            result = step()
            break
        except TaskDeferred as deferred:
            deferrals += 1
            assert isinstance(deferred.trigger, LabelStudioExportTrigger)
            assert deferred.method_name == "execute_complete" and deferred.kwargs["started"]
            event = events(deferred.trigger)
            step = lambda event=event, kwargs=deferred.kwargs: operator.execute_complete(  # noqa: E731
                context, event.payload, **kwargs)
        assert deferrals < 5, "the export deferred again and again"

    # One export of the main project's changed tasks (no review project yet), and a second when
    # the counts check finds a range to fetch again (it can, when the 5th answer and the resumed
    # snapshot fall in the same instant): each snapshot deferred once.
    assert deferrals == len(seen) - 1  # (seen also holds the resumed run's export)
    assert 1 <= deferrals <= 2
    assert list(hook.client.projects.exports.list(project_id)) == []
    assert [view for view in hook.client.views.list(project=project_id) if (view.data or {}).get("title") == title] == []
    assert result["counts"]["annotations"] == 5 and result["mode"] == "incremental"
    folder = latest_snapshot(Layout.of(spec).root)
    assert folder.name == result["run"] and len(read_snapshot(folder)["annotations"]) == 5
    assert context["ti"].pushed["labelstudio_project_url"].endswith(f"/projects/{project_id}/data")
    assert list(hook.client.projects.exports.list(project_id)) == []  # the snapshots were deleted

    # A failed wait fails the task and still deletes the snapshot it started.
    export_id = hook.create_export(project_id, "left behind")
    started = [{"key": "k", "project_id": project_id, "export_id": export_id, "view_id": None, "created_at": None}]
    with pytest.raises(Exception, match="still pending"):
        operator.execute_complete(context, {"status": "error", "message": "still pending"}, started=started)
    assert list(hook.client.projects.exports.list(project_id)) == []

    # deferrable=False: the same collect, waited for in the worker, sees all 5 answers.
    blocking = LabelStudioExportOperator(task_id="export", spec_path=str(path), deferrable=False)
    again = blocking.execute({**context, "run_id": "manual__blocking"})
    assert again["counts"]["annotations"] == 5
