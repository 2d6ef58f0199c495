"""The embedded stack: Label Studio, MLflow and Airflow as local processes on 127.0.0.1.

The same start functions serve ``make demo`` and the test fixtures, so what the tests
exercise is what a user runs. Each server gets its own log file under the state folder;
a failed start raises with the log's last lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from labelloop import settings

REPO_ROOT = settings.REPO_ROOT
LABELSTUDIO_VENV = Path(os.environ.get("LABELLOOP_LABELSTUDIO_VENV", REPO_ROOT / ".venv-labelstudio"))
# Not a secret worth hiding: the embedded stack is a single-user local sandbox on 127.0.0.1.
DEFAULT_ADMIN = "admin@labelloop.local"
DEFAULT_PASSWORD = "labelloop-admin"
DEFAULT_TOKEN = "labelloop-local-token-0123456789abcdef"


class StackError(RuntimeError):
    """A server could not be started or reached; the message says why and what to do."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def state_folder(state_dir: Path, *parts: str) -> Path:
    """``state_dir/parts...``, each folder from ``state_dir`` down created (or tightened) to 0o700:
    the state holds the servers' databases, tokens and every annotation, for the owner only."""
    folders = [state_dir]
    for part in parts:
        folders.append(folders[-1] / part)
    for folder in folders:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # mkdir leaves an existing folder's mode as it was
    return folders[-1]


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Server:
    """A local server process: how to start it and how to know it is healthy.

    Healthy = ``health_path`` answers over HTTP, or, for a process without a health page of its
    own (Celery workers, the DAG processor), ``health_check`` says so; ``port`` 0 = listens on none.
    """

    name: str
    command: list[str]
    port: int
    health_path: str
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 180.0
    process: subprocess.Popen | None = None
    health_check: Callable[[], bool] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "pids" / f"{self.name}.pid"

    def healthy(self) -> bool:
        if self.health_check is not None:
            return self.health_check()
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=2) as response:
                return response.status < 500
        except (urllib.error.URLError, OSError):
            return False

    def start(self, wait: bool = True) -> Server:
        """Start the process; with ``wait`` (the default) return once it is healthy."""
        if self.port and port_in_use(self.port):
            raise StackError(
                f"{self.name}: port {self.port} on 127.0.0.1 is already taken. Stop what uses it "
                f"(`ss -ltnp | grep {self.port}`) or choose another port "
                f"(LABELLOOP_{self.name.upper()}_PORT)."
            )
        for folder in (self.log_path.parent, self.pid_path.parent):
            state_folder(self.state_dir, folder.name)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.state_dir,
        )
        self.pid_path.write_text(str(self.process.pid))
        if wait:
            try:
                self.wait_healthy()
            except BaseException:  # never leave a half-started server running in its own session
                self.stop()
                raise
        return self

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise StackError(
                    f"{self.name} exited with code {self.process.returncode} while starting. "
                    f"Last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            if self.healthy():
                return
            time.sleep(1)
        what = f"answer {self.url}{self.health_path}" if self.health_check is None else f"pass {self.health_path}"
        raise StackError(
            f"{self.name} did not {what} within "
            f"{self.start_timeout:.0f} s. Last lines of {self.log_path}:\n{tail(self.log_path)}"
        )

    def stop(self) -> None:
        """Stop the whole process group (servers fork workers) and wait for it."""
        pid = self.process.pid if self.process else _read_pid(self.pid_path)
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _alive(pid):
                if self.process is not None:
                    self.process.poll()
                time.sleep(0.2)
            if not _alive(pid):
                break
        self.pid_path.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child counts as gone
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        return True


def labelstudio_server(
    state_dir: Path, port: int, token: str = DEFAULT_TOKEN, venv: Path = LABELSTUDIO_VENV,
    database: Mapping[str, str] | None = None,
) -> Server:
    """Label Studio in its own virtualenv, admin made at start; its database is SQLite under the
    state folder unless ``database`` gives Label Studio's Postgres settings (DJANGO_DB, POSTGRE_*)."""
    data_dir = state_folder(state_dir, "labelstudio")
    executable = venv / "bin" / "label-studio"
    if not executable.exists():
        raise StackError(f"Label Studio is not installed at {executable}: run `make setup` first.")
    env = {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": DEFAULT_ADMIN,
        "LABEL_STUDIO_PASSWORD": DEFAULT_PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": token,
        # Must hold on the FIRST start, when the organization is created.
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        # The ML backend and S3 endpoints of the embedded stack live on 127.0.0.1.
        "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
        # Image tasks of the local store: Label Studio serves its files to the projects that
        # connect a folder under it (labelloop.ingest.images); nothing outside it.
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(settings.local_files_root()),
        # Label Studio also reads bare USERNAME/PASSWORD: never let the caller's leak in.
        "USERNAME": DEFAULT_ADMIN,
        "PASSWORD": DEFAULT_PASSWORD,
        **(database or {}),
    }
    command = [
        str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1",
        "-p", str(port), "--data-dir", str(data_dir),
    ]
    return Server("labelstudio", command, port, "/health", state_dir, env, start_timeout=300)


def mlflow_server(
    state_dir: Path, port: int, backend_store_uri: str | None = None,
    artifacts_destination: str | None = None, env: Mapping[str, str] | None = None,
) -> Server:
    """MLflow tracking + registry, one worker (~550 MiB): SQLite and local artifacts under the
    state folder unless given others (``env``: e.g. the S3 endpoint and credentials)."""
    root = state_folder(state_dir, "mlflow")
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
        "--artifacts-destination", artifacts_destination or str(root / "artifacts"),
    ]
    server_env = {
        # Through the environment, not the command line: a database URL may hold a password.
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **(env or {}),
    }
    return Server("mlflow", command, port, "/health", state_dir, server_env, start_timeout=180)


