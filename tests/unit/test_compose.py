"""docker-compose.yaml agrees with the code, the pins and itself.

No Docker engine is needed: the file is parsed with PyYAML and interpolated the way
`docker compose` does it with no `.env` file, i.e. every ``${VAR:-default}`` takes its default.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from labelloop import settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKER_DIR = ROOT / "include" / "docker"
AIRFLOW_DOCKERFILE = DOCKER_DIR / "airflow.Dockerfile"
MLFLOW_DOCKERFILE = DOCKER_DIR / "mlflow.Dockerfile"
ENV_EXAMPLE = DOCKER_DIR / "env.example"
POSTGRES_INIT = DOCKER_DIR / "postgres" / "init-databases.sh"

AIRFLOW_COMMANDS = {"api-server", "scheduler", "dag-processor", "triggerer", "celery worker"}

# Keys of the Compose specification this file may use; a misspelt key (`healtcheck`) would
# otherwise be ignored silently by this test and rejected only by `docker compose`.
KNOWN_SERVICE_KEYS = set(
    """build command container_name depends_on entrypoint env_file environment expose healthcheck
    image init labels logging mem_limit networks ports profiles pull_policy read_only restart
    stop_grace_period user volumes working_dir""".split()
)
KNOWN_HEALTHCHECK_KEYS = {
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "start_interval",
}

# ---------------------------------------------------------------- compose-style interpolation

_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose interpolation: ``$$``, ``$V``, ``${V}``, ``${V:-x}``, ``${V-x}``, ``${V:?e}``."""
    env = env or {}

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"]
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?") and not value:
            raise ValueError(f"required variable {name} is not set: {arg}")
        return value or ""

    return _REFERENCE.sub(replace, text)


def variables_in(text: str) -> list[tuple[str, str | None]]:
    """(name, operator) of every variable reference in a string, ``$$`` escapes excluded."""
    return [
        (m["name"] or m["bare"], m["op"]) for m in _REFERENCE.finditer(text) if not m["escaped"]
    ]


