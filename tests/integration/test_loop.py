"""The whole loop on real servers: ingest -> simulated labeling -> collect -> audit -> retrain -> promote.

Simulated annotators are real Label Studio users (3 per item, accuracies 0.75-0.95); the
truth is the SMS collection's own labels, so the model's quality can be checked on
messages that never entered training. The pre-label backend runs from before the first model
and must end up serving the last champion, in the same process.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from labelloop.model.prelabel import CHAMPION
from labelloop.dev.stack import backend_server
from labelloop.dev.simulate import label_queue
from labelloop.spec import load_spec
from labelloop.dev.stack import free_port

from tests.integration.test_backend import served_version, wait_until
from tests.secret_scan import secret

pytestmark = pytest.mark.integration
SMS = Path(__file__).resolve().parents[2] / "include" / "demo" / "sms-spam" / "messages.jsonl"
ACCURACIES = [0.75, 0.8, 0.85, 0.9, 0.95]
BACKEND_TOKEN = secret("loop-backend-token-0123456789abcdef")


def _version(prediction) -> str:
    return prediction["model_version"] if isinstance(prediction, dict) else prediction.model_version


def write_raw(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(lines) + "\n")


def assert_queue_head_follows(spec, unlabeled, model_version: str) -> None:
    """The head of the queue (by stored priority) is the champion's most uncertain tasks, apart
    from the random share; round 1 was imported without a model, so this was the refresh, and it
    wrote only the head."""
    from labelloop.taskdata import HASH_FIELD, PRIORITY_FIELD
    from labelloop.ordering import in_random_share

    def uncertainty(task) -> float:  # generation 1: the first champion to order the queue
        score = next(_score(p) for p in task.predictions if _version(p) == model_version)
        return round(1 + round(1.0 - score, 6), 6)

    ranked = sorted(unlabeled, key=lambda t: -t.data[PRIORITY_FIELD])
    head = spec.annotation.reorder_on_promotion
    modelled = [t for t in ranked if not in_random_share(t.data[HASH_FIELD], spec.annotation.random_share)]
    head_ids = {t.id for t in ranked[:head]}
    inside = [t for t in modelled if t.id in head_ids]
    assert inside and all(t.data[PRIORITY_FIELD] == uncertainty(t) for t in inside)
    outside = [t for t in modelled if t.id not in head_ids]
    assert max(map(uncertainty, outside)) <= min(map(uncertainty, inside))
    assert all(t.data[PRIORITY_FIELD] < 1 for t in ranked[head:])  # the rest was left alone


def _score(prediction) -> float:
    return prediction["score"] if isinstance(prediction, dict) else prediction.score


@pytest.fixture
def backend(mlflow_server, session_dir):
    """Start the pre-label backend for a spec before it has any model; stopped after the test."""
    started = []

    def start(spec_path: Path):
        server = backend_server(session_dir / "loop-backend", free_port(), load_spec(spec_path).name, BACKEND_TOKEN,
                                mlflow_server.url, projects_dir=spec_path.parent, poll_seconds=1).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_loop_promotes_only_better_models(run_dag, labelstudio_hook, mlflow_server, make_spec, tmp_path,
                                          backend) -> None:
    lines = SMS.read_text().splitlines()
    write_raw(tmp_path / "raw", "round1.jsonl", lines[:2500])
    path = make_spec(annotation={"annotators_per_task": 3, "gold_fraction": 0.12, "reorder_on_promotion": 300},
                     quality={"min_gold_accuracy": 0.7, "min_kappa": 0.1, "min_alpha": 0.1},
                     model={"name": f"loop_{tmp_path.name[-8:]}", "metric": "macro_f1",
                            "promotion_margin": 0.0, "min_score": 0.85})
    spec = load_spec(path)
    client = MlflowClient()
    server = backend(path)  # serving from the start: no model yet, then whatever becomes champion
    assert served_version(server.url) is None

    # Round 1: no model yet; random order.
    assert run_dag(path, "ingest").state == "success"
    project = labelstudio_hook.find_project(spec.title)
    assert label_queue(labelstudio_hook, spec, project.id, 250, ACCURACIES, seed=1, prefix="loop") == 750
    for stage in ("collect", "audit", "retrain"):
        assert run_dag(path, stage).state == "success", stage
    first = client.get_model_version_by_alias(spec.model.name, CHAMPION)
    assert first.version == "1"
    assert client.get_model_version(spec.model.name, "1").tags["validation_status"] == "approved"

    wait_until(lambda: served_version(server.url) == f"{spec.model.name}:1", 30, "the backend to serve v1")

    # The refresh put the champion's pre-labels on the unlabeled tasks.
    unlabeled = [t for t in labelstudio_hook.iter_tasks(project.id, fields="all") if not t.annotations]
    assert unlabeled and all(any(_version(p) == f"{spec.model.name}:1" for p in t.predictions)
                             for t in unlabeled[:50])
    assert_queue_head_follows(spec, unlabeled, f"{spec.model.name}:1")

    # Round 2: new data arrives; ingest pre-labels it and orders it by the champion's uncertainty.
    write_raw(tmp_path / "raw", "round2.jsonl", lines[2500:])
    assert run_dag(path, "ingest").state == "success"
    new = [t for t in labelstudio_hook.iter_tasks(project.id, fields="all") if "round2" in t.data["labelloop_source"]]
    assert new and all(t.predictions for t in new)
    assert label_queue(labelstudio_hook, spec, project.id, 250, ACCURACIES, seed=2, prefix="loop") == 750
    for stage in ("collect", "audit", "retrain"):
        assert run_dag(path, stage).state == "success", stage
    second = client.get_model_version(spec.model.name, "2")
    champion = client.get_model_version_by_alias(spec.model.name, CHAMPION)
    promoted = second.tags["validation_status"] == "approved"
    assert champion.version == ("2" if promoted else "1")
    assert float(second.tags["candidate_score"]) >= float(second.tags["champion_score"]) or not promoted

    # A deliberately worse candidate (shuffled labels) is registered but never promoted.
    from labelloop.model.registry import decide, evaluate_champion, log_candidate, record_decision
    from labelloop.model.retrain import load_passed_audit, training_sets
    from labelloop.model.train import fit

    _, consensus, tasks = load_passed_audit(spec)
    train, evaluation = training_sets(spec, consensus, tasks)
    shuffled = train.assign(label=train["label"].sample(frac=1, random_state=0).to_numpy())
    version, metrics = log_candidate(spec.model, fit(spec.model, shuffled["text"], shuffled["label"]),
                                     shuffled, evaluation, {"snapshot": "shuffled"}, f"labelloop/{spec.name}/training")
    _, champion_metrics = evaluate_champion(client, spec.model.name, evaluation)
    decision = decide(spec.model, metrics, champion_metrics)
    assert not decision.promote
    record_decision(client, spec.model.name, version.version, decision, "rejected", "shuffled")
    assert client.get_model_version_by_alias(spec.model.name, CHAMPION).version == champion.version

    # Quality on messages that never entered training (neither labeled nor gold).
    from labelloop.model.registry import champion_history
    from labelloop.model.train import evaluate

    import mlflow

    model = mlflow.sklearn.load_model(f"models:/{spec.model.name}@{CHAMPION}")
    seen_texts = set(train["text"]) | set(evaluation["text"])
    held_out = [record for record in map(json.loads, lines) if record["text"] not in seen_texts]
    held_out_metrics = evaluate(model, [r["text"] for r in held_out], [r["label"] for r in held_out])
    print(f"held-out ({len(held_out)} messages): {held_out_metrics['accuracy']:.4f} accuracy, "
          f"{held_out_metrics['f1_spam']:.4f} spam F1")
    assert held_out_metrics["accuracy"] >= 0.98
    assert held_out_metrics["f1_spam"] >= 0.92
    assert [entry["version"] for entry in champion_history(client, spec.model.name)] == (
        ["1", "2"] if promoted else ["1"])

    # The backend that started before any model serves the champion now, without a restart.
    pid = server.process.pid
    wanted = f"{spec.model.name}:{champion.version}"
    wait_until(lambda: served_version(server.url) == wanted, 30, f"the backend to serve {wanted}")
    answer = httpx.post(f"{server.url}/predict", auth=httpx.BasicAuth("labelloop", BACKEND_TOKEN), timeout=30,
                        json={"tasks": [{"id": 1, "data": {"text": held_out[0]["text"]}}]}).json()["results"][0]
    assert answer["model_version"] == wanted
    assert server.process.pid == pid and server.process.poll() is None
