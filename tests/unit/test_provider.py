"""labelloop as an installed Airflow provider: the `labelstudio` connection type reaches the UI.

Airflow registers connection types only from installed providers (the `apache_airflow_provider`
entry point), never from plugins/. These checks run Airflow in a subprocess with a fresh
AIRFLOW_HOME and without plugins/ on PYTHONPATH, so what they see is the installed package,
as the API server sees it, and no ProvidersManager cached by this test session.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
INSTALL = "--no-deps --no-build-isolation -e"


def run_python(code: str, tmp_path: Path, *args: str) -> str:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"
           and not key.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow-home"), AIRFLOW__CORE__LOAD_EXAMPLES="false")
    command = [sys.executable, "-c", code] if code else [str(Path(sys.executable).parent / "airflow"), *args]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_provider_info_is_valid_and_light(tmp_path) -> None:
    """Valid against Airflow's runtime schema; importing it loads neither Airflow nor an SDK
    (every Airflow component calls it at start-up)."""
    import airflow

    from labelloop.provider import get_provider_info

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)
    loaded = run_python("import sys; from labelloop.provider import get_provider_info; get_provider_info(); "
                        "print(sorted({m.split('.')[0] for m in sys.modules}))", tmp_path)
    assert not {"airflow", "httpx", "label_studio_sdk", "pandas"} & set(json.loads(loaded.replace("'", '"')))


def test_installed_provider_registers_the_connection_form(tmp_path) -> None:
    """What the UI's connection form is built from (HookMetaService, behind /ui/connections/hook_meta)."""
    out = run_python("""
import json, labelloop
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
from airflow.providers_manager import ProvidersManager
pm = ProvidersManager()
[meta] = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "labelstudio"]
print(json.dumps({
    "package": labelloop.__file__,
    "provider": pm.providers["labelloop"].data["package-name"],
    "hook": pm.hooks["labelstudio"].hook_class_name,
    "behaviour": pm.field_behaviours["labelstudio"],
    "meta": meta.model_dump(mode="json"),
}))
""", tmp_path)
    seen = json.loads(out.strip().splitlines()[-1])
    # The editable install and plugins/ are the same files: nothing to shadow or drift.
    assert Path(seen["package"]) == REPO / "plugins" / "labelloop" / "__init__.py"
    assert seen["provider"] == "labelloop"
    assert seen["hook"] == "labelloop.hooks.labelstudio.LabelStudioHook"
    from labelloop.hooks.labelstudio import LabelStudioHook

    assert seen["behaviour"] == LabelStudioHook.get_ui_field_behaviour()
    meta = seen["meta"]
    assert meta["hook_name"] == "Label Studio"
    fields = meta["standard_fields"]
    assert fields["host"]["title"] == "Label Studio URL" and fields["password"]["title"] == "API token"
    assert fields["host"]["placeholder"] == "http://label-studio:8080"
    assert fields["login"]["hidden"] and fields["port"]["hidden"] and fields["url_schema"]["hidden"]


def test_airflow_providers_list_shows_labelloop(tmp_path) -> None:
    from labelloop import __version__

    out = run_python("", tmp_path, "providers", "list", "--output", "json")
    listed = {entry["package_name"]: entry for entry in json.loads(out[out.index("["):])}
    assert listed["labelloop"]["version"] == __version__


def test_project_dependencies_follow_requirements_in() -> None:
    """[project] names what requirements.in names, with the same bounds (its pins become lower bounds)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {Requirement(line).name: Requirement(line) for line in
                [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]}
    for line in (REPO / "requirements.in").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        wanted = Requirement(line)
        assert wanted.name in declared, f"requirements.in names {wanted.name}; pyproject.toml [project] does not"
        got = declared[wanted.name]
        assert got.extras == wanted.extras, f"{wanted.name}: extras {got.extras} != {wanted.extras}"
        expected = {str(spec).replace("==", ">=", 1) for spec in wanted.specifier}
        assert {str(spec) for spec in got.specifier} == expected, (
            f"{wanted.name}: pyproject.toml says {got.specifier or 'no bound'}, requirements.in {wanted.specifier}")


def test_every_install_path_installs_the_provider_the_same_way() -> None:
    """make setup (and so make test, make demo and CI) and the Airflow image: after the lock,
    --no-deps (nothing re-resolved), editable (one copy of the code)."""
    makefile = (REPO / "Makefile").read_text()
    assert makefile.count(f"{INSTALL} .") == 2  # with uv, and with plain pip
    target = re.search(r"^\$\(VENV\)/\.installed:.*?(?=^\S)", makefile, re.MULTILINE | re.DOTALL).group(0)
    assert "install_labelloop" in target and "pyproject.toml" in target.splitlines()[0]
    dockerfile = (REPO / "include" / "docker" / "airflow.Dockerfile").read_text()
    assert re.search(r"^COPY\s.*pyproject\.toml /opt/airflow/pyproject\.toml$", dockerfile, re.MULTILINE)
    assert f"pip install --no-cache-dir {INSTALL} /opt/airflow" in dockerfile
    assert dockerfile.index("requirements.txt\n") < dockerfile.index(INSTALL)
    assert "make test" in (REPO / ".ci" / "run").read_text()
