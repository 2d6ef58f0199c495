"""Benchmark span quality on ~1,000,000 synthetic span annotations.

    .venv/bin/python tests/benchmarks/bench_spans.py               # the full run
    .venv/bin/python tests/benchmarks/bench_spans.py --items 2000  # a smoke run
    .venv/bin/python tests/benchmarks/bench_spans.py --conll tests/data/conll-mturk-dev
                                                        # F1 on the real crowd spans

100,000 sentences of 16 four-letter tokens, each with two true entities (1-3 tokens, 4
labels), answered by 5 of 200 annotators (seed 0). An annotator finds each entity with
their own recall (0.6-0.98), cuts its boundary by a token with probability 0.1, gives a
wrong label with probability 0.05-0.2, and adds a false one-token span with probability
0.1-0.6; an answer with no span is one NA row. The cases run one after another in this
process; before each, the kernel's peak-RSS counter is reset (``echo 5 >
/proc/self/clear_refs``), so "peak" is the highest RSS while the case ran (data included).
Not a pytest test: the name does not match test_*.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))

from measure import peak_rss_mib, report_targets, reset_peak_rss  # noqa: E402
from labelloop.quality.spans import (  # noqa: E402
    SpanDawidSkene,
    TokenMajorityVote,
    gold_span_scores,
    pairwise_span_f1,
    span_agreement,
    span_f1,
    spans_frame,
)

POOL, PER_ITEM, N_TOKENS, SEED = 200, 5, 16, 0
LABELS = np.array(["LOC", "MISC", "ORG", "PER"])


def synthesize(n_items: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Crowd spans, gold spans and texts, reproducible from SEED."""
    rng = np.random.default_rng(SEED)
    recall = rng.uniform(0.6, 0.98, POOL)
    wrong_label = rng.uniform(0.05, 0.2, POOL)
    false_span = rng.uniform(0.1, 0.6, POOL)
    # Two entities per sentence: tokens [0..3] + 1-3 long, and [6..9] + 1-3 long.
    first = np.stack([rng.integers(0, 4, n_items), rng.integers(6, 10, n_items)], axis=1)
    length = rng.integers(1, 4, (n_items, 2))
    label = rng.integers(0, len(LABELS), (n_items, 2))
    who = np.argsort(rng.random((n_items, POOL)), axis=1)[:, :PER_ITEM]  # 5 distinct

    item = np.repeat(np.arange(n_items), PER_ITEM)
    annotator = who.ravel()
    # Each annotator's take on each entity: found?, boundary cut?, label.
    found = rng.random((len(item), 2)) < recall[annotator, None]
    cut = (rng.random((len(item), 2)) < 0.1) & (length[item] > 1)
    relabel = rng.random((len(item), 2)) < wrong_label[annotator, None]
    said = np.where(relabel, (label[item] + rng.integers(1, 4, (len(item), 2))) % 4, label[item])
    span_first, span_length = first[item], length[item] - cut
    extra = rng.random(len(item)) < false_span[annotator]  # one token in 13..15

    rows_item = np.concatenate([np.repeat(item, 2)[found.ravel()], item[extra]])
    rows_annotator = np.concatenate([np.repeat(annotator, 2)[found.ravel()], annotator[extra]])
    start_token = np.concatenate([span_first.ravel()[found.ravel()],
                                  rng.integers(13, 16, len(item))[extra]])  # fmt: skip
    end_token = start_token + np.concatenate([span_length.ravel()[found.ravel()],
                                              np.ones(extra.sum(), np.int64)])  # fmt: skip
    rows_label = np.concatenate([said.ravel()[found.ravel()], rng.integers(0, 4, extra.sum())])
    answered = np.zeros(len(item), bool)
    answered[np.repeat(np.arange(len(item)), 2)[found.ravel()]] = True
    answered[extra] = True

    def ids(prefix: str, codes: np.ndarray) -> np.ndarray:
        return np.char.add(prefix, codes.astype(str))

    # Token t covers characters [5t, 5t + 4); a span of tokens [a, b) is [5a, 5b - 1).
    spans = pd.DataFrame({
        "item_id": ids("s", np.concatenate([rows_item, item[~answered]])),
        "annotator_id": ids("w", np.concatenate([rows_annotator, annotator[~answered]])),
        "start": pd.array(np.concatenate([5 * start_token, np.full((~answered).sum(), -1)]),
                          "Int64"),
        "end": pd.array(np.concatenate([5 * end_token - 1, np.full((~answered).sum(), -1)]),
                        "Int64"),
        "label": np.concatenate([LABELS[rows_label], np.full((~answered).sum(), None)]),
    })  # fmt: skip
    spans.loc[spans["start"] < 0, ["start", "end"]] = pd.NA
    gold = pd.DataFrame({
        "item_id": ids("s", np.repeat(np.arange(n_items), 2)),
        "start": 5 * first.ravel(), "end": 5 * (first + length).ravel() - 1,
        "label": LABELS[label.ravel()],
    })  # fmt: skip
    text = " ".join(["word"] * N_TOKENS)
    texts = pd.Series(text, index=ids("s", np.arange(n_items)))
    return spans, gold, texts


