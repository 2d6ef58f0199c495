"""The production profile: docker-compose.yaml's stack as local processes, for tests and ``--profile production``.

The same components and settings as docker-compose.yaml: Airflow 3 on Postgres with the
CeleryExecutor on Redis (api-server, scheduler, dag-processor, triggerer and two Celery workers,
each its own process), Label Studio and MLflow on Postgres, MLflow artifacts and the object
store on an S3 API server (moto's, where compose runs MinIO), and the pre-label backend. Each
process is a ``stack.Server`` built by the embedded stack's start functions, so both profiles
run the same code. Postgres and Redis are the machine's own: each instance gets its own roles,
databases and Redis database, named by a per-instance prefix, so test runs never collide.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from labelloop import settings
from labelloop.dev.stack import (
    Server, StackError, airflow_env, airflow_process, backend_server, free_port, labelstudio_server, mlflow_server,
    state_folder, tail,
)

POSTGRES_ADMIN_URL_ENV = "LABELLOOP_POSTGRES_ADMIN_URL"
REDIS_URL_ENV = "LABELLOOP_REDIS_URL"
DEFAULT_POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
#: The components with a Postgres database of their own, as in include/docker/postgres/init-databases.sh.
DATABASES = ("airflow", "mlflow", "labelstudio")
#: docker-compose's bucket and object store root (LABELLOOP_STORE).
BUCKET = "labelloop"
WORKERS = 2
WORKER_CONCURRENCY = 2  # Celery's default (16 forked processes per worker) is for real machines
AIRFLOW_ADMIN = "admin"
#: Marks the Redis database an instance claimed (Redis databases 1-15; compose uses 0).
REDIS_CLAIM_KEY = "labelloop:production-profile"

#: Settings every Airflow process of the profile gets that docker-compose.yaml does not set: its
#: processes share one machine (so each listens on a port of its own, where each container has
#: its own address), and the code is read from this checkout, not baked into an image. Every other
#: key is one of compose's x-airflow-common keys (tests/unit/test_compose.py holds both to that).
LOCAL_PROCESS_KEYS = frozenset({
    "AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER", "PYTHONPATH", "PATH",
    settings.STATE_DIR_ENV,
    "AIRFLOW__API__HOST", "AIRFLOW__API__PORT", "AIRFLOW__API__BASE_URL",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
    # Spec files written while the stack runs (tests, a person editing one) show up in seconds.
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL",
    # On one machine a task whose heartbeat is 30 s late is dead (no network in between): its retry
    # starts in about a minute, where compose keeps Airflow's 5 minutes for containers on a network.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
})
#: Seconds without a heartbeat after which the scheduler fails a task (and retries it).
HEARTBEAT_TIMEOUT = 30

PORTS = ("airflow", "labelstudio", "mlflow", "backend", "s3", "scheduler_health", "trigger_logs",
         *(f"worker{n}_logs" for n in range(1, WORKERS + 1)))
SECRETS = (*(f"{name}_db_password" for name in DATABASES), "airflow_jwt_secret", "airflow_api_secret_key",
           "airflow_admin_password", "labelstudio_token", "backend_token", "s3_secret_key")


def _secret(name: str) -> str:
    """URL- and JSON-safe, as docker-compose.yaml asks of its secrets; sized for each consumer."""
    if name == "labelstudio_token":
        return secrets.token_hex(20)  # Label Studio stores at most 40 characters
    if name == "airflow_jwt_secret":
        return secrets.token_urlsafe(64)  # HS512 wants 64+ bytes
    return secrets.token_urlsafe(24)


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@dataclass
class ProductionProfile:
    """One instance of the profile: its prefix, ports and generated secrets (kept in a 0600 file)."""

    state_dir: Path
    prefix: str
    ports: dict[str, int]
    secrets: dict[str, str]
    redis_db: int | None = None
    projects_dir: Path = field(default_factory=settings.projects_dir)
    project: str = "sms_spam"  # the spec the pre-label backend serves, from backend_projects_dir
    backend_projects_dir: Path = field(default_factory=settings.projects_dir)
    postgres_admin_url: str = field(
        default_factory=lambda: os.environ.get(POSTGRES_ADMIN_URL_ENV, DEFAULT_POSTGRES_ADMIN_URL))
    redis_url: str = field(default_factory=lambda: os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL))
    started_in: float | None = None

    # ------------------------------------------------------------ instance

    @classmethod
    def create(cls, state_dir: Path, projects_dir: Path | None = None, project: str = "sms_spam") -> ProductionProfile:
        """A new instance: fresh prefix, free ports, generated secrets."""
        generated = {name: _secret(name) for name in SECRETS} | {"airflow_fernet_key": _fernet_key()}
        profile = cls(state_dir, f"ll_{secrets.token_hex(4)}", {name: free_port() for name in PORTS}, generated,
                      project=project, **({"projects_dir": projects_dir} if projects_dir else {}))
        profile.save()
        return profile

    @classmethod
    def load_or_create(cls, state_dir: Path) -> ProductionProfile:
        """The instance recorded in ``state_dir`` (so `stack down` finds what `stack up` started), else a new one."""
        path = cls.record_path(state_dir)
        if not path.exists():
            return cls.create(state_dir)
        raw = json.loads(path.read_text())
        return cls(state_dir, raw["prefix"], raw["ports"], raw["secrets"], raw["redis_db"], Path(raw["projects_dir"]),
                   raw["project"])

    @staticmethod
    def record_path(state_dir: Path) -> Path:
        return state_dir / "production.json"

    def save(self) -> None:
        state_folder(self.state_dir)
        path = self.record_path(self.state_dir)
        path.touch(mode=0o600)
        path.chmod(0o600)  # it holds the generated passwords
        path.write_text(json.dumps({"prefix": self.prefix, "ports": self.ports, "secrets": self.secrets,
                                    "redis_db": self.redis_db, "projects_dir": str(self.projects_dir),
                                    "project": self.project}, indent=1))

    # ------------------------------------------------------------ names and URLs

    def url(self, port: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}"

    @property
    def airflow_url(self) -> str:
        return self.url("airflow")

    def role(self, database: str) -> str:
        return f"{self.prefix}_{database}"

    def database_url(self, database: str, scheme: str = "postgresql") -> str:
        admin = urlsplit(self.postgres_admin_url)
        return (f"{scheme}://{self.role(database)}:{self.secrets[f'{database}_db_password']}"
                f"@{admin.hostname}:{admin.port or 5432}/{self.role(database)}")

    @property
    def broker_url(self) -> str:
        if self.redis_db is None:
            raise StackError("the production profile has no Redis database yet: start it first")
        return f"{self.redis_url.rstrip('/')}/{self.redis_db}"

    def worker_name(self, number: int) -> str:
        return f"{self.prefix}-worker{number}@{socket.gethostname()}"

    @property
    def s3_access_key(self) -> str:
        """The S3 access key id: a name, not a secret (every signed request and presigned URL
        carries it, so the S3 server's access log does); its secret is ``secrets["s3_secret_key"]``."""
        return f"{self.prefix}-labelloop"

    def s3_client(self) -> Any:
        """A boto3 S3 client of the profile's S3 API server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url("s3"), region_name="us-east-1",
                            aws_access_key_id=self.s3_access_key,
                            aws_secret_access_key=self.secrets["s3_secret_key"])

    @property
    def s3_env(self) -> dict[str, str]:
        """How MLflow reaches the S3 API server (compose: MLFLOW_S3_ENDPOINT_URL + AWS_* for MinIO)."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.url("s3"), "AWS_ACCESS_KEY_ID": self.s3_access_key,
                "AWS_SECRET_ACCESS_KEY": self.secrets["s3_secret_key"], "AWS_DEFAULT_REGION": "us-east-1"}

    @property
    def passwords_file(self) -> Path:
        return self.state_dir / "airflow" / "auth" / "simple_auth_manager_passwords.json"

    def connections(self) -> dict[str, dict]:
        """The four connections of docker-compose.yaml, pointing at this instance's servers."""
        return {
            # Label Studio on PostgreSQL takes two imports at once (LabelStudioHook.imports_in_flight).
            settings.LABELSTUDIO_CONN_ID: {"conn_type": "labelstudio", "host": self.url("labelstudio"),
                                           "password": self.secrets["labelstudio_token"],
                                           "extra": {"imports_in_flight": 2}},
            settings.MLFLOW_CONN_ID: {"conn_type": "http", "host": self.url("mlflow")},
            settings.AWS_CONN_ID: {"conn_type": "aws", "login": self.s3_access_key,
                                   "password": self.secrets["s3_secret_key"],
                                   "extra": {"endpoint_url": self.url("s3"), "region_name": "us-east-1"}},
            settings.BACKEND_CONN_ID: {"conn_type": "http", "host": self.url("backend"), "login": "labelloop",
                                       "password": self.secrets["backend_token"]},
        }

    def airflow_env(self) -> dict[str, str]:
        """What every Airflow process gets: docker-compose's x-airflow-common, plus LOCAL_PROCESS_KEYS."""
        deployment = {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url("airflow", "postgresql+psycopg2"),
            "AIRFLOW__CELERY__RESULT_BACKEND": self.database_url("airflow", "db+postgresql"),
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__API_AUTH__JWT_SECRET": self.secrets["airflow_jwt_secret"],
            "AIRFLOW__API__SECRET_KEY": self.secrets["airflow_api_secret_key"],
            "AIRFLOW__CORE__FERNET_KEY": self.secrets["airflow_fernet_key"],
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_ADMIN}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "true",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(self.ports["scheduler_health"]),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports["worker1_logs"]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.ports["trigger_logs"]),
            "LABELLOOP_STORE": f"s3://{BUCKET}",
            settings.PROJECTS_DIR_ENV: str(self.projects_dir),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        }
        return airflow_env(self.state_dir, self.ports["airflow"], self.connections(), deployment)

    # ------------------------------------------------------------ servers

    def s3_server(self) -> Server:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.ports["s3"])]
        return Server("s3", command, self.ports["s3"], "/moto-api/", self.state_dir, start_timeout=60)

    def labelstudio_server(self) -> Server:
        admin = urlsplit(self.postgres_admin_url)
        database = {"DJANGO_DB": "default", "POSTGRE_NAME": self.role("labelstudio"),
                    "POSTGRE_USER": self.role("labelstudio"), "POSTGRE_PASSWORD": self.secrets["labelstudio_db_password"],
                    "POSTGRE_HOST": admin.hostname or "127.0.0.1", "POSTGRE_PORT": str(admin.port or 5432)}
        return labelstudio_server(self.state_dir, self.ports["labelstudio"], self.secrets["labelstudio_token"],
                                  database=database)

    def mlflow_server(self) -> Server:
        return mlflow_server(self.state_dir, self.ports["mlflow"], self.database_url("mlflow"),
                             f"s3://{BUCKET}/mlflow", self.s3_env)

    def backend_server(self) -> Server:
        server = backend_server(self.state_dir, self.ports["backend"], self.project, self.secrets["backend_token"],
                                self.url("mlflow"), projects_dir=self.backend_projects_dir)
        server.env["LABELLOOP_STORE"] = f"s3://{BUCKET}"
        return server

    def airflow_servers(self) -> list[Server]:
        """api-server first (the others call its Execution API), then the rest, each its own process."""
        env = self.airflow_env()
        api = self.airflow_url

        def component(name: str, args: list[str], port: int = 0, health_path: str = "",
                      check: Callable[[], bool] | None = None, extra: dict[str, str] | None = None) -> Server:
            return airflow_process(f"airflow-{name}", args, {**env, **(extra or {})}, self.state_dir, port,
                                   health_path, check)

        servers = [
            component("apiserver", ["api-server"], self.ports["airflow"], "/api/v2/monitor/health"),
            component("scheduler", ["scheduler"], self.ports["scheduler_health"], "/health"),
            component("dag-processor", ["dag-processor"], 0, f"{api}/api/v2/monitor/health: dag_processor healthy",
                      component_healthy(api, "dag_processor")),
            component("triggerer", ["triggerer"], self.ports["trigger_logs"],
                      f"{api}/api/v2/monitor/health: triggerer healthy", component_healthy(api, "triggerer")),
        ]
        for number in range(1, WORKERS + 1):
            name = self.worker_name(number)
            servers.append(component(
                f"worker{number}", ["celery", "worker", "--celery-hostname", name,
                                    "--concurrency", str(WORKER_CONCURRENCY)],
                self.ports[f"worker{number}_logs"], f"Celery ping of {name}", celery_worker_answers(self.broker_url, name),
                {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports[f"worker{number}_logs"])}))
        return servers

    def servers(self) -> list[Server]:
        """Every process of the instance, in start order."""
        return [self.s3_server(), self.labelstudio_server(), self.mlflow_server(), *self.airflow_servers(),
                self.backend_server()]

    # ------------------------------------------------------------ Postgres and Redis

    def require_services(self) -> None:
        """Postgres and Redis must be there: say exactly which is missing and how to start it."""
        try:
            self._admin_connection().close()
        except Exception as error:  # psycopg2.OperationalError, or no psycopg2 at all
            raise StackError(
                f"the production profile needs PostgreSQL with a superuser at {self._admin_display()} "
                f"({POSTGRES_ADMIN_URL_ENV}); connecting failed: {' '.join(str(error).split())}. Start it "
                f"(Debian/Ubuntu: `pg_ctlcluster 15 main start`; none installed: `apt-get install postgresql`) "
                f"or point {POSTGRES_ADMIN_URL_ENV} at one (postgresql://USER@HOST:PORT/postgres)."
            ) from error
        try:
            self._redis(0).ping()
        except Exception as error:  # redis.ConnectionError
            raise StackError(
                f"the production profile needs Redis at {self.redis_url} ({REDIS_URL_ENV}) as Celery broker; "
                f"connecting failed: {' '.join(str(error).split())}. Start it (`redis-server --daemonize yes --bind 127.0.0.1 "
                f"--port 6379`; none installed: `apt-get install redis-server`) or point {REDIS_URL_ENV} at one."
            ) from error

    def _admin_display(self) -> str:
        parts = urlsplit(self.postgres_admin_url)
        return f"{parts.hostname}:{parts.port or 5432} as {parts.username}"

    def _admin_connection(self) -> Any:
        import psycopg2

        connection = psycopg2.connect(self.postgres_admin_url, connect_timeout=3)
        connection.autocommit = True  # CREATE/DROP DATABASE refuse to run in a transaction (so: no `with connection`)
        return connection

    def _redis(self, db: int) -> Any:
        import redis

        return redis.Redis.from_url(f"{self.redis_url.rstrip('/')}/{db}", socket_connect_timeout=3)

    def provision(self) -> None:
        """One role + database per component (idempotent), and a Redis database of this instance's own."""
        from psycopg2 import sql

        with closing(self._admin_connection()) as connection, connection.cursor() as cursor:
            for database in DATABASES:
                role = sql.Identifier(self.role(database))
                cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [self.role(database)])
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(role),
                                   [self.secrets[f"{database}_db_password"]])
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.role(database)])
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(role, role))
        if self.redis_db is None:
            self.redis_db = self._claim_redis_db()
            self.save()

    def _claim_redis_db(self) -> int:
        for db in range(1, 16):
            client = self._redis(db)
            if client.set(REDIS_CLAIM_KEY, self.prefix, nx=True):
                if client.dbsize() == 1:
                    return db
                client.delete(REDIS_CLAIM_KEY)  # someone else's data: leave it alone
        raise StackError(f"Redis at {self.redis_url} has no empty database among 1-15 for the Celery broker; "
                         f"free one (`redis-cli -n N flushdb`) or point {REDIS_URL_ENV} at another Redis")

    def drop(self) -> None:
        """Drop the instance's databases, roles and Redis database, then the files holding its
        secrets: the instance and its data are gone."""
        from psycopg2 import sql

        with closing(self._admin_connection()) as connection, connection.cursor() as cursor:
            for database in DATABASES:
                name = sql.Identifier(self.role(database))
                cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
                cursor.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(name))
        if self.redis_db is not None:
            client = self._redis(self.redis_db)
            if client.get(REDIS_CLAIM_KEY) == self.prefix.encode():
                client.flushdb()
        self.passwords_file.unlink(missing_ok=True)
        self.record_path(self.state_dir).unlink(missing_ok=True)

    # ------------------------------------------------------------ life cycle

    def migrate_airflow(self) -> None:
        """docker-compose's airflow-init: the admin's password file, then `airflow db migrate`."""
        state_folder(self.state_dir, "airflow", "auth")
        self.passwords_file.touch(mode=0o600)
        self.passwords_file.write_text(json.dumps({AIRFLOW_ADMIN: self.secrets["airflow_admin_password"]}) + "\n")
        log = state_folder(self.state_dir, "logs") / "airflow-init.log"
        with log.open("ab") as output:
            done = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                                  env={**os.environ, **self.airflow_env()}, stdout=output, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=self.state_dir, timeout=900)
        if done.returncode:
            raise StackError(f"`airflow db migrate` failed (exit {done.returncode}). Last lines of {log}:\n{tail(log)}")

    def create_bucket(self) -> None:
        client = self.s3_client()
        if BUCKET not in {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=BUCKET)

    def start(self, report: Callable[[str], None] = lambda line: None) -> ProductionProfile:
        """Provision, then start every process; those without a dependency start side by side.

        Stops what it started when one fails to become healthy.
        """
        started_at = time.monotonic()
        self.require_services()
        self.provision()
        s3, labelstudio, mlflow, apiserver, *airflow_rest, backend = servers = self.servers()
        running: list[Server] = []

        def launch(server: Server, wait: bool) -> None:
            if server.healthy():
                report(f"{server.name}: already running at {server.url}")
                return
            report(f"{server.name}: starting (log: {server.log_path})")
            running.append(server.start(wait=wait))

        try:
            launch(s3, wait=True)
            self.create_bucket()
            launch(labelstudio, wait=False)
            launch(mlflow, wait=False)
            report("airflow: `airflow db migrate` on Postgres")
            self.migrate_airflow()
            launch(apiserver, wait=True)
            for server in (*airflow_rest, backend):
                launch(server, wait=False)
            for server in running:
                server.wait_healthy()
                report(f"{server.name}: healthy after {time.monotonic() - started_at:.0f} s")
        except BaseException:
            for server in reversed(servers):
                if server in running:
                    server.stop()
            raise
        self.started_in = time.monotonic() - started_at
        return self

    def airflow_client(self) -> Any:
        """A REST client logged in as the admin (Simple auth manager: POST /auth/token)."""
        import httpx

        from labelloop.dev.demo import Airflow

        response = httpx.post(f"{self.airflow_url}/auth/token", timeout=30, json={
            "username": AIRFLOW_ADMIN, "password": self.secrets["airflow_admin_password"]})
        response.raise_for_status()
        return Airflow(self.airflow_url, token=response.json()["access_token"])

    def stop(self) -> None:
        # Without a Redis database no Airflow process can have started (provision() comes first).
        servers = self.servers() if self.redis_db is not None else [
            self.s3_server(), self.labelstudio_server(), self.mlflow_server(), self.backend_server()]
        for server in reversed(servers):
            server.stop()

    def worker_server(self, number: int) -> Server:
        """Celery worker ``number`` (from 1); ``.start()`` brings a killed one back under the same name."""
        return next(server for server in self.airflow_servers() if server.name == f"airflow-worker{number}")

    def worker_of(self, pid: int) -> int | None:
        """The number of the Celery worker whose processes include ``pid`` (a task instance's pid)."""
        parents = {process.pid: process.ppid for process in processes()}
        roots = {_pid_of(self.worker_server(n)): n for n in range(1, WORKERS + 1)}
        while pid in parents and pid not in roots:
            pid = parents[pid]
        return roots.get(pid)

    def kill_worker(self, number: int) -> list[int]:
        """SIGKILL Celery worker ``number`` and every process under it, as when its container or
        machine dies: the worker, its pool, each task's supervisor and task process (Airflow gives a
        task process a process group of its own, so the worker's group alone would leave it running).

        Everything is stopped first (a stopped process forks no more), then killed; returns once
        all are gone (their ports free), with their pids."""
        root = _pid_of(self.worker_server(number))
        if root is None or root not in living():
            raise StackError(f"worker {number} of the production profile is not running")
        for pid in process_tree(root):
            _signal(pid, signal.SIGSTOP)
        killed = process_tree(root)
        for pid in killed:
            _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while set(killed) & living():
            if time.monotonic() > deadline:
                raise StackError(f"worker {number}: processes {sorted(set(killed) & living())} outlived SIGKILL")
            time.sleep(0.1)
        return killed

    def rss_mib(self) -> dict[str, float]:
        """Resident memory of each server's whole process group (a server's forks included), MiB."""
        return {server.name: process_group_rss(pid) / 2**20 for server in self.servers()
                if (pid := _pid_of(server)) is not None}


