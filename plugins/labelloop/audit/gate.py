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
from dataclasses import asdict, dataclass
from typing import Any, Literal

from airflow.sdk import BaseNotifier

from labelloop.spec import Quality

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

    @property
    def passed(self) -> bool:
        return all(check.status != "failed" for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.status == "failed"]

    def summary(self, project: str) -> str:
        if self.passed:
            return f"quality gate passed for {project}: " + "; ".join(c.describe() for c in self.checks)
        return f"quality gate FAILED for {project}: " + "; ".join(c.describe() for c in self.failed)

    def to_dict(self, project: str) -> dict[str, Any]:
        return {"passed": self.passed, "summary": self.summary(project),
                "checks": [{**asdict(c), "status": c.status} for c in self.checks]}


def pooled_gold_accuracy(annotators: list[dict[str, Any]]) -> float | None:
    """Correct answers over all gold answers, across annotators (each answer weighs the same)."""
    seen = sum(row["n_gold"] or 0 for row in annotators)
    return sum(row["n_correct"] or 0 for row in annotators) / seen if seen else None


def evaluate_gate(metrics: dict[str, Any], quality: Quality) -> Gate:
    """Compare ``run_audit`` metrics (schema in docs/quality.md) with the spec's thresholds."""
    agreement = metrics["agreement"]
    below = [f"{row['annotator_id']} {row['accuracy']:.2f} (n={row['n_gold']})" for row in metrics["annotators"]
             if row["accuracy"] is not None and row["accuracy"] < quality.min_gold_accuracy]
    gold_note = ("no labelled gold items" if metrics["gold"] is None
                 else f"annotators below it: {', '.join(below)}" if below else "")
    kappa, kappa_name = agreement["pairwise_kappa_mean"], "mean pairwise Cohen's kappa"
    if kappa is None and agreement["fleiss_kappa"] is not None:
        kappa, kappa_name = agreement["fleiss_kappa"], "Fleiss' kappa"
    kappa_note = "" if kappa is not None else (
        f"no annotator pair shares {metrics['parameters']['min_shared']} items")
    return Gate((
        Check("gold accuracy", "min_gold_accuracy", pooled_gold_accuracy(metrics["annotators"]),
              quality.min_gold_accuracy, gold_note),
        Check(kappa_name, "min_kappa", kappa, quality.min_kappa, kappa_note),
        Check("Krippendorff's alpha", "min_alpha", agreement["krippendorff_alpha_nominal"], quality.min_alpha),
        Check("mean consensus confidence", "min_consensus_confidence",
              metrics["consensus"]["mean_confidence"], quality.min_consensus_confidence),
    ))


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
