"""Session-wide test setup: an isolated Airflow home, and real servers started once.

Servers bind to 127.0.0.1 on free ports and are stopped at the end of the session:
Label Studio (its own virtualenv, as in production), an S3 API server (moto's server,
not the in-process mock, which breaks ObjectStoragePath), and MLflow when a test asks.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.secret_scan import secret

# Before anything imports airflow: a private home, SQLite, no examples.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="labelloop-tests-"))
os.environ["AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "false"
os.environ["LABELLOOP_STATE_DIR"] = str(_SESSION_DIR / "state")
REPO = Path(__file__).resolve().parents[1]
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
SMS = REPO / "include" / "demo" / "sms-spam" / "messages.jsonl"
TOKEN = secret("labelloop-test-token-0123456789abcdef")


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated SQLite metadata DB, needed by dag.test()."""
    from airflow.utils.db import resetdb

    resetdb()


@pytest.fixture(scope="session")
def labelstudio(session_dir: Path) -> Iterator[Any]:
    """A real Label Studio server; the Airflow connection points at it."""
    from labelloop.settings import LABELSTUDIO_CONN_ID
    from labelloop.dev.stack import free_port, labelstudio_server

    server = labelstudio_server(session_dir / "stack", free_port(), token=TOKEN).start()
    os.environ[f"AIRFLOW_CONN_{LABELSTUDIO_CONN_ID.upper()}"] = json.dumps(
        {"conn_type": "labelstudio", "host": server.url, "password": TOKEN})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 API server on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    from labelloop.settings import AWS_CONN_ID

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ[f"AIRFLOW_CONN_{AWS_CONN_ID.upper()}"] = json.dumps({
        "conn_type": "aws", "login": "testing", "password": secret("s3-secret-key-of-the-tests-0123456789"),
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    })
    yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A fresh bucket per test, created through the Amazon provider's S3Hook."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    name = f"labelloop-{uuid.uuid4().hex[:12]}"
    S3Hook(aws_conn_id="aws_default").create_bucket(bucket_name=name)
    return name


@pytest.fixture
def labelstudio_hook(labelstudio: Any) -> Any:
    from labelloop.hooks.labelstudio import LabelStudioHook

    return LabelStudioHook()


@pytest.fixture
def run_dag(airflow_db: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run one of a spec's DAGs with dag.test(); the DAG processor sees only that spec."""

    def run(spec_path: Path, kind: str, **test_kwargs: Any) -> Any:
        from labelloop import factory
        from labelloop.spec import load_spec

        monkeypatch.setenv("LABELLOOP_PROJECTS_DIR", str(spec_path.parent))
        dag = getattr(factory, f"{kind}_dag")(load_spec(spec_path))
        return dag.test(**test_kwargs)

    return run


@pytest.fixture
def make_spec(tmp_path: Path) -> Any:
    """Write a spec like include/projects/sms_spam.yaml with a unique name, title and storage."""

    def make(source_uri: str | None = None, storage_uri: str | None = None, **overrides: Any) -> Path:
        raw = yaml.safe_load((REPO / "include" / "projects" / "sms_spam.yaml").read_text())
        name = f"t_{uuid.uuid4().hex[:10]}"
        raw.update(name=name, title=f"test {name}",
                   labeling_config=str(REPO / "include" / raw["labeling_config"]),
                   guidelines=str(REPO / "include" / raw["guidelines"]),
                   storage_uri=storage_uri or f"file://{tmp_path / 'store'}")
        raw["source"]["uri"] = source_uri or f"file://{tmp_path / 'raw'}/"
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        folder = tmp_path / "projects"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return make


@pytest.fixture(scope="session")
def mlflow_server(session_dir: Path) -> Iterator[Any]:
    """A real MLflow tracking + registry server; the Airflow connection and MLFLOW_TRACKING_URI point at it."""
    from labelloop.settings import MLFLOW_CONN_ID
    from labelloop.dev.stack import free_port, mlflow_server as make_mlflow_server

    server = make_mlflow_server(session_dir / "mlflow-stack", free_port()).start()
    os.environ[f"AIRFLOW_CONN_{MLFLOW_CONN_ID.upper()}"] = json.dumps({"conn_type": "http", "host": server.url})
    os.environ["MLFLOW_TRACKING_URI"] = server.url
    yield server
    server.stop()


@pytest.fixture(scope="module")
def production_stack(session_dir: Path) -> Iterator[Any]:
    """The production profile (labelloop.dev.production), started once for its test module and stopped
    after it (its eleven processes hold ~4 GB the other tests need); its databases dropped.

    Where Postgres or Redis is missing this fails, never skips: the StackError says how to start them.
    """
    from labelloop.dev.production import ProductionProfile

    projects = session_dir / "production-projects"
    projects.mkdir()
    profile = ProductionProfile.create(session_dir / "production", projects_dir=projects)
    for value in profile.secrets.values():  # generated passwords, keys, tokens: the session scan looks for them
        secret(value)
    profile.require_services()
    forget_object_stores()
    try:
        yield profile.start()
    finally:
        profile.stop()
        profile.drop()
        forget_object_stores()


def forget_object_stores() -> None:
    """Airflow caches one filesystem per (scheme, connection id) for the whole process; the
    production tests point ``aws_default`` at another S3 server, so its cached store must not
    outlive them (later tests would read and write the wrong server)."""
    from airflow.sdk.io import store

    store._STORE_CACHE.clear()


# --- no secret in any log (tests/secret_scan.py) --------------------------------------------
_LEAKS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Search each test's captured stdout, stderr and log records for registered secrets."""
    from tests.secret_scan import leaks_in_text

    for name, text in report.sections:
        _LEAKS.extend(leaks_in_text(f"{report.nodeid} ({name})", text))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After the run, search every file the session's servers and tasks wrote; a leak fails it."""
    from tests.secret_scan import SECRETS, leaks_in_files

    leaks = _LEAKS + leaks_in_files(_SESSION_DIR)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"secret scan: {len(SECRETS)} secrets, {len(leaks)} found in logs or output "
                            f"under {_SESSION_DIR}")
        for leak in leaks:
            reporter.write_line(f"  LEAK {leak}", red=True)
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
