"""Audit the latest annotation snapshot and apply the spec's quality gate, in your own DAG.

The same steps as the audit DAG's three tasks (``labelloop.audit.run``): audit (report,
metrics, consensus, gate verdict under ``<storage_uri>/audit/<run>/``), route doubtful items to
the review project, then the gate: a pass is recorded in ``audit/passed.json`` (what retraining
reads); a failure notifies (``notifier``, e.g. a ``QualityGateNotifier``; else
``LABELLOOP_QUALITY_NOTIFIER``) and fails the task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labelloop.factory import fails_without_retry
from labelloop.operators.base import SpecOperator

if TYPE_CHECKING:
    from airflow.sdk import BaseNotifier


class AuditOperator(SpecOperator):
    """Audit + routing + gate for one spec. Skips when there is nothing to audit yet (no snapshot,
    or answers from fewer than two annotators); ``fail_on_gate=False`` returns a failed verdict
    instead of failing the task. Returns the audit outcome, with ``routed`` when routing ran."""

    ui_color = "#e3f2d9"

    def __init__(self, *, route_review: bool = True, fail_on_gate: bool = True,
                 notifier: BaseNotifier | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.route_review = route_review
        self.fail_on_gate = fail_on_gate
        self.notifier = notifier

    @fails_without_retry
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from labelloop.audit.gate import gate_notifier
        from labelloop.audit.run import NothingToAudit, audit_latest, mark_passed, review_project_url, route_audit
        from labelloop.quality import InputError

        spec = self.load_spec()
        review_url = review_project_url(spec, self.hook) if self.route_review else None  # the report links it
        try:
            outcome = audit_latest(spec, context["run_id"], review_url)
        except NothingToAudit as reason:
            raise AirflowSkipException(str(reason)) from None
        except InputError as error:  # the data, not the weather: retrying cannot help
            raise AirflowFailException(f"the latest snapshot cannot be audited: {error}") from None
        self.log.info("audit %s of snapshot %s: report at %s/report.html", outcome["audit"],
                      outcome["snapshot"], outcome["uri"])
        if self.route_review:
            outcome["routed"] = route_audit(spec, self.hook, outcome)
        verdict = outcome["gate"]
        if verdict["passed"]:
            outcome["passed"] = mark_passed(spec, outcome)
        elif self.fail_on_gate:
            (self.notifier or gate_notifier())({**context, "quality_gate": verdict, "quality_project": spec.title,
                                                "quality_report": f"{outcome['uri']}/report.html"})
            raise AirflowFailException(verdict["summary"])
        self.log.info("%s", verdict["summary"])
        return outcome


class RouteReviewOperator(SpecOperator):
    """Route the items an audit picked to the review project (the audit DAG's ``route``), for an
    ``AuditOperator(route_review=False)`` whose ``outcome`` (its output) you route separately.
    Returns ``selected``, ``routed``, ``reasons`` and ``review_project_id``."""

    template_fields = (*SpecOperator.template_fields, "outcome")
    ui_color = "#e3f2d9"

    def __init__(self, *, outcome: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outcome = outcome

    @fails_without_retry
    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.audit.run import route_audit

        if not isinstance(self.outcome, dict) or "audit" not in self.outcome:
            raise ValueError(f"{self.task_id}: outcome must be an AuditOperator's output (a dict with audit and "
                             f"snapshot), got {self.outcome!r}")
        routed = route_audit(self.load_spec(), self.hook, self.outcome)
        self.log.info("review: %s items selected %s, %s newly routed to project %s", routed["selected"],
                      routed["reasons"], routed["routed"], routed["review_project_id"])
        return routed
