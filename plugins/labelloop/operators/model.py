"""Operators for the model half of the loop: train a candidate, promote it (or roll back), refresh pre-labels.

Thin wrappers over ``labelloop.model.retrain``; the retrain, registry-watch and rollback DAGs are
built from them. MLflow is reached through the ``mlflow_default`` connection (host = tracking
URI), looked up when the task runs.
"""

from __future__ import annotations

from typing import Any

from labelloop.operators.base import SpecOperator, as_flag, fails_without_retry
from labelloop.operators.links import MLflowRunLink


class TrainCandidateOperator(SpecOperator):
    """Train the spec's model on the last audit that passed the gate, register the candidate and
    compare it with the champion on the same gold items (the retrain DAG's ``train``). Returns the
    decision (``version``, ``promote``, ``reason``, metrics, ``body``: the comparison in Markdown);
    skips when this data was trained on already (``force=True`` trains again), when there is
    nothing to train on, and after a ``dry_run`` (trained and evaluated, nothing registered).
    ``force`` and ``dry_run`` are templated (``"{{ params.force }}"``)."""

    template_fields = (*SpecOperator.template_fields, "force", "dry_run")
    operator_extra_links = (MLflowRunLink(),)
    ui_color = "#dbe9f6"

    def __init__(self, *, force: bool | str = False, dry_run: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.force = force
        self.dry_run = dry_run

    @fails_without_retry
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from labelloop.model.prelabel import required_tracking_uri
        from labelloop.model.retrain import NothingToTrain, comparison_markdown, retrain, run_page_url

        uri = required_tracking_uri()
        try:
            outcome = retrain(self.load_spec(), uri, force=as_flag(self.force, f"{self.task_id}: force"),
                              dry_run=as_flag(self.dry_run, f"{self.task_id}: dry_run"), actor=self.actor(context))
        except NothingToTrain as reason:
            raise AirflowSkipException(str(reason)) from None
        if outcome.get("dry_run"):
            raise AirflowSkipException(f"dry run: {outcome['metrics']}")
        MLflowRunLink.persist(context, run_page_url(uri, outcome["run_id"]))
        outcome["body"] = comparison_markdown(outcome, uri)
        self.log.info("%s", outcome["body"])
        return outcome


def responder(answer: dict[str, Any] | None) -> str:
    """Who answered an approval (Airflow's user name) from an ApprovalOperator's XCom."""
    user = (answer or {}).get("responded_by_user") or {}
    return f"{user.get('name') or 'nobody (timed out)'} in Airflow"


class PromoteCandidateOperator(SpecOperator):
    """Move the ``champion`` alias to the candidate ``outcome`` (a ``TrainCandidateOperator``'s
    output) when its decision says so. Returns ``{"promoted", "version"}``.

    Who approved goes into the registry's history: ``approved_by``, else the person who answered
    the ``approval_task_id`` task (an ``ApprovalOperator`` upstream), else this DAG's task."""

    template_fields = (*SpecOperator.template_fields, "outcome")
    ui_color = "#dbe9f6"

    def __init__(self, *, outcome: Any, approved_by: str | None = None, approval_task_id: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outcome = outcome
        self.approved_by = approved_by
        self.approval_task_id = approval_task_id

    def approver(self, context: Any) -> str:
        if self.approved_by:
            return self.approved_by
        if self.approval_task_id:
            return responder(context["ti"].xcom_pull(task_ids=self.approval_task_id))
        return self.actor(context)

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.model.prelabel import required_tracking_uri
        from labelloop.model.retrain import promote

        if not isinstance(self.outcome, dict) or "version" not in self.outcome:
            raise ValueError(f"{self.task_id}: outcome must be a TrainCandidateOperator's output (a dict with "
                             f"version and promote), got {self.outcome!r}")
        moved = promote(self.load_spec(), required_tracking_uri(), self.outcome, approved_by=self.approver(context))
        self.log.info("version %s: %s: %s", self.outcome["version"], "promoted" if moved else "not promoted",
                      self.outcome["reason"])
        return {"promoted": moved, "version": self.outcome["version"]}


class RollbackChampionOperator(SpecOperator):
    """Point ``champion`` back at an earlier registered ``version`` (templated: the rollback DAG
    passes ``"{{ params.version }}"``); refresh pre-labels after it."""

    template_fields = (*SpecOperator.template_fields, "version")
    ui_color = "#dbe9f6"

    def __init__(self, *, version: str | int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = version

    def execute(self, context: Any) -> None:
        from labelloop.model.prelabel import required_tracking_uri
        from labelloop.model.retrain import rollback

        rollback(self.load_spec(), required_tracking_uri(), str(self.version), actor=self.actor(context))


class RefreshPrelabelsOperator(SpecOperator):
    """Re-predict the project's unannotated tasks with the champion, once per champion version,
    uncertain ones first in the queue (the retrain DAG's ``refresh``). Returns what it did; its
    outlets' asset events carry it."""

    ui_color = "#dbe9f6"

    @fails_without_retry
    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.model.prelabel import required_tracking_uri
        from labelloop.model.retrain import refresh_prelabels

        ti = context["ti"]
        result = refresh_prelabels(self.load_spec(), self.hook, required_tracking_uri(),
                                   owner=f"{ti.dag_id}/{ti.run_id}/{ti.task_id}")
        self.log.info("pre-labels: %s", result)
        return result
