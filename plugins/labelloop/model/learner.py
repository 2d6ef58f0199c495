"""What a pre-label learner is: the part of a task type that trains, scores and predicts.

A task type names its learner (``TaskType.learner_class``); retrain, prelabel and the backend
call ``task_type.learner()`` and never branch on the kind. Every learner works on tidy frames:
``item_id``, ``text`` and the task type's answer columns (an all-NA row is the answer
"nothing"), the same rows the audit's consensus and the gold set are made of. ``text`` is the
value of the control's object in the task data: the text, or an image's URI.

A learner logs its model with ``flavor``'s ``log_model``, unless it defines
``log_model(fitted, registered_model_name, train) -> ModelInfo`` itself (the detector does:
the project brings its own kind of model).

A prediction's ``score`` is the model's probability of the whole answer it predicts (the
label, the set of labels, the set of spans), so the labeling queue's uncertainty is
``1 - score`` for every kind (``labelloop.ordering``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import pandas as pd

    from labelloop.spec import Model
    from labelloop.tasktypes import TaskType


@dataclass(frozen=True)
class Prelabel:
    """One task's prediction: Label Studio results of the control, and P(that answer)."""

    result: list[dict[str, Any]]
    score: float

    @property
    def uncertainty(self) -> float:
        """What orders the labeling queue: the probability that the predicted answer is wrong."""
        return 1.0 - self.score


class Learner(Protocol):
    #: the MLflow model flavor the model is logged and loaded with ("sklearn", "spacy")
    flavor: ClassVar[str]
    #: the metrics ``model.metric`` may name for this kind; the first is the default
    metrics: ClassVar[tuple[str, ...]]

    def __init__(self, task_type: TaskType) -> None: ...

    def describe(self, model: Model) -> str:
        """What is trained, for the MLflow run's ``estimator`` parameter."""

    def fit(self, model: Model, train: pd.DataFrame) -> Any:
        """A fitted model from tidy training rows (item_id, text, answer columns)."""

    def evaluate(self, fitted: Any, evaluation: pd.DataFrame) -> dict[str, Any]:
        """Metrics on tidy gold rows; numeric values are MLflow metric keys."""

    def predict(self, fitted: Any, texts: list[str]) -> list[Prelabel]:
        """One prediction per text, in order."""


def per_item(frame: pd.DataFrame, column: str = "label") -> tuple[list[str], list[list[Any]]]:
    """(texts, answers) with one entry per item, in first-seen order; an NA value adds nothing,
    so an item whose only row is NA has the empty answer."""
    texts: dict[Any, str] = {}
    answers: dict[Any, list[Any]] = {}
    for item, text, value in zip(frame["item_id"], frame["text"], frame[column]):
        texts.setdefault(item, text)
        found = answers.setdefault(item, [])
        if value is not None and value == value:  # (NaN != NaN)
            found.append(value)
    return list(texts.values()), list(answers.values())


def promotion_metric(learner: Learner, model: Model) -> str:
    """The metric that decides promotion: the spec's ``model.metric``, or the kind's default."""
    metric = model.metric or learner.metrics[0]
    if metric not in learner.metrics:
        raise ValueError(f"model.metric {metric!r} is not measured for this kind of control; "
                         f"use one of {list(learner.metrics)}")
    return metric
