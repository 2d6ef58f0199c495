"""The pre-label model of each task type, trained on real annotated text (CoNLL-2003 sentences
of tests/data/conll-mturk-dev, with their gold entity spans, and the set of entity types each
sentence contains as a multi-label answer).

Each model must learn something real: on sentences it never saw it must clearly beat a
baseline that needs no learning, and its predictions must be valid Label Studio results with
scores and uncertainties in [0, 1]. The single-choice type must still be today's model.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from labelloop.model.learner import promotion_metric
from labelloop.model.train import evaluate, fit, numeric
from labelloop.spec import Model, load_spec
from labelloop.tasktypes import read_controls

ITEMS = Path(__file__).resolve().parents[1] / "data" / "conll-mturk-dev" / "items.jsonl"
SMS = Path(__file__).resolve().parents[2] / "include" / "demo" / "sms-spam" / "messages.jsonl"
TYPES = ["PER", "LOC", "ORG", "MISC"]
TEXT = '<Text name="text" value="$text"/>'
SPANS_XML = (f'<View>{TEXT}<Labels name="label" toName="text">'
             f'{"".join(f"<Label value={t!r}/>" for t in TYPES)}</Labels></View>')
SETS_XML = (f'<View>{TEXT}<Choices name="label" toName="text" choice="multiple">'
            f'{"".join(f"<Choice value={t!r}/>" for t in TYPES)}</Choices></View>')
N_TRAIN, N_TEST = 400, 400


@pytest.fixture(scope="module")
def sentences() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out): a seeded shuffle, so both mix the collection's documents."""
    items = [json.loads(line) for line in ITEMS.read_text().splitlines()]
    random.Random(0).shuffle(items)
    return items[:N_TRAIN], items[N_TRAIN:N_TRAIN + N_TEST]


