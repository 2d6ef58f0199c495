"""No secret reaches a log: every credential a test uses is registered here, and when the
session ends every file under the session's folder (server logs, Airflow task logs, reports)
and every test's captured output is searched for them (tests/conftest.py runs the scan).

Register a secret where it is made: ``TOKEN = secret("...")``.
"""

from __future__ import annotations

from pathlib import Path

#: Secrets the session has used; the scan looks for each.
SECRETS: set[str] = set()
#: Files bigger than this are scanned in their first part only (logs are far smaller).
MAX_SCAN_BYTES = 64 << 20


def secret(value: str) -> str:
    """Register ``value`` as a secret that must never be written to a log; returns it."""
    if len(value) < 8:
        raise ValueError("a secret to scan for needs at least 8 characters (short ones match by chance)")
    SECRETS.add(value)
    return value


def leaks_in_text(where: str, text: str) -> list[str]:
    return [f"{where}: a registered secret ({value[:3]}...)" for value in SECRETS if value in text]


def leaks_in_files(root: Path) -> list[str]:
    """Every file under ``root`` that holds a registered secret, as a line naming it."""
    found = []
    needles = [value.encode() for value in SECRETS]
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink() or _is_store(path):
            continue
        try:
            with path.open("rb") as file:
                data = file.read(MAX_SCAN_BYTES)
        except OSError:
            continue
        found += [f"{path}: a registered secret ({needle[:3].decode()}...)" for needle in needles if needle in data]
    return found


def _is_store(path: Path) -> bool:
    """Databases hold credentials by design (Label Studio's token table, Airflow's connections):
    they are not logs. Everything a process writes as text is."""
    return path.suffix in {".db", ".sqlite3", ".sqlite", ".db-wal", ".db-shm", ".parquet", ".pkl"}
