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


def test_bad_spec_is_an_import_error_naming_the_file_and_the_others_keep_their_dags(make_spec, monkeypatch) -> None:
    good = make_spec()
    bad = make_spec(labels=["ham", "eggs"])
    twin_a, twin_b = make_spec(), make_spec()
    twin_b.write_text(twin_b.read_text().replace(twin_b.stem, twin_a.stem, 1))  # two specs, one name
    monkeypatch.setenv("LABELLOOP_PROJECTS_DIR", str(good.parent))
    dagbag = load_dagbag()
    assert set(dagbag.import_errors) == {str(REPO / "dags" / "labelloop_spec_check.py")}
    message = " ".join(dagbag.import_errors.values())
    assert "2 project spec(s) are broken" in message
    assert str(bad) in message and "make them the same" in message
    assert f"more than one spec is named ['{twin_a.stem}']" in message
    assert f"labelloop__{good.stem}__ingest" in dagbag.dag_ids
    assert not any(bad.stem in dag_id or twin_a.stem in dag_id for dag_id in dagbag.dag_ids)
