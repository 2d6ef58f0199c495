"""Spans and multiple choices through the whole loop with a model, on real servers: ingest ->
real crowd answers (CoNLL MTurk workers, each a Label Studio user) -> collect -> audit ->
retrain (registered, promoted only if better) -> pre-labels on the unlabeled tasks, and for
spans the pre-label backend, started before any model, serving the champion.

The specs are the shipped ``conll_ner`` and ``conll_entity_types`` with a unique name, title,
storage and model. A multiple-choice answer is the set of entity types a worker's spans
carry, so both projects replay the same real answers.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from labelloop.dev import simulate
from labelloop.model.prelabel import CHAMPION
from labelloop.spec import load_spec

from tests.integration.test_backend import served_version, wait_until
from tests.integration.test_loop import BACKEND_TOKEN, backend  # noqa: F401 (a fixture)
from tests.integration.test_spans_loop import CONLL, Span, span_results

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ANSWERS_PER_SENTENCE = 3


def crowd_sentences(n: int, seed: int) -> list[tuple[dict[str, Any], dict[str, set[Span]]]]:
    """``n`` sentences of distinct text that at least three workers answered, in a seeded order
    (mixing documents), each with its first three workers' real spans."""
    crowd: dict[str, dict[str, set[Span]]] = {}
    for line in (CONLL / "crowd_spans.jsonl").open():
        answer = json.loads(line)
        crowd.setdefault(answer["item_id"], {})[answer["annotator_id"]] = {tuple(s) for s in answer["spans"]}
    items = [json.loads(line) for line in (CONLL / "items.jsonl").open()]
    answered = [item for item in items if len(crowd.get(item["id"], {})) >= ANSWERS_PER_SENTENCE]
    unique = list({item["text"]: item for item in answered}.values())  # ingest merges twins
    random.Random(seed).shuffle(unique)
    return [(item, dict(list(crowd[item["id"]].items())[:ANSWERS_PER_SENTENCE])) for item in unique[:n]]


def shipped_spec(tmp_path: Path, shipped: str, **overrides: Any) -> Path:
    """A shipped spec of include/projects with a unique name, title and storage in ``tmp_path``."""
    raw = yaml.safe_load((REPO / "include" / "projects" / f"{shipped}.yaml").read_text())
    name = f"t_{uuid.uuid4().hex[:10]}"
    raw.update(name=name, title=f"test {name}", storage_uri=f"file://{tmp_path / 'store'}",
               labeling_config=str(REPO / "include" / raw["labeling_config"]),
               guidelines=str(REPO / "include" / raw["guidelines"]))
    raw["source"]["uri"] = f"file://{tmp_path / 'raw'}/"
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    folder = tmp_path / "projects"
    folder.mkdir()
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def to_answer(hook: Any, spec: Any, sentences: list[Any], n_train: int, n_gold: int) -> list[Any]:
    """The sentences the crowd answers: the first ``n_train`` that ingest did not make gold (what
    the model learns from) and the first ``n_gold`` gold ones (what the audit scores workers on).
    The rest stay unlabeled: the model's pre-labels go there, and the gold ones evaluate it."""
    project = hook.find_project(spec.title)
    gold = {task.data["labelloop_id"] for task in hook.iter_tasks(project.id, fields="all") if task.meta["gold"]}
    plain = [sentence for sentence in sentences if sentence[0]["id"] not in gold]
    marked = [sentence for sentence in sentences if sentence[0]["id"] in gold]
    assert len(plain) >= n_train and len(marked) >= 2 * n_gold
    return plain[:n_train] + marked[:n_gold]


def replay(hook: Any, spec: Any, answers: list[tuple[str, str, list[dict[str, Any]]]]) -> None:
    """Each (item id, worker, results) as an annotation by that worker's own Label Studio user."""
    project = hook.find_project(spec.title)
    tasks = {task.data["labelloop_id"]: task.id for task in hook.iter_tasks(project.id, fields="all")}
    workers = sorted({worker for _, worker, _ in answers})
    users = simulate.ensure_annotators(hook, len(workers), spec.name.replace("_", "-"))
    user_of = {worker: user.id for worker, user in zip(workers, users)}

    def create(answer: tuple[str, str, list[dict[str, Any]]]) -> None:
        item, worker, results = answer
        hook.create_annotation(tasks[item], results, completed_by=user_of[worker], lead_time=5.0)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create, answers))


def unlabeled_tasks(hook: Any, spec: Any) -> list[Any]:
    project = hook.find_project(spec.title)
    return [task for task in hook.iter_tasks(project.id, fields="all") if not task.annotations]


def prediction_of(task: Any, model_version: str) -> dict[str, Any]:
    """The task's prediction by ``model_version`` (the SDK gives objects or plain dicts)."""
    found = [p if isinstance(p, dict) else p.model_dump() for p in task.predictions]
    [prediction] = [p for p in found if p["model_version"] == model_version]
    return prediction


