"""The DAG folder parses with no import errors and touches no network, DB, connection or variable."""

import socket
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_outside_world(monkeypatch):
    """Any parse-time connection, variable or socket use fails the test (Astronomer's guard)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"parse-time access: {args[:2]}")

    from airflow.sdk import BaseHook, Variable

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(refuse))
    monkeypatch.setattr(Variable, "get", staticmethod(refuse))
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load_dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dagbag_has_no_import_errors(no_outside_world) -> None:
    started = time.perf_counter()
    dagbag = load_dagbag()
    assert dagbag.import_errors == {}
    assert {"labelloop__sms_spam__setup", "labelloop__sms_spam__ingest"} <= set(dagbag.dag_ids)
    assert time.perf_counter() - started < 10


def test_dags_follow_the_house_rules(no_outside_world) -> None:
    for dag in load_dagbag().dags.values():
        assert "labelloop" in dag.tags
        assert dag.catchup is False
        if dag.dag_id.endswith("__ingest"):
            assert dag.max_active_runs == 1
            assert dag.schedule == "@hourly"


def test_bad_spec_is_an_import_error_naming_the_file(make_spec, monkeypatch) -> None:
    path = make_spec(labels=["ham", "eggs"])
    monkeypatch.setenv("LABELLOOP_PROJECTS_DIR", str(path.parent))
    errors = load_dagbag().import_errors
    message = " ".join(errors.values())
    assert str(path) in message and "make them the same" in message
