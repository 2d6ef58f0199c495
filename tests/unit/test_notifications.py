"""The quality-gate notifier: the message it builds, who it hands it to, and where it finds the gate."""

from __future__ import annotations

import json
from typing import Any

import pytest
from airflow.sdk import BaseNotifier

from labelloop.audit.gate import Check, Gate
from labelloop.layout import Layout
from labelloop.notifications import QualityGateNotifier, gate_message
from labelloop.spec import load_spec

GATE = Gate((Check("gold accuracy", "min_gold_accuracy", 0.72, 0.8),
             Check("Krippendorff's alpha", "min_krippendorff_alpha", 0.5, 0.667, note="3 annotators"),
             Check("Cohen's kappa", "min_cohen_kappa", 0.9, 0.6)), "sentiment").to_dict("SMS spam")


class Delivered(BaseNotifier):
    """A delivery notifier of our own (standing in for Slack's or SMTP's): renders its template."""

    template_fields = ("text",)

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.sent: list[str] = []

    def notify(self, context: Any) -> None:
        self.sent.append(self.text)


def test_message_names_project_failed_metrics_shortfalls_and_report() -> None:
    message = gate_message("SMS spam", GATE, "s3://bucket/audit/run1/report.html")
    assert message.splitlines() == [
        "Quality gate FAILED for SMS spam: 2 metric(s) below their floor.",
        "- gold accuracy: 0.720, needs min_gold_accuracy 0.800 (short by 0.080)",
        "- Krippendorff's alpha: 0.500, needs min_krippendorff_alpha 0.667 (short by 0.167); 3 annotators",
        "Report: s3://bucket/audit/run1/report.html",
    ]
    passed = Gate((Check("gold accuracy", "min_gold_accuracy", 0.9, 0.8),)).to_dict("SMS spam")
    assert gate_message("SMS spam", passed, "r.html") == "Quality gate passed for SMS spam. Report: r.html"


def test_notifier_hands_the_message_to_another_notifier() -> None:
    delivered = Delivered(text="{{ quality_gate_message }}")
    notifier = QualityGateNotifier(notifier=delivered, report_url="https://reports.example.com/{audit}/report.html")
    notifier({"quality_gate": GATE, "quality_project": "SMS spam",
              "quality_report": "s3://bucket/audit/run7/report.html"})
    (text,) = delivered.sent
    assert text.startswith("Quality gate FAILED for SMS spam: 2 metric(s)")
    assert text.endswith("Report: https://reports.example.com/run7/report.html")


def test_as_failure_callback_it_reads_the_latest_audit(make_spec, capsys) -> None:
    spec = load_spec(make_spec(model=None))
    layout = Layout.of(spec)
    (layout.audit / "run3").mkdir(parents=True)
    (layout.audit / "latest.json").write_text(json.dumps({"audit": "run3", "snapshot": "s1", "gate": GATE}))

    delivered = Delivered(text="{{ quality_gate_message }}")
    QualityGateNotifier(spec_path=str(spec.spec_path), notifier=delivered)({"task_instance": None})
    assert delivered.sent[0].startswith(f"Quality gate FAILED for {spec.title}:")
    assert delivered.sent[0].endswith(f"Report: {layout.audit_run('run3') / 'report.html'}")

    capsys.readouterr()
    QualityGateNotifier(spec_path=str(spec.spec_path))({})  # no delivery notifier: the task log
    logged = capsys.readouterr().out
    assert "warning" in logged and "(short by 0.080)" in logged

    with pytest.raises(ValueError, match="needs spec_path"):
        QualityGateNotifier()({})
