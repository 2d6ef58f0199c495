"""Registry reads: only the registry's own "does not exist" means there is no champion.

A failed read (server down, a 5xx, refused access) used to be read as "no champion", so the
retrain took its "first model" branch and promoted any candidate above the floor without
comparing it with the real champion. Here the registry is a stand-in answering with real
MLflow entities or raising real MlflowExceptions, plus one real client at a closed port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities.model_registry import ModelVersion, RegisteredModel, RegisteredModelAlias
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ErrorCode

from labelloop import settings
from labelloop.model.prelabel import CHAMPION, RegistryError, champion_number
from labelloop.model.registry import champion_version, evaluate_champion, move_champion
from labelloop.serving.champion import Champion, Loaded

URI = "http://mlflow.example:5000"
REPO = Path(__file__).resolve().parents[2]


class Registry:
    """Answers MlflowClient's registry reads with a model (and its aliases), or raises ``error``."""

    tracking_uri = URI

    def __init__(self, error: MlflowException | None = None, aliases: dict[str, str] | None = None) -> None:
        self.error = error
        self.aliases = aliases or {}
        self.writes: list[tuple] = []

    def get_registered_model(self, name: str) -> RegisteredModel:
        if self.error is not None:
            raise self.error
        return RegisteredModel(name, aliases=[RegisteredModelAlias(a, v) for a, v in self.aliases.items()])

    def get_model_version(self, name: str, version: str) -> ModelVersion:
        return ModelVersion(name, version, creation_timestamp=0)

    def set_registered_model_alias(self, *args: object) -> None:
        self.writes.append(("alias", *args))

    def set_registered_model_tag(self, *args: object) -> None:
        self.writes.append(("tag", *args))


def failing(code: str) -> Registry:
    return Registry(MlflowException(f"simulated {code}", error_code=ErrorCode.Value(code)))


def test_no_such_model_is_no_champion() -> None:
    assert champion_number(failing("RESOURCE_DOES_NOT_EXIST"), "m") is None
    assert champion_version(failing("RESOURCE_DOES_NOT_EXIST"), "m") is None


def test_a_model_without_the_alias_is_no_champion_and_with_it_is_its_version() -> None:
    assert champion_version(Registry(aliases={"staging": "2"}), "m") is None
    assert champion_version(Registry(aliases={CHAMPION: "3"}), "m").version == "3"


@pytest.mark.parametrize("code", ["INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "PERMISSION_DENIED",
                                  "INVALID_PARAMETER_VALUE"])
def test_any_other_failure_raises_naming_the_server(code: str) -> None:
    for lookup in (champion_number, champion_version):
        with pytest.raises(RegistryError, match=f"MLflow at {URI} failed while reading registered model 'm' "
                                                f"\\({code}\\): simulated {code}"):
            lookup(failing(code), "m")


def test_no_decision_and_no_alias_move_on_a_failed_read() -> None:
    """The champion's metrics (what ``decide`` compares with) are not "none" when the read failed,
    and the alias is not moved over a champion that could not be read."""
    evaluation = pd.DataFrame({"text": ["win cash now"], "label": ["spam"]})
    with pytest.raises(RegistryError, match=URI):
        evaluate_champion(failing("INTERNAL_ERROR"), "m", evaluation)
    registry = failing("TEMPORARILY_UNAVAILABLE")
    with pytest.raises(RegistryError, match=URI):
        move_champion(registry, "m", "4", "better", "test")
    assert registry.writes == []


def test_a_server_that_is_down_fails_in_seconds_with_its_url() -> None:
    """A real client at a closed port (MLflow's defaults retried for ~4 minutes)."""
    from mlflow import MlflowClient

    uri = "http://127.0.0.1:9"  # discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(RegistryError, match=f"MLflow at {uri} failed .*Connection refused.*Check that the server "
                                            f"is up and that the Airflow connection {settings.MLFLOW_CONN_ID}"):
        champion_version(MlflowClient(tracking_uri=uri, registry_uri=uri), "m")
    assert time.monotonic() - started < 20


def test_backend_keeps_serving_on_a_failed_read_and_stops_only_when_the_alias_is_gone() -> None:
    champion = Champion("m", URI, poll_seconds=0)
    champion.current = Loaded(model=None, version="1", model_version="m:1")  # something is being served
    champion._client = failing("INTERNAL_ERROR")
    assert champion.refresh() is False and champion.current is not None
    champion._client = Registry(aliases={})
    assert champion.refresh() is False and champion.current is None
    assert champion.problem.startswith(f"no champion yet: models:/m@{CHAMPION} does not exist")


def test_the_environment_wins_over_the_bounded_defaults() -> None:
    env = settings.mlflow_client_env({"MLFLOW_HTTP_REQUEST_TIMEOUT": "60"})
    assert env == {**settings.MLFLOW_CLIENT_ENV, "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def test_task_code_bounds_mlflow_retries_when_imported() -> None:
    """The module every MLflow call of labelloop goes through first (retrain, registry and the
    backend import it at the top, the audit before it logs) sets the bounded values in a clean
    process (an Airflow worker has none of them): no task waits out MLflow's ~4 minute retries."""
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    names = [MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_TIMEOUT]
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    code = ("import labelloop.model.prelabel; from mlflow import environment_variables as env; "
            f"print(*(getattr(env, name).get() for name in {[name.name for name in names]}))")
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO / "plugins")},
                         capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
    assert out == [settings.MLFLOW_CLIENT_ENV[name.name] for name in names]
    assert int(out[0]) < MLFLOW_HTTP_REQUEST_MAX_RETRIES.default
