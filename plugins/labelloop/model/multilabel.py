"""The multi-label pre-label model (``<Choices choice="multiple">``): pure scikit-learn.

The single-label model's TF-IDF features into one-vs-rest binary classifiers, one per label,
each a calibrated linear SVM (or the spec's ``model.estimator``), so every label gets a
probability of its own. The predicted set is every label at 0.5 or above; treating the labels
as independent, the set's probability is the product of p (chosen) and 1 - p (not chosen),
which is the prediction's score (uncertainty = 1 - it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import f1_score, precision_recall_fscore_support
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline

from labelloop.model.learner import Prelabel, per_item
from labelloop.model.train import DEFAULT_ESTIMATOR, classifier, text_features
from labelloop.spec import Model

if TYPE_CHECKING:
    import pandas as pd

    from labelloop.tasktypes import TaskType

THRESHOLD = 0.5
#: CalibratedClassifierCV's folds: each label needs this many items with it and without it.
MIN_PER_SIDE = 3


class MultiLabelLearner:
    flavor = "sklearn"
    metrics = ("macro_f1", "exact_match", "micro_f1")

    def __init__(self, task_type: TaskType) -> None:
        self.task_type = task_type
        self.labels = list(task_type.control.labels)

    def describe(self, model: Model) -> str:
        return f"one-vs-rest {model.estimator or DEFAULT_ESTIMATOR}"

    def indicators(self, sets: list[list[Any]]) -> np.ndarray:
        index = {label: position for position, label in enumerate(self.labels)}
        matrix = np.zeros((len(sets), len(self.labels)), dtype=int)
        for row, chosen in enumerate(sets):
            matrix[row, [index[label] for label in chosen]] = 1
        return matrix

    def fit(self, model: Model, train: pd.DataFrame) -> Pipeline:
        texts, sets = per_item(train)
        target = self.indicators(sets)
        positives = target.sum(axis=0)
        short = [f"{label} ({count} of {len(texts)} items)" for label, count in zip(self.labels, positives)
                 if count < MIN_PER_SIDE or len(texts) - count < MIN_PER_SIDE]
        if short and model.estimator is None:
            raise ValueError(f"training needs each label on at least {MIN_PER_SIDE} items and off at least "
                             f"{MIN_PER_SIDE} (the calibration's folds); too few for: {', '.join(short)}")
        pipeline = Pipeline([("features", text_features()), ("classifier", OneVsRestClassifier(classifier(model)))])
        pipeline.fit(texts, target)
        pipeline.label_names = list(self.labels)  # the columns of predict_proba, kept with the model
        return pipeline

    def probabilities(self, fitted: Any, texts: list[str]) -> tuple[list[str], np.ndarray]:
        return list(fitted.label_names), np.asarray(fitted.predict_proba(list(texts)), dtype=float)

    def predict(self, fitted: Any, texts: list[str]) -> list[Prelabel]:
        labels, probabilities = self.probabilities(fitted, texts)
        chosen = probabilities >= THRESHOLD
        set_probability = np.where(chosen, probabilities, 1.0 - probabilities).prod(axis=1)
        found = []
        for row, score in zip(chosen, set_probability):
            picked = [label for label, on in zip(labels, row) if on]
            found.append(Prelabel([self.task_type._result("choices", {"choices": picked})] if picked else [],
                                  float(score)))
        return found

    def evaluate(self, fitted: Any, evaluation: pd.DataFrame) -> dict[str, Any]:
        """Macro-F1 over the labels whose F1 is defined (as the audit's ``score_sets``), micro-F1,
        exact-set match and per-label precision / recall / F1 on the gold items."""
        texts, sets = per_item(evaluation)
        labels, probabilities = self.probabilities(fitted, texts)
        truth = self.indicators(sets)[:, [self.labels.index(label) for label in labels]]
        predicted = (probabilities >= THRESHOLD).astype(int)
        macro = f1_score(truth, predicted, average="macro", zero_division=np.nan)
        precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
        metrics: dict[str, Any] = {
            "macro_f1": 0.0 if np.isnan(macro) else float(macro),
            "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
            "exact_match": float((truth == predicted).all(axis=1).mean()),
            "hamming_accuracy": float((truth == predicted).mean()),
            "n_eval": len(texts),
        }
        for index, label in enumerate(labels):
            metrics[f"precision_{label}"] = float(precision[index])
            metrics[f"recall_{label}"] = float(recall[index])
            metrics[f"f1_{label}"] = float(f1[index])
        return metrics
