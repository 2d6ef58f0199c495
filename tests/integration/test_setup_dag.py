"""The setup DAG creates the project from its spec, then brings it up to date, idempotently."""

import pytest
import yaml

from labelloop.spec import load_spec

pytestmark = pytest.mark.integration


def test_setup_creates_then_updates(run_dag, labelstudio_hook, make_spec) -> None:
    def run_setup(path):
        assert run_dag(path, "setup").state == "success"

    path = make_spec()
    spec = load_spec(path)
    run_setup(path)
    project = labelstudio_hook.find_project(spec.title)
    assert project is not None
    created = labelstudio_hook.client.projects.get(project.id)
    assert created.maximum_annotations == 3
    assert 'name="label"' in created.label_config
    assert "spam" in created.expert_instruction

    raw = yaml.safe_load(path.read_text())
    raw["annotation"]["annotators_per_task"] = 5
    raw["description"] = "changed"
    path.write_text(yaml.safe_dump(raw))
    run_setup(path)
    run_setup(path)  # and again: nothing left to change
    updated = labelstudio_hook.client.projects.get(project.id)
    assert updated.id == project.id
    assert (updated.maximum_annotations, updated.description) == (5, "changed")
    assert [p.id for p in labelstudio_hook.client.projects.list(title=spec.title)] == [project.id]