#: Airflow settings of the embedded stack only: SQLite, LocalExecutor, every local user an admin.
EMBEDDED_AIRFLOW = {
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "labelloop.settings.SQLITE_CONNECT_ARGS",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "labelloop.settings.SQLITE_CONNECT_ARGS",
    "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "true",
}


def airflow_env(
    state_dir: Path, port: int, connections: dict[str, dict], deployment: Mapping[str, str] = EMBEDDED_AIRFLOW
) -> dict[str, str]:
    """Environment for every Airflow process (and `airflow` CLI calls): what all stacks share,
    plus ``deployment``: executor, database and auth (the embedded stack's unless given others)."""
    home = state_dir / "airflow"
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "true",
        # MLflow's retries, timeouts and progress bar: settings.MLFLOW_CLIENT_ENV, applied by
        # labelloop's MLflow code at import in every task process (the caller's environment wins).
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]),
        # standalone starts its components as `airflow ...` subprocesses: find this venv's.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        settings.STATE_DIR_ENV: str(state_dir),
        **deployment,
    }
    for conn_id, conn in connections.items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    return env


def airflow_process(
    name: str, args: list[str], env: dict[str, str], state_dir: Path, port: int = 0,
    health_path: str = "/api/v2/monitor/health", health_check: Callable[[], bool] | None = None,
) -> Server:
    """One `airflow <args>` process of this virtualenv, with ``env`` from ``airflow_env``."""
    state_folder(state_dir, Path(env["AIRFLOW_HOME"]).name)
    command = [str(Path(sys.executable).with_name("airflow")), *args]
    return Server(name, command, port, health_path, state_dir, env, start_timeout=300, health_check=health_check)


def airflow_server(state_dir: Path, port: int, connections: dict[str, dict]) -> Server:
    """`airflow standalone`: API server, scheduler, DAG processor and triggerer on SQLite."""
    return airflow_process("airflow", ["standalone"], airflow_env(state_dir, port, connections), state_dir, port)


def standalone_scheduler(standalone: Server) -> Server:
    """The scheduler of an ``airflow_server`` (`airflow standalone`) as a process of its own, with the
    command and environment standalone gives it: how to start it again after it died (standalone
    starts each component once and restarts none). Healthy when the API server reports its heartbeat."""
    from labelloop.dev.production import component_healthy

    return airflow_process("airflow-scheduler", ["scheduler"], standalone.env, standalone.state_dir,
                           health_path=f"{standalone.url}/api/v2/monitor/health: scheduler healthy",
                           health_check=component_healthy(standalone.url, "scheduler"))


