"""Which browser the UI tests drive: the system's chromium (Debian's package), never a download."""

from __future__ import annotations

import shutil

import pytest

BROWSERS = ("chromium", "chromium-browser")
INSTALL = "apt-get update && apt-get install -y --no-install-recommends chromium"


def chromium_path() -> str:
    """The system chromium, or a failure that says how to get one (never a skip)."""
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.fail(f"no browser for the UI tests: none of {', '.join(BROWSERS)} is on PATH. "
                f"Install Debian's package (`{INSTALL}`, as root; `make test` does it) and run again.",
                pytrace=False)
