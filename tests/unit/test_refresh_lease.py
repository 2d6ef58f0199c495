"""One pre-label refresh per champion version at a time: the retrain DAG's refresh and the
registry watch both start one when the alias moves (seen in `make demo`: both predicted and
re-ordered the same tasks at once). The marker is claimed by compare-and-swap and names its owner."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath

from labelloop.model import retrain
from labelloop.model.retrain import REFRESH_LEASE_SECONDS, _claim_refresh
from labelloop.state import StateError, read_json, write_json


@pytest.fixture
def marker(tmp_path: Path) -> ObjectStoragePath:
    return ObjectStoragePath(f"file://{tmp_path}/prelabels.json")


def test_a_running_refresh_is_left_to_its_owner_and_its_retries(marker) -> None:
    first = _claim_refresh(marker, "3", missing=False, owner="retrain/run1/refresh")
    assert (first["model_version"], first["generation"], first["predicted_through"]) == ("3", 1, 0)
    assert _claim_refresh(marker, "3", missing=False, owner="registry_watch/run9/refresh_if_moved") is None
    again = _claim_refresh(marker, "3", missing=False, owner="retrain/run1/refresh")  # its own retry
    assert again["owner"] == "retrain/run1/refresh" and again["generation"] == 1
    assert read_json(marker, {})["owner"] == "retrain/run1/refresh"


def test_a_refresh_that_stopped_writing_is_taken_over_and_a_new_version_always_starts(marker) -> None:
    _claim_refresh(marker, "3", missing=False, owner="retrain/run1/refresh")
    write_json(marker, {**read_json(marker, {}), "heartbeat": time.time() - REFRESH_LEASE_SECONDS - 1})
    taken = _claim_refresh(marker, "3", missing=False, owner="registry_watch/run9/refresh_if_moved")
    assert taken["owner"] == "registry_watch/run9/refresh_if_moved" and taken["generation"] == 1
    moved = _claim_refresh(marker, "4", missing=False, owner="retrain/run2/refresh")  # the alias moved on
    assert (moved["model_version"], moved["generation"], moved["owner"]) == ("4", 2, "retrain/run2/refresh")


def test_a_finished_refresh_is_done_for_everyone_until_ingest_adds_tasks(marker) -> None:
    claimed = _claim_refresh(marker, "3", missing=False, owner="a")
    write_json(marker, {**claimed, "done": True, "predicted_through": 40})
    assert _claim_refresh(marker, "3", missing=False, owner="b")["done"] is True
    reopened = _claim_refresh(marker, "3", missing=True, owner="b")  # tasks without pre-labels arrived
    assert (reopened["done"], reopened["predicted_through"], reopened["owner"]) == (False, 40, "b")


def test_claims_that_race_are_decided_again(marker, monkeypatch) -> None:
    """The compare-and-swap loses once (another claim landed between the read and the write):
    the claim reads again and sees that owner's lease."""
    real_write_if, calls = retrain.write_if, []

    def first_loses(path, data, tag):
        calls.append(tag)
        if len(calls) == 1:
            write_json(marker, {"model_version": "3", "generation": 1, "predicted_through": 0, "done": False,
                                "owner": "other", "heartbeat": time.time()})
            return False
        return real_write_if(path, data, tag)

    monkeypatch.setattr(retrain, "write_if", first_loses)
    assert _claim_refresh(marker, "3", missing=False, owner="mine") is None
    assert read_json(marker, {})["owner"] == "other"


def test_a_corrupt_marker_is_a_state_error_naming_the_remedy(marker) -> None:
    Path(marker.path).write_text("{not json")
    with pytest.raises(StateError, match="re-predicts the unannotated tasks"):
        _claim_refresh(marker, "3", missing=False, owner="a")
