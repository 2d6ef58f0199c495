"""Pre-labels from the registry's champion model, when there is one.

Ingest works without a model: ``load_predictor`` returns None until the registry has a
``champion`` alias for the spec's model, and ingest picks it up from the next run on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from labelloop import settings
from labelloop.spec import ProjectSpec

if TYPE_CHECKING:  # the backend imports this module: keep Airflow out of its start
    from labelloop.ingest.pipeline import Predictor

log = logging.getLogger(__name__)
CHAMPION = "champion"


def tracking_uri(conn_id: str = settings.MLFLOW_CONN_ID) -> str | None:
    """The MLflow tracking URI from its Airflow connection, or None when there is none."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    host = conn.host or ""
    uri = host if "://" in host else f"http://{host}"
    return f"{uri.rstrip('/')}:{conn.port}" if conn.port else uri.rstrip("/")


def predictions(spec: ProjectSpec, model: Any, model_version: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Label Studio predictions (choices, score = top probability) for task data rows."""
    texts = [str(row.get(spec.object_name, "")) for row in rows]
    probabilities = model.predict_proba(texts)
    classes = [str(label) for label in model.classes_]
    result = []
    for row in probabilities:
        best = int(row.argmax())
        result.append({
            "model_version": model_version,
            "score": float(row[best]),
            "result": [{"from_name": spec.control_name, "to_name": spec.object_name, "type": "choices",
                        "value": {"choices": [classes[best]]}}],
        })
    return result


def load_champion(spec: ProjectSpec, uri: str) -> tuple[str, Predictor] | None:
    """("<name>:<version>", predictor) for the registry's champion, or None when there is none."""
    if spec.model is None:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        version = client.get_model_version_by_alias(spec.model.name, CHAMPION)
    except MlflowException as error:
        log.info("no %s@%s in the registry (%s)", spec.model.name, CHAMPION, error.error_code)
        return None
    mlflow.set_tracking_uri(uri)
    model = mlflow.sklearn.load_model(f"models:/{spec.model.name}/{version.version}")
    model_version = f"{spec.model.name}:{version.version}"
    return model_version, lambda rows: predictions(spec, model, model_version, rows)


def load_predictor(spec: ProjectSpec, conn_id: str = settings.MLFLOW_CONN_ID) -> Predictor | None:
    """The champion's predictor for ingest, or None (ingest then imports without pre-labels)."""
    if spec.model is None:
        return None
    uri = tracking_uri(conn_id)
    if uri is None:
        log.info("no %s connection: importing without pre-labels", conn_id)
        return None
    champion = load_champion(spec, uri)
    if champion is None:
        return None
    log.info("pre-labeling with %s", champion[0])
    return champion[1]
