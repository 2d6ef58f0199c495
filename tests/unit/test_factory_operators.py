"""labelloop's DAGs are built from its operators: what a user composes is what labelloop runs.

Parse time only: the DAGs of the shipped specs (and of one asking for sign-off) are inspected,
nothing runs. The loop tests (tests/integration/test_loop.py, test_approval.py, ...) run them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import labelloop.operators
from labelloop.factory import build_dags, retrain_dag
from labelloop.operators.base import SpecOperator, as_flag
from labelloop.provider import get_provider_info
from labelloop.spec import load_spec

PROJECTS = Path(__file__).resolve().parents[2] / "include" / "projects"
#: The factory's own glue: asset events and the sign-off branch, not work a user would reuse.
GLUE = {"announce", "needs_sign_off", "approve", "record_rejection"}


def test_every_working_task_of_every_dag_is_a_labelloop_operator() -> None:
    dags = build_dags(PROJECTS)
    assert dags, "the shipped specs build no DAGs"
    for dag in dags.values():
        for task in dag.tasks:
            if task.task_id in GLUE:
                continue
            assert isinstance(task, SpecOperator) or getattr(task, "operator_class", None) and issubclass(
                task.operator_class, SpecOperator), f"{dag.dag_id}.{task.task_id} is {type(task).__name__}"
            assert type(task).__module__.startswith(("labelloop.operators", "airflow")), task


def test_the_dags_wire_operators_as_the_docs_say() -> None:
    dags = build_dags(PROJECTS)
    ingest, collect, audit = (dags[f"labelloop__sms_spam__{stage}"] for stage in ("ingest", "collect", "audit"))
    assert type(ingest.get_task("list_groups")).__name__ == "PlanIngestOperator"
    assert ingest.get_task("list_groups").modified_before == "run"
    mapped = ingest.get_task("ingest_group")
    assert mapped.operator_class.__name__ == "IngestGroupOperator" and "group" in mapped.expand_input.value
    assert ingest.get_task("reduce_summaries").upstream_task_ids == {"ingest_group"}
    assert collect.get_task("collect").full == "{{ params.full }}"
    first = audit.get_task("audit")
    assert (first.route_review, first.link_review, first.apply_gate) == (False, True, False)
    assert audit.get_task("route").upstream_task_ids == audit.get_task("gate").upstream_task_ids == {"audit"}


def test_sign_off_puts_the_approval_between_train_and_promote() -> None:
    spec = load_spec(PROJECTS / "sms_spam.yaml")
    signed = spec.model_copy(update={"model": spec.model.model_copy(update={"require_approval": True})})
    dag = retrain_dag(signed)
    promote = dag.get_task("promote")
    assert promote.approval_task_id == "approve"
    assert promote.upstream_task_ids == {"train", "approve"}
    assert dag.get_task("record_rejection").upstream_task_ids == {"train", "promote"}
    assert dag.get_task("refresh").upstream_task_ids == {"promote"}


@pytest.mark.parametrize(("value", "flag"), [(True, True), (False, False), ("True", True), ("false", False),
                                             (" FALSE ", False)])
def test_flags_from_templates_read_as_written(value, flag) -> None:
    assert as_flag(value, "force") is flag


@pytest.mark.parametrize("value", ["yes", "", "0", "None"])
def test_any_other_flag_is_refused_by_name(value) -> None:
    with pytest.raises(ValueError, match=r"force is .*: give true or false"):
        as_flag(value, "force")


def test_the_provider_lists_every_operator_and_link() -> None:
    info = get_provider_info()
    listed = {module for entry in info["operators"] for module in entry["python-modules"]}
    for name in labelloop.operators.__all__:
        assert getattr(labelloop.operators, name).__module__ in listed, name
    for path in info["extra-links"]:
        module, _, cls = path.rpartition(".")
        assert getattr(importlib.import_module(module), cls).name
