"""Names shared by the DAGs, the embedded stack, docker-compose and the tests.

One place, so a connection id or an environment variable cannot drift between them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

LABELSTUDIO_CONN_ID = "labelstudio_default"
MLFLOW_CONN_ID = "mlflow_default"
AWS_CONN_ID = "aws_default"
#: The pre-label ML backend (type http: host = URL as Label Studio reaches it, login/password = basic auth).
BACKEND_CONN_ID = "labelloop_backend_default"

#: The embedded stack's Airflow runs on SQLite: wait up to 60 s for a write lock instead of
#: sqlite3's default 5 s (API calls failed with "database is locked" under a busy scheduler).
SQLITE_CONNECT_ARGS = {"timeout": 60}

#: Where the DAG factory looks for project specs; override with LABELLOOP_PROJECTS_DIR.
PROJECTS_DIR_ENV = "LABELLOOP_PROJECTS_DIR"
#: Root of the local state folder of the embedded stack (and the default object store).
STATE_DIR_ENV = "LABELLOOP_STATE_DIR"

#: How every labelloop process (Airflow tasks, the pre-label backend, the CLIs) talks to MLflow.
#: MLflow's defaults retry a failed call 7 times with backoff 2 (~4 minutes) and wait 120 s for
#: an answer: a retrain with MLflow down took 18 minutes to fail. With these, a call to a server
#: that is down fails in ~3 s, one to a server that hangs in ~35 s (3 tries of 10 s). Applied when
#: labelloop's MLflow code is imported (``use_mlflow_client_env``); a variable already set in the
#: environment (docker-compose, a shell) wins.
MLFLOW_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # The download progress bar goes to stderr, which task and service logs show as errors.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

REPO_ROOT = Path(__file__).resolve().parents[2]
INCLUDE_DIR = REPO_ROOT / "include"


def projects_dir() -> Path:
    return Path(os.environ.get(PROJECTS_DIR_ENV, INCLUDE_DIR / "projects"))


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV, REPO_ROOT / ".state"))


#: The folder Label Studio serves local files from (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); image
#: tasks address local images relative to it. Default: the embedded stack's object store.
LOCAL_FILES_ROOT_ENV = "LABELLOOP_LOCAL_FILES_ROOT"


def local_files_root() -> Path:
    return Path(os.environ.get(LOCAL_FILES_ROOT_ENV, state_dir() / "store"))


def mlflow_client_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``MLFLOW_CLIENT_ENV``, with what ``environ`` already sets winning."""
    return {name: environ.get(name, value) for name, value in MLFLOW_CLIENT_ENV.items()}


def use_mlflow_client_env() -> None:
    """Bound this process's MLflow calls (MLflow reads these variables at every call)."""
    os.environ.update(mlflow_client_env())
