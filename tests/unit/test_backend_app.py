"""The ML backend app in-process (FastAPI TestClient) against a REAL MLflow registry.

Nothing is mocked: the models are tiny real scikit-learn pipelines, logged and registered
in the session's MLflow server (the ``mlflow_server`` fixture, started once, ~20 s), and the
backend's poller reads the real ``@champion`` alias. Only the transport differs from
production: requests go through TestClient instead of a socket (the integration test
covers uvicorn and Label Studio).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from labelloop.serving.backend import MODEL_CLASS, Settings, SettingsError, chunks_of_text, create_app
from labelloop.spec import ProjectSpec, load_spec
from labelloop.dev.stack import free_port
from tests.secret_scan import secret

TOKEN = secret("backend-test-token-0123456789")
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SPAM = "WIN a FREE prize now, claim your cash"
HAM = "see you at lunch, thanks"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def register_champion(tracking_uri: str, name: str, flip: bool = False) -> str:
    """Train a tiny text classifier, register it and point @champion at it; returns the version.

    ``flip`` swaps the labels, so a second version predicts visibly differently.
    """
    import mlflow
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = ["win a free prize now", "free cash, claim your prize", "urgent: win money now",
             "see you at lunch", "call me when you are home", "thanks for dinner, see you"]
    labels = ["spam"] * 3 + ["ham"] * 3
    if flip:
        labels = [{"spam": "ham", "ham": "spam"}[label] for label in labels]
    model = make_pipeline(TfidfVectorizer(), LogisticRegression(C=100)).fit(texts, labels)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("labelloop-backend-tests")
    with mlflow.start_run(), warnings.catch_warnings():
        # skops (MLflow's default, safe format) probes every imported module: with Airflow
        # loaded that is ~1,000 DeprecatedImportWarnings per save.
        warnings.simplefilter("ignore")
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                        pip_requirements=["scikit-learn"])
    version = str(info.registered_model_version)
    mlflow.MlflowClient(tracking_uri).set_registered_model_alias(name, "champion", version)
    return version


@pytest.fixture
def spec(make_spec: Any) -> ProjectSpec:
    """The SMS spec with a model name of its own, so tests do not share registry entries."""
    return load_spec(make_spec(model={"name": f"backend_test_{uuid.uuid4().hex[:10]}"}))


@pytest.fixture
def serve(mlflow_server: Any) -> Iterator[Any]:
    """Start an app (poller included) for a spec; waits for the first registry check."""
    clients: list[TestClient] = []

    def start(spec: ProjectSpec, **overrides: Any) -> TestClient:
        settings = Settings(spec=spec, tracking_uri=overrides.pop("tracking_uri", mlflow_server.url),
                            token=TOKEN, poll_seconds=overrides.pop("poll_seconds", 0.3), **overrides)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        assert client.app.state.champion.checked.wait(60), "the first registry check never finished"
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def tasks(*texts: str) -> dict[str, Any]:
    return {"tasks": [{"id": index + 1, "data": {"text": text}} for index, text in enumerate(texts)]}


def wait_for_version(client: TestClient, expected: str | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/health").json()["model_version"] != expected:
        assert time.monotonic() < deadline, f"backend never served {expected}"
        time.sleep(0.2)


# Serving the champion -------------------------------------------------------------------------


def test_without_champion_health_and_setup_answer_but_predict_is_503(spec: ProjectSpec, serve: Any) -> None:
    client = serve(spec)
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "UP", "model_class": MODEL_CLASS, "model_version": None}
    setup = client.post("/setup", json={"project": "1.1", "schema": spec.labeling_config_xml}, headers=BEARER)
    assert setup.status_code == 200 and setup.json()["model_version"] is None
    assert "no champion yet" in setup.json()["message"]
    response = client.post("/predict", json=tasks(HAM), headers=BEARER)
    assert response.status_code == 503
    assert f"models:/{spec.model.name}@champion does not exist" in response.json()["detail"]


def test_predicts_with_the_champion_in_task_order(spec: ProjectSpec, serve: Any, mlflow_server: Any) -> None:
    version = register_champion(mlflow_server.url, spec.model.name)
    client = serve(spec)
    model_version = f"{spec.model.name}:{version}"
    setup = client.post("/setup", json={"project": "1.1", "schema": spec.labeling_config_xml,
                                        "hostname": "http://ls", "access_token": "x", "extra_params": None},
                        headers=basic("labelloop", TOKEN))
    assert setup.json() == {"model_version": model_version}

    response = client.post("/predict", json={**tasks(SPAM, HAM, SPAM), "project": "1.1",
                                             "label_config": spec.labeling_config_xml,
                                             "params": {"login": None, "password": None, "context": None}},
                           headers=basic("labelloop", TOKEN))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["result"][0]["value"]["choices"] for r in results] == [["spam"], ["ham"], ["spam"]]
    for result in results:
        assert result["model_version"] == model_version
        assert 0.5 <= result["score"] <= 1.0
        assert result["result"][0] | {"value": None} == {
            "from_name": "label", "to_name": "text", "type": "choices", "value": None}
    assert client.get("/versions", headers=BEARER).json() == {"versions": [model_version]}


def test_a_moved_alias_is_served_without_restart_and_a_removed_one_stops_serving(
        spec: ProjectSpec, serve: Any, mlflow_server: Any) -> None:
    import mlflow

    first = register_champion(mlflow_server.url, spec.model.name)
    client = serve(spec)
    answer = client.post("/predict", json=tasks(SPAM), headers=BEARER).json()["results"][0]
    assert (answer["model_version"], answer["result"][0]["value"]["choices"]) == (f"{spec.model.name}:{first}", ["spam"])

    second = register_champion(mlflow_server.url, spec.model.name, flip=True)
    wait_for_version(client, f"{spec.model.name}:{second}")
    answer = client.post("/predict", json=tasks(SPAM), headers=BEARER).json()["results"][0]
    assert (answer["model_version"], answer["result"][0]["value"]["choices"]) == (f"{spec.model.name}:{second}", ["ham"])
    assert client.get("/versions", headers=BEARER).json()["versions"] == [
        f"{spec.model.name}:{second}", f"{spec.model.name}:{first}"]

    mlflow.MlflowClient(mlflow_server.url).delete_registered_model_alias(spec.model.name, "champion")
    wait_for_version(client, None)
    assert client.post("/predict", json=tasks(SPAM), headers=BEARER).status_code == 503


def test_unreachable_registry_keeps_health_up_and_predict_says_why(
        spec: ProjectSpec, serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in a second, not minutes
    client = serve(spec, tracking_uri=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert client.get("/health").json()["status"] == "UP"
    response = client.post("/predict", json=tasks(HAM), headers=BEARER)
    assert response.status_code == 503
    assert "unreachable" in response.json()["detail"] or "failed" in response.json()["detail"]


# Credentials ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/predict", tasks(HAM)), ("POST", "/setup", {"project": "1"}),
    ("POST", "/webhook", {"action": "START_TRAINING"}), ("GET", "/versions", None),
])
@pytest.mark.parametrize("headers", [
    {}, basic("labelloop", "wrong-token-0123456789"), basic("someone", TOKEN), {"Authorization": "Bearer nope"},
    {"Authorization": "Basic !!!not-base64"}, {"Authorization": f"Token {TOKEN}"},
], ids=["none", "wrong-password", "wrong-user", "wrong-bearer", "malformed-basic", "other-scheme"])
def test_every_endpoint_but_health_needs_the_token(
        spec: ProjectSpec, serve: Any, method: str, path: str, body: Any, headers: dict[str, str]) -> None:
    client = serve(spec)
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.json()["detail"]


def test_good_credentials_and_health(spec: ProjectSpec, serve: Any) -> None:
    client = serve(spec)
    for headers in (BEARER, basic("labelloop", TOKEN)):
        assert client.post("/webhook", json={"action": "PING"}, headers=headers).status_code == 200
    assert client.get("/health").status_code == 200  # probes need no credentials ...
    assert client.get("/health", headers=basic("labelloop", "wrong-token-0123456789")).status_code == 401  # ... but wrong ones fail
    assert client.get("/health", headers=BEARER).status_code == 200


def test_settings_refuse_a_short_token(spec: ProjectSpec) -> None:
    with pytest.raises(SettingsError, match="at least 16"):
        Settings(spec=spec, tracking_uri="http://x", token="short")


# Bad requests: a 4xx with a message, never a 500 ----------------------------------------------


@pytest.mark.parametrize("body,status,message", [
    (b"{not json", 400, "malformed JSON"),
    (b"", 422, "field body: Field required"),
    (json.dumps([{"data": {"text": HAM}}]).encode(), 422, "valid dictionary"),
    (json.dumps({"task": [{"data": {"text": HAM}}]}).encode(), 422, "field tasks: Field required"),
    (json.dumps({"tasks": []}).encode(), 422, "no tasks"),
    (json.dumps({"tasks": "text"}).encode(), 422, "field tasks: Input should be a valid list"),
    (json.dumps({"tasks": [{"id": 1, "text": HAM}]}).encode(), 422, "field tasks.0.data: Field required"),
    (json.dumps({"tasks": [{"id": 1, "data": {"text": HAM}}, {"id": 2, "data": {"body": HAM}}]}).encode(),
     422, "1 of 2 tasks have no text in data.text: #1 (id 2)"),
    (json.dumps({"tasks": [{"id": 7, "data": {"text": None}}]}).encode(), 422, "#0 (id 7)"),
    (json.dumps({"tasks": [{"id": 7, "data": {"text": 12}}]}).encode(), 422, "no text in data.text"),
    (json.dumps(tasks(*[HAM] * 6)).encode(), 413, "6 tasks in one request; at most 5"),
], ids=["malformed", "empty", "list", "wrong-field", "no-tasks", "tasks-not-list", "no-data",
        "no-object-field", "null-text", "number-text", "too-many"])
def test_bad_predict_requests_get_a_clear_4xx(
        spec: ProjectSpec, serve: Any, mlflow_server: Any, body: bytes, status: int, message: str) -> None:
    client = serve(spec, max_tasks=5)
    response = client.post("/predict", content=body, headers={**BEARER, "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_oversized_body_is_413_before_parsing(spec: ProjectSpec, serve: Any) -> None:
    client = serve(spec, max_body_bytes=1000)
    response = client.post("/predict", json=tasks("x" * 2000), headers=BEARER)
    assert response.status_code == 413
    assert "over the limit of 1000" in response.json()["detail"]


def test_a_chunked_body_is_held_to_the_limit_on_the_bytes_read(spec: ProjectSpec, serve: Any) -> None:
    """No Content-Length (chunked transfer encoding): the guard counts what arrives."""
    client = serve(spec, max_body_bytes=1000)
    headers = {**BEARER, "Content-Type": "application/json"}
    body = json.dumps(tasks("x" * 2000)).encode()
    response = client.post("/predict", content=iter([body[:600], body[600:]]), headers=headers)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert "request body of more than 1000 bytes is over the limit of 1000" in response.json()["detail"]
    small = client.post("/predict", content=iter([json.dumps(tasks(HAM)).encode()]), headers=headers)
    assert small.status_code == 503, small.text  # read whole and parsed: no champion in this registry yet


@pytest.mark.parametrize("fields,longest,source", [
    ({"text": {"type": "string", "max_length": 5000}}, 5000, "source.fields.text.max_length"),
    ({"text": {"type": "string"}}, 65536, "source.max_record_bytes"),
], ids=["field-max-length", "record-limit"])
def test_a_text_over_the_specs_length_cap_is_422_naming_the_limit(
        make_spec: Any, serve: Any, fields: dict[str, Any], longest: int, source: str) -> None:
    spec = load_spec(make_spec(source={"fields": fields}, model={"name": f"backend_test_{uuid.uuid4().hex[:10]}"}))
    client = serve(spec)
    response = client.post("/predict", json=tasks(HAM, "x" * (longest + 1)), headers=BEARER)
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == (
        f"1 of 2 tasks have a data.text longer than {longest} characters ({source} of project spec "
        f"{spec.name!r}): #1 (id 2, {longest + 1} characters)")
    assert client.post("/predict", json=tasks("x" * longest), headers=BEARER).status_code == 503  # at the cap: accepted


def test_texts_are_predicted_in_chunks_of_bounded_size() -> None:
    rows = [{"text": "x" * size} for size in (40, 30, 50, 200, 10)]
    sizes = [[len(row["text"]) for row in chunk] for chunk in chunks_of_text(rows, "text", max_chars=100)]
    assert sizes == [[40, 30], [50], [200], [10]]  # order kept; a long text goes alone


def test_setup_rejects_a_label_config_that_is_not_the_specs(spec: ProjectSpec, serve: Any) -> None:
    client = serve(spec)
    other = '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text"><Choice value="pos"/><Choice value="neg"/></Choices></View>'
    response = client.post("/setup", json={"project": "1.1", "schema": other}, headers=BEARER)
    assert response.status_code == 422 and "no control named 'label'" in response.json()["detail"]
    relabeled = spec.labeling_config_xml.replace('"spam"', '"junk"')
    response = client.post("/setup", json={"project": "1.1", "schema": relabeled}, headers=BEARER)
    assert response.status_code == 422 and "['ham', 'junk']" in response.json()["detail"]
    response = client.post("/setup", json={"project": "1.1", "schema": "<View"}, headers=BEARER)
    assert response.status_code == 422 and "not well-formed XML" in response.json()["detail"]


def test_webhook_accepts_training_requests_and_runs_nothing(spec: ProjectSpec, serve: Any) -> None:
    client = serve(spec)
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}, headers=BEARER)
    assert response.status_code == 200
    assert response.json()["done"] == "nothing"
    assert f"{spec.dag_prefix}__retrain" in response.json()["message"]
    assert client.post("/webhook", json={"project": {"id": 1}}, headers=BEARER).status_code == 422
    assert client.post("/webhook", content=b"[", headers={**BEARER, "Content-Type": "application/json"}).status_code == 400


def test_unknown_paths_and_methods_are_4xx(spec: ProjectSpec, serve: Any) -> None:
    client = serve(spec)
    assert client.get("/predict", headers=BEARER).status_code == 405
    assert client.get("/nothing", headers=BEARER).status_code == 404
    assert client.get("/nothing").status_code == 401


def test_settings_from_env_find_the_spec_and_need_a_token(spec: ProjectSpec) -> None:
    folder = Path(spec.spec_path).parent
    env = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "LABELLOOP_BACKEND_TOKEN": TOKEN,
           "LABELLOOP_BACKEND_MAX_TASKS": "50"}
    settings = Settings.from_env(spec.name, folder, env=env)
    assert (settings.tracking_uri, settings.max_tasks, settings.user) == ("http://mlflow:5000", 50, "labelloop")
    with pytest.raises(SettingsError, match="LABELLOOP_BACKEND_TOKEN"):
        Settings.from_env(spec.name, folder, env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    with pytest.raises(SettingsError, match="no project spec named 'nope'"):
        Settings.from_env("nope", folder, env=env)
