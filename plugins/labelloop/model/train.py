"""Train and evaluate the pre-label model: pure scikit-learn, no MLflow and no Airflow.

The default is what works for short texts: word (1-2) and character (2-5) n-gram TF-IDF
into a linear SVM whose scores are calibrated into probabilities (pre-label scores and
active learning both need probabilities that mean something).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from labelloop.model.learner import Prelabel
from labelloop.spec import Model

if TYPE_CHECKING:
    import pandas as pd

    from labelloop.tasktypes import TaskType

DEFAULT_ESTIMATOR = "calibrated LinearSVC"


def classifier(model: Model) -> ClassifierMixin:
    if model.estimator is None:
        return CalibratedClassifierCV(LinearSVC(C=1.0, class_weight="balanced", **model.params), cv=3)
    module_name, _, class_name = model.estimator.rpartition(".")
    try:
        estimator_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"model.estimator {model.estimator!r} cannot be imported ({error}); "
                         f"give a dotted path like sklearn.linear_model.LogisticRegression") from None
    estimator = estimator_class(**model.params)
    if not hasattr(estimator, "predict_proba"):
        raise ValueError(f"model.estimator {model.estimator!r} has no predict_proba; pre-labels need probabilities")
    return estimator


def text_features() -> FeatureUnion:
    """Word 1-2 gram and character 2-5 gram TF-IDF (the multi-label model uses the same)."""
    return FeatureUnion([
        ("words", TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)),
        ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)),
    ])


def build_pipeline(model: Model) -> Pipeline:
    return Pipeline([("features", text_features()), ("classifier", classifier(model))])


def fit(model: Model, texts: Sequence[str], labels: Sequence[str]) -> Pipeline:
    if len(set(labels)) < 2:
        raise ValueError(f"training needs at least two labels; the training set has only {sorted(set(labels))}")
    return build_pipeline(model).fit(list(texts), list(labels))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def evaluate(pipeline: Any, texts: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Metrics of a fitted classifier on held-out items (names are MLflow metric keys)."""
    classes = [str(c) for c in pipeline.classes_]
    proba = pipeline.predict_proba(list(texts))
    predicted = np.asarray(classes)[proba.argmax(axis=1)]
    truth = np.asarray(list(labels))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=classes, zero_division=0)
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0)),
        "log_loss": float(log_loss(truth, proba, labels=classes)),
        "ece": expected_calibration_error(proba.max(axis=1), predicted == truth),
        "n_eval": int(len(truth)),
    }
    for index, label in enumerate(classes):
        metrics[f"precision_{label}"] = float(precision[index])
        metrics[f"recall_{label}"] = float(recall[index])
        metrics[f"f1_{label}"] = float(f1[index])
    metrics["confusion"] = confusion_matrix(truth, predicted, labels=classes).tolist()
    metrics["classes"] = classes
    return metrics


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics MLflow can log (drops the confusion matrix and class list)."""
    return {key: float(value) for key, value in metrics.items() if isinstance(value, int | float)}


class ChoiceLearner:
    """Single-label classification (``<Choices>``, one choice): the functions above, unchanged."""

    flavor = "sklearn"
    metrics = ("macro_f1", "accuracy")

    def __init__(self, task_type: TaskType | None = None) -> None:
        self.task_type = task_type

    def describe(self, model: Model) -> str:
        return model.estimator or DEFAULT_ESTIMATOR

    def fit(self, model: Model, train: pd.DataFrame) -> Pipeline:
        return fit(model, train["text"], train["label"])

    def evaluate(self, fitted: Any, evaluation: pd.DataFrame) -> dict[str, Any]:
        return evaluate(fitted, evaluation["text"], evaluation["label"])

    def predict(self, fitted: Any, texts: list[str]) -> list[Prelabel]:
        """The most probable label; score = its probability."""
        assert self.task_type is not None, "predictions need the control they answer"
        probabilities = fitted.predict_proba(texts)
        classes = [str(label) for label in fitted.classes_]
        best = probabilities.argmax(axis=1)
        return [Prelabel([self.task_type._result("choices", {"choices": [classes[index]]})], float(row[index]))
                for row, index in zip(probabilities, best)]
