"""The quality gate: the audit's metrics against the spec's thresholds, and who hears about a failure.

``evaluate_gate`` is pure. A metric the data cannot give (no gold labelled yet, no pair of
annotators sharing enough items) is "not measured" and does not fail the gate; the report
says so. A failure is told through the Airflow notifier the spec's ``quality.notify`` names
(Slack's, SMTP's, ...), wrapped in a ``QualityGateNotifier`` that writes the message; without one
the message goes to the task log.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseNotifier

from labelloop.notifications.quality import QualityGateNotifier
from labelloop.spec import Notify, ProjectSpec, Quality, SpecError

if TYPE_CHECKING:
    from labelloop.tasktypes import TaskType

Status = Literal["passed", "failed", "not measured"]


@dataclass(frozen=True)
class Check:
    metric: str
    threshold_name: str
    value: float | None
    threshold: float
    note: str = ""

    @property
    def status(self) -> Status:
        if self.value is None:
            return "not measured"
        return "passed" if self.value >= self.threshold else "failed"

    def describe(self) -> str:
        if self.value is None:
            return f"{self.metric}: not measured ({self.note or 'no data'})"
        sign = ">=" if self.status == "passed" else "<"
        text = f"{self.metric} {self.value:.3f} {sign} {self.threshold_name} {self.threshold:.3f}"
        if self.status == "failed":
            text += f" (short by {self.threshold - self.value:.3f})"
        return text + (f"; {self.note}" if self.note else "")


@dataclass(frozen=True)
class Gate:
    checks: tuple[Check, ...]
    control: str = ""  # the audited control, named in the summary

    @property
    def passed(self) -> bool:
        return all(check.status != "failed" for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.status == "failed"]

    def summary(self, project: str) -> str:
        of = f"{self.control}: " if self.control else ""
        if self.passed:
            return f"quality gate passed for {project}: {of}" + "; ".join(c.describe() for c in self.checks)
        return f"quality gate FAILED for {project}: {of}" + "; ".join(c.describe() for c in self.failed)

    def to_dict(self, project: str) -> dict[str, Any]:
        return {"passed": self.passed, "summary": self.summary(project),
                "checks": [{**asdict(c), "status": c.status} for c in self.checks]}


def evaluate_gate(metrics: dict[str, Any], quality: Quality, task_type: TaskType,
                  others: Sequence[tuple[dict[str, Any], TaskType]] = ()) -> Gate:
    """Compare the audit's metrics (schema in docs/quality.md) with the spec's thresholds for
    the kind of the audited control (``TaskType.gate_checks``); each of ``others`` (another
    control's metrics and type) is checked the same way, its checks named after its control."""
    checks = [Check(**check) for check in task_type.gate_checks(metrics, quality)]
    for other_metrics, other in others:
        checks += [Check(**{**check, "metric": f"{other.control.describe()} {check['metric']}"})
                   for check in other.gate_checks(other_metrics, quality)]
    return Gate(tuple(checks), task_type.control.describe())


def gate_notifier(spec: ProjectSpec) -> BaseNotifier:
    """The notifier for a failed gate of ``spec``: a ``QualityGateNotifier`` delivering through
    ``quality.notify`` (imported and built now, at run time), else logging. Call it with the
    context plus ``quality_gate`` (the verdict), ``quality_project`` and ``quality_report``."""
    notify = spec.quality.notify
    if notify is None:
        return QualityGateNotifier()
    return QualityGateNotifier(notifier=build_notifier(notify, str(spec.spec_path or "the spec")),
                               report_url=notify.report_url)


def build_notifier(notify: Notify, where: str) -> BaseNotifier:
    """Import ``notify.notifier`` and build it with ``notify.params``; a failure is a ``SpecError``
    naming the spec file (``where``) and the field, as parse-time errors do."""
    module, _, name = notify.notifier.replace(":", ".").rpartition(".")
    field = "field quality.notify.notifier"
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as error:
        raise SpecError(f"{where}: {field}: cannot import {module!r} ({error}); install the provider that "
                        f"ships {notify.notifier} or fix the path") from None
    except AttributeError:
        raise SpecError(f"{where}: {field}: module {module!r} has no {name!r}; check the spelling") from None
    if not (isinstance(cls, type) and issubclass(cls, BaseNotifier)):
        raise SpecError(f"{where}: {field}: {notify.notifier} is not an Airflow notifier (a subclass of "
                        f"airflow.sdk.BaseNotifier); name a notifier class")
    try:
        return cls(**notify.params)
    except TypeError as error:
        raise SpecError(f"{where}: field quality.notify.params: {name} does not take them: {error}") from None
