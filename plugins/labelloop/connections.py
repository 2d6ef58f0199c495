"""The URL of the server an Airflow connection names: one rule for Label Studio, MLflow and the backend."""

from __future__ import annotations

from typing import Any


def url_of(conn: Any) -> str:
    """``host`` with its scheme (``http://`` when it has none) and ``port`` when set, no trailing slash."""
    host = (conn.host or "").rstrip("/")
    url = host if "://" in host else f"http://{host}"
    return f"{url}:{conn.port}" if conn.port else url
