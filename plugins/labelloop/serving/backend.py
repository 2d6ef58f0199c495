"""Pre-label ML backend: Label Studio 1.23's ML backend protocol serving the registry's champion.

Label Studio calls (see ``label_studio/ml/api_connector.py``):

- ``GET /health`` when the backend is added and before every predict batch (1 s timeout);
- ``POST /setup`` right after, also before every batch: it must stay cheap, so it only reads
  the model version the background poller last loaded;
- ``POST /predict {tasks, project, label_config, params}``: one result per task, in order;
- ``POST /webhook`` for ``START_TRAINING`` (training is the retrain DAG's job: nothing runs here);
- ``GET /versions``: the registered versions of the spec's model.

Every endpoint but ``/health`` needs credentials: HTTP Basic (what Label Studio sends when
the backend is added with ``auth_method=BASIC_AUTH``; user ``labelloop`` by default, password
= the token) or ``Authorization: Bearer <token>`` for other callers. ``/health`` answers
without credentials so probes work, but wrong credentials sent to it get a 401, so Label
Studio reports a bad password when the backend is added.

Bad requests get a 4xx naming the problem: 400 malformed JSON, 401 credentials, 413 too many
tasks or too large a body (counted on the bytes read, so chunked bodies are held to it too),
422 wrong fields / no tasks / a task without the object field / a text over the spec's
``max_length`` / a label config that is not the spec's. With no champion yet, ``/predict`` answers 503 (Label
Studio then stores no prediction) while ``/health`` and ``/setup`` stay up, so the backend
can be registered before the first model exists.

Run: ``LABELLOOP_BACKEND_TOKEN=... MLFLOW_TRACKING_URI=http://... \\
python -m labelloop.serving.backend --project sms_spam --host 127.0.0.1 --port 9090``
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labelloop import settings as labelloop_settings
from labelloop.model.prelabel import predictions, task_type_of
from labelloop.serving.champion import Champion
from labelloop.spec import LabelingConfig, ProjectSpec, load_specs

log = logging.getLogger(__name__)
MODEL_CLASS = "LabelloopChampion"
TOKEN_ENV = "LABELLOOP_BACKEND_TOKEN"
USER_ENV = "LABELLOOP_BACKEND_USER"
MAX_TASKS_ENV = "LABELLOOP_BACKEND_MAX_TASKS"
MAX_BODY_ENV = "LABELLOOP_BACKEND_MAX_BODY_BYTES"
POLL_ENV = "LABELLOOP_BACKEND_POLL_SECONDS"
DEFAULT_USER = "labelloop"
MIN_TOKEN_LENGTH = 16
#: Texts featurized at once: 500,000 characters cost ~20 MiB (the whole of 2,000 texts of
#: 5,000 characters at once cost 418 MiB), and chunking makes it no slower.
PREDICT_CHUNK_CHARS = 500_000


class SettingsError(ValueError):
    """The backend cannot start as configured; the message says what to set."""


@dataclass(frozen=True)
class Settings:
    """Everything the app needs; ``from_env`` reads it the way the CLI and compose pass it."""

    spec: ProjectSpec
    tracking_uri: str
    token: str
    user: str = DEFAULT_USER
    # Label Studio's "Retrieve predictions" sends every selected task in ONE request.
    max_tasks: int = 10_000
    max_body_bytes: int = 64 * 1024 * 1024
    poll_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.spec.model is None:
            raise SettingsError(f"project {self.spec.name!r} has no `model:` section in its spec, "
                                f"so there is no registered model to serve")
        if len(self.token) < MIN_TOKEN_LENGTH:
            raise SettingsError(f"{TOKEN_ENV} must be at least {MIN_TOKEN_LENGTH} characters "
                                f"(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        if self.max_tasks < 1 or self.max_body_bytes < 1:
            raise SettingsError("max_tasks and max_body_bytes must be positive")

    @classmethod
    def from_env(cls, project: str, projects_dir: Path | None = None, tracking_uri: str | None = None,
                 env: dict[str, str] | None = None) -> Settings:
        """Spec by name; tracking URI from the argument, MLFLOW_TRACKING_URI or the mlflow_default connection."""
        env = dict(os.environ if env is None else env)
        specs = {spec.name: spec for spec in load_specs(projects_dir)}
        if project not in specs:
            raise SettingsError(f"no project spec named {project!r} in {projects_dir or labelloop_settings.projects_dir()}; "
                                f"known: {sorted(specs)}")
        uri = tracking_uri or env.get("MLFLOW_TRACKING_URI") or _connection_uri()
        if not uri:
            raise SettingsError("no MLflow tracking URI: pass --tracking-uri, set MLFLOW_TRACKING_URI or "
                                f"the Airflow connection {labelloop_settings.MLFLOW_CONN_ID}")
        token = env.get(TOKEN_ENV, "")
        if not token:
            raise SettingsError(f"set {TOKEN_ENV}: every call but /health needs it (Label Studio sends it "
                                f"as the Basic auth password)")
        try:
            max_tasks = int(env.get(MAX_TASKS_ENV, cls.max_tasks))
            max_body_bytes = int(env.get(MAX_BODY_ENV, cls.max_body_bytes))
            poll_seconds = float(env.get(POLL_ENV, cls.poll_seconds))
        except ValueError as error:
            raise SettingsError(f"bad number in {MAX_TASKS_ENV}, {MAX_BODY_ENV} or {POLL_ENV}: {error}") from None
        return cls(spec=specs[project], tracking_uri=uri, token=token, user=env.get(USER_ENV, DEFAULT_USER),
                   max_tasks=max_tasks, max_body_bytes=max_body_bytes, poll_seconds=poll_seconds)


def _connection_uri() -> str | None:
    """The Airflow connection's URI (env AIRFLOW_CONN_MLFLOW_DEFAULT works without a metadata DB)."""
    from labelloop.model.prelabel import tracking_uri

    try:
        return tracking_uri()
    except Exception as error:  # no Airflow configuration at all: the caller explains what to set
        log.info("no MLflow connection from Airflow: %s", error)
        return None


