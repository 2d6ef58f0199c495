"""MLflow misbehaving, through the fault proxy in front of the session's real MLflow server.

A promotion is cut between registering a version and moving the alias, and then between moving
the alias and recording the move: each attempt fails naming the server, the champion is never
moved wrongly, and the retry completes the promotion with its history entry written once. The
pre-label backend, its registry behind the proxy, keeps serving its last model while MLflow
answers 503s or drops connections, says so in ``/health``, and follows the alias once it is back.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from labelloop.dev.stack import backend_server, free_port
from labelloop.model.prelabel import CHAMPION, RegistryError
from labelloop.model.registry import HISTORY_TAG
from labelloop.model.retrain import promote
from labelloop.spec import load_spec

from tests.faults.proxy import FaultProxy
from tests.integration.test_backend import wait_until
from tests.secret_scan import secret
from tests.unit.test_backend_app import SPAM, register_champion

pytestmark = pytest.mark.integration
ALIAS, MODEL_TAG = r"/registered-models/alias$", r"/registered-models/set-tag$"
TOKEN = secret("faults-backend-token-0123456789abcdef")


def history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    return json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))


def champion(client: MlflowClient, name: str) -> str:
    return client.get_model_version_by_alias(name, CHAMPION).version


def test_an_interrupted_promotion_is_clearly_not_done_then_completes(mlflow_server, make_spec) -> None:
    spec = load_spec(make_spec(model={"name": f"faults_promote_{time.time_ns()}"}))
    name, client = spec.model.name, MlflowClient(mlflow_server.url, mlflow_server.url)
    first = register_champion(mlflow_server.url, name)
    second = register_champion(mlflow_server.url, name, flip=True)
    client.delete_registered_model_alias(name, CHAMPION)
    assert promote(spec, mlflow_server.url, {"promote": True, "version": first, "reason": "test: first"}, "test")
    outcome = {"promote": True, "version": second, "reason": "test: the candidate is better"}
    promoted_first = history(client, name)
    assert [(move["version"], move["previous"]) for move in promoted_first] == [(first, None)]
    down = re.escape("MLflow at http://127.0.0.1:")

    with FaultProxy(mlflow_server.url) as proxy:
        proxy.fail(503, path=ALIAS, method="POST", times=None)  # MLflow gone before the alias moves
        with pytest.raises(RegistryError, match=down + r".* promoting .* version " + second):
            promote(spec, proxy.url, outcome, "test")
        assert proxy.faults(ALIAS) >= 1
        assert champion(client, name) == first and history(client, name) == promoted_first  # clearly not done

        proxy.clear()
        proxy.fail(503, path=MODEL_TAG, method="POST", times=None)  # gone after the alias moved
        with pytest.raises(RegistryError, match=down):
            promote(spec, proxy.url, outcome, "test")
        assert proxy.faults(MODEL_TAG) >= 1
        assert champion(client, name) == second and history(client, name) == promoted_first  # half done

        proxy.clear()
        assert promote(spec, proxy.url, outcome, "test")  # the retry completes it
        assert promote(spec, proxy.url, outcome, "test")  # and a re-run changes nothing
    assert champion(client, name) == second
    assert [(move["version"], move["previous"]) for move in history(client, name)] == [(first, None), (second, first)]


def health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=5).json()


def test_the_backend_serves_its_last_model_while_mlflow_is_unreachable(
        mlflow_server, make_spec, session_dir) -> None:
    spec_path = make_spec(model={"name": f"faults_backend_{time.time_ns()}"})
    spec = load_spec(spec_path)
    name, client = spec.model.name, MlflowClient(mlflow_server.url, mlflow_server.url)
    first = register_champion(mlflow_server.url, name)
    auth = httpx.BasicAuth("labelloop", TOKEN)
    with FaultProxy(mlflow_server.url) as proxy:
        backend = backend_server(session_dir / "faults-backend", free_port(), spec.name, TOKEN, proxy.url,
                                 projects_dir=spec_path.parent, poll_seconds=1)
        backend.start()
        try:
            wait_until(lambda: health(backend.url)["model_version"] == f"{name}:{first}", 60, "version 1")
            assert "registry_error" not in health(backend.url)

            second = register_champion(mlflow_server.url, name, flip=True)  # the alias moves ...
            proxy.fail(503, times=None)                                     # ... while MLflow is unreachable
            wait_until(lambda: "registry_error" in health(backend.url), 60, "/health to report the registry")
            proxy.clear()
            proxy.drop(times=None, after_forward=False)  # then it drops every connection
            time.sleep(3)
            answer = health(backend.url)
            assert answer["model_version"] == f"{name}:{first}" and proxy.url in answer["registry_error"]
            predicted = httpx.post(f"{backend.url}/predict", json={"tasks": [{"id": 1, "data": {"text": SPAM}}]},
                                   auth=auth, timeout=30)
            assert predicted.status_code == 200
            assert predicted.json()["results"][0]["model_version"] == f"{name}:{first}"
            assert proxy.faults() >= 4

            proxy.clear()  # MLflow is back: the backend follows the alias and the error clears
            wait_until(lambda: health(backend.url)["model_version"] == f"{name}:{second}", 60, "version 2")
            assert "registry_error" not in health(backend.url)
        finally:
            backend.stop()
    assert champion(client, name) == second