def conll_figures(folder: Path, min_items: int = 50) -> None:
    """Exact-span F1 against gold of the consensus methods and of single workers."""
    with open(folder / "items.jsonl", encoding="utf-8") as lines:
        items = [json.loads(line) for line in lines]
    with open(folder / "crowd_spans.jsonl", encoding="utf-8") as lines:
        crowd = spans_frame([json.loads(line) for line in lines])
    gold = spans_frame([{"item_id": item["id"], "spans": item["gold"]} for item in items])
    texts = pd.Series({item["id"]: item["text"] for item in items})
    workers = gold_span_scores(crowd, gold)
    workers = workers[workers["n_items"] >= min_items]
    print(f"{folder}: {crowd['item_id'].nunique():,} sentences with answers, "
          f"{crowd['annotator_id'].nunique()} workers\n")
    print("| method | exact-span F1 | precision | recall | seconds |")
    print("|---|---:|---:|---:|---:|")
    methods = {
        "token-level majority vote (`TokenMajorityVote`)": lambda: TokenMajorityVote().fit_predict(crowd, texts),  # noqa: E501
        "span-level Dawid-Skene + text prior (`SpanDawidSkene().fit(crowd, texts)`)": lambda: SpanDawidSkene().fit_predict(crowd, texts),  # noqa: E501
        "span-level Dawid-Skene, votes only, shrinkage auto (`SpanDawidSkene().fit(crowd)`)": lambda: SpanDawidSkene().fit_predict(crowd),  # noqa: E501
        "span-level Dawid-Skene, no shrinkage (`SpanDawidSkene(shrinkage=0)`)": lambda: SpanDawidSkene(shrinkage=0).fit_predict(crowd),  # noqa: E501
    }  # fmt: skip
    for name, method in methods.items():
        started = time.perf_counter()
        score = span_f1(method(), gold)
        seconds = time.perf_counter() - started
        print(f"| {name} | {score['f1']:.3f} | {score['precision']:.3f} | "
              f"{score['recall']:.3f} | {seconds:.1f} |")  # fmt: skip
    print(f"\nsingle workers with >= {min_items} gold items ({len(workers)}): best F1 "
          f"{workers['f1'].max():.3f}, median {workers['f1'].median():.3f}, "
          f"worst {workers['f1'].min():.3f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--conll", type=Path, help="report F1 on this crowd-span folder instead")
    args = parser.parse_args()
    if args.conll:
        conll_figures(args.conll)
        return 0
    spans, gold, texts = synthesize(args.items)
    n_spans = int(spans["start"].notna().sum())
    print(f"{len(spans):,} rows ({n_spans:,} spans, {len(spans) - n_spans:,} empty answers), "
          f"{args.items:,} sentences x {PER_ITEM} of {POOL} annotators, seed {SEED}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible "
          f"(shared), Python {platform.python_version()}, numpy {np.__version__}, "
          f"pandas {pd.__version__}\n")  # fmt: skip

    state: dict[str, pd.DataFrame] = {}

    def agreement() -> str:
        state["pairs"] = pairwise_span_f1(spans)
        return f"{len(state['pairs'])} pairs; project exact F1 " \
               f"{span_agreement(state['pairs'])['exact_f1']:.3f}"

    def task_type_audit() -> str:
        """What the audit DAG and ``python -m labelloop audit`` run: the spans task type's audit
        (agreement, per-label agreement, gold scores of the consensus and of every annotator,
        SpanDawidSkene with the text prior), on the same answers."""
        from labelloop.tasktypes import read_controls

        labels = "".join(f'<Label value="{label}"/>' for label in LABELS)
        config = f'<View><Labels name="label" toName="text">{labels}</Labels><Text name="text" value="$text"/></View>'
        (spans_type,) = read_controls(config, "bench", kinds=("spans",))
        audit = spans_type.audit(spans, gold, data={item: {"text": text} for item, text in texts.items()})
        return f"consensus F1 {audit.metrics['gold']['f1']:.3f}; {len(audit.consensus):,} consensus spans"

    cases = {
        "agreement: pairwise_span_f1 + span_agreement": agreement,
        "pairwise_span_f1 by label": lambda: f"{len(pairwise_span_f1(spans, by_label=True))} rows",
        "gold_span_scores (every item has gold)":
            lambda: f"median F1 {gold_span_scores(spans, gold)['f1'].median():.3f}",
        "TokenMajorityVote": lambda: f"F1 {span_f1(TokenMajorityVote().fit_predict(spans, texts), gold)['f1']:.3f}",  # noqa: E501
        "SpanDawidSkene": lambda: f"F1 {span_f1(SpanDawidSkene().fit_predict(spans), gold)['f1']:.3f}",  # noqa: E501
        "SpanDawidSkene with texts (text prior)": lambda: f"F1 {span_f1(SpanDawidSkene().fit_predict(spans, texts), gold)['f1']:.3f}",  # noqa: E501
        "the spans task type's whole audit (as the DAG and the CLI run it)": task_type_audit,
    }  # fmt: skip
    required = ("agreement: pairwise_span_f1 + span_agreement",
                "gold_span_scores (every item has gold)", "SpanDawidSkene")  # fmt: skip
    print("| case | wall time (s) | CPU time (s) | peak RSS (MiB) | baseline RSS (MiB) | result |")
    print("|---|---:|---:|---:|---:|---|")
    total, total_cpu, top = 0.0, 0.0, 0.0
    timings: dict[str, tuple[float, float]] = {}
    for name, case in cases.items():
        baseline = reset_peak_rss()
        started, started_cpu = time.perf_counter(), time.process_time()
        note = case()
        seconds, cpu = time.perf_counter() - started, time.process_time() - started_cpu
        timings[name] = (seconds, cpu)
        if name in required:
            total, total_cpu = total + seconds, total_cpu + cpu
        top = max(top, peak_rss_mib())
        print(f"| {name} | {seconds:.2f} | {cpu:.2f} | {peak_rss_mib():.0f} | {baseline:.0f} | "
              f"{note} |", flush=True)  # fmt: skip
    whole = timings["the spans task type's whole audit (as the DAG and the CLI run it)"]
    checks = [(f"agreement + gold scoring + SpanDawidSkene in {total:.1f} s wall, "
               f"{total_cpu:.1f} s CPU (< 30 s)", total < 30),
              (f"the task type's whole audit in {whole[0]:.1f} s wall, {whole[1]:.1f} s CPU (< 30 s)", whole[0] < 30),
              (f"peak RSS {top:.0f} MiB (< 4096 MiB)", top < 4096)]  # fmt: skip
    return report_targets(checks)


if __name__ == "__main__":
    sys.exit(main())
