"""Operators that audit the latest annotation snapshot, route doubtful items, and apply the quality gate.

The audit DAG is these three in a row (``AuditOperator(route_review=False, apply_gate=False)``,
``RouteReviewOperator``, ``QualityGateOperator``), so routing and the gate retry on their own; in
a DAG of yours one ``AuditOperator`` can do all three. The work is ``labelloop.audit.run``: the
audit writes report, metrics, consensus and the gate verdict under ``<storage_uri>/audit/<run>/``;
a pass is recorded in ``audit/passed.json`` (what retraining reads); a failure notifies (the
``notifier`` given, else the spec's ``quality.notify``) and fails the task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labelloop.operators.base import SpecOperator, fails_without_retry

if TYPE_CHECKING:
    from airflow.sdk import BaseNotifier

    from labelloop.spec import ProjectSpec


def audit_outcome(task_id: str, outcome: Any) -> dict[str, Any]:
    """``outcome`` checked to be an ``AuditOperator``'s output, before anything acts on it."""
    if not isinstance(outcome, dict) or "audit" not in outcome or "gate" not in outcome:
        raise ValueError(f"{task_id}: outcome must be an AuditOperator's output (a dict with audit, snapshot and "
                         f"gate), got {outcome!r}")
    return outcome


class AuditOperator(SpecOperator):
    """Audit the latest snapshot; then, unless told not to, route and apply the gate.

    Skips when there is nothing to audit yet (no snapshot, or answers from fewer than two
    annotators). ``route_review=False`` leaves routing to a ``RouteReviewOperator``;
    ``link_review`` (default: as ``route_review``) links the review project from the report.
    ``apply_gate=False`` leaves the gate to a ``QualityGateOperator``; ``fail_on_gate=False``
    returns a failed verdict instead of failing the task. Returns the audit outcome, with
    ``routed`` and ``passed`` when those steps ran here."""

    ui_color = "#e3f2d9"

    def __init__(self, *, route_review: bool = True, link_review: bool | None = None, apply_gate: bool = True,
                 fail_on_gate: bool = True, notifier: BaseNotifier | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.route_review = route_review
        self.link_review = route_review if link_review is None else link_review
        self.apply_gate = apply_gate
        self.fail_on_gate = fail_on_gate
        self.notifier = notifier

    @fails_without_retry
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from labelloop.audit.run import NothingToAudit, audit_latest, review_project_url
        from labelloop.quality import InputError

        spec = self.load_spec()
        review_url = review_project_url(spec, self.hook) if self.link_review else None
        try:
            outcome = audit_latest(spec, context["run_id"], review_url)
        except NothingToAudit as reason:
            raise AirflowSkipException(str(reason)) from None
        except InputError as error:  # the data, not the weather: retrying cannot help
            raise AirflowFailException(f"the latest snapshot cannot be audited: {error}") from None
        self.log.info("audit %s of snapshot %s: report at %s/report.html; %s", outcome["audit"],
                      outcome["snapshot"], outcome["uri"], outcome["gate"]["summary"])
        if self.route_review:
            outcome["routed"] = route(self, spec, outcome)
        if self.apply_gate:
            passed = pass_or_notify(self, spec, outcome, context, self.notifier)
            if passed is not None:
                outcome["passed"] = passed
            elif self.fail_on_gate:
                raise gate_failed(outcome)
        return outcome


def route(operator: SpecOperator, spec: ProjectSpec, outcome: dict[str, Any]) -> dict[str, Any]:
    """Route what the audit picked to the review project, and say what was routed."""
    from labelloop.audit.run import route_audit

    routed = route_audit(spec, operator.hook, outcome)
    operator.log.info("review: %s items selected %s, %s newly routed to project %s", routed["selected"],
                      routed["reasons"], routed["routed"], routed["review_project_id"])
    return routed


def pass_or_notify(operator: SpecOperator, spec: ProjectSpec, outcome: dict[str, Any], context: Any,
                   notifier: BaseNotifier | None) -> dict[str, Any] | None:
    """The gate: a pass is recorded (``audit/passed.json``) and its pointer returned; a failure
    notifies and returns None (the caller fails the task: the data will not change by retrying)."""
    from labelloop.audit.gate import gate_notifier
    from labelloop.audit.run import mark_passed

    verdict = outcome["gate"]
    operator.log.info("%s", verdict["summary"])
    if verdict["passed"]:
        return mark_passed(spec, outcome)
    (notifier or gate_notifier(spec))({**context, "quality_gate": verdict, "quality_project": spec.title,
                                       "quality_report": f"{outcome['uri']}/report.html"})
    return None


def gate_failed(outcome: dict[str, Any]) -> Exception:
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(outcome["gate"]["summary"])


class RouteReviewOperator(SpecOperator):
    """Route the items an audit picked to the review project (the audit DAG's ``route``), for an
    ``AuditOperator(route_review=False)`` whose ``outcome`` (its output) you route separately.
    Returns ``selected``, ``routed``, ``reasons`` and ``review_project_id``; a retry routes nothing twice."""

    template_fields = (*SpecOperator.template_fields, "outcome")
    ui_color = "#e3f2d9"

    def __init__(self, *, outcome: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outcome = outcome

    @fails_without_retry
    def execute(self, context: Any) -> dict[str, Any]:
        return route(self, self.load_spec(), audit_outcome(self.task_id, self.outcome))


class QualityGateOperator(SpecOperator):
    """Pass or fail the gate of an ``AuditOperator(apply_gate=False)``'s ``outcome`` (the audit DAG's
    ``gate``). A pass returns the ``audit/passed.json`` pointer and puts it on this task's outlets'
    asset events (retraining listens); a failure notifies (``notifier``, else the spec's
    ``quality.notify``) and fails the task. Give it ``retries=0``: a verdict does not change."""

    template_fields = (*SpecOperator.template_fields, "outcome")
    ui_color = "#e3f2d9"

    def __init__(self, *, outcome: Any, notifier: BaseNotifier | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outcome = outcome
        self.notifier = notifier

    def execute(self, context: Any) -> dict[str, Any]:
        outcome = audit_outcome(self.task_id, self.outcome)
        pointer = pass_or_notify(self, self.load_spec(), outcome, context, self.notifier)
        if pointer is None:
            raise gate_failed(outcome)
        self.describe_outlets(context, pointer)
        return pointer
