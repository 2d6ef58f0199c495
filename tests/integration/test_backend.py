"""The ML backend as it runs in the stack: uvicorn subprocess, real MLflow, real Label Studio.

Nothing is mocked. The backend serves version 1, a second version is registered and the
alias moved, and the same process (same pid) serves version 2 within its poll interval.
Label Studio accepts the backend with BASIC_AUTH (its /health and /setup calls pass),
refuses it with a wrong password, its own "Retrieve predictions" action stores a
prediction carrying our model_version on a task — first version 1, then version 2 — and
its "Start training" reaches /webhook and gets a 2xx. A body sent without Content-Length
(chunked) is held to the size limit on the bytes read, with the process's memory flat.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from labelloop.project import ensure_project
from labelloop.dev.stack import backend_server
from labelloop.spec import load_spec
from labelloop.dev.stack import free_port

from tests.unit.test_backend_app import HAM, SPAM, register_champion
from tests.secret_scan import secret

pytestmark = pytest.mark.integration
TOKEN = secret("backend-integration-token-0123456789")
AUTH = httpx.BasicAuth("labelloop", TOKEN)


def served_version(url: str) -> str | None:
    return httpx.get(f"{url}/health", timeout=5).json()["model_version"]


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.5)


def retrieve_predictions(client: Any, project_id: int, task_id: int) -> list[Any]:
    """Label Studio's Data Manager action "Retrieve predictions" for one task, then its predictions."""
    client.actions.create(id="retrieve_tasks_predictions", project=project_id,
                          selected_items={"all": False, "included": [task_id]})
    return list(client.predictions.list(task=task_id))


def test_backend_follows_the_alias_and_label_studio_uses_it(
        mlflow_server: Any, labelstudio: Any, labelstudio_hook: Any, make_spec: Any, session_dir: Any) -> None:
    spec_path = make_spec(model={"name": f"backend_it_{time.time_ns()}"})
    spec = load_spec(spec_path)
    name = spec.model.name
    first = register_champion(mlflow_server.url, name)

    backend = backend_server(session_dir / "backend-stack", free_port(), spec.name, TOKEN, mlflow_server.url,
                             projects_dir=spec_path.parent, poll_seconds=1)
    backend.start()
    try:
        pid = backend.process.pid
        wait_until(lambda: served_version(backend.url) == f"{name}:{first}", 60, "version 1")
        answer = httpx.post(f"{backend.url}/predict", json={"tasks": [{"id": 1, "data": {"text": SPAM}}]},
                            auth=AUTH, timeout=30).json()["results"][0]
        assert answer["model_version"] == f"{name}:{first}"
        assert answer["result"][0]["value"]["choices"] == ["spam"]
        assert httpx.post(f"{backend.url}/predict", json={"tasks": []}, timeout=30,
                          auth=httpx.BasicAuth("labelloop", "wrong-token-0123456789")).status_code == 401

        # Label Studio registers the backend: its /health and /setup calls carry Basic auth.
        client = labelstudio_hook.client
        project_id, _ = ensure_project(labelstudio_hook, spec)
        with pytest.raises(Exception, match="authentication parameters"):
            client.ml.create(url=backend.url, project=project_id, title="labelloop wrong password",
                             auth_method="BASIC_AUTH", basic_auth_user="labelloop",
                             basic_auth_pass="wrong-token-0123456789")
        ml_id = labelstudio_hook.ensure_ml_backend(project_id, backend.url, "labelloop champion", "labelloop", TOKEN)
        assert labelstudio_hook.ensure_ml_backend(project_id, backend.url, "labelloop champion", "labelloop",
                                                  TOKEN) == ml_id, "connected once"
        connected = client.ml.get(ml_id)
        assert (connected.state, connected.model_version) == ("CO", f"{name}:{first}")
        # Without the event webhook Label Studio adds for a new ML backend: imports do not send
        # their tasks to the backend (that made each import 2.5x slower).
        assert not [hook for hook in client.webhooks.list(project=str(project_id)) if backend.url in (hook.url or "")]

        imported = client.projects.import_tasks(project_id, request=[{"text": SPAM}, {"text": HAM}],
                                                return_task_ids=True)
        assert "/webhook" not in backend.log_path.read_text()
        task_id = imported.task_ids[0]
        predictions = retrieve_predictions(client, project_id, task_id)
        assert [(p.model_version, p.result[0]["value"]["choices"]) for p in predictions] == [
            (f"{name}:{first}", ["spam"])]

        # A new champion: same process, new model, within a few poll intervals.
        second = register_champion(mlflow_server.url, name, flip=True)
        wait_until(lambda: served_version(backend.url) == f"{name}:{second}", 30, "version 2")
        assert backend.process.pid == pid and backend.process.poll() is None
        predictions = retrieve_predictions(client, project_id, task_id)
        assert sorted((p.model_version, p.result[0]["value"]["choices"][0]) for p in predictions) == [
            (f"{name}:{first}", "spam"), (f"{name}:{second}", "ham")]
        assert client.ml.get(ml_id).model_version == f"{name}:{second}"
        # "Start training" reaches /webhook as START_TRAINING with Basic auth; nothing is trained here.
        client.ml.train(ml_id)
        assert '"POST /webhook HTTP/1.1" 200' in backend.log_path.read_text()
        assert client.ml.get(ml_id).state == "CO"
        versions = httpx.get(f"{backend.url}/versions", auth=AUTH, timeout=30).json()["versions"]
        assert versions == [f"{name}:{second}", f"{name}:{first}"]
    finally:
        backend.stop()


