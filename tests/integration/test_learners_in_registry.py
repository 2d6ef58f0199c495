"""Spans and multiple choices through the model loop on a real MLflow server.

A spans spec's retrain (``retrain.retrain``, from a passed audit's consensus and a snapshot's
gold, written where the audit and collect DAGs write them) trains spaCy's beam_ner, logs it
with MLflow's spaCy flavor, registers it and, as the first model above the floor, it is
promoted. A candidate trained on shuffled labels is registered, evaluated against the
champion on the same gold, and not promoted. The pre-label backend then serves the champion:
/predict answers Label Studio span results. The multi-label model goes through the same
registry steps.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from labelloop.model.prelabel import CHAMPION
from labelloop.dev.stack import backend_server
from labelloop.spec import load_spec
from labelloop.dev.stack import free_port

from tests.integration.test_backend import wait_until
from tests.unit.test_models_per_type import ITEMS, SETS_XML, SPANS_XML, TYPES, set_rows

pytestmark = pytest.mark.integration
TOKEN = "models-per-type-token-0123456789"


def items() -> list[dict[str, Any]]:
    found = [json.loads(line) for line in ITEMS.read_text().splitlines()]
    random.Random(0).shuffle(found)
    return found


def write_audit(store: Path, train: list[dict[str, Any]], gold: list[dict[str, Any]]) -> None:
    """A passed audit's consensus as the audit DAG writes it (one row per item: the training
    spans as Label Studio results, JSON text) and the snapshot's tasks (gold carried as the task
    meta keeps it: JSON text of [start, end, label] rows)."""
    consensus = pd.DataFrame({
        "task_id": range(1, len(train) + 1), "item_id": [item["id"] for item in train], "label": None,
        "result": [json.dumps([{"from_name": "label", "to_name": "text", "type": "labels",
                                "value": {"start": s, "end": e, "labels": [label]}} for s, e, label in item["gold"]])
                   for item in train],
        "confidence": 0.95, "source": "consensus"})
    every = train + gold
    tasks = pd.DataFrame({
        "task_id": range(1, len(every) + 1), "item_id": [item["id"] for item in every],
        "data": [json.dumps({"text": item["text"]}) for item in every],
        "gold_label": [None] * len(train) + [json.dumps(item["gold"]) for item in gold]})
    (store / "audit" / "a1").mkdir(parents=True)
    (store / "collect" / "snapshots" / "s1").mkdir(parents=True)
    consensus.to_parquet(store / "audit" / "a1" / "consensus.parquet", index=False)
    tasks.to_parquet(store / "collect" / "snapshots" / "s1" / "tasks.parquet", index=False)
    (store / "audit" / "passed.json").write_text(json.dumps({"audit": "a1", "snapshot": "s1"}))


def test_spans_retrain_promote_and_serve(mlflow_server: Any, make_spec: Any, tmp_path: Path,
                                         session_dir: Path) -> None:
    from labelloop.model.registry import decide, evaluate_champion, log_candidate
    from labelloop.model.retrain import load_passed_audit, promote, retrain, training_sets

    config = tmp_path / "spans.xml"
    config.write_text(SPANS_XML)
    store = tmp_path / "store"
    name = f"spans_it_{time.time_ns()}"
    spec_path = make_spec(labeling_config=str(config), labels=TYPES, storage_uri=f"file://{store}",
                          model={"name": name, "metric": None, "min_score": 0.4, "params": {"epochs": 8}})
    spec = load_spec(spec_path)
    everything = items()
    write_audit(store, everything[:400], everything[400:700])

    started = time.perf_counter()
    outcome = retrain(spec, mlflow_server.url)
    print(f"spans retrain: {time.perf_counter() - started:.1f} s, candidate {outcome['candidate']}")
    assert outcome["promote"] and outcome["version"] == "1" and outcome["n_eval"] == 300
    assert 0.5 <= outcome["candidate"]["span_f1"] <= 1
    assert promote(spec, mlflow_server.url, outcome, "test")
    client = MlflowClient(tracking_uri=mlflow_server.url)
    champion = client.get_model_version_by_alias(name, CHAMPION)
    assert champion.version == "1" and float(champion.tags["candidate_score"]) == pytest.approx(
        outcome["candidate"]["span_f1"], abs=1e-4)

    # A candidate trained on shuffled labels is registered and evaluated on the same gold, never promoted.
    learner = spec.task_type.learner()
    _, consensus, tasks = load_passed_audit(spec)
    train, evaluation = training_sets(spec, consensus, tasks)
    spans = train["label"].notna()
    shuffled = train.copy()
    shuffled.loc[spans, "label"] = train.loc[spans, "label"].sample(frac=1, random_state=0).to_numpy()
    version, metrics = log_candidate(spec.model, learner.fit(spec.model, shuffled), shuffled, evaluation,
                                     {"snapshot": "shuffled"}, f"labelloop/{spec.name}/training", learner=learner)
    _, champion_metrics = evaluate_champion(client, name, evaluation, learner)
    assert champion_metrics["span_f1"] == pytest.approx(outcome["candidate"]["span_f1"], abs=1e-4)
    decision = decide(spec.model, metrics, champion_metrics, learner)
    print(f"shuffled candidate: span F1 {metrics['span_f1']:.3f} vs champion {champion_metrics['span_f1']:.3f}")
    assert version.version == "2" and not decision.promote
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"

    # The backend serves the spaCy champion: span results on the task's text.
    backend = backend_server(session_dir / "models-backend", free_port(), spec.name, TOKEN, mlflow_server.url,
                             projects_dir=spec_path.parent, poll_seconds=1).start()
    try:
        wait_until(lambda: httpx.get(f"{backend.url}/health", timeout=5).json()["model_version"] == f"{name}:1",
                   90, "the backend to load the spans champion")
        text = "Wayne Ferreira ( South Africa ) beat Thomas Enqvist ( Sweden ) in Toronto ."
        answer = httpx.post(f"{backend.url}/predict", json={"tasks": [{"id": 1, "data": {"text": text}}]},
                            auth=httpx.BasicAuth("labelloop", TOKEN), timeout=60).json()
    finally:
        backend.stop()
    prediction = answer["results"][0]
    assert prediction["model_version"] == f"{name}:1" and 0 <= prediction["score"] <= 1
    spans = [(r["value"]["text"], r["value"]["labels"][0]) for r in prediction["result"]]
    print(f"served: {spans}")
    assert prediction["result"] and all(r["type"] == "labels" and r["from_name"] == "label" and
                                        text[r["value"]["start"]:r["value"]["end"]] == r["value"]["text"]
                                        for r in prediction["result"])
    assert {label for _, label in spans} <= set(TYPES) and ("Sweden", "LOC") in spans


def test_multilabel_candidate_promoted_only_when_better(mlflow_server: Any, make_spec: Any,
                                                        tmp_path: Path) -> None:
    from labelloop.model.registry import decide, evaluate_champion, log_candidate, move_champion

    config = tmp_path / "sets.xml"
    config.write_text(SETS_XML)
    name = f"sets_it_{time.time_ns()}"
    spec = load_spec(make_spec(labeling_config=str(config), labels=TYPES, model={"name": name, "metric": None, "min_score": 0.5}))
    learner = spec.task_type.learner()
    everything = items()
    train, evaluation = set_rows(everything[:2000]), set_rows(everything[2000:])
    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = f"labelloop/{spec.name}/training"

    version, metrics = log_candidate(spec.model, learner.fit(spec.model, train), train, evaluation,
                                     {"snapshot": "s1"}, experiment, learner=learner)
    first = decide(spec.model, metrics, evaluate_champion(client, name, evaluation, learner), learner)
    assert first.promote and metrics["macro_f1"] >= 0.6
    move_champion(client, name, version.version, first.reason, "test")

    per_item = train.groupby("item_id", sort=False)["label"].agg(list)
    shuffled_sets = per_item.sample(frac=1, random_state=0).to_numpy()
    shuffled = pd.DataFrame([{"item_id": item, "text": text, "label": label}
                             for (item, text), labels in zip(train.drop_duplicates("item_id")[["item_id", "text"]]
                                                             .itertuples(index=False), shuffled_sets)
                             for label in labels])
    worse, worse_metrics = log_candidate(spec.model, learner.fit(spec.model, shuffled), shuffled, evaluation,
                                         {"snapshot": "shuffled"}, experiment, learner=learner)
    _, champion_metrics = evaluate_champion(client, name, evaluation, learner)
    decision = decide(spec.model, worse_metrics, champion_metrics, learner)
    print(f"multi-label: champion macro-F1 {champion_metrics['macro_f1']:.3f}, "
          f"shuffled {worse_metrics['macro_f1']:.3f}")
    assert champion_metrics["macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert not decision.promote and client.get_model_version_by_alias(name, CHAMPION).version == version.version
