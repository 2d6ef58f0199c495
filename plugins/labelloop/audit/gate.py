"""The quality gate: the audit's metrics against the spec's thresholds, and who hears about a failure.

``evaluate_gate`` is pure. A metric the data cannot give (no gold labelled yet, no pair of
annotators sharing enough items) is "not measured" and does not fail the gate; the report
says so. The notifier is any Airflow ``BaseNotifier``; ``LogNotifier`` is the default, and
``LABELLOOP_QUALITY_NOTIFIER=module:factory`` names a callable that returns another one
(a Slack or SMTP notifier, say). Notifiers see the gate as ``{{ quality_gate }}``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseNotifier

from labelloop.spec import Quality

if TYPE_CHECKING:
    from labelloop.tasktypes import TaskType

NOTIFIER_ENV = "LABELLOOP_QUALITY_NOTIFIER"
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


class LogNotifier(BaseNotifier):
    """Writes the gate's summary to the task log as a warning (the default notifier)."""

    template_fields = ("message",)

    def __init__(self, message: str = "{{ quality_gate.summary }}") -> None:
        super().__init__()
        self.message = message

    def notify(self, context: Any) -> None:
        self.log.warning("%s", self.message)


def gate_notifier() -> BaseNotifier:
    """The notifier ``LABELLOOP_QUALITY_NOTIFIER`` names (``module:callable``), else ``LogNotifier``."""
    target = os.environ.get(NOTIFIER_ENV, "").strip()
    if not target:
        return LogNotifier()
    module, _, name = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"{NOTIFIER_ENV}={target!r} does not name an importable callable "
                         f"(write module.path:NotifierClass): {error}") from None
    notifier = factory()
    if not isinstance(notifier, BaseNotifier):
        raise TypeError(f"{NOTIFIER_ENV}={target!r} returned {type(notifier).__name__}, not a BaseNotifier")
    return notifier