def test_a_chunked_oversized_body_gets_a_quick_413_and_memory_stays_flat(make_spec: Any, session_dir: Any) -> None:
    """80 MiB in chunked transfer encoding, no Content-Length (65 MiB took the old backend to
    19.7 GB of memory and no answer in 120 s): reading stops at the 64 MiB default limit."""
    import psutil

    spec_path = make_spec(model={"name": f"backend_it_{time.time_ns()}"})
    nowhere = f"http://127.0.0.1:{free_port()}"  # no registry: /predict would be a 503, never a 200
    backend = backend_server(session_dir / "backend-limits", free_port(), load_spec(spec_path).name, TOKEN,
                             nowhere, projects_dir=spec_path.parent)
    backend.start()
    try:
        process = psutil.Process(backend.process.pid)
        before = process.memory_info().rss
        peak = before
        sending = threading.Event()
        sending.set()

        def watch() -> None:
            nonlocal peak
            while sending.is_set():
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.01)

        def body() -> Iterator[bytes]:  # valid JSON: one task, then 80 MiB of whitespace
            yield b'{"tasks": [{"id": 1, "data": {"text": "hi"}}]'
            for _ in range(80):
                yield b" " * 1024 * 1024
            yield b"}"

        watcher = threading.Thread(target=watch)
        watcher.start()
        started = time.monotonic()
        try:
            response = httpx.post(f"{backend.url}/predict", content=body(), auth=AUTH, timeout=60,
                                  headers={"Content-Type": "application/json"})
        finally:
            elapsed = time.monotonic() - started
            sending.clear()
            watcher.join()
        after = process.memory_info().rss
        assert "content-length" not in response.request.headers
        assert response.status_code == 413, response.text
        assert "over the limit of 67108864 bytes (LABELLOOP_BACKEND_MAX_BODY_BYTES)" in response.json()["detail"]
        assert elapsed < 10, f"413 after {elapsed:.1f} s"
        mib = 1024 * 1024
        assert (peak - before) / mib < 100 and (after - before) / mib < 100, (
            f"RSS {before / mib:.0f} MiB before, peak {peak / mib:.0f}, after {after / mib:.0f}")
        assert httpx.get(f"{backend.url}/health", timeout=5).status_code == 200  # still serving
    finally:
        backend.stop()
