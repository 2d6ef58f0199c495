"""The Label Studio connection's extra ``imports_in_flight``: how many imports ingest keeps open.

The connection is an ``AIRFLOW_CONN_*`` environment variable, as deployments set it; nothing
is mocked. That ingest really keeps that many requests open is shown by the crash test in
tests/integration/test_ingest.py (run with 1 and 2) and the queue's tests in test_import_queue.py.
"""

from __future__ import annotations

import json
import re

import pytest

from labelloop.hooks.labelstudio import MAX_IMPORTS_IN_FLIGHT, LabelStudioError, LabelStudioHook

CONN_ID = "labelstudio_in_flight_test"


def hook_with(monkeypatch: pytest.MonkeyPatch, extra: dict | None) -> LabelStudioHook:
    conn = {"conn_type": "labelstudio", "host": "http://127.0.0.1:1", "password": "token"}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({**conn, **({"extra": extra} if extra else {})}))
    return LabelStudioHook(CONN_ID)


def test_one_unless_the_connection_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hook_with(monkeypatch, None).imports_in_flight == 1
    assert hook_with(monkeypatch, {"region": "x"}).imports_in_flight == 1


@pytest.mark.parametrize("value, expected", [(2, 2), ("3", 3), (MAX_IMPORTS_IN_FLIGHT, MAX_IMPORTS_IN_FLIGHT)])
def test_a_whole_number_from_the_extra(monkeypatch: pytest.MonkeyPatch, value: object, expected: int) -> None:
    assert hook_with(monkeypatch, {"imports_in_flight": value}).imports_in_flight == expected


@pytest.mark.parametrize("value", [0, -1, MAX_IMPORTS_IN_FLIGHT + 1, "two", 1.5, True, None, [2]])
def test_anything_else_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, value: object) -> None:
    with pytest.raises(LabelStudioError, match=rf"{CONN_ID}.*imports_in_flight must be a whole number from 1 to "
                                                rf"{MAX_IMPORTS_IN_FLIGHT}, not {re.escape(repr(value))}"):
        hook_with(monkeypatch, {"imports_in_flight": value}).imports_in_flight