def walk_strings(node: Any, path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk_strings(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def resolve(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: resolve(value) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value) for value in node]
    if isinstance(node, str):
        return interpolate(node)
    return node


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The file as written (anchors merged by PyYAML), before interpolation."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The file as `docker compose` sees it without a `.env` file."""
    return resolve(raw)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def flag(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def is_one_shot(service: dict[str, Any]) -> bool:
    """A run-to-completion service (init jobs) says so with `restart: "no"`."""
    return service.get("restart") in ("no", False)


def airflow_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    def built_from_airflow_dockerfile(svc: dict[str, Any]) -> bool:
        build = svc.get("build") or {}
        return isinstance(build, dict) and build.get("dockerfile", "").endswith(
            "airflow.Dockerfile"
        )

    return {name: svc for name, svc in services.items() if built_from_airflow_dockerfile(svc)}


def service_by_command(services: dict[str, dict[str, Any]], command: str) -> str:
    matches = [
        name
        for name, svc in airflow_services(services).items()
        if " ".join(command_of(svc)) == command
    ]
    assert len(matches) == 1, (
        f"expected one Airflow service running `airflow {command}`, got {matches}"
    )
    return matches[0]


def container_ports(service: dict[str, Any]) -> set[int]:
    ports = {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}
    return ports | {int(str(p).split("/")[0]) for p in service.get("expose", [])}


def published_host_ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(bind address, host port) of every published port, short syntax `[ip:]host:container`."""
    out = []
    for port in service.get("ports", []):
        parts = str(port).split("/")[0].split(":")
        assert len(parts) >= 2, f"port {port!r} is not published on a fixed host port"
        address = ":".join(parts[:-2]) or "0.0.0.0"
        out.append((address, int(parts[-2])))
    return out


def image_tag(image: str) -> str | None:
    reference = image.split("@", 1)[0]
    last = reference.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def dockerfile_from(path: Path) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", path.read_text(), flags=re.MULTILINE)


def pin(requirements: Path, package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==([^\s;#]+)", requirements.read_text(), re.MULTILINE)
    assert match, f"{package} is not pinned in {requirements.name}"
    return match.group(1)


def conn_ids_in_settings() -> dict[str, str]:
    return {name: value for name, value in vars(settings).items() if name.endswith("_CONN_ID")}


def connection(services: dict[str, dict[str, Any]], conn_id: str) -> dict[str, Any]:
    env = env_of(services[service_by_command(services, "scheduler")])
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    assert name in env, f"{name} (connection {conn_id!r} from settings.py) is not defined"
    return json.loads(env[name])


# ---------------------------------------------------------------- the file itself


def test_only_known_keys(services):
    for name, svc in services.items():
        assert set(svc) <= KNOWN_SERVICE_KEYS, (
            f"{name}: unknown keys {set(svc) - KNOWN_SERVICE_KEYS}"
        )
        if "healthcheck" in svc:
            unknown = set(svc["healthcheck"]) - KNOWN_HEALTHCHECK_KEYS
            assert not unknown, f"{name}: unknown healthcheck keys {unknown}"


def test_every_variable_has_a_default_and_is_documented(raw):
    """The stack starts without `.env`, and env.example names exactly the variables used."""
    used = set()
    for path, text in walk_strings(raw):
        for name, op in variables_in(text):
            assert op == ":-", f"{path}: ${{{name}}} needs a default: ${{{name}:-...}}"
            used.add(name)
    documented = set(
        re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    )
    assert used == documented, (
        f"missing from env.example: {sorted(used - documented)}; "
        f"unused in docker-compose.yaml: {sorted(documented - used)}"
    )


def test_images_are_pinned(services):
    for name, svc in services.items():
        if "build" in svc:
            continue
        image = svc.get("image")
        assert image, f"{name}: neither image nor build"
        tag = image_tag(image)
        assert tag and tag != "latest", f"{name}: image {image!r} must carry a fixed tag"


def test_dockerfile_base_images_are_pinned(services):
    for name, svc in services.items():
        build = svc.get("build")
        if not build:
            continue
        context = ROOT / build.get("context", ".")
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        for base in dockerfile_from(dockerfile):
            tag = image_tag(base)
            assert tag and tag != "latest" and "$" not in tag, (
                f"{dockerfile.name}: FROM {base} is not pinned"
            )
        if svc.get("image"):
            assert image_tag(svc["image"]) not in (None, "latest"), f"{name}: tag the built image"


def test_long_running_services_have_healthchecks_and_restart(services):
    for name, svc in services.items():
        assert "restart" in svc, f'{name}: say `restart: unless-stopped`, or `"no"` for a one-shot'
        if is_one_shot(svc):
            continue
        test = (svc.get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), (
            f"{name}: long-running service needs a healthcheck"
        )
        assert svc.get("restart") in ("always", "unless-stopped"), f"{name}: set a restart policy"


def test_depends_on_targets_exist_and_fit_their_condition(services):
    graph = {}
    for name, svc in services.items():
        depends_on = svc.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: depends_on needs explicit conditions"
        graph[name] = set(depends_on)
        for target, spec in depends_on.items():
            assert target in services, f"{name} depends on unknown service {target!r}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], (
                    f"{name} waits for {target} to be healthy: no healthcheck"
                )
            elif condition == "service_completed_successfully":
                assert is_one_shot(services[target]), f"{target} must be a one-shot (restart: 'no')"
            else:
                pytest.fail(
                    f"{name} -> {target}: use service_healthy or service_completed_successfully"
                )
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        pytest.fail(f"dependency cycle: {error.args[1]}")


def test_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, (
                    f"{name}: volume {source!r} is not declared at the top level"
                )
            else:
                assert (ROOT / source).exists(), f"{name}: bind-mounted {source} does not exist"


def test_published_host_ports_are_distinct_and_local_by_default(services):
    seen: dict[int, str] = {}
    for name, svc in services.items():
        for address, port in published_host_ports(svc):
            assert port not in seen, f"host port {port} published by both {seen[port]} and {name}"
            seen[port] = name
            assert address == "127.0.0.1", (
                f"{name}: publish on ${{LABELLOOP_BIND_ADDRESS:-127.0.0.1}}"
            )
    assert seen, "nothing is published"


# ---------------------------------------------------------------- versions agree with the pins


def test_airflow_image_matches_requirements():
    (base,) = dockerfile_from(AIRFLOW_DOCKERFILE)
    match = re.fullmatch(r"apache/airflow:(?P<version>[\d.]+)-python(?P<python>[\d.]+)", base)
    assert match, f"unexpected base image {base}"
    assert match["version"] == pin(ROOT / "requirements.txt", "apache-airflow")
    compiled_for = re.search(r"-p\s+(\d+\.\d+)", (ROOT / "requirements.txt").read_text())
    assert compiled_for and match["python"] == compiled_for.group(1), (
        "image Python differs from the lock's"
    )


def test_labelstudio_image_matches_requirements(services):
    assert image_tag(services["labelstudio"]["image"]) == pin(
        ROOT / "requirements-labelstudio.txt", "label-studio"
    )


def test_mlflow_image_matches_requirements(services):
    build = services["mlflow"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == MLFLOW_DOCKERFILE
    (base,) = dockerfile_from(MLFLOW_DOCKERFILE)
    assert base == f"ghcr.io/mlflow/mlflow:v{pin(ROOT / 'requirements.txt', 'mlflow')}"
    text = MLFLOW_DOCKERFILE.read_text()
    assert f'"boto3=={pin(ROOT / "requirements.txt", "boto3")}"' in text
    assert "psycopg2-binary==" in text


def test_built_image_tags_name_the_pinned_versions(services):
    airflow_version = pin(ROOT / "requirements.txt", "apache-airflow")
    for name, svc in airflow_services(services).items():
        assert image_tag(svc["image"]) == airflow_version, name
    assert image_tag(services["mlflow"]["image"]) == pin(ROOT / "requirements.txt", "mlflow")


# ---------------------------------------------------------------- Airflow


def test_airflow_runs_celery_with_every_component(services):
    airflow = airflow_services(services)
    commands = {" ".join(command_of(svc)) for svc in airflow.values()}
    assert AIRFLOW_COMMANDS <= commands, (
        f"missing Airflow components: {AIRFLOW_COMMANDS - commands}"
    )
    for name, svc in airflow.items():
        env = env_of(svc)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
        assert broker.scheme == "redis" and broker.hostname in services, name
        assert services[broker.hostname]["image"].startswith("redis:")


def test_airflow_components_share_one_configuration(services):
    """Same secrets, database and connections everywhere: the x-airflow-common anchor is used."""
    airflow = airflow_services(services)
    shared = (
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "LABELLOOP_STORE",
        settings.PROJECTS_DIR_ENV,
    )
    shared += tuple(
        f"AIRFLOW_CONN_{conn_id.upper()}" for conn_id in conn_ids_in_settings().values()
    )
    for key in shared:
        values = {name: env_of(svc).get(key) for name, svc in airflow.items()}
        assert None not in values.values(), (
            f"{key} missing in {[n for n, v in values.items() if v is None]}"
        )
        assert len(set(values.values())) == 1, f"{key} differs between Airflow services"
    assert len(env_of(next(iter(airflow.values())))["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 64, (
        "HS512 wants a JWT secret of at least 64 bytes"
    )


def test_execution_api_url_points_at_the_apiserver(services):
    apiserver = service_by_command(services, "api-server")
    url = urlsplit(env_of(services[apiserver])["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert url.hostname == apiserver
    assert url.port in container_ports(services[apiserver])
    assert url.path == "/execution/"


def test_airflow_init_migrates_and_runs_first(services):
    init = services["airflow-init"]
    assert is_one_shot(init)
    assert "airflow db migrate" in "\n".join(command_of(init))
    for name in airflow_services(services):
        if name != "airflow-init":
            condition = services[name]["depends_on"]["airflow-init"]["condition"]
            assert condition == "service_completed_successfully", name


def test_admin_password_file_is_shared_by_init_and_apiserver(services):
    path = env_of(services["airflow-init"])["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    folder = str(Path(path).parent)
    apiserver = service_by_command(services, "api-server")
    mounts = {
        name: {str(v).split(":")[1]: str(v).split(":")[0] for v in services[name]["volumes"]}
        for name in ("airflow-init", apiserver)
    }
    assert folder in mounts["airflow-init"] and folder in mounts[apiserver]
    assert mounts["airflow-init"][folder] == mounts[apiserver][folder]
    assert "AIRFLOW_ADMIN_PASSWORD" not in env_of(services[apiserver]), "only airflow-init needs it"


def test_triggerer_and_worker_wait_for_the_execution_api(services):
    apiserver = service_by_command(services, "api-server")
    for command in ("triggerer", "celery worker"):
        name = service_by_command(services, command)
        assert services[name]["depends_on"][apiserver]["condition"] == "service_healthy", name


def production_profile(tmp_path: Path) -> Any:
    from labelloop.dev.production import ProductionProfile

    profile = ProductionProfile.create(tmp_path)  # builds settings only: nothing is started
    profile.redis_db = 1
    return profile


def test_production_profile_runs_composes_airflow_settings(compose, services, tmp_path):
    """labelloop.dev.production is this file's Airflow as local processes: the same keys, fixed values,
    URL schemes and connections; only its LOCAL_PROCESS_KEYS (ports, folders) are its own."""
    from labelloop.dev.production import LOCAL_PROCESS_KEYS

    ours = production_profile(tmp_path).airflow_env()
    theirs = env_of(compose["x-airflow-common"])
    assert not LOCAL_PROCESS_KEYS & set(theirs), "a compose key is hidden among the local-process keys"
    assert set(ours) - LOCAL_PROCESS_KEYS == set(theirs), (
        f"only in the profile: {sorted(set(ours) - LOCAL_PROCESS_KEYS - set(theirs))}; "
        f"only in compose: {sorted(set(theirs) - set(ours))}"
    )
    for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__AUTH_MANAGER", "AIRFLOW__CORE__LOAD_EXAMPLES",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK", "LABELLOOP_STORE"):
        assert ours[key] == theirs[key], key
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND",
                "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"):
        mine, compose_url = urlsplit(ours[key]), urlsplit(theirs[key])
        assert (mine.scheme, bool(mine.username)) == (compose_url.scheme, bool(compose_url.username)), key
    assert urlsplit(ours["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).path == "/execution/"
    assert len(ours["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 64
    for conn_id in conn_ids_in_settings().values():
        mine = json.loads(ours[f"AIRFLOW_CONN_{conn_id.upper()}"])
        compose_conn = connection(services, conn_id)
        assert mine["conn_type"] == compose_conn["conn_type"], conn_id
        assert set(mine) == set(compose_conn), f"{conn_id}: fields differ"
        assert set(mine.get("extra", {})) == set(compose_conn.get("extra", {})), f"{conn_id}: extra differs"


def test_production_profile_labelstudio_and_mlflow_use_composes_settings(services, tmp_path):
    profile = production_profile(tmp_path)
    labelstudio = profile.labelstudio_server().env
    compose_labelstudio = env_of(services["labelstudio"])
    assert set(compose_labelstudio) <= set(labelstudio)
    per_instance = {"LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"} | {
        key for key in compose_labelstudio if key.startswith("POSTGRE_")}
    for key in set(compose_labelstudio) - per_instance:  # DJANGO_DB, SSRF, legacy token, analytics...
        assert labelstudio[key] == compose_labelstudio[key], key
    mlflow = profile.mlflow_server()
    compose_mlflow = env_of(services["mlflow"])
    assert set(compose_mlflow) <= set(mlflow.env)
    assert mlflow.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == compose_mlflow["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]
    assert urlsplit(mlflow.env["MLFLOW_BACKEND_STORE_URI"]).scheme == urlsplit(
        flag(command_of(services["mlflow"]), "--backend-store-uri")).scheme
    assert flag(mlflow.command, "--artifacts-destination") == flag(command_of(services["mlflow"]), "--artifacts-destination")


# ---------------------------------------------------------------- connections


def test_connection_env_vars_are_exactly_the_settings_ids(services):
    for name, svc in airflow_services(services).items():
        defined = {
            key.removeprefix("AIRFLOW_CONN_").lower()
            for key in env_of(svc)
            if key.startswith("AIRFLOW_CONN_")
        }
        assert defined == set(conn_ids_in_settings().values()), name


def hook_conn_types() -> set[str]:
    """conn_type class attributes declared by the project's hooks (read, not imported)."""
    found = set()
    for path in (ROOT / "plugins" / "labelloop").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if (
                        isinstance(stmt, ast.Assign)
                        and isinstance(stmt.value, ast.Constant)
                        and any(
                            isinstance(t, ast.Name) and t.id == "conn_type" for t in stmt.targets
                        )
                    ):
                        found.add(stmt.value.value)
    return found


@pytest.mark.parametrize(
    ("conn_id", "conn_type", "service", "url_field"),
    [
        (settings.LABELSTUDIO_CONN_ID, "labelstudio", "labelstudio", "host"),
        (settings.MLFLOW_CONN_ID, "http", "mlflow", "host"),
        (settings.AWS_CONN_ID, "aws", "minio", "endpoint_url"),
    ],
)
def test_connection_points_at_its_service(services, conn_id, conn_type, service, url_field):
    conn = connection(services, conn_id)
    assert conn["conn_type"] == conn_type
    url = conn["host"] if url_field == "host" else conn["extra"][url_field]
    parts = urlsplit(url)
    assert parts.scheme == "http", f"{conn_id}: host must be a URL with scheme, got {url!r}"
    assert parts.hostname == service and service in services
    assert parts.port in container_ports(services[service]), (
        f"{conn_id}: {url} is not a port of {service}"
    )


def test_labelstudio_conn_type_is_the_hooks(services):
    assert connection(services, settings.LABELSTUDIO_CONN_ID)["conn_type"] in hook_conn_types()


def test_connection_secrets_come_from_env_and_match_the_servers(raw, services):
    raw_env = raw["x-airflow-common"]["environment"]
    labelstudio = connection(services, settings.LABELSTUDIO_CONN_ID)
    assert (
        "${LABEL_STUDIO_USER_TOKEN:-"
        in raw_env[f"AIRFLOW_CONN_{settings.LABELSTUDIO_CONN_ID.upper()}"]
    )
    token = env_of(services["labelstudio"])["LABEL_STUDIO_USER_TOKEN"]
    assert labelstudio["password"] == token
    assert 5 < len(token) <= 40, (
        "Label Studio ignores tokens of 5 chars or fewer and stores at most 40"
    )

    aws = connection(services, settings.AWS_CONN_ID)
    assert "${MINIO_ROOT_PASSWORD:-" in raw_env[f"AIRFLOW_CONN_{settings.AWS_CONN_ID.upper()}"]
    minio = env_of(services["minio"])
    assert (aws["login"], aws["password"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses root passwords under 8 characters"
    assert aws["extra"]["region_name"]


def test_object_store_bucket_exists_for_airflow_and_mlflow(services):
    store = urlsplit(env_of(services["airflow-scheduler"])["LABELLOOP_STORE"])
    assert store.scheme == "s3" and store.netloc
    script = "\n".join(command_of(services["minio-init"]))
    assert re.search(rf"mc mb .*\S+/{re.escape(store.netloc)}\s*$", script, re.MULTILINE), (
        f"minio-init does not create bucket {store.netloc!r}"
    )
    destination = flag(command_of(services["mlflow"]), "--artifacts-destination")
    assert urlsplit(destination).netloc == store.netloc


def test_projects_dir_is_copied_into_the_image(services):
    projects = env_of(services["airflow-scheduler"])[settings.PROJECTS_DIR_ENV]
    copies = dict(
        re.findall(
            r"^COPY\s+(?:--\S+\s+)*(\S+)\s+(\S+)", AIRFLOW_DOCKERFILE.read_text(), re.MULTILINE
        )
    )
    assert copies.get("include/", "").rstrip("/") == str(Path(projects).parents[0]), (
        f"{settings.PROJECTS_DIR_ENV}={projects} but include/ is copied to {copies.get('include/')}"
    )
    for source in ("plugins/", "dags/", "include/", "requirements.txt"):
        assert source in copies, f"airflow.Dockerfile does not COPY {source}"


def test_airflow_build_context_ignores_everything_but_the_image_inputs(services):
    ignore = (DOCKER_DIR / "airflow.Dockerfile.dockerignore").read_text().split("\n")
    patterns = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert patterns[0] == "**", "exclude everything, then re-include what the image needs"
    copies = re.findall(
        r"^COPY\s+(?:--\S+\s+)*(\S+)\s+\S+", AIRFLOW_DOCKERFILE.read_text(), re.MULTILINE
    )
    for source in copies:
        assert f"!{source.rstrip('/')}" in patterns, (
            f"{source} is copied but excluded from the context"
        )
    for name, svc in airflow_services(services).items():
        assert svc["build"]["context"] == ".", (
            f"{name}: the Dockerfile copies from the repository root"
        )


# ---------------------------------------------------------------- Label Studio, MLflow, Postgres


def test_labelstudio_settings(services):
    env = env_of(services["labelstudio"])
    assert env["LABEL_STUDIO_SSRF_PROTECTION_ENABLED"] == "false"
    assert env["LABEL_STUDIO_ML_BLOCK_LOCAL_IP"] == "false"
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "true"
    assert env["LABEL_STUDIO_COLLECT_ANALYTICS"] == "false"
    assert env["SENTRY_DSN"] == ""
    assert env["DJANGO_DB"] == "default" and env["POSTGRE_HOST"] in services
    assert env["LABEL_STUDIO_USERNAME"] and env["LABEL_STUDIO_PASSWORD"]
    assert 8080 in container_ports(services["labelstudio"])
    assert ("127.0.0.1", 8081) in published_host_ports(services["labelstudio"])
    assert "/health" in " ".join(services["labelstudio"]["healthcheck"]["test"])


def test_mlflow_server_flags(services):
    mlflow = services["mlflow"]
    command = command_of(mlflow)
    assert command[:2] == ["mlflow", "server"]
    assert flag(command, "--workers") == "1"
    assert flag(command, "--host") == "0.0.0.0"
    allowed = flag(command, "--allowed-hosts").split(",")
    conn_netloc = urlsplit(connection(services, settings.MLFLOW_CONN_ID)["host"]).netloc
    assert "mlflow" in allowed and conn_netloc in allowed, "Airflow's Host header would be refused"
    for _, host_port in published_host_ports(mlflow):
        assert f"localhost:{host_port}" in allowed and f"127.0.0.1:{host_port}" in allowed
    backend = urlsplit(flag(command, "--backend-store-uri"))
    assert backend.scheme == "postgresql" and backend.hostname in services
    env = env_of(mlflow)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert urlsplit(env["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        env_of(services["minio"])["MINIO_ROOT_USER"],
        env_of(services["minio"])["MINIO_ROOT_PASSWORD"],
    )


def database_clients(services) -> dict[str, tuple[str, str, str]]:
    """client -> (role, password, database) it logs into Postgres with."""
    airflow = urlsplit(env_of(services["airflow-scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    mlflow = urlsplit(flag(command_of(services["mlflow"]), "--backend-store-uri"))
    ls = env_of(services["labelstudio"])
    return {
        "airflow": (airflow.username, airflow.password, airflow.path.lstrip("/")),
        "mlflow": (mlflow.username, mlflow.password, mlflow.path.lstrip("/")),
        "labelstudio": (ls["POSTGRE_USER"], ls["POSTGRE_PASSWORD"], ls["POSTGRE_NAME"]),
    }


def test_postgres_init_creates_every_clients_role_and_database(services):
    postgres = services["postgres"]
    assert any(
        str(v).startswith(
            "./include/docker/postgres/init-databases.sh:/docker-entrypoint-initdb.d/"
        )
        for v in postgres["volumes"]
    ), "the init script is not mounted"
    created = dict(
        re.findall(r'^create_database (\w+) "\$\{(\w+):\?', POSTGRES_INIT.read_text(), re.MULTILINE)
    )
    postgres_env = env_of(postgres)
    for client, (role, password, database) in database_clients(services).items():
        assert role == database, f"{client}: the init script creates role and database of one name"
        assert database in created, (
            f"{client}: database {database!r} is not created by the init script"
        )
        assert postgres_env[created[database]] == password, (
            f"{client}: password differs from the role's"
        )
    assert POSTGRES_INIT.stat().st_mode & 0o111, "init-databases.sh must be executable"


def test_postgres_healthcheck_uses_tcp(services):
    """Over the unix socket, pg_isready reports ready while the init scripts still run."""
    test = services["postgres"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(test) and "-h" in test


# ---------------------------------------------------------------- optional: the real parser


def test_docker_compose_config_accepts_the_file():
    """Only where the Compose v2 plugin exists (it needs no engine for `config`)."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("docker compose (v2) is not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
