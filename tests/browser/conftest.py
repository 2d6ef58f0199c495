"""Browser tests' setup: Debian's chromium driven by Playwright, and one Airflow for the module.

The browser is the system's (``apt-get install chromium``, which ``make test`` does), never a
download: without one the tests fail, naming the binary and the install command. Airflow is
``airflow standalone`` as the embedded stack runs it, beside the session's Label Studio and
MLflow (tests/conftest.py), with the connection form's Test button enabled and a spec folder
of three small projects: one per check, so no check waits on another's state.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from labelloop.settings import LABELSTUDIO_CONN_ID, MLFLOW_CONN_ID
from labelloop.spec import ProjectSpec, load_spec

from tests.browser.system_browser import chromium_path
from tests.conftest import REPO, TOKEN

#: Where each test's screenshots go (one folder per test); CI can keep it as an artifact.
SCREENSHOTS = Path(os.environ.get("LABELLOOP_SCREENSHOTS_DIR", REPO / ".state" / "screenshots"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One chromium per module, and Playwright stopped after it: its sync API keeps an asyncio loop
    running in this thread while it lives, and every later asyncio.run() (triggers, s3fs, the
    SDK's async client) would fail with "cannot be called from a running event loop"."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed in this environment: run `make setup` "
                    "(it is in requirements-dev.txt)", pytrace=False)
    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


@dataclass
class Screens:
    """Numbered full-page screenshots of one test, in a folder named after it."""

    page: Any
    folder: Path
    taken: int = 0

    def shot(self, step: str) -> Path:
        self.taken += 1
        path = self.folder / f"{self.taken:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser page (generous timeouts for actions and assertions: Airflow's React UI on
    2 shared cores, and a connection test that takes Airflow 10 s)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def screens(page: Any, request: pytest.FixtureRequest) -> Screens:
    folder = SCREENSHOTS / re.sub(r"[^\w.-]+", "_", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"screenshots of {request.node.name}: {folder}")
    return Screens(page, folder)


@dataclass
class UiStack:
    url: str
    airflow: Any  # labelloop's REST helper (demo.Airflow)
    scheduler_log: Path
    specs: dict[str, ProjectSpec]  # "retrain", "sign_off", "report"


def write_spec(folder: Path, name: str, model: dict[str, Any], quality: dict[str, Any]) -> Path:
    """A spec like include/projects/sms_spam.yaml, with its own storage and model, no schedules."""
    raw = yaml.safe_load((REPO / "include" / "projects" / "sms_spam.yaml").read_text())
    raw.update(name=name, title=f"UI test {name}", labeling_config=str(REPO / "include" / raw["labeling_config"]),
               guidelines=str(REPO / "include" / raw["guidelines"]), storage_uri=f"file://{folder / 'store' / name}")
    raw["source"]["uri"] = f"file://{folder / 'raw' / name}/"
    raw["model"].update(name=name, **model)
    raw["quality"].update(quality)
    raw["schedules"] = {"ingest": None, "collect": None}
    path = folder / "projects" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ui_stack(labelstudio: Any, mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:
    """`airflow standalone` (the embedded stack's) whose DAG folder sees the three test specs."""
    from labelloop.dev.demo import Airflow
    from labelloop.dev.stack import airflow_server, free_port

    folder = tmp_path_factory.mktemp("browser")
    (folder / "projects").mkdir()
    suffix = time.time_ns() % 10**8
    paths = {
        "retrain": write_spec(folder, f"ui_retrain_{suffix}", {"min_score": 0.5}, {}),
        "sign_off": write_spec(folder, f"ui_signoff_{suffix}", {"min_score": 0.5, "require_approval": True}, {}),
        # A gate this data cannot pass: the banner lists the failure (and no retrain follows).
        "report": write_spec(folder, f"ui_report_{suffix}", {}, {"min_alpha": 0.99}),
    }
    connections = {LABELSTUDIO_CONN_ID: {"conn_type": "labelstudio", "host": labelstudio.url, "password": TOKEN},
                   MLFLOW_CONN_ID: {"conn_type": "http", "host": mlflow_server.url}}
    server = airflow_server(folder / "stack", free_port(), connections)
    server.env["LABELLOOP_PROJECTS_DIR"] = str(folder / "projects")
    server.env["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"  # the connection form's Test button
    server.start()
    try:
        yield UiStack(server.url, Airflow(server.url), server.log_path,
                      {key: load_spec(path) for key, path in paths.items()})
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed browser test leaves a last screenshot and the page's text beside its others."""
    outcome = yield
    report = outcome.get_result()
    screens = item.funcargs.get("screens") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and isinstance(screens, Screens):
        try:
            screens.shot("failed")
            (screens.folder / "failed-page.txt").write_text(screens.page.inner_text("body"))
        except Exception as error:  # the page itself may be what broke
            print(f"no failure screenshot: {error}")
