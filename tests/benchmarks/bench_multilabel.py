"""Multi-label consensus on real crowd answers, and the library's cost on 1M label rows.

    .venv/bin/python tests/benchmarks/bench_multilabel.py                 # both (~1 min)
    .venv/bin/python tests/benchmarks/bench_multilabel.py --rows 100000   # a smaller timing

Real data: the entity types (PER, ORG, LOC, MISC) each MTurk worker marked in a CoNLL-2003
sentence (tests/data/conll-mturk-dev), against the gold types; derived by
``conll_entity_sets`` in tests/unit/quality/test_multilabel.py, which asserts the same
figures. Timing: synthetic answers (8 labels, 5 answers per item, 300 annotators) until the
frame has ``--rows`` label rows. Not a pytest test: the name does not match test_*.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(0, str(REPO / "tests" / "unit"))

from labelloop.quality import multilabel as ml  # noqa: E402
from quality.test_multilabel import ENTITY_TYPES, conll_entity_sets  # noqa: E402


def real_data() -> None:
    labels, gold = conll_entity_sets()
    print(f"conll entity types: {labels.groupby(['item_id', 'annotator_id']).ngroups} answers, "
          f"{labels['item_id'].nunique()} sentences, {labels['annotator_id'].nunique()} workers")
    print(ml.label_agreement(labels, ENTITY_TYPES).round(3).to_string())
    items = ml.item_agreement(labels, ENTITY_TYPES)
    exact = np.average(items["exact_match"].fillna(0), weights=items["n_pairs"])
    print(f"mean pairwise Jaccard {items['jaccard'].mean():.3f}, exact-match rate {exact:.3f}")
    workers = ml.gold_scores(labels, gold, ENTITY_TYPES)
    print(f"single workers: Hamming accuracy {workers['accuracy'].min():.3f}-"
          f"{workers['accuracy'].max():.3f}, exact match (answer-weighted) "
          f"{np.average(workers['exact_match'], weights=workers['n_gold']):.3f}")
    print(f"{'method':<24} {'exact':>6} {'macroF1':>7} {'Hamming':>7} {'fit s':>6}")
    for name, model in (("per-label MV", ml.MultiLabelMajorityVote(ENTITY_TYPES)),
                        ("per-label Dawid-Skene", ml.MultiLabelDawidSkene(ENTITY_TYPES)),
                        ("joint Dawid-Skene", ml.JointDawidSkene(ENTITY_TYPES))):  # fmt: skip
        start = time.perf_counter()
        consensus = model.fit(labels).to_frame()
        seconds = time.perf_counter() - start
        score = ml.score_sets(consensus, gold, ENTITY_TYPES)
        print(f"{name:<24} {score['exact_match']:6.4f} {score['macro_f1']:7.4f} "
              f"{score['hamming_accuracy']:7.4f} {seconds:6.2f}")


def synthetic(rows: int, n_labels: int = 8, per_item: int = 5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = [f"L{k}" for k in range(n_labels)]
    n_items = max(1, int(rows / (per_item * 2.4)))  # 8 x (0.25 x 0.9 + 0.75 x 0.1) per answer
    truth = rng.random((n_items, n_labels)) < 0.25
    who = np.argsort(rng.random((n_items, 300)), axis=1)[:, :per_item].ravel()
    said = np.repeat(truth, per_item, axis=0) ^ (rng.random((n_items * per_item, n_labels)) < 0.1)
    answer, label = np.nonzero(said)
    empty = np.flatnonzero(~said.any(axis=1))
    frame = pd.DataFrame({
        "item_id": np.concatenate([answer, empty]) // per_item,
        "annotator_id": who[np.concatenate([answer, empty])],
        "label": [*np.array(labels)[label], *[None] * len(empty)],
    })  # fmt: skip
    return frame, labels


def timing(rows: int) -> None:
    frame, labels = synthetic(rows)
    print(f"\nsynthetic: {len(frame):,} label rows, {frame['item_id'].nunique():,} items, "
          f"{len(labels)} labels")
    cases = {
        "encode_answers": lambda: ml.encode_answers(frame, labels),
        "item_agreement": lambda: ml.item_agreement(frame, labels),
        "label_agreement": lambda: ml.label_agreement(frame, labels),
        "MultiLabelMajorityVote": lambda: ml.MultiLabelMajorityVote(labels).fit(frame),
        "MultiLabelDawidSkene": lambda: ml.MultiLabelDawidSkene(labels).fit(frame),
        "JointDawidSkene": lambda: ml.JointDawidSkene(labels).fit(frame),
    }
    for name, case in cases.items():
        start = time.perf_counter()
        case()
        print(f"{name:<24} {time.perf_counter() - start:7.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-real", action="store_true")
    args = parser.parse_args()
    if not args.no_real:
        real_data()
    timing(args.rows)
