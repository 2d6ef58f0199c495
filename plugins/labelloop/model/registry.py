"""The MLflow side of retraining: log a candidate, compare it with the champion, move the alias.

Stages are deprecated in MLflow; the champion is the version the alias ``champion`` points
at, and every decision is written down as tags on the version it concerns. The alias
history (who was champion when) is a JSON list in a registered-model tag.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from labelloop.model.learner import Learner, promotion_metric
from labelloop.model.prelabel import CHAMPION, champion_number, load_model, registered_model, registry_errors
from labelloop.model.train import ChoiceLearner, numeric
from labelloop.spec import Model

HISTORY_TAG = "labelloop.champion_history"
#: Explicit requirements: inferring them costs ~9 s a call.
PIP_REQUIREMENTS = [f"scikit-learn=={__import__('sklearn').__version__}", f"numpy=={__import__('numpy').__version__}"]


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    candidate: float
    champion: float | None


def decide(model: Model, candidate: dict[str, Any], champion: dict[str, Any] | None,
           learner: Learner | None = None) -> Decision:
    """Promote only a candidate better than the champion by the margin, or a first one above the floor.

    The metric is ``model.metric``, or the learner's kind's default (macro-F1 for choices,
    exact-span F1 for spans)."""
    metric = promotion_metric(learner or ChoiceLearner(), model)
    score = float(candidate[metric])
    if champion is None:
        if score >= model.min_score:
            return Decision(True, f"first model: {metric} {score:.4f} >= floor {model.min_score}", score, None)
        return Decision(False, f"first model: {metric} {score:.4f} < floor {model.min_score}", score, None)
    best = float(champion[metric])
    if score >= best + model.promotion_margin:
        return Decision(True, f"{metric} {score:.4f} beats champion {best:.4f} by >= {model.promotion_margin}",
                        score, best)
    return Decision(False, f"{metric} {score:.4f} does not beat champion {best:.4f} by {model.promotion_margin}",
                    score, best)


def champion_version(client: MlflowClient, name: str) -> Any | None:
    """The champion's ModelVersion; None only when the registry answers that there is none.

    A registry that fails raises ``RegistryError``: deciding on a failed read would promote any
    candidate above the floor as the "first model", without comparing it with the real champion.
    """
    version = champion_number(client, name)
    if version is None:
        return None
    with registry_errors(client.tracking_uri, f"reading {name} version {version} ({CHAMPION})"):
        return client.get_model_version(name, version)


def log_candidate(model: Model, pipeline: Any, train: pd.DataFrame, evaluation: pd.DataFrame,
                  lineage: dict[str, Any], experiment: str,
                  learner: Learner | None = None) -> tuple[Any, dict[str, Any]]:
    """Log params, metrics, plots, dataset lineage and the model; register a new version.

    ``learner``: the control's (``task_type.learner()``); None is the single-label classifier."""
    learner = learner or ChoiceLearner()
    metrics = learner.evaluate(pipeline, evaluation)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"train-{lineage.get('snapshot_run', 'manual')}") as run:
        with warnings.catch_warnings():
            # MLflow 3.17 registers its local-file source class twice and then warns, on every
            # file:// URI, that the source "can be interpreted in multiple ways" (both are the same).
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            mlflow.log_input(mlflow.data.from_pandas(train, source=lineage["snapshot"], targets="label",
                                                     name="training"), context="training")
            mlflow.log_input(mlflow.data.from_pandas(evaluation, source=lineage["snapshot"], targets="label",
                                                     name="gold-evaluation"), context="evaluation")
        mlflow.log_params({"estimator": learner.describe(model), **model.params,
                           "n_train": train["item_id"].nunique(), "n_eval": evaluation["item_id"].nunique()})
        mlflow.log_metrics(numeric(metrics))
        mlflow.set_tags({f"lineage.{key}": str(value) for key, value in lineage.items()})
        mlflow.log_dict({"labels": train["label"].value_counts().to_dict()}, "label_distribution.json")
        if "confusion" in metrics:
            with tempfile.TemporaryDirectory() as folder:
                mlflow.log_artifact(str(_confusion_plot(metrics, Path(folder))), "plots")
        own = getattr(learner, "log_model", None)  # a learner that logs its own kind of model (detector)
        info = own(pipeline, model.name, train) if own else _log_model(learner.flavor, pipeline, model.name, train)
    version = MlflowClient().get_model_version(model.name, str(info.registered_model_version))
    return version, {**metrics, "run_id": run.info.run_id}


