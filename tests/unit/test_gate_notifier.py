"""The quality gate's notifier as the spec's ``quality.notify`` configures it: the SMTP provider's
SmtpNotifier mailing a real SMTP server (aiosmtpd on 127.0.0.1), and what a wrong configuration
says, at DAG parse (the shape) and when a gate fails (the import and the arguments)."""

from __future__ import annotations

import html
import json
import sys
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from labelloop.audit.gate import Check, Gate, gate_notifier
from labelloop.dev.stack import free_port
from labelloop.notifications import QualityGateNotifier
from labelloop.spec import SpecError, load_spec

SMTP_NOTIFIER = "airflow.providers.smtp.notifications.smtp.SmtpNotifier"
CONN_ID = "smtp_labelloop_test"
#: A two-control project's verdict: the second control's metrics are named after its tag, whose
#: angle brackets an HTML mail must escape to show.
CHECKS = (Check("gold accuracy", "min_gold_accuracy", 0.72, 0.8),
          Check("<Choices name='topic'> Krippendorff's alpha", "min_alpha", 0.45, 0.6, note="3 annotators"),
          Check("Cohen's kappa", "min_kappa", 0.9, 0.6))


@pytest.fixture
def mailbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EmailMessage]]:
    """The messages a real SMTP server on 127.0.0.1 receives; Airflow's connection ``CONN_ID``
    points at it (plain SMTP, no login: the connection is where a password would go)."""
    received: list[EmailMessage] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(message_from_bytes(envelope.content, policy=policy.default))
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=free_port())
    controller.start()
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": controller.port,
        "extra": {"disable_tls": True, "disable_ssl": True, "timeout": 10, "retry_limit": 1}}))
    try:
        yield received
    finally:
        controller.stop()


def notify(**notify: Any) -> dict[str, Any]:
    return {"quality": {"notify": notify}}


def test_a_failed_gate_is_mailed_through_the_smtp_provider(make_spec, mailbox) -> None:
    spec = load_spec(make_spec(**notify(
        notifier=SMTP_NOTIFIER, report_url="https://reports.example.org/sms/{audit}/report.html",
        params={"smtp_conn_id": CONN_ID, "from_email": "labelloop@example.org", "to": ["quality@example.org"],
                "subject": "Quality gate failed: {{ quality_project }}",
                "html_content": "<pre>{{ quality_gate_message | e }}</pre>"})))
    verdict = Gate(CHECKS).to_dict(spec.title)
    report = f"{spec.storage_uri}/audit/manual__2026-12-01T10-00-00/report.html"

    gate_notifier(spec)({"quality_gate": verdict, "quality_project": spec.title, "quality_report": report})

    (mail,) = mailbox
    assert mail["To"] == "quality@example.org" and mail["From"] == "labelloop@example.org"
    assert mail["Subject"] == f"Quality gate failed: {spec.title}"
    body = next(part for part in mail.walk() if part.get_content_type() == "text/html").get_content()
    text = html.unescape(body.removeprefix("<pre>").strip().removesuffix("</pre>"))
    assert text.splitlines() == [
        f"Quality gate FAILED for {spec.title}: 2 metric(s) below their floor.",
        "- gold accuracy: 0.720, needs min_gold_accuracy 0.800 (short by 0.080)",
        "- <Choices name='topic'> Krippendorff's alpha: 0.450, needs min_alpha 0.600 (short by 0.150); 3 annotators",
        "Report: https://reports.example.org/sms/manual__2026-12-01T10-00-00/report.html",
    ]


def test_without_notify_the_gate_logs_the_message(make_spec, capsys) -> None:
    spec = load_spec(make_spec())
    notifier = gate_notifier(spec)
    assert isinstance(notifier, QualityGateNotifier) and notifier.notifier is None
    notifier({"quality_gate": Gate(CHECKS).to_dict(spec.title), "quality_project": spec.title,
              "quality_report": "file:///store/audit/run1/report.html"})
    logged = capsys.readouterr().out
    assert f"Quality gate FAILED for {spec.title}" in logged and "(short by 0.080)" in logged
    assert "Report: file:///store/audit/run1/report.html" in logged


def test_parse_checks_the_shape_and_imports_nothing(make_spec) -> None:
    path = make_spec(**notify(notifier="labelloop_no_such_pkg.notify:Notifier", params={"channel": "#q"}))
    spec = load_spec(path)  # a DAG parse: the module is not imported, so it need not exist yet
    assert "labelloop_no_such_pkg" not in sys.modules
    assert spec.quality.notify.notifier == "labelloop_no_such_pkg.notify:Notifier"
    assert "notify" not in spec.quality.model_dump()  # not a threshold (MLflow logs the thresholds)

    with pytest.raises(SpecError, match="cannot import 'labelloop_no_such_pkg.notify'") as error:
        gate_notifier(spec)
    assert str(error.value).startswith(f"{path}: field quality.notify.notifier: ")


@pytest.mark.parametrize(("notify_", "field", "says"), [
    ({"notifier": "SmtpNotifier"}, "quality.notify.notifier", "is not an import path"),
    ({"notifier": "smtp notifier.Class"}, "quality.notify.notifier", "is not an import path"),
    ({"notifier": SMTP_NOTIFIER, "params": ["to", "q@example.org"]}, "quality.notify.params",
     "valid dictionary"),
    ({"notifier": SMTP_NOTIFIER, "params": {"to": "q@example.org", "smtp_password": "x"}},
     "quality.notify.params", "would put a secret in the spec"),
    ({"params": {"to": "q@example.org"}}, "quality.notify.notifier", "Field required"),
    ({"notifier": SMTP_NOTIFIER, "kwargs": {}}, "quality.notify.kwargs", "unknown field"),
])
def test_a_wrong_shape_names_the_file_and_the_field(make_spec, notify_, field, says) -> None:
    path = make_spec(**notify(**notify_))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and f"field {field}: " in message and says in message


@pytest.mark.parametrize(("notify_", "field", "says"), [
    ({"notifier": "labelloop.audit.gate.NoSuchNotifier"}, "quality.notify.notifier",
     "module 'labelloop.audit.gate' has no 'NoSuchNotifier'"),
    ({"notifier": "collections:OrderedDict"}, "quality.notify.notifier",
     "collections:OrderedDict is not an Airflow notifier"),
    ({"notifier": "labelloop.spec.CLASS_PATH"}, "quality.notify.notifier", "is not an Airflow notifier"),
    ({"notifier": SMTP_NOTIFIER, "params": {"smtp_conn_id": CONN_ID}}, "quality.notify.params",
     "SmtpNotifier does not take them: "),
    ({"notifier": SMTP_NOTIFIER, "params": {"to": "q@example.org", "channel": "#q"}}, "quality.notify.params",
     "unexpected keyword argument 'channel'"),
])
def test_a_notifier_that_cannot_be_built_names_the_file_and_the_field(make_spec, notify_, field, says) -> None:
    path = make_spec(**notify(**notify_))
    spec = load_spec(path)
    with pytest.raises(SpecError) as error:
        gate_notifier(spec)
    message = str(error.value)
    assert message.startswith(f"{path}: field {field}: ") and says in message