# Request bodies -------------------------------------------------------------------------------
# Unknown top-level keys are accepted: Label Studio versions add fields, and a backend that
# broke on them would break every project at once.


class Task(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int | str | None = None
    data: dict[str, Any]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[Task]
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    project: str | int | None = None
    label_config: str | None = Field(None, alias="schema")
    hostname: str | None = None
    access_token: str | None = None  # the project owner's Label Studio token: never logged
    extra_params: dict[str, Any] | None = None


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    action: str


# Auth -----------------------------------------------------------------------------------------


def credentials_problem(settings: Settings, header: str | None) -> str | None:
    """None when the Authorization header carries the token, else why not (constant-time compare)."""
    if not header:
        return "credentials required: HTTP Basic (Label Studio's BASIC_AUTH) or Authorization: Bearer <token>"
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        ok = hmac.compare_digest(value.encode(), settings.token.encode())
    elif scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "malformed Basic credentials"
        ok = hmac.compare_digest(user.encode(), settings.user.encode()) & hmac.compare_digest(
            password.encode(), settings.token.encode())
    else:
        return f"unsupported Authorization scheme {scheme!r}: use Basic or Bearer"
    return None if ok else "wrong credentials"


class Guard:
    """Credentials and body size before routing: an unauthenticated caller learns nothing else.

    The body is read here, counting bytes as they arrive, and the app gets it whole: a
    ``Content-Length`` can be left out (chunked transfer encoding), so only the bytes actually
    read can be held to the limit. Reading stops at the limit, so memory stays bounded.
    Pure ASGI rather than ``@app.middleware("http")``, which costs a task and a stream per request.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        header = headers.get("authorization")
        problem = None
        if scope["path"] != "/health" or header:
            problem = credentials_problem(self.settings, header)
        if problem:
            response = JSONResponse({"detail": problem}, status_code=401,
                                    headers={"WWW-Authenticate": 'Basic realm="labelloop", Bearer'})
            return await response(scope, receive, send)
        limit = self.settings.max_body_bytes
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return await self.too_large(f"{int(length)} bytes")(scope, receive, send)
        try:
            body = await read_body(receive, limit)
        except BodyTooLarge:
            return await self.too_large(f"more than {limit} bytes")(scope, receive, send)
        if body is None:  # the client went away: nobody to answer
            return None
        await self.app(scope, replay(body, receive), send)

    def too_large(self, size: str) -> JSONResponse:
        """413, and close the connection rather than read (and discard) the rest of the body."""
        return JSONResponse({"detail": f"request body of {size} is over the limit of "
                                       f"{self.settings.max_body_bytes} bytes ({MAX_BODY_ENV}); send fewer tasks"},
                            status_code=413, headers={"Connection": "close"})


class BodyTooLarge(Exception):
    """More bytes arrived than the limit allows."""


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client disconnected; BodyTooLarge past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then waits on the real one (disconnects)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


# App ------------------------------------------------------------------------------------------


def create_app(settings: Settings, champion: Champion | None = None) -> FastAPI:
    """The backend for one project spec; the champion poller runs while the app is up."""
    spec = settings.spec
    assert spec.model is not None  # Settings checked it
    champion = champion or Champion(spec.model.name, settings.tracking_uri, settings.poll_seconds,
                                    flavor=task_type_of(spec).learner().flavor)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        champion.start()
        yield
        champion.stop()

    app = FastAPI(title=f"labelloop pre-label backend: {spec.name}", lifespan=lifespan)
    app.state.settings = settings
    app.state.champion = champion

    app.add_middleware(Guard, settings=settings)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        if any(problem["type"] == "json_invalid" for problem in problems):
            return JSONResponse({"detail": f"malformed JSON: {problems[0].get('ctx', {}).get('error', '')}"},
                                status_code=400)
        return JSONResponse({"detail": describe(problems)}, status_code=422)

    @app.get("/health")
    def health() -> dict[str, Any]:
        loaded = champion.current
        health = {"status": "UP", "model_class": MODEL_CLASS, "model_version": loaded.model_version if loaded else None}
        if champion.trouble:  # the registry failed: the model above (if any) is the last one loaded
            health["registry_error"] = champion.trouble
        return health

    @app.post("/setup")
    def setup(body: SetupRequest) -> dict[str, Any]:
        if body.label_config:
            check_label_config(spec, body.label_config)
        loaded = champion.current
        if loaded is None:
            return {"model_version": None, "message": champion.problem}
        return {"model_version": loaded.model_version}

    @app.post("/predict")
    def predict(body: PredictRequest) -> JSONResponse:
        rows = task_rows(spec, body.tasks, settings.max_tasks)
        loaded = champion.current  # one model for the whole batch, even if the alias moves now
        if loaded is None:
            raise HTTPException(503, f"cannot predict: {champion.problem}")
        results = [result for chunk in chunks_of_text(rows, spec.object_field, PREDICT_CHUNK_CHARS)
                   for result in predictions(spec, loaded.model, loaded.model_version, chunk)]
        return JSONResponse({"results": results, "model_version": loaded.model_version})

    @app.post("/webhook")
    def webhook(body: WebhookRequest) -> dict[str, Any]:
        if body.action == "START_TRAINING":
            message = (f"training does not run in the ML backend: the Airflow DAG {spec.dag_prefix}__retrain "
                       f"trains on audited consensus labels and moves {champion.uri} if the model is better")
        else:
            message = f"the ML backend takes no action on {body.action}"
        return {"status": "ok", "action": body.action, "done": "nothing", "message": message}

    @app.get("/versions")
    def versions() -> dict[str, Any]:
        from mlflow.exceptions import MlflowException

        try:
            found = champion.client().search_model_versions(f"name = '{champion.name}'")
        except MlflowException as error:
            raise HTTPException(503, f"the registry at {settings.tracking_uri} failed: {error.message}") from None
        numbers = sorted((int(version.version) for version in found), reverse=True)
        return {"versions": [f"{champion.name}:{number}" for number in numbers]}

    return app


def task_rows(spec: ProjectSpec, tasks: list[Task], max_tasks: int) -> list[dict[str, Any]]:
    """The tasks' data rows, or a 4xx saying which tasks are unusable."""
    if not tasks:
        raise HTTPException(422, "no tasks: send {\"tasks\": [{\"data\": {...}}, ...]} with at least one task")
    if len(tasks) > max_tasks:
        raise HTTPException(413, f"{len(tasks)} tasks in one request; at most {max_tasks} "
                                 f"({MAX_TASKS_ENV}): send smaller batches")
    field = spec.object_field  # the key labelloop.model.prelabel.predictions reads
    bad = [f"#{index} (id {task.id})" for index, task in enumerate(tasks)
           if not isinstance(task.data.get(field), str)]
    if bad:
        raise HTTPException(422, f"{len(bad)} of {len(tasks)} tasks have no text in data.{field}: {shown(bad)}")
    longest, source = max_text_length(spec)
    long = [f"#{index} (id {task.id}, {len(task.data[field])} characters)" for index, task in enumerate(tasks)
            if len(task.data[field]) > longest]
    if long:
        raise HTTPException(422, f"{len(long)} of {len(tasks)} tasks have a data.{field} longer than {longest} "
                                 f"characters ({source} of project spec {spec.name!r}): {shown(long)}")
    return [task.data for task in tasks]


def shown(items: list[str]) -> str:
    """The first five, and how many more."""
    return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def max_text_length(spec: ProjectSpec) -> tuple[int, str]:
    """The longest text predicted on, and the spec field it comes from.

    Featurizing costs ~400 bytes per character (character n-grams: one 3 MiB text took 1.1 GiB).
    The field's ``max_length`` is what ingest lets through; without one, no record ingest
    accepts (``source.max_record_bytes``, 64 KiB by default) can hold a longer text.
    """
    field = spec.source.fields.get(spec.object_field)
    if field is not None and field.max_length is not None:
        return field.max_length, f"source.fields.{spec.object_field}.max_length"
    return spec.source.max_record_bytes, "source.max_record_bytes"


def chunks_of_text(rows: list[dict[str, Any]], field: str, max_chars: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive rows, at most ``max_chars`` of text per chunk (one row at least): the features
    of all texts predicted together are in memory at once."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        if chunk and size + len(row[field]) > max_chars:
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += len(row[field])
    if chunk:
        yield chunk


def check_label_config(spec: ProjectSpec, xml: str) -> None:
    """422 unless the project's label config has the spec's control and labels."""
    try:
        config = LabelingConfig.parse(xml, spec.control_name, "the project's label config")
    except ValueError as error:
        raise HTTPException(422, f"{error}; this backend serves project spec {spec.name!r}") from None
    if sorted(config.labels) != sorted(spec.labels):
        raise HTTPException(422, f"the project's control {spec.control_name!r} offers {config.labels}, "
                                 f"but project spec {spec.name!r} predicts {spec.labels}")


def describe(problems: Any) -> str:
    """Pydantic's errors as one line: ``field tasks.0.data: Field required; ...``."""
    parts = []
    for problem in problems:
        where = ".".join(str(part) for part in problem["loc"] if part != "body") or "body"
        parts.append(f"field {where}: {problem['msg']}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labelloop.serving.backend",
                                     description="Label Studio ML backend serving models:/<name>@champion.")
    parser.add_argument("--project", required=True, help="project spec name, e.g. sms_spam")
    parser.add_argument("--projects-dir", type=Path, help="folder of specs (default: LABELLOOP_PROJECTS_DIR)")
    parser.add_argument("--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI, then mlflow_default)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env(args.project, args.projects_dir, args.tracking_uri)
    except (SettingsError, ValueError) as error:  # SpecError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(create_app(settings), host=args.host, port=args.port, workers=1, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