def span_rows(items: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for item in items:
        rows += [{"item_id": item["id"], "text": item["text"], "start": s, "end": e, "label": label}
                 for s, e, label in item["gold"]] or [
            {"item_id": item["id"], "text": item["text"], "start": None, "end": None, "label": None}]
    return pd.DataFrame(rows)


def set_rows(items: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for item in items:
        rows += [{"item_id": item["id"], "text": item["text"], "label": label}
                 for label in sorted({label for _, _, label in item["gold"]})] or [
            {"item_id": item["id"], "text": item["text"], "label": None}]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def span_model(sentences: Any) -> tuple[Any, Any, float]:
    learner = read_controls(SPANS_XML)[0].learner()
    started = time.perf_counter()
    model = learner.fit(Model(name="ner", params={"epochs": 8}), span_rows(sentences[0]))
    return learner, model, time.perf_counter() - started


def lexicon_f1(train: list[dict[str, Any]], test: list[dict[str, Any]]) -> float:
    """The baseline: every training entity string, found again as whole words, gets its most
    frequent training label (memorizing names, no learning)."""
    seen: dict[str, Counter[str]] = {}
    for item in train:
        for start, end, label in item["gold"]:
            seen.setdefault(item["text"][start:end], Counter())[label] += 1
    lexicon = {name: labels.most_common(1)[0][0] for name, labels in seen.items()}
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(n)}(?!\w)" for n in sorted(lexicon, key=len, reverse=True)))
    tp = n_predicted = n_gold = 0
    for item in test:
        predicted = {(m.start(), m.end(), lexicon[m.group()]) for m in pattern.finditer(item["text"])}
        gold = {tuple(span) for span in item["gold"]}
        tp, n_predicted, n_gold = tp + len(predicted & gold), n_predicted + len(predicted), n_gold + len(gold)
    return 2 * tp / (n_predicted + n_gold)


def test_span_model_learns_entities(sentences: Any, span_model: Any) -> None:
    learner, model, seconds = span_model
    train, test = sentences
    metrics = learner.evaluate(model, span_rows(test))
    baseline = lexicon_f1(train, test)
    print(f"spans: {N_TRAIN} sentences x 8 epochs in {seconds:.1f} s; held-out exact-span F1 "
          f"{metrics['span_f1']:.3f} (P {metrics['precision']:.3f}, R {metrics['recall']:.3f}); "
          f"lexicon baseline {baseline:.3f}")
    assert metrics["n_eval"] == N_TEST
    assert metrics["span_f1"] >= 0.55 and metrics["span_f1"] >= baseline + 0.15
    assert set(TYPES) <= {key.removeprefix("f1_") for key in metrics if key.startswith("f1_")}


def test_span_predictions_are_label_studio_spans(sentences: Any, span_model: Any) -> None:
    learner, model, _ = span_model
    texts = [item["text"] for item in sentences[1][:200]]
    predicted = learner.predict(model, texts)
    assert len(predicted) == len(texts) and sum(len(p.result) for p in predicted) > 100
    for text, prediction in zip(texts, predicted):
        assert 0.0 <= prediction.score <= 1.0 and 0.0 <= prediction.uncertainty <= 1.0
        for result in prediction.result:
            value = result["value"]
            assert (result["from_name"], result["to_name"], result["type"]) == ("label", "text", "labels")
            assert 0 <= value["start"] < value["end"] <= len(text)
            assert value["text"] == text[value["start"]:value["end"]] and value["labels"][0] in TYPES
            # A span is in every analysis the predicted one is among, so it is at least as probable.
            assert prediction.score - 1e-6 <= result["score"] <= 1.0
    uncertain = [p.uncertainty for p in predicted]
    assert min(uncertain) < 0.05 and max(uncertain) > 0.3  # the beam tells easy from hard sentences


def test_span_uncertainty_ranks_errors_first(sentences: Any, span_model: Any) -> None:
    """What the queue order relies on: sentences the model is unsure of are more often wrong."""
    learner, model, _ = span_model
    test = sentences[1]
    predicted = learner.predict(model, [item["text"] for item in test])
    wrong = np.array([{(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in p.result}
                      != {tuple(span) for span in item["gold"]} for p, item in zip(predicted, test)])
    uncertainty = np.array([p.uncertainty for p in predicted])
    unsure = uncertainty >= np.median(uncertainty)
    print(f"spans: {wrong[unsure].mean():.2f} of the more uncertain half wrong, "
          f"{wrong[~unsure].mean():.2f} of the rest")
    assert wrong[unsure].mean() >= wrong[~unsure].mean() + 0.2


def test_multilabel_model_learns_entity_types(sentences: Any) -> None:
    learner = read_controls(SETS_XML)[0].learner()
    items = [json.loads(line) for line in ITEMS.read_text().splitlines()]
    random.Random(0).shuffle(items)
    train, test = items[:2000], items[2000:]
    started = time.perf_counter()
    model = learner.fit(Model(name="sets"), set_rows(train))
    seconds = time.perf_counter() - started
    metrics = learner.evaluate(model, set_rows(test))
    # Baseline: each label on wherever it is on for at least half the training items (never,
    # here), or on everywhere, whichever scores better.
    frequency = {t: np.mean([any(s[2] == t for s in item["gold"]) for item in train]) for t in TYPES}
    truth = np.array([[any(s[2] == t for s in item["gold"]) for t in TYPES] for item in test])
    everywhere = np.mean([2 * truth[:, i].sum() / (truth[:, i].sum() + len(test)) for i in range(len(TYPES))])
    print(f"multi-label: {len(train)} sentences in {seconds:.1f} s; held-out macro-F1 {metrics['macro_f1']:.3f}, "
          f"micro-F1 {metrics['micro_f1']:.3f}, exact set {metrics['exact_match']:.3f}; label rates "
          f"{ {t: round(f, 2) for t, f in frequency.items()} }; all-labels baseline macro-F1 {everywhere:.3f}")
    assert metrics["n_eval"] == len(test)
    assert metrics["macro_f1"] >= 0.6 and metrics["macro_f1"] >= everywhere + 0.2

    predicted = learner.predict(model, [item["text"] for item in test[:300]])
    _, probabilities = learner.probabilities(model, [item["text"] for item in test[:300]])
    for prediction, p in zip(predicted, probabilities):
        chosen = [t for t, value in zip(TYPES, p) if value >= 0.5]
        assert prediction.result == ([{"from_name": "label", "to_name": "text", "type": "choices",
                                       "value": {"choices": chosen}}] if chosen else [])
        expected = np.prod([value if value >= 0.5 else 1 - value for value in p])
        assert prediction.score == pytest.approx(expected) and 0.0 <= prediction.uncertainty <= 1.0


def test_multilabel_refuses_a_label_too_rare_to_calibrate(sentences: Any) -> None:
    learner = read_controls(SETS_XML)[0].learner()
    rows = set_rows(sentences[0])
    misc = rows["label"].eq("MISC")
    kept = rows.loc[misc, "item_id"].unique()[:2]
    rows = rows[~misc | rows["item_id"].isin(kept)]
    with pytest.raises(ValueError, match=r"at least 3 items and off at least 3 .*: MISC \(2 of"):
        learner.fit(Model(name="sets"), rows)


def test_single_choice_is_todays_model() -> None:
    """The single-choice learner is train.fit / train.evaluate and the prediction format ingest
    always used (choices = the top label, score = its probability): same numbers."""
    records = [json.loads(line) for line in SMS.read_text().splitlines()][:600]
    frame = pd.DataFrame({"item_id": [str(i) for i in range(len(records))], "text": [r["text"] for r in records],
                          "label": [r["label"] for r in records]})
    train, test = frame[:400], frame[400:]
    task_type = read_controls(f'<View>{TEXT}<Choices name="label" toName="text"><Choice value="ham"/>'
                              f'<Choice value="spam"/></Choices></View>')[0]
    learner, model = task_type.learner(), Model(name="sms")
    fitted = learner.fit(model, train)
    # (LinearSVC's solver shuffles without a seed: refits agree to ~1e-7, not bit for bit)
    ours, todays = learner.evaluate(fitted, test), evaluate(fit(model, train["text"], train["label"]), test["text"],
                                                            test["label"])
    assert numeric(ours) == pytest.approx(numeric(todays), rel=1e-5) and ours["confusion"] == todays["confusion"]
    proba = fitted.predict_proba(list(test["text"]))
    for prediction, row in zip(learner.predict(fitted, list(test["text"])), proba):
        assert prediction.score == float(row.max())
        assert prediction.result == [{"from_name": "label", "to_name": "text", "type": "choices",
                                      "value": {"choices": [str(fitted.classes_[row.argmax()])]}}]


def test_promotion_metric_defaults_per_kind_and_refuses_one_not_measured() -> None:
    spans, sets = read_controls(SPANS_XML)[0].learner(), read_controls(SETS_XML)[0].learner()
    assert promotion_metric(spans, Model(name="m")) == "span_f1"
    assert promotion_metric(sets, Model(name="m")) == "macro_f1"
    with pytest.raises(ValueError, match=r"model.metric 'macro_f1' is not measured.*\['span_f1'\]"):
        promotion_metric(spans, Model(name="m", metric="macro_f1"))
    with pytest.raises(ValueError, match=r"model.params \['C'\] are not parameters of the spans model"):
        spans.fit(Model(name="m", params={"C": 1.0}), span_rows([]))


def spans_spec(make_spec: Any, tmp_path: Path, **model: Any) -> Path:
    config = tmp_path / "spans.xml"
    config.write_text(SPANS_XML)
    return make_spec(labeling_config=str(config), labels=TYPES, model={"name": "ner_model", **model})


def test_a_spans_spec_may_name_a_model(make_spec: Any, tmp_path: Path) -> None:
    """The loop trains a model for spans now: the spec's model section is no longer refused."""
    spec = load_spec(spans_spec(make_spec, tmp_path, min_score=0.3))
    assert spec.model is not None and spec.task_type.kind == "spans"
    assert type(spec.task_type.learner()).__name__ == "SpanLearner"


def test_training_sets_keep_or_drop_a_span_item_whole(make_spec: Any, tmp_path: Path) -> None:
    """An item trains only when its consensus is trusted, all its spans or none: dropping one
    doubtful span would teach the model that nothing is there. The consensus is as the audit
    writes it: one row per item, its spans as Label Studio results (JSON text)."""
    from labelloop.model.retrain import training_sets

    spec = load_spec(spans_spec(make_spec, tmp_path))
    texts = {1: "Wayne Ferreira beat Thomas Enqvist", 2: "Rios ( Chile )", 3: "no names here", 4: "Paris"}
    tasks = pd.DataFrame({"task_id": [1, 2, 3, 4], "item_id": ["a", "b", "c", "d"],
                          "data": [json.dumps({"text": t}) for t in texts.values()],
                          "gold_label": [None, None, None, json.dumps([[0, 5, "LOC"]])]})
    def spans(*found: tuple[int, int, str]) -> str:
        return json.dumps([{"from_name": "label", "to_name": "text", "type": "labels",
                            "value": {"start": s, "end": e, "labels": [label]}} for s, e, label in found])

    consensus = pd.DataFrame({
        "task_id": [1, 2, 3], "item_id": ["a", "b", "c"], "label": [None] * 3,
        "result": [spans((0, 14, "PER"), (20, 34, "PER")), spans((0, 4, "PER"), (7, 12, "LOC")), spans()],
        "confidence": [0.9, 0.4, 0.99], "source": ["consensus"] * 3})
    train, evaluation = training_sets(spec, consensus, tasks)
    train = train.astype(object).where(train.notna(), None)
    assert train.to_dict("records") == [
        {"item_id": "a", "text": texts[1], "start": 0, "end": 14, "label": "PER"},
        {"item_id": "a", "text": texts[1], "start": 20, "end": 34, "label": "PER"},
        {"item_id": "c", "text": texts[3], "start": None, "end": None, "label": None}]
    assert evaluation[["item_id", "start", "end", "label"]].to_dict("records") == [
        {"item_id": "d", "start": 0, "end": 5, "label": "LOC"}]


def test_training_sets_read_a_multilabel_consensus_as_the_audit_writes_it(make_spec: Any, tmp_path: Path) -> None:
    """One row per label of the chosen set (the ``label`` column joins them with "|": not a label)."""
    from labelloop.model.retrain import training_sets

    config = tmp_path / "sets.xml"
    config.write_text(SETS_XML)
    spec = load_spec(make_spec(labeling_config=str(config), labels=TYPES, model={"name": "sets_model"}))
    tasks = pd.DataFrame({"task_id": [1, 2], "item_id": ["a", "b"], "gold_label": [None, None],
                          "data": [json.dumps({"text": t}) for t in ("Rios ( Chile )", "no names")]})
    chosen = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["PER", "LOC"]}}]
    consensus = pd.DataFrame({"task_id": [1, 2], "item_id": ["a", "b"], "label": ["LOC|PER", None],
                              "result": [json.dumps(chosen), "[]"], "confidence": [0.9, 0.9],
                              "source": ["consensus"] * 2})
    train, _ = training_sets(spec, consensus, tasks)
    assert train.astype(object).where(train.notna(), None).to_dict("records") == [
        {"item_id": "a", "text": "Rios ( Chile )", "label": "PER"},
        {"item_id": "a", "text": "Rios ( Chile )", "label": "LOC"},
        {"item_id": "b", "text": "no names", "label": None}]
