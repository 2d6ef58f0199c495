"""The end-of-session secret scan finds a registered secret in a file and in captured text."""

from pathlib import Path

import pytest

from tests.secret_scan import SECRETS, leaks_in_files, leaks_in_text, secret


def test_the_scan_finds_a_secret_in_a_log_and_not_in_a_database(tmp_path: Path) -> None:
    value = "scan-self-test-value-0123456789"
    try:
        secret(value)
        (tmp_path / "logs").mkdir()
        (tmp_path / "logs" / "server.log").write_text(f"GET /api?token={value}\n")
        (tmp_path / "app.db").write_bytes(value.encode())  # a store of credentials, not a log
        (tmp_path / "clean.log").write_text("nothing here\n")
        assert leaks_in_files(tmp_path) == [f"{tmp_path / 'logs' / 'server.log'}: a registered secret (sca...)"]
        assert leaks_in_text("t", f"Authorization: Bearer {value}") and not leaks_in_text("t", "Bearer ***")
    finally:
        SECRETS.discard(value)


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 8 characters"):
        secret("abc")
