"""Names shared by the DAGs, the embedded stack, docker-compose and the tests.

One place, so a connection id or an environment variable cannot drift between them.
"""

from __future__ import annotations

import os
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

REPO_ROOT = Path(__file__).resolve().parents[2]
INCLUDE_DIR = REPO_ROOT / "include"


def projects_dir() -> Path:
    return Path(os.environ.get(PROJECTS_DIR_ENV, INCLUDE_DIR / "projects"))


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV, REPO_ROOT / ".state"))
