"""A named-entity spans project through setup, ingest, collect, audit and review routing on a
real Label Studio, answered by three real crowd workers of CoNLL MTurk as Label Studio users.

30 sentences that three of the workers all answered (90 annotations, their real spans,
"no entity" answers included). The audit's span F1 is recomputed here with plain sets: each
worker against gold, and every pair of workers against each other.
"""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from labelloop.dev import simulate
from labelloop.audit.prepare import control_answers, task_data
from labelloop.audit.routing import review_title, select_for_review
from labelloop.collect.table import latest_snapshot, read_parquet, read_snapshot
from labelloop.layout import storage_path
from labelloop.layout import run_key
from labelloop.state import read_json
from labelloop.spec import load_spec

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CONLL = REPO / "tests" / "data" / "conll-mturk-dev"
#: Three workers who share 81 sentences; on the 30 used here they score 0.85, 0.84 and 0.65
#: exact-span F1 against gold (0.71 against each other).
WORKERS = ("A31X3JCHS0BPFJ", "A3OSHYHJX8BXHU", "A7YBNPEFKN436")
N_SENTENCES = 30

Span = tuple[int, int, str]


def conll_sample() -> tuple[list[dict], dict[tuple[str, str], set[Span]]]:
    """The first sentences (of distinct text) all three workers answered, and their answers."""
    crowd: dict[tuple[str, str], set[Span]] = {}
    for line in (CONLL / "crowd_spans.jsonl").open():
        answer = json.loads(line)
        if answer["annotator_id"] in WORKERS:
            crowd[answer["item_id"], answer["annotator_id"]] = {tuple(span) for span in answer["spans"]}
    items = [json.loads(line) for line in (CONLL / "items.jsonl").open()]
    answered = [item for item in items if all((item["id"], worker) in crowd for worker in WORKERS)]
    unique = list({item["text"]: item for item in reversed(answered)}.values())[::-1]  # ingest merges twins
    chosen = unique[:N_SENTENCES]
    ids = {item["id"] for item in chosen}
    return chosen, {key: spans for key, spans in crowd.items() if key[0] in ids}


def span_results(spans: set[Span], text: str) -> list[dict]:
    return [{"from_name": "entities", "to_name": "text", "type": "labels",
             "value": {"start": start, "end": end, "text": text[start:end], "labels": [label]}}
            for start, end, label in sorted(spans)]


def f1(matched: int, marked: int) -> float:
    return 2 * matched / marked


