"""Pre-labels from the registry's champion model, and the registry reads everything else relies on.

Ingest works without a model: ``load_predictor`` returns None until the registry has a
``champion`` alias for the spec's model, and ingest picks it up from the next run on. "No
champion" is only ever concluded from the registry's own answer (``registered_model``); a
registry that fails or does not answer raises ``RegistryError`` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from labelloop import settings
from labelloop.connections import url_of
from labelloop.spec import ProjectSpec

if TYPE_CHECKING:  # the backend imports this module: keep Airflow out of its start
    from labelloop.ingest.pipeline import Predictor
    from labelloop.tasktypes import TaskType

log = logging.getLogger(__name__)
CHAMPION = "champion"
#: The only MLflow error code that means "there is no such model" (a definite answer).
NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
#: What MLflow's client reports when the server is down, refused the connection or failed.
_UNREACHABLE = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE"}

# Every MLflow call of labelloop is made after this import: bound its retries and timeouts.
settings.use_mlflow_client_env()


class RegistryError(RuntimeError):
    """MLflow failed or did not answer (down, refused, timed out, a server error). Never read as
    "there is no champion": whatever needed the answer stops, naming the server."""


@contextmanager
def registry_errors(uri: str, doing: str) -> Iterator[None]:
    """Turn MLflow's failures inside the block into a ``RegistryError`` naming the server and the step."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        hint = (f" Check that the server is up and that the Airflow connection {settings.MLFLOW_CONN_ID} "
                f"points at it." if error.error_code in _UNREACHABLE else "")
        raise RegistryError(f"MLflow at {uri} failed while {doing} ({error.error_code}): {error.message}.{hint}") \
            from error


def registered_model(client: Any, name: str) -> Any | None:
    """The registered model ``name``, or None when the registry says it does not exist."""
    from mlflow.exceptions import MlflowException

    with registry_errors(client.tracking_uri, f"reading registered model {name!r}"):
        try:
            return client.get_registered_model(name)
        except MlflowException as error:
            if error.error_code == NOT_FOUND:
                return None
            raise


def champion_number(client: Any, name: str) -> str | None:
    """The version ``name@champion`` points at; None only when the registry answers that there is
    none (no such model, or no such alias on it). One registry call."""
    model = registered_model(client, name)
    version = None if model is None else model.aliases.get(CHAMPION)
    return None if version is None else str(version)


def tracking_uri(conn_id: str = settings.MLFLOW_CONN_ID) -> str | None:
    """The MLflow tracking URI from its Airflow connection, or None when there is none."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    return url_of(conn)


def required_tracking_uri() -> str:
    """The tracking URI for a stage that cannot run without MLflow (retrain, promote, refresh)."""
    uri = tracking_uri()
    if uri is None:
        raise RuntimeError(f"this task needs the {settings.MLFLOW_CONN_ID} connection (host = MLflow tracking URI)")
    return uri


def task_type_of(spec: ProjectSpec) -> TaskType:
    """The task type of the spec's control: what the model stages train and predict through."""
    return spec.task_type


def predictions(spec: ProjectSpec, model: Any, model_version: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Label Studio predictions of the spec's control for task data rows; score = the model's
    probability of the predicted answer (the queue's uncertainty is 1 - score)."""
    texts = [str(row.get(spec.object_field, "")) for row in rows]
    return [{"model_version": model_version, "score": prelabel.score, "result": prelabel.result}
            for prelabel in task_type_of(spec).learner().predict(model, texts)]


def load_model(flavor: str, uri: str) -> Any:
    """A logged model back with its MLflow flavor (``Learner.flavor``: sklearn, spacy)."""
    import importlib

    return importlib.import_module(f"mlflow.{flavor}").load_model(uri)


def load_champion(spec: ProjectSpec, uri: str) -> tuple[str, Predictor] | None:
    """("<name>:<version>", predictor) for the registry's champion, or None when there is none.

    Raises ``RegistryError`` when the registry cannot say (or the model cannot be downloaded).
    """
    if spec.model is None:
        return None
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = champion_number(client, spec.model.name)
    if version is None:
        log.info("no %s@%s in the registry at %s", spec.model.name, CHAMPION, uri)
        return None
    mlflow.set_tracking_uri(uri)
    with registry_errors(uri, f"loading {spec.model.name} version {version}"):
        model = load_model(task_type_of(spec).learner().flavor, f"models:/{spec.model.name}/{version}")
    model_version = f"{spec.model.name}:{version}"
    return model_version, lambda rows: predictions(spec, model, model_version, rows)


def load_predictor(spec: ProjectSpec, conn_id: str = settings.MLFLOW_CONN_ID) -> Predictor | None:
    """The champion's predictor for ingest, or None when there is no model or no champion.

    Raises ``RegistryError`` when the registry does not answer: the caller decides (ingest
    imports without pre-labels and leaves the tasks to the refresh).
    """
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
