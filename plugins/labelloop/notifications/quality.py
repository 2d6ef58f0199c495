"""Tell people a quality gate failed: which project, which metrics by how much, and where the report is.

``QualityGateNotifier`` is an Airflow ``BaseNotifier``: the gate builds one from the spec's
``quality.notify`` (``labelloop.audit.gate.gate_notifier``); pass one to ``AuditOperator(notifier=...)``,
or as a task's ``on_failure_callback``, and give it another notifier (Slack's, SMTP's, with its
connection id) to deliver the message; it logs it when given none. The message is built by the
pure ``gate_message`` from the gate verdict (``labelloop.audit.gate.Gate.to_dict``).
"""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import BaseNotifier

#: The context key under which the wrapped notifier finds the message (``text="{{ quality_gate_message }}"``).
MESSAGE_KEY = "quality_gate_message"


def gate_message(project: str, verdict: dict[str, Any], report: str) -> str:
    """One paragraph per failed metric: its value, its floor and the shortfall; then the report link."""
    failed = [check for check in verdict.get("checks", []) if check.get("status") == "failed"]
    if verdict.get("passed", not failed):
        return f"Quality gate passed for {project}. Report: {report}"
    lines = [f"Quality gate FAILED for {project}: {len(failed)} metric(s) below their floor."]
    lines += [f"- {check['metric']}: {check['value']:.3f}, needs {check['threshold_name']} "
              f"{check['threshold']:.3f} (short by {check['threshold'] - check['value']:.3f})"
              + (f"; {check['note']}" if check.get("note") else "") for check in failed]
    return "\n".join([*lines, f"Report: {report}"])


class QualityGateNotifier(BaseNotifier):
    """Sends ``gate_message`` for a project's latest audit through ``notifier`` (or the task log).

    The gate hands over the verdict, report and project (context keys ``quality_gate``,
    ``quality_report``, ``quality_project``); as an ``on_failure_callback`` they are read from the
    latest audit of the spec at ``spec_path``. ``report_url`` is a link people can open, ``{audit}``
    standing for the audit run (``https://reports.example.com/sms/{audit}/report.html``); without
    it the message gives the report's storage URI. The wrapped notifier's templates see the
    message, the project and that link (``quality_gate_message``, ``quality_project``,
    ``quality_report``) and the verdict (``quality_gate``).
    """

    template_fields = ("spec_path", "report_url")

    def __init__(self, *, spec_path: str | None = None, notifier: BaseNotifier | None = None,
                 report_url: str | None = None) -> None:
        super().__init__()
        self.spec_path = spec_path
        self.notifier = notifier
        self.report_url = report_url

    def notify(self, context: Any) -> None:
        project, verdict, report = self.gate_of(context)
        message = gate_message(project, verdict, report)
        if self.notifier is None:
            self.log.warning("%s", message)
        else:
            self.notifier({**context, "quality_gate": verdict, "quality_project": project,
                           "quality_report": report, MESSAGE_KEY: message})

    def gate_of(self, context: Any) -> tuple[str, dict[str, Any], str]:
        """(project title, verdict, report link) from the context, else from the latest audit."""
        spec = self._spec()
        project = spec.title if spec is not None else str(context.get("quality_project", "the project"))
        verdict, report, audit = context.get("quality_gate"), context.get("quality_report"), None
        if verdict is None or report is None:
            if spec is None:
                raise ValueError("QualityGateNotifier needs spec_path when the context carries no quality_gate "
                                 "and quality_report (as in an on_failure_callback)")
            from labelloop.layout import Layout

            layout = Layout.of(spec)
            latest = json.loads((layout.audit / "latest.json").read_text())
            audit = latest["audit"]
            verdict = verdict or latest["gate"]
            report = report or str(layout.audit_run(audit) / "report.html")
        if self.report_url:
            report = self.report_url.replace("{audit}", audit or report.rsplit("/", 2)[-2])
        return project, verdict, report

    def _spec(self) -> Any:
        if self.spec_path is None:
            return None
        from pathlib import Path

        from labelloop.spec import load_spec

        return load_spec(Path(self.spec_path))
