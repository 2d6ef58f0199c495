"""Export snapshots that wait in the triggerer: the hook a deferrable export runs collect with.

Collect (``labelloop.collect.snapshot``) asks for one to a few export snapshots per run, each
through ``LabelStudioHook.export_selected``. (Label Studio Community builds a snapshot inside the
request that creates it, so there it is built at once and nothing defers; Enterprise builds them
in its task queue, which is where a wait of minutes happens.) Here that call starts the snapshot and, when Label
Studio has not built it within ``grace`` seconds, raises ``ExportPending`` so the operator defers
to ``LabelStudioExportTrigger`` instead of holding its worker slot. When the task resumes, collect
runs again from the start: the snapshots started before are found by what was asked (project,
title, filters) and downloaded, not started again. All of them are deleted once collect is done.
"""

from __future__ import annotations

import json
import time
from typing import Any

from labelloop.hooks.labelstudio import LabelStudioError, LabelStudioHook


class ExportPending(Exception):
    """Label Studio is still building ``pending``; ``started`` lists every snapshot this task began."""

    def __init__(self, pending: dict[str, Any], started: list[dict[str, Any]]) -> None:
        super().__init__(f"export snapshot {pending['export_id']} of project {pending['project_id']} is being built")
        self.pending = pending
        self.started = started


def export_key(project_id: int, title: str, filters: dict[str, Any] | None) -> str:
    return json.dumps([project_id, title, filters], sort_keys=True)


class ResumableExports(LabelStudioHook):
    """A ``LabelStudioHook`` whose ``export_selected`` waits at most ``grace`` seconds, then defers."""

    def __init__(self, *, started: list[dict[str, Any]] | None = None, grace: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started = {item["key"]: item for item in started or []}
        self.grace = grace

    def export_selected(self, project_id: int, title: str,
                        filters: dict[str, Any] | None = None) -> tuple[str, list[dict[str, Any]]]:
        key = export_key(project_id, title, filters)
        item = self.started.get(key) or self._begin(key, project_id, title, filters)
        deadline = time.monotonic() + self.grace
        while (status := self.export_status(project_id, item["export_id"])) != "completed":
            if status == "failed":
                raise LabelStudioError(f"export snapshot {item['export_id']} of project {project_id} failed; "
                                       f"see the Label Studio server log")
            if time.monotonic() >= deadline:
                raise ExportPending(item, list(self.started.values()))
            time.sleep(min(1.0, self.grace))
        return item["created_at"], self.download_export(project_id, item["export_id"])

    def export_status(self, project_id: int, export_id: int) -> str:
        """``created``, ``in_progress``, ``completed`` or ``failed`` (one cheap call)."""
        return str(self.client.projects.exports.get(project_id, export_id).status or "")

    def _begin(self, key: str, project_id: int, title: str, filters: dict[str, Any] | None) -> dict[str, Any]:
        self._delete_leftovers(project_id, title, keep_exports=self._in_use("export_id"),
                               keep_views=self._in_use("view_id"))
        view_id = None if filters is None else int(self.client.views.create(
            project=project_id, data={"title": title, "filters": filters}).id)
        self.started[key] = {"key": key, "project_id": project_id, "view_id": view_id, "export_id": None,
                             "created_at": None}  # recorded first: a view is cleaned up even if the export fails
        export = self._start_export(project_id, title, view_id)
        self.started[key].update(export_id=int(export.id), created_at=export.created_at.isoformat())
        return self.started[key]

    def _in_use(self, name: str) -> frozenset[int]:
        return frozenset(item[name] for item in self.started.values() if item[name] is not None)

    def clean_up(self) -> None:
        """Delete every snapshot and view this task started (our Parquet copy is the record)."""
        for item in self.started.values():
            if item["export_id"] is not None:
                self._delete_quietly("export", lambda item=item: self.client.projects.exports.delete(
                    item["project_id"], item["export_id"]))
            if item["view_id"] is not None:
                self._delete_quietly("view", lambda item=item: self.client.views.delete(id=item["view_id"]))
        self.started.clear()
