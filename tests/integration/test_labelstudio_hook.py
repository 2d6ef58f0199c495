"""LabelStudioHook against a real Label Studio server: both token kinds, paging, exactly-once import,
and against a closed port: an outage names Label Studio, the connection and the call."""

import json
import logging
import time

import pytest

from labelloop.hooks.labelstudio import LabelStudioError, LabelStudioHook, data_filter
from labelloop.dev.stack import free_port
from tests.secret_scan import secret

pytestmark = pytest.mark.integration

CONFIG = '<View><Text name="text" value="$text"/><Choices name="label" toName="text">' \
         '<Choice value="a"/><Choice value="b"/></Choices></View>'


def use_connection(monkeypatch, conn_id: str, host: str, token: str) -> LabelStudioHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                       json.dumps({"conn_type": "labelstudio", "host": host, "password": token}))
    return LabelStudioHook(labelstudio_conn_id=conn_id)


def test_legacy_token_and_personal_access_token(labelstudio, labelstudio_hook, monkeypatch) -> None:
    ok, message = labelstudio_hook.test_connection()
    assert ok and "admin@labelloop.local" in message
    # A personal access token is a JWT refresh token: the SDK exchanges it and sends Bearer.
    pat = labelstudio_hook.client.tokens.create().token
    assert pat.count(".") == 2
    pat_hook = use_connection(monkeypatch, "ls_pat", labelstudio.url, pat)
    assert pat_hook.test_connection()[0]
    assert not pat_hook.client._client_wrapper._tokens_client._use_legacy_token
    project, created = pat_hook.upsert_project("pat project", label_config=CONFIG)
    assert created and labelstudio_hook.find_project("pat project").id == project.id


def test_bad_token_and_unreachable_server_fail_clearly(labelstudio, monkeypatch) -> None:
    token = secret("bad-token-SECRET-0123456789")
    bad = use_connection(monkeypatch, "ls_bad", labelstudio.url, token)
    ok, message = bad.test_connection()
    assert not ok and "refused or is unreachable" in message and "401" in message
    with pytest.raises(Exception) as refused:
        bad.find_project("anything")
    assert "401" in str(refused.value)
    assert token not in message and token not in str(refused.value)  # the token is never echoed
    unreachable = use_connection(monkeypatch, "ls_down", "http://127.0.0.1:9", token)
    unreachable.max_retries = 0
    ok, message = unreachable.test_connection()
    assert not ok and "http://127.0.0.1:9 (connection 'ls_down')" in message and token not in message


def test_an_outage_names_label_studio_the_connection_and_the_call(monkeypatch, caplog) -> None:
    """A free port with nothing listening: the SDK used to retry ~70 s in silence, then raise a
    bare `ConnectError: [Errno 111] Connection refused` with no URL and no service name."""
    url = f"http://127.0.0.1:{free_port()}"
    hook = use_connection(monkeypatch, "ls_closed", url, "some-token-0123456789")
    hook.max_retries = 2
    client = hook.client  # built without a request: the SDK's import is not timed below
    for call, operation in ((lambda: hook.find_project("x"), "GET /api/projects/"),
                            (lambda: client.users.whoami(), "GET /api/current-user/whoami")):
        caplog.clear()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING), pytest.raises(LabelStudioError) as raised:
            call()
        elapsed = time.monotonic() - started
        message = str(raised.value)
        assert f"Label Studio at {url} (connection 'ls_closed'): {operation} failed after 3 attempts" in message
        assert "Connection refused" in message and "some-token" not in message
        assert 2 < elapsed < 10, f"failed after {elapsed:.1f} s (backoff 1 + 2 s)"
        warnings = [record.getMessage() for record in caplog.records
                    if record.levelno == logging.WARNING and "'ls_closed'" in record.getMessage()]
        assert len(warnings) == 2, warnings  # one per retry, each naming the call
        assert all(f"{operation} failed" in warning for warning in warnings)
        assert "retry 1 of 2" in warnings[0] and "retry 2 of 2" in warnings[1]


def test_missing_connection_fields(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_LS_EMPTY", json.dumps({"conn_type": "labelstudio", "host": "x"}))
    with pytest.raises(Exception, match="needs host .* and password"):
        LabelStudioHook(labelstudio_conn_id="ls_empty").client


def test_paging_and_exactly_once_import(labelstudio_hook) -> None:
    project, _ = labelstudio_hook.upsert_project("paging", label_config=CONFIG)
    tasks = [{"data": {"text": f"t{i}", "key": f"k{i}", "batch": "b1"}} for i in range(250)]
    first = labelstudio_hook.import_batch(project.id, tasks, "b1", key_field="key", batch_field="batch")
    again = labelstudio_hook.import_batch(project.id, tasks, "b1", key_field="key", batch_field="batch")
    assert first == again and len(set(first.values())) == 250
    listed = list(labelstudio_hook.iter_tasks(project.id, page_size=100))
    assert len(listed) == 250 == labelstudio_hook.task_count(project.id)
    selected = list(labelstudio_hook.iter_tasks(project.id, query=data_filter("key", "k7")))
    assert [task.data["text"] for task in selected] == ["t7"]
    labelstudio_hook.delete_project(project.id)


def test_concurrent_creates_leave_one_project(labelstudio_hook) -> None:
    """Label Studio titles are not unique: DAGs that create the same project at once (a scheduled
    ingest and the setup DAG, say) must still end with exactly one. Eight at once make Label
    Studio on SQLite answer some creates with a 500 (database locked) or create twice."""
    import threading
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    title = f"race {uuid.uuid4().hex[:8]}"
    start = threading.Barrier(8)
    hooks = [LabelStudioHook() for _ in range(8)]
    for hook in hooks:
        hook.client.projects.list(page_size=1)  # connected before the race starts

    def create(hook: LabelStudioHook) -> int:
        start.wait()
        return hook.upsert_project(title, label_config=CONFIG)[0].id

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(create, hooks))
    remaining = [p.id for p in labelstudio_hook.client.projects.list(title=title) if p.title == title]
    assert len(remaining) == 1 and set(ids) == set(remaining)
