"""The pre-label backend fuzzed against its own OpenAPI schema (schemathesis): no 5xx, every
error JSON with a message.

The app runs in-process (ASGI, real HTTP semantics through schemathesis' transport) with its
champion poller against the session's REAL MLflow server and a real registered champion, so
``/predict`` runs the model on whatever the generator sends. Requests carry the token (the
Guard's refusals are covered in test_backend_app.py); one test fuzzes without it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from labelloop.serving.backend import Settings, create_app
from labelloop.spec import load_spec
from tests.unit.test_backend_app import BEARER, TOKEN, register_champion

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = 40  # per operation and mode: about 40 s for the five operations


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any) -> Iterator[Any]:
    """The SMS spec's backend with a registered champion, and its own OpenAPI schema."""
    spec = load_spec(REPO / "include" / "projects" / "sms_spam.yaml")
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"name": f"fuzz_{uuid.uuid4().hex[:10]}"})})
    register_champion(mlflow_server.url, spec.model.name)
    app = create_app(Settings(spec=spec, tracking_uri=mlflow_server.url, token=TOKEN, poll_seconds=5))
    with TestClient(app) as client:  # runs the lifespan: the poller loads the champion
        assert app.state.champion.checked.wait(60) and app.state.champion.current is not None
        schema = schemathesis.openapi.from_dict(client.get("/openapi.json", headers=BEARER).json())
        schema.app = app  # calls go to the app in-process (ASGI transport)
        yield schema


def assert_answered(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail, response.text[:500]


def operations() -> list[str]:
    """Every operation of the app, as schemathesis labels them."""
    return ["GET /health", "POST /setup", "POST /predict", "POST /webhook", "GET /versions"]


#: (operation, mode): a GET without parameters has no request that breaks its schema.
CASES = [(label, mode) for label in operations() for mode in GenerationMode
         if mode is GenerationMode.POSITIVE or label.startswith("POST")]


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label}-{mode.value}" for label, mode in CASES])
@pytest.mark.parametrize("authorized", [True, False], ids=["token", "no-token"])
def test_no_generated_request_gets_a_5xx_and_every_error_says_why(
        api_schema: Any, label: str, mode: GenerationMode, authorized: bool) -> None:
    """Schema-valid (positive) and schema-breaking (negative) requests to every operation."""
    operation = api_schema.find_operation_by_label(label)
    seen: list[int] = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        headers = {**(case.headers or {}), **(BEARER if authorized else {})}
        response = case.call(headers=headers)
        assert_answered(response)
        if not authorized and case.path != "/health":
            assert response.status_code == 401
        seen.append(response.status_code)

    fuzz()
    assert seen, "no request was generated"


def test_the_schema_lists_every_operation(api_schema: Any) -> None:
    """The fuzz above covers the whole API: a new endpoint must be added to ``operations``."""
    assert sorted(result.ok().label for result in api_schema.get_all_operations()) == sorted(operations())