def test_spans_project_collect_audit_review(run_dag, labelstudio_hook, make_spec, tmp_path) -> None:
    hook = labelstudio_hook
    sentences, crowd = conll_sample()
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "sentences.jsonl").write_text("".join(json.dumps({"id": s["id"], "text": s["text"], "entities": s["gold"]})
                                                 + "\n" for s in sentences))
    path = make_spec(
        labeling_config=str(REPO / "include" / "labeling" / "conll_ner.xml"),
        guidelines=str(REPO / "include" / "guidelines" / "conll_ner.md"),
        control_name="entities", labels=["PER", "ORG", "LOC", "MISC"], model=None,
        source={"label_field": "entities", "fields": {"text": {"type": "string", "max_length": 2000}}},
        annotation={"gold_fraction": 0.5},
        quality={"min_gold_f1": 0.5, "min_span_f1": 0.5, "min_consensus_confidence": 0.0,
                 "spot_check_fraction": 0.1},
    )
    spec = load_spec(path)
    assert run_dag(path, "setup").state == "success"
    assert run_dag(path, "ingest").state == "success"
    project = hook.find_project(spec.title)
    tasks = {task.data["labelloop_id"]: task for task in hook.iter_tasks(project.id, fields="all")}
    assert len(tasks) == N_SENTENCES
    by_id = {s["id"]: s for s in sentences}
    gold_ids = {item for item, task in tasks.items() if task.meta["gold"]}
    assert 5 <= len(gold_ids) <= 25
    assert all(json.loads(task.meta["label"]) == by_id[item]["gold"] for item, task in tasks.items())

    # Each worker answers as a Label Studio user of their own, with their real spans.
    users = simulate.ensure_annotators(hook, len(WORKERS), spec.name.replace("_", "-"))
    user_of = dict(zip(WORKERS, users))
    email = {worker: user.email for worker, user in user_of.items()}

    def annotate(key: tuple[str, str]) -> None:
        item, worker = key
        hook.create_annotation(tasks[item].id, span_results(crowd[key], by_id[item]["text"]),
                               completed_by=user_of[worker].id, lead_time=5.0)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(annotate, sorted(crowd)))

    assert run_dag(path, "collect").state == "success"
    root = storage_path(spec.storage_uri, None)
    tables = read_snapshot(latest_snapshot(root))
    audit = run_dag(path, "audit")
    assert {ti.task_id: str(ti.state) for ti in audit.get_task_instances()} == {
        "audit": "success", "route": "success", "gate": "success"}
    out = root / "audit" / run_key(audit.run_id)
    metrics = read_json(out / "metrics.json", {})

    # Counts add up.
    n_spans = sum(len(spans) for spans in crowd.values())
    assert metrics["control"] == {"name": "entities", "kind": "spans", "tag": "Labels"}
    assert metrics["counts"] | {"labels": None} == {"answers": 90, "spans": n_spans, "items": N_SENTENCES,
                                                    "annotators": 3, "labels": None}
    # Each worker against gold, pooled over their spans on gold sentences.
    for worker in WORKERS:
        keys = [(item, worker) for item in gold_ids]
        matched = sum(len(crowd[key] & {tuple(s) for s in by_id[key[0]]["gold"]}) for key in keys)
        marked = sum(len(crowd[key]) + len(by_id[key[0]]["gold"]) for key in keys)
        [row] = [row for row in metrics["annotators"] if row["annotator_id"] == email[worker]]
        assert row["f1"] == pytest.approx(f1(matched, marked))
    # Every pair of workers on every shared sentence, pooled.
    matched = marked = 0
    for item in by_id:
        for a, b in itertools.combinations(WORKERS, 2):
            matched += len(crowd[item, a] & crowd[item, b])
            marked += len(crowd[item, a]) + len(crowd[item, b])
    assert metrics["agreement"]["exact_f1"] == pytest.approx(f1(matched, marked))
    gate = read_json(out / "gate.json", {})
    assert gate["passed"] and gate["summary"].startswith(f"quality gate passed for {spec.name}: <Labels name='entities'>")

    # The consensus keeps the geometry: gold sentences carry their gold spans.
    consensus = read_parquet(out / "consensus.parquet").set_index("task_id")
    assert len(consensus) == N_SENTENCES and set(consensus["source"]) <= {"gold", "consensus"}
    for item in gold_ids:
        row = consensus.loc[tasks[item].id]
        spans = {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in json.loads(row["result"])}
        assert row["source"] == "gold" and spans == {tuple(s) for s in by_id[item]["gold"]}

    # Review: every selected item routed once, each worker's spans shown as a prediction.
    answers = control_answers(tables["annotations"], spec.task_type, task_data(tables["tasks"]))
    by_task = consensus.reset_index().drop(columns="item_id").rename(columns={"task_id": "item_id"})
    expected = select_for_review(answers, by_task,
                                 metrics["review"]["spot_check"], metrics["review"]["low_confidence"],
                                 spec.task_type.disagreements(answers))
    review = hook.find_project(review_title(spec))
    routed = list(hook.iter_tasks(review.id, fields="all"))
    assert expected and sorted(task.data["labelloop_task_id"] for task in routed) == sorted(expected)
    item_of = {task.id: item for item, task in tasks.items()}
    disagreeing = {item for item in by_id if len({frozenset(crowd[item, w]) for w in WORKERS}) > 1}
    assert metrics["review"]["n_disagreements"] == len(disagreeing)
    for task in routed:
        item = item_of[task.data["labelloop_task_id"]]
        shown = {p.model_version: {(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0])
                                   for r in p.result} for p in task.predictions}
        assert shown == {email[worker]: crowd[item, worker] for worker in WORKERS}
        assert task.data["text"] == by_id[item]["text"]
    latest = read_json(root / "audit" / "latest.json", {})
    assert latest["review"]["answered_since_last_audit"] == N_SENTENCES
    assert latest["review"]["disagreements"] == len(disagreeing)
    assert len(routed) == len(set(expected)) <= N_SENTENCES - len(gold_ids)
