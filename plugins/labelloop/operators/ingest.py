"""Operators that turn new objects in the spec's source into Label Studio tasks (``labelloop.ingest.job``).

``LabelStudioImportOperator`` does a whole ingest in one task. The ingest DAG fans out instead:
``PlanIngestOperator`` lists the new objects in groups, ``IngestGroupOperator`` (mapped over the
groups) imports one, ``FinishIngestOperator`` reduces their receipts into the run's summary. Both
shapes share the journal in ``storage_uri``: every record ends imported, duplicate or
quarantined, once, whatever mix of them ran.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from labelloop.operators.base import SpecOperator, fails_without_retry
from labelloop.operators.links import LabelStudioProjectLink

def report(operator: SpecOperator, context: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Log a run's summary as the ingest report and record its project's link."""
    from labelloop.ingest.job import ingest_report

    LabelStudioProjectLink.persist(context, operator.hook.project_url(summary["project_id"]))
    for line in ingest_report(summary):
        operator.log.info("%s", line)
    return summary


#: ``modified_before="run"``: the run's own cutoff (``labelloop.ingest.job.ingest_cutoff``).
RUN_CUTOFF = "run"


class _IngestOperator(SpecOperator):
    """What the ingest operators share: which objects a run takes (``modified_before``)."""

    template_fields = (*SpecOperator.template_fields, "modified_before")
    operator_extra_links = (LabelStudioProjectLink(),)
    ui_color = "#ffe3cc"

    def __init__(self, *, modified_before: datetime | str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.modified_before = modified_before

    def cutoff(self, context: Any) -> datetime | None:
        """None: every object there now. ``"run"``: a scheduled run's data interval end, or when a
        manual run was triggered. Else a date and time (ISO 8601 from a template)."""
        if self.modified_before is None or isinstance(self.modified_before, datetime):
            return self.modified_before
        if self.modified_before == RUN_CUTOFF:
            from labelloop.ingest.job import ingest_cutoff

            return ingest_cutoff(context)
        import pendulum

        try:
            return pendulum.parse(str(self.modified_before))
        except ValueError as error:
            raise ValueError(f"{self.task_id}: modified_before {self.modified_before!r} is not a date and "
                             f"time (give ISO 8601, e.g. 2026-01-01T00:00:00+00:00, or {RUN_CUTOFF!r}): "
                             f"{error}") from None


class LabelStudioImportOperator(_IngestOperator):
    """Import the spec's new source objects as Label Studio tasks, in this one task.

    Creates or updates the project first. Every record ends imported, duplicate or quarantined;
    a re-run imports nothing twice. Returns the run summary (``project_id``, ``imported``, ...).

    Takes every new object there when it runs, so objects an upstream task of the same run wrote
    are imported; ``modified_before`` (templated, e.g. ``"{{ data_interval_end }}"``, or ``"run"``)
    leaves later ones to a later run, as the ingest DAG does on its schedule.
    """

    @fails_without_retry
    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.ingest.job import run_ingest

        return report(self, context, run_ingest(self.load_spec(), self.hook, context["run_id"], self.cutoff(context)))


class PlanIngestOperator(_IngestOperator):
    """List the run's new objects in groups (``ingest.group_bytes``, at most ``ingest.max_groups``;
    a small run is one group): the list an ``IngestGroupOperator`` is mapped over."""

    @fails_without_retry
    def execute(self, context: Any) -> list[dict[str, Any]]:
        from labelloop.ingest.job import plan_ingest

        groups = plan_ingest(self.load_spec(), self.hook, context["run_id"], self.cutoff(context))
        self.log.info("%s new objects in %s groups", sum(len(group["objects"]) for group in groups), len(groups))
        return groups


class IngestGroupOperator(SpecOperator):
    """Import one ``group`` of a ``PlanIngestOperator``'s plan (validate, de-duplicate, pre-label,
    import in journaled batches); returns its counts. Map it: ``.partial(...).expand(group=plan.output)``.
    Its map index reads ``group <n> (<objects> objects)``."""

    template_fields = (*SpecOperator.template_fields, "group")
    ui_color = "#ffe3cc"

    def __init__(self, *, group: Any, map_index_template: str | None = "{{ group_label }}", **kwargs: Any) -> None:
        super().__init__(map_index_template=map_index_template, **kwargs)
        self.group = group

    @fails_without_retry
    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.ingest.job import ingest_group

        group = self.group
        context["group_label"] = f"group {group['group']} ({len(group['objects'])} objects)"
        result = ingest_group(self.load_spec(), self.hook, context["run_id"], group)
        self.log.info("group %s: %s objects; %s", result["group"], result["objects"], ", ".join(
            f"{name} {result[name]:,}" for name in ("read", "imported", "duplicate", "quarantined")))
        return result


class FinishIngestOperator(SpecOperator):
    """Reduce the ``groups``' receipts (the mapped ``IngestGroupOperator``'s output) into the run's
    summary: content two groups both imported is deleted but once (the lowest task id stays), the
    manifest is written, and a run whose counts do not add up fails."""

    template_fields = (*SpecOperator.template_fields, "groups")
    operator_extra_links = (LabelStudioProjectLink(),)
    ui_color = "#ffe3cc"

    def __init__(self, *, groups: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups = groups

    @fails_without_retry
    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.ingest.job import finish_ingest

        return report(self, context, finish_ingest(self.load_spec(), self.hook, context["run_id"], list(self.groups)))