def component_healthy(api_url: str, component: str) -> Callable[[], bool]:
    """Healthy = the api-server's health page says so (from the component's heartbeat in the DB)."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(f"{api_url}/api/v2/monitor/health", timeout=2) as response:
                body = json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return (body.get(component) or {}).get("status") == "healthy"

    return check


def celery_worker_answers(broker_url: str, hostname: str) -> Callable[[], bool]:
    """Healthy = the worker answers a Celery ping over the broker (compose's `celery inspect ping`)."""

    def check() -> bool:
        from celery import Celery

        app = Celery(broker=broker_url)
        try:
            return bool(app.control.ping(destination=[hostname], timeout=1.0))
        except Exception:  # broker refused or went away: not healthy (yet)
            return False
        finally:
            app.close()

    return check


def registered_workers(broker_url: str) -> set[str]:
    """Names of the Celery workers that answer on the broker."""
    from celery import Celery

    app = Celery(broker=broker_url)
    try:
        return {name for answer in app.control.ping(timeout=2.0) for name in answer}
    finally:
        app.close()


def _pid_of(server: Server) -> int | None:
    if server.process is not None:
        return server.process.pid
    try:
        return int(server.pid_path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Process:
    """What the profile reads of one process's /proc/<pid>/stat."""

    pid: int
    state: str  # R, S, ...; Z: exited, not yet reaped
    ppid: int
    pgrp: int
    rss: int  # bytes


def processes() -> list[Process]:
    """Every process of the machine (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the name: state, ppid, pgrp, ...
            found.append(Process(int(stat.parent.name), fields[0], int(fields[1]), int(fields[2]),
                                 int(fields[21]) * os.sysconf("SC_PAGE_SIZE")))  # rss in pages
        except (OSError, ValueError, IndexError):
            continue
    return found


def living() -> set[int]:
    """Pids of the processes that have not exited (a zombie has: it only waits to be reaped)."""
    return {process.pid for process in processes() if process.state != "Z"}


def process_group_rss(pgid: int) -> int:
    """Bytes resident in the processes of one process group."""
    return sum(process.rss for process in processes() if process.pgrp == pgid)


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, parents before children."""
    children: dict[int, list[int]] = {}
    for process in processes():
        children.setdefault(process.ppid, []).append(process.pid)
    tree = [root]
    for pid in tree:
        tree += children.get(pid, [])
    return tree


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    """`python -m labelloop stack {up,down,status,reset} --profile production`."""
    parser = argparse.ArgumentParser(prog="python -m labelloop stack --profile production")
    parser.add_argument("action", choices=["up", "down", "status", "reset"])
    args = parser.parse_args(argv)
    state_dir = settings.state_dir() / "production"
    profile = ProductionProfile.load_or_create(state_dir)
    try:
        if args.action == "up":
            profile.start(report=lambda line: print(line, flush=True))
            print(f"production profile up in {profile.started_in:.0f} s:\n"
                  f"  Airflow       {profile.airflow_url}   (user {AIRFLOW_ADMIN}, password in {profile.passwords_file})\n"
                  f"  Label Studio  {profile.url('labelstudio')}\n  MLflow        {profile.url('mlflow')}\n"
                  f"  S3 API        {profile.url('s3')}\n  backend       {profile.url('backend')}\n"
                  f"Databases {', '.join(profile.role(d) for d in DATABASES)}; Redis db {profile.redis_db}. "
                  f"Secrets: {ProductionProfile.record_path(state_dir)}")
        elif args.action == "down":
            profile.stop()
            print("production profile stopped (databases kept; `reset` drops them)")
        elif args.action == "reset":
            profile.stop()
            profile.drop()
            shutil.rmtree(state_dir, ignore_errors=True)
            print(f"dropped {', '.join(profile.role(d) for d in DATABASES)} and removed {state_dir}")
        else:
            servers = profile.servers()
            for server in servers:
                print(f"{server.name:22} {'up  ' if server.healthy() else 'down'} {server.url if server.port else ''}")
            return 0 if all(server.healthy() for server in servers) else 1
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
