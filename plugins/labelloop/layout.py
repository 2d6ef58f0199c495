"""Where a project's state lives in object storage: every shared path and Asset URI, named once.

A project's storage root (``spec.storage_uri``) holds one folder per stage::

    ingest/manifest.json          objects processed (the tasks Asset); ingest's journal beside it
    quarantine/                   (under ingest/) refused records with reasons
    collect/snapshots/<run>/      annotation table versions; collect/latest.json points at one
                                  (the annotations Asset)
    audit/<run>/                  metrics.json, report.html, consensus.parquet, gate.json
    audit/latest.json, history.json, seen.json.gz, passed.json (the quality_passed Asset)
    model/prelabels.json          the last pre-label refresh (the prelabels Asset), prelabels_missing.json

Each stage module owns the files inside its own run folders; what another stage reads, and
every Asset URI, comes from here. Building a ``Layout`` does no I/O (DAG files build them at parse time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from labelloop.spec import ProjectSpec

MANIFEST = ("ingest", "manifest.json")
LATEST_SNAPSHOT = ("collect", "latest.json")
QUALITY_PASSED = ("audit", "passed.json")
PRELABELS = ("model", "prelabels.json")


def storage_path(uri: str, conn_id: str | None) -> ObjectStoragePath:
    """Local folders need no connection; object stores take the spec's."""
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri, conn_id=conn_id if not uri.startswith("file://") else None)


def run_key(run_id: str) -> str:
    """A run id made safe for object keys (``scheduled__2026-01-01T00:00:00+00:00``): one path
    segment, and never ``.`` or ``..`` (Airflow accepts ``..`` as a manual run id)."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)
    return key if key.strip(".") else key.replace(".", "_")


def asset_uri(spec: ProjectSpec, parts: tuple[str, ...]) -> str:
    """The URI of a file under the project's root as text: what an Asset names (no filesystem needed)."""
    return "/".join([spec.storage_uri.rstrip("/"), *parts])


@dataclass(frozen=True)
class Layout:
    """The storage layout of one project: its root and the paths the stages share."""

    root: ObjectStoragePath

    @classmethod
    def of(cls, spec: ProjectSpec) -> Layout:
        return cls(storage_path(spec.storage_uri, spec.source.conn_id))

    def path(self, parts: tuple[str, ...]) -> ObjectStoragePath:
        return self.root.joinpath(*parts)

    # Stage folders -----------------------------------------------------------------------

    @property
    def ingest(self) -> ObjectStoragePath:
        return self.root / "ingest"

    @property
    def collect(self) -> ObjectStoragePath:
        return self.root / "collect"

    @property
    def audit(self) -> ObjectStoragePath:
        return self.root / "audit"

    @property
    def model(self) -> ObjectStoragePath:
        return self.root / "model"

    # What one stage writes and another reads ---------------------------------------------

    @property
    def snapshots(self) -> ObjectStoragePath:
        return self.collect / "snapshots"

    def snapshot(self, run: str) -> ObjectStoragePath:
        """One annotation table version (``tasks.parquet``, ``annotations.parquet``, ``manifest.json``)."""
        return self.snapshots / run

    @property
    def latest_snapshot(self) -> ObjectStoragePath:
        return self.path(LATEST_SNAPSHOT)

    def audit_run(self, run: str) -> ObjectStoragePath:
        """One audit's outputs: metrics.json, report.html, consensus.parquet, gate.json."""
        return self.audit / run

    @property
    def quality_passed(self) -> ObjectStoragePath:
        return self.path(QUALITY_PASSED)

    @property
    def prelabels(self) -> ObjectStoragePath:
        return self.path(PRELABELS)

    @property
    def prelabels_missing(self) -> ObjectStoragePath:
        return self.model / "prelabels_missing.json"