def _log_model(flavor: str, fitted: Any, name: str, train: pd.DataFrame) -> Any:
    """Log and register the fitted model with its MLflow flavor (requirements given: inferring
    them costs seconds)."""
    if flavor == "spacy":
        import spacy

        return mlflow.spacy.log_model(fitted, name="model", registered_model_name=name,
                                      pip_requirements=[f"spacy=={spacy.__version__}"])
    return mlflow.sklearn.log_model(
        fitted, name="model", registered_model_name=name, pip_requirements=PIP_REQUIREMENTS,
        # An array (not a list) lets MLflow infer the string-input signature.
        input_example=np.asarray(train["text"].head(2)), serialization_format="cloudpickle",
    )


def _confusion_plot(metrics: dict[str, Any], folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes, matrix = metrics["classes"], metrics["confusion"]
    figure, axis = plt.subplots(figsize=(3 + len(classes) * 0.6, 2.5 + len(classes) * 0.6))
    axis.imshow(matrix, cmap="Blues")
    # Labels are the spec's, drawn as typed: "$x$" is a label here, not matplotlib math.
    axis.set_xticks(range(len(classes)), classes, parse_math=False)
    axis.set_yticks(range(len(classes)), classes, parse_math=False)
    axis.set_xlabel("predicted")
    axis.set_ylabel("gold")
    for row, values in enumerate(matrix):
        for column, value in enumerate(values):
            axis.text(column, row, str(value), ha="center", va="center")
    figure.tight_layout()
    path = folder / "confusion_matrix.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def record_decision(client: MlflowClient, name: str, version: str, decision: Decision,
                    status: str, snapshot: str) -> None:
    """Tag the candidate with the outcome, so the registry alone tells why it is (not) champion."""
    tags = {"validation_status": status, "decision": decision.reason, "candidate_score": f"{decision.candidate:.6f}",
            "champion_score": "none" if decision.champion is None else f"{decision.champion:.6f}",
            "snapshot": snapshot}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def champion_history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    model = registered_model(client, name)
    return json.loads(((model.tags if model else None) or {}).get(HISTORY_TAG, "[]"))


def move_champion(client: MlflowClient, name: str, version: str, reason: str, actor: str) -> None:
    """Point ``champion`` at ``version`` and append the move to the history.

    The alias moves first, then the history: when the registry fails between the two, the
    alias is already there on the retry, which then writes the missing history entry."""
    previous = champion_version(client, name)
    history = champion_history(client, name)
    if previous is not None and previous.version == str(version):
        if history and history[-1].get("version") == str(version):
            return  # already there and recorded: a re-run changes nothing
        prior = history[-1].get("version") if history else None  # the alias moved, its record did not
    else:
        client.set_registered_model_alias(name, CHAMPION, version)
        prior = previous.version if previous else None
    history.append({"version": str(version), "previous": prior,
                    "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "by": actor, "reason": reason})
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-100:]))


def evaluate_champion(client: MlflowClient, name: str, evaluation: pd.DataFrame,
                      learner: Learner | None = None) -> tuple[Any, dict[str, Any]] | None:
    """The current champion's metrics on the same evaluation set as the candidate."""
    learner = learner or ChoiceLearner()
    version = champion_version(client, name)
    if version is None:
        return None
    champion = load_model(learner.flavor, f"models:/{name}/{version.version}")
    return version, learner.evaluate(champion, evaluation)