def assert_queue_ordered_by_uncertainty(spec: Any, unlabeled: list[Any], model_version: str) -> None:
    """After the refresh the queue's head is the new champion's most uncertain tasks: each rescored
    task outside the random share has priority generation + 1 - its prediction's score, and the
    head ranks before every task an earlier generation scored."""
    from labelloop.model.retrain import queue_generation
    from labelloop.ordering import in_random_share
    from labelloop.taskdata import HASH_FIELD, PRIORITY_FIELD

    generation = queue_generation(spec)
    head = [task for task in unlabeled if task.data[PRIORITY_FIELD] >= generation]
    modelled = [task for task in head if not in_random_share(task.data[HASH_FIELD], spec.annotation.random_share)]
    assert generation == 1 and modelled, (generation, len(head))
    for task in modelled:
        expected = round(generation + 1 - prediction_of(task, model_version)["score"], 6)
        assert task.data[PRIORITY_FIELD] == pytest.approx(expected, abs=2e-6), task.id
    rest = [task.data[PRIORITY_FIELD] for task in unlabeled if task not in head]
    assert not rest or max(rest) < min(task.data[PRIORITY_FIELD] for task in head)
    print(f"{spec.name}: queue head of {len(head)} ({len(modelled)} by uncertainty) ordered by the champion")


def run_stages(run_dag: Any, path: Path, *stages: str) -> None:
    for stage in stages:
        assert run_dag(path, stage).state == "success", stage


def test_spans_loop_trains_promotes_and_prelabels(run_dag, labelstudio_hook, mlflow_server, tmp_path,
                                                  backend) -> None:  # noqa: F811
    started = time.perf_counter()
    hook = labelstudio_hook
    sentences = crowd_sentences(400, seed=1)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "sentences.jsonl").write_text("".join(
        json.dumps({"id": item["id"], "text": item["text"], "entities": item["gold"]}) + "\n"
        for item, _ in sentences))
    model_name = f"ner_{tmp_path.name[-8:]}_{uuid.uuid4().hex[:6]}"
    path = shipped_spec(
        tmp_path, "conll_ner", annotation={"gold_fraction": 0.25},
        quality={"min_gold_f1": 0.4, "min_span_f1": 0.4, "min_consensus_confidence": 0.0},
        model={"name": model_name, "min_score": 0.3, "promotion_margin": 0.005, "params": {"epochs": 8}})
    spec = load_spec(path)
    server = backend(path)  # serving from the start: no model yet, then the champion
    assert served_version(server.url) is None

    run_stages(run_dag, path, "setup", "ingest")
    answered = to_answer(hook, spec, sentences, 200, 20)
    replayed = [(item["id"], worker, span_results(spans, item["text"]))
                for item, crowd in answered for worker, spans in crowd.items()]
    replay(hook, spec, replayed)
    print(f"spans: {len(replayed)} real answers replayed, {time.perf_counter() - started:.0f} s")
    run_stages(run_dag, path, "collect", "audit")
    gate = json.loads(next((tmp_path / "store" / "audit").glob("*/gate.json")).read_text())
    assert gate["passed"], gate["summary"]

    run_stages(run_dag, path, "retrain")
    client = MlflowClient(tracking_uri=mlflow_server.url)
    champion = client.get_model_version_by_alias(model_name, CHAMPION)
    score = float(champion.tags["candidate_score"])
    print(f"spans: version 1 span F1 {score:.3f} on gold, {time.perf_counter() - started:.0f} s")
    assert champion.version == "1" and champion.tags["validation_status"] == "approved" and score >= 0.3

    # Retraining on the same data is skipped: nothing new to learn, the champion stays.
    retrain = run_dag(path, "retrain")
    assert {ti.task_id: str(ti.state) for ti in retrain.get_task_instances()}["train"] == "skipped"
    assert [v.version for v in client.search_model_versions(f"name='{model_name}'")] == ["1"]
    assert client.get_model_version_by_alias(model_name, CHAMPION).version == "1"
    # Forced, the same data trains the same model (seeded): registered, not better by the margin, not promoted.
    assert run_dag(path, "retrain", run_conf={"force": True}).state == "success"
    second = client.get_model_version(model_name, "2")
    print(f"spans: forced version 2 span F1 {float(second.tags['candidate_score']):.3f}: "
          f"{second.tags['validation_status']}")
    assert second.tags["validation_status"] == "rejected"
    assert client.get_model_version_by_alias(model_name, CHAMPION).version == "1"

    # The unlabeled tasks carry the champion's span predictions, offsets on their own text.
    wanted = f"{model_name}:1"
    unlabeled = unlabeled_tasks(hook, spec)
    assert {task.data["labelloop_id"] for task in unlabeled} == (
        {item["id"] for item, _ in sentences} - {item["id"] for item, _ in answered})
    marked = 0
    for task in unlabeled:
        prediction = prediction_of(task, wanted)
        assert 0 <= prediction["score"] <= 1
        for result in prediction["result"]:
            value = result["value"]
            assert result["type"] == "labels" and result["from_name"] == "entities"
            assert task.data["text"][value["start"]:value["end"]] == value["text"] and value["labels"][0] in spec.labels
        marked += bool(prediction["result"])
    print(f"spans: {marked} of {len(unlabeled)} unlabeled tasks pre-labeled with spans")
    assert marked >= len(unlabeled) // 2
    assert_queue_ordered_by_uncertainty(spec, unlabeled, wanted)

    # The backend that started before any model serves the champion's spans, without a restart.
    wait_until(lambda: served_version(server.url) == wanted, 60, f"the backend to serve {wanted}")
    task = max(unlabeled, key=lambda t: len(prediction_of(t, wanted)["result"]))
    answer = httpx.post(f"{server.url}/predict", auth=httpx.BasicAuth("labelloop", BACKEND_TOKEN), timeout=60,
                        json={"tasks": [{"id": task.id, "data": {"text": task.data["text"]}}]}).json()["results"][0]
    assert answer["model_version"] == wanted
    served = {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in answer["result"]}
    stored = {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0])
              for r in prediction_of(task, wanted)["result"]}
    assert served and served == stored
    print(f"spans loop: {time.perf_counter() - started:.0f} s")

    # `python -m labelloop simulate` answers a spans project: a perfect annotator marks the known
    # spans, one who misses every span marks nothing.
    never = tmp_path / "misses-all.json"
    never.write_text(json.dumps({"miss": 1.0}))
    prefix = f"cli-{spec.name[-6:]}"
    assert simulate.main(["--project", spec.name, "--count", "3", "--skills", "1.0", str(never), "--per-task", "2",
                          "--prefix", prefix]) == 0
    users = {user.id: user.username for user in simulate.ensure_annotators(hook, 2, prefix)}
    simulated = [task for task in hook.iter_tasks(hook.find_project(spec.title).id, fields="all")
                 if any(a["completed_by"] in users for a in task.annotations)]
    assert len(simulated) == 3
    for task in simulated:
        marked = {users[a["completed_by"]]: sorted((r["value"]["start"], r["value"]["end"], r["value"]["labels"][0])
                                                   for r in a["result"]) for a in task.annotations}
        assert marked == {f"{prefix}-01": sorted(map(tuple, json.loads(task.meta["label"]))), f"{prefix}-02": []}


