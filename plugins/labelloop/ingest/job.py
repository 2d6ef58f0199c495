"""One ingest of one spec, as the ingest DAG (fanned out: ``plan_ingest``, ``ingest_group`` per
group, ``finish_ingest``) and ``LabelStudioImportOperator`` (in one task: ``run_ingest``) run it.

Around the pipeline: the project is brought in line with the spec first, the champion model
pre-labels the new tasks when the registry answers (annotators keep getting tasks when it does
not; the pre-label refresh catches up), and a run whose counts do not add up fails.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from labelloop.hooks.labelstudio import LabelStudioHook
from labelloop.spec import ProjectSpec

NO_CHAMPION = "none (no champion model)"


def _predictor(spec: ProjectSpec) -> tuple[Any, str | None, int]:
    """The champion's pre-labeller (or None), why the registry could not be read (or None), and
    the queue generation its priorities belong to."""
    from labelloop.model.prelabel import RegistryError, load_predictor
    from labelloop.model.retrain import queue_generation

    try:
        predictor, registry_down = load_predictor(spec), None
    except RegistryError as error:
        predictor, registry_down = None, str(error)
    return predictor, registry_down, queue_generation(spec) if predictor else 0


def _prelabels(predictor: Any, registry_down: str | None) -> str:
    if predictor:
        return "by the champion"
    return NO_CHAMPION if registry_down is None else f"NONE, left to the next refresh: {registry_down}"


def _checked(spec: ProjectSpec, summary: dict[str, Any], registry_down: str | None) -> dict[str, Any]:
    """The summary as tasks return it; a registry outage is left to the refresh, bad counts fail."""
    from labelloop.ingest.pipeline import ingest_counts_line
    from labelloop.model.retrain import leave_for_refresh

    if registry_down and summary["imported"]:
        leave_for_refresh(spec, summary["run"], registry_down)
    if not summary["balanced"]:
        raise RuntimeError(f"ingest {summary['run']} of {spec.name}: counts do not add up: "
                           f"{ingest_counts_line(summary)}")
    return {key: value for key, value in summary.items() if key != "per_object"}


def run_ingest(spec: ProjectSpec, hook: LabelStudioHook, run_id: str, cutoff: datetime | None) -> dict[str, Any]:
    """Ingest the spec's new objects modified before ``cutoff`` in this task; the run summary
    (without the per-object entries, which stay in the journal)."""
    from labelloop.ingest.pipeline import Ingest
    from labelloop.project import ensure_project

    project_id, _ = ensure_project(hook, spec)
    predictor, registry_down, generation = _predictor(spec)
    summary = Ingest(spec, hook, run_id, predictor, generation).run(project_id, cutoff)
    summary["prelabels"] = _prelabels(predictor, registry_down)
    return _checked(spec, summary, registry_down)


def plan_ingest(spec: ProjectSpec, hook: LabelStudioHook, run_id: str, cutoff: datetime | None) -> list[dict[str, Any]]:
    """The run's groups of new objects (at least one), each the argument of one ``ingest_group``."""
    from labelloop.ingest.groups import plan_groups
    from labelloop.project import ensure_project

    project_id, _ = ensure_project(hook, spec)
    return plan_groups(spec, hook, run_id, project_id, cutoff)


def ingest_group(spec: ProjectSpec, hook: LabelStudioHook, run_id: str, group: dict[str, Any]) -> dict[str, Any]:
    """Import one group of the plan; its counts and how it was pre-labeled (for the reduce)."""
    from labelloop.ingest.groups import objects_of
    from labelloop.ingest.pipeline import COUNTS, Ingest

    predictor, registry_down, generation = _predictor(spec)
    ingest = Ingest(spec, hook, run_id, predictor, generation, group=group["group"])
    finished = ingest.run_group(group["project_id"], objects_of(spec, group["objects"]))
    return {"group": group["group"], "objects": len(finished),
            **{name: sum(entry[name] for entry in finished.values()) for name in COUNTS},
            "prelabels": _prelabels(predictor, registry_down), "registry_down": registry_down}


def finish_ingest(spec: ProjectSpec, hook: LabelStudioHook, run_id: str,
                  groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Reduce the groups' receipts into the run's summary (the shape ``run_ingest`` returns)."""
    from labelloop.ingest.groups import reduce_groups

    summary = reduce_groups(spec, hook, run_id)
    down = next((group for group in groups if group["registry_down"]), None)
    summary["prelabels"] = down["prelabels"] if down else groups[0]["prelabels"] if groups else NO_CHAMPION
    return _checked(spec, summary, down["registry_down"] if down else None)


def ingest_report(summary: dict[str, Any]) -> list[str]:
    """What a task log says about an ingest run: the counts, then each skipped object and why."""
    from labelloop.ingest.pipeline import ingest_counts_line

    groups = f" in {summary['groups']} groups ({summary['cross_group_duplicates']} imported by two, "\
             "deleted)" if "groups" in summary else ""
    return [f"ingest {summary['run']}: {summary['objects']} objects{groups}; {ingest_counts_line(summary)}; "
            f"pre-labels {summary['prelabels']}",
            *(f"skipped object {skipped['object']}: {skipped['reason']}" for skipped in summary["skipped_objects"])]


def ingest_cutoff(context: dict[str, Any]) -> datetime:
    """Which objects a task run takes: scheduled runs those modified before their interval's end;
    a person who triggers by hand wants what is there now."""
    run = context["dag_run"]
    return run.run_after if run.run_type == "manual" else context.get("data_interval_end") or run.run_after