@dataclass
class StackConfig:
    """Ports and folders of the embedded stack; every field can be set from the environment."""

    state_dir: Path = field(default_factory=settings.state_dir)
    labelstudio_port: int = int(os.environ.get("LABELLOOP_LABELSTUDIO_PORT", "18081"))
    mlflow_port: int = int(os.environ.get("LABELLOOP_MLFLOW_PORT", "15000"))
    airflow_port: int = int(os.environ.get("LABELLOOP_AIRFLOW_PORT", "18080"))
    backend_port: int = int(os.environ.get("LABELLOOP_BACKEND_PORT", "19090"))
    token: str = os.environ.get("LABELLOOP_LABELSTUDIO_TOKEN", DEFAULT_TOKEN)
    backend_token: str = os.environ.get("LABELLOOP_BACKEND_TOKEN", "labelloop-local-backend-token")
    project: str = os.environ.get("LABELLOOP_DEMO_PROJECT", "sms_spam")

    @property
    def store_uri(self) -> str:
        return f"file://{self.state_dir / 'store'}"

    def connections(self) -> dict[str, dict]:
        return {
            settings.LABELSTUDIO_CONN_ID: {
                "conn_type": "labelstudio",
                "host": f"http://127.0.0.1:{self.labelstudio_port}",
                "password": self.token,
            },
            settings.MLFLOW_CONN_ID: {"conn_type": "http", "host": f"http://127.0.0.1:{self.mlflow_port}"},
            settings.AWS_CONN_ID: {"conn_type": "aws", "extra": {"region_name": "us-east-1"}},
            settings.BACKEND_CONN_ID: {"conn_type": "http", "host": f"http://127.0.0.1:{self.backend_port}",
                                       "login": "labelloop", "password": self.backend_token},
        }

    def servers(self) -> list[Server]:
        return [
            labelstudio_server(self.state_dir, self.labelstudio_port, self.token),
            mlflow_server(self.state_dir, self.mlflow_port),
            backend_server(self.state_dir, self.backend_port, self.project, self.backend_token,
                           f"http://127.0.0.1:{self.mlflow_port}"),
            airflow_server(self.state_dir, self.airflow_port, self.connections()),
        ]


def up(config: StackConfig) -> None:
    for server in config.servers():
        if server.healthy():
            print(f"{server.name}: already running at {server.url}")
            continue
        print(f"{server.name}: starting on {server.url} (log: {server.log_path})", flush=True)
        started = time.monotonic()
        server.start()
        print(f"{server.name}: healthy after {time.monotonic() - started:.0f} s", flush=True)


def down(config: StackConfig) -> None:
    for server in reversed(config.servers()):
        server.stop()
        print(f"{server.name}: stopped")


def status(config: StackConfig) -> int:
    servers = config.servers()
    for server in servers:
        print(f"{server.name:12} {'up  ' if server.healthy() else 'down'} {server.url}")
    return 0 if all(server.healthy() for server in servers) else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m labelloop stack")
    parser.add_argument("action", choices=["up", "down", "status", "reset"])
    parser.add_argument("--profile", choices=["embedded", "production"], default="embedded",
                        help="production: docker-compose's stack as local processes (labelloop.dev.production)")
    args = parser.parse_args(argv)
    if args.profile == "production":
        from labelloop.dev import production

        return production.main([args.action])
    config = StackConfig()
    try:
        if args.action == "up":
            up(config)
        elif args.action == "down":
            down(config)
        elif args.action == "reset":
            down(config)
            shutil.rmtree(config.state_dir, ignore_errors=True)
            print(f"removed {config.state_dir}")
        else:
            return status(config)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def backend_server(state_dir: Path, port: int, project: str, token: str, tracking_uri: str, *,
                   projects_dir: Path | None = None, poll_seconds: float | None = None) -> Server:
    """The backend as a stack server (uvicorn, one worker); healthy when /health answers."""
    from labelloop.serving import backend

    plugins = str(settings.REPO_ROOT / "plugins")
    env = {
        backend.TOKEN_ENV: token,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PYTHONPATH": os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")])),
        # MLflow retries, timeouts, progress bar: labelloop.settings.MLFLOW_CLIENT_ENV, applied by
        # labelloop.model.prelabel at import (a registry call fails in seconds; the poller retries).
    }
    if "AIRFLOW_HOME" not in os.environ:  # labelloop imports airflow.sdk, which writes a logs folder
        env["AIRFLOW_HOME"] = str(state_dir / "airflow")
    if projects_dir is not None:
        env[settings.PROJECTS_DIR_ENV] = str(projects_dir)
    if poll_seconds is not None:
        env[backend.POLL_ENV] = str(poll_seconds)
    command = [sys.executable, "-m", "labelloop.serving.backend", "--project", project,
               "--host", "127.0.0.1", "--port", str(port)]
    return Server("backend", command, port, "/health", state_dir, env, start_timeout=120)