def test_multilabel_loop_trains_promotes_and_prelabels(run_dag, labelstudio_hook, mlflow_server,
                                                       tmp_path) -> None:
    started = time.perf_counter()
    hook = labelstudio_hook
    sentences = crowd_sentences(260, seed=2)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "sentences.jsonl").write_text("".join(
        json.dumps({"id": item["id"], "text": item["text"],
                    "entity_types": sorted({label for _, _, label in item["gold"]})}) + "\n"
        for item, _ in sentences))
    model_name = f"types_{tmp_path.name[-8:]}_{uuid.uuid4().hex[:6]}"
    path = shipped_spec(
        tmp_path, "conll_entity_types", annotation={"gold_fraction": 0.25},
        quality={"min_gold_hamming_accuracy": 0.7, "min_label_alpha": 0.3, "min_consensus_confidence": 0.0},
        model={"name": model_name, "min_score": 0.2, "promotion_margin": 0.005})
    spec = load_spec(path)

    run_stages(run_dag, path, "setup", "ingest")
    answered = to_answer(hook, spec, sentences, 120, 15)
    replayed = []
    for item, crowd in answered:
        for worker, spans in crowd.items():
            chosen = [label for label in spec.labels if label in {label for _, _, label in spans}]
            replayed.append((item["id"], worker, [{"from_name": "entity_types", "to_name": "text", "type": "choices",
                                                   "value": {"choices": chosen}}] if chosen else []))
    replay(hook, spec, replayed)
    run_stages(run_dag, path, "collect", "audit", "retrain")
    client = MlflowClient(tracking_uri=mlflow_server.url)
    champion = client.get_model_version_by_alias(model_name, CHAMPION)
    score = float(champion.tags["candidate_score"])
    assert champion.version == "1" and score >= 0.2

    wanted = f"{model_name}:1"
    unlabeled = unlabeled_tasks(hook, spec)
    assert len(unlabeled) == len(sentences) - len(answered)
    sets = []
    for task in unlabeled:
        prediction = prediction_of(task, wanted)
        for result in prediction["result"]:
            assert result["type"] == "choices" and result["from_name"] == "entity_types"
            assert set(result["value"]["choices"]) <= set(spec.labels)
        sets.append([label for result in prediction["result"] for label in result["value"]["choices"]])
    assert_queue_ordered_by_uncertainty(spec, unlabeled, wanted)
    several = sum(len(chosen) >= 2 for chosen in sets)
    print(f"multi-label: macro-F1 {score:.3f} on gold; {several} of {len(sets)} pre-labels with several labels; "
          f"{time.perf_counter() - started:.0f} s")
    assert several >= 1
