"""Operators for the model half of the loop, in your own DAGs: train a candidate, promote it, refresh pre-labels.

Thin wrappers over ``labelloop.model.retrain`` (what the retrain DAG runs), with MLflow reached
through the ``mlflow_default`` connection (host = tracking URI), looked up when the task runs.
"""

from __future__ import annotations

from typing import Any

from labelloop.factory import fails_without_retry
from labelloop.operators.base import SpecOperator


class TrainCandidateOperator(SpecOperator):
    """Train the spec's model on the last audit that passed the gate, register the candidate and
    compare it with the champion on the same gold items (the retrain DAG's ``train``). Returns the
    decision (``version``, ``promote``, ``reason``, metrics); skips when this data was trained on
    already (``force=True`` trains again) or there is nothing to train on."""

    ui_color = "#dbe9f6"

    def __init__(self, *, force: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.force = force

    @fails_without_retry
    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from labelloop.model.prelabel import required_tracking_uri
        from labelloop.model.retrain import NothingToTrain, comparison_markdown, retrain

        uri = required_tracking_uri()
        try:
            outcome = retrain(self.load_spec(), uri, force=self.force, actor=f"task {self.task_id}")
        except NothingToTrain as reason:
            raise AirflowSkipException(str(reason)) from None
        outcome["body"] = comparison_markdown(outcome, uri)
        self.log.info("%s", outcome["body"])
        return outcome


class PromoteCandidateOperator(SpecOperator):
    """Move the ``champion`` alias to the candidate ``outcome`` (a ``TrainCandidateOperator``'s
    output) when its decision says so. Returns ``{"promoted", "version"}``."""

    template_fields = (*SpecOperator.template_fields, "outcome")
    ui_color = "#dbe9f6"

    def __init__(self, *, outcome: Any, approved_by: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outcome = outcome
        self.approved_by = approved_by

    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.model.prelabel import required_tracking_uri
        from labelloop.model.retrain import promote

        if not isinstance(self.outcome, dict) or "version" not in self.outcome:
            raise ValueError(f"{self.task_id}: outcome must be a TrainCandidateOperator's output (a dict with "
                             f"version and promote), got {self.outcome!r}")
        moved = promote(self.load_spec(), required_tracking_uri(), self.outcome,
                        approved_by=self.approved_by or f"task {self.task_id}")
        self.log.info("version %s: %s: %s", self.outcome["version"], "promoted" if moved else "not promoted",
                      self.outcome["reason"])
        return {"promoted": moved, "version": self.outcome["version"]}


class RefreshPrelabelsOperator(SpecOperator):
    """Re-predict the project's unannotated tasks with the champion, once per champion version,
    uncertain ones first in the queue (the retrain DAG's ``refresh``). Returns what it did."""

    ui_color = "#dbe9f6"

    @fails_without_retry
    def execute(self, context: Any) -> dict[str, Any]:
        from labelloop.model.prelabel import required_tracking_uri
        from labelloop.model.retrain import refresh_prelabels

        result = refresh_prelabels(self.load_spec(), self.hook, required_tracking_uri())
        self.log.info("pre-labels: %s", result)
        return result
