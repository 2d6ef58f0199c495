"""Box consensus on the real pedestrians: the rules' F1 and where BoxConsensus errs.

    .venv/bin/python tests/benchmarks/box_errors.py                      # the dev half
    .venv/bin/python tests/benchmarks/box_errors.py --data DIR           # another half

DIR holds ``crowd_boxes.jsonl`` and ``images.jsonl`` as in tests/data/pedestrian-boxes-dev.
Prints F1 at IoU 0.5 on all gold images and on the even / odd ones for the issue's plain
majority rule, MajorityBoxes and BoxConsensus, bootstrap intervals of the differences, and
the decomposition of BoxConsensus's misses and false boxes (docs/boxes.md, Errors).
Not a pytest test: the name does not match test_*.py.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "plugins"), str(REPO)]

from labelloop.quality.boxes import BoxConsensus, MajorityBoxes, box_iou, match_boxes  # noqa: E402
from tests.unit.quality.test_boxes import PEDESTRIANS, plain_majority, read_pedestrians  # noqa: E402

COORDS = ["x", "y", "w", "h"]


def per_image(boxes: pd.DataFrame, truth: dict[str, np.ndarray]) -> np.ndarray:
    """(matched, boxes, gold boxes) per gold image, at IoU >= 0.5."""
    mine = {item: g[COORDS].dropna().to_numpy() for item, g in boxes.groupby("item_id")}
    counts = []
    for item, gold in truth.items():
        drawn = mine.get(item, np.zeros((0, 4)))
        counts.append((len(match_boxes(drawn, gold)) if len(drawn) and len(gold) else 0,
                       len(drawn), len(gold)))  # fmt: skip
    return np.array(counts)


def f1(counts: np.ndarray) -> float:
    return 2 * counts[:, 0].sum() / (counts[:, 1].sum() + counts[:, 2].sum())


def errors(model: BoxConsensus, crowd: pd.DataFrame, truth: dict[str, np.ndarray]) -> Counter:
    """Each missed gold box (FN) and false consensus box (FP), classified in this order:
    a kept and a gold box left over at IoU 0.3-0.5 are a localisation pair; a missed gold
    box no crowd box reaches at 0.5 was never drawn; one a dropped cluster reaches is an
    existence error; one only a kept (otherwise matched) box reaches was merged into it."""
    found: Counter = Counter()
    clusters = {item: c for item, c in model.clusters_.groupby("item_id")}
    drawn = {item: g[COORDS].dropna().to_numpy() for item, g in crowd.groupby("item_id")}
    none = np.zeros((0, 4))
    for item, gold in truth.items():
        c = clusters.get(item, model.clusters_.iloc[:0])
        kept, dropped = c.loc[c["kept"], COORDS].to_numpy(), c.loc[~c["kept"], COORDS].to_numpy()
        votes = c.loc[~c["kept"], "n_votes"].to_numpy()
        pairs = match_boxes(kept, gold) if len(kept) and len(gold) else pd.DataFrame(
            columns=["index_a", "index_b"])  # fmt: skip
        fp = np.setdiff1d(np.arange(len(kept)), pairs["index_a"])
        fn = np.setdiff1d(np.arange(len(gold)), pairs["index_b"])
        found["matched"] += len(pairs)
        if len(fp) and len(fn):
            near = match_boxes(kept[fp], gold[fn], threshold=0.3)
            found["localisation pair (FN + FP)"] += len(near)
            fp, fn = np.delete(fp, near["index_a"]), np.delete(fn, near["index_b"])
        for j in fn:
            box = gold[j][None]
            best = lambda boxes: box_iou(boxes, box).max() if len(boxes) else 0.0  # noqa: E731
            if best(drawn.get(item, none)) < 0.5:
                found["FN never drawn (no crowd box at 0.5)"] += 1
            elif best(dropped) >= 0.5:
                n = votes[box_iou(dropped, box)[:, 0].argmax()]
                found[f"FN existence (dropped, {n} votes)"] += 1
            elif best(kept) >= 0.5:
                found["FN merged into a matched kept box"] += 1
            elif best(dropped) >= 0.3:
                found["FN existence + localisation (dropped at 0.3-0.5)"] += 1
            else:
                found["FN clustering (drawn, in no cluster at 0.3)"] += 1
        for i in fp:
            reach = box_iou(kept[i][None], gold).max() if len(gold) else 0.0
            found["FP duplicate (gold box taken)" if reach >= 0.5 else
                  "FP no gold box at 0.3 (existence, or gold lacks it)"] += 1  # fmt: skip
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=PEDESTRIANS)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    crowd, gold = read_pedestrians(args.data)
    truth = {item: g[COORDS].dropna().to_numpy() for item, g in gold.groupby("item_id")}
    model = BoxConsensus().fit(crowd)
    rules = {"plain majority (the issue's rule)": plain_majority(crowd),
             "MajorityBoxes": MajorityBoxes().fit_predict(crowd), "BoxConsensus": model.boxes_}
    counts = {name: per_image(boxes, truth) for name, boxes in rules.items()}
    print("| rule | F1 all | even | odd | matched | false boxes |\n|---|---:|---:|---:|---:|---:|")
    for name, c in counts.items():
        print(f"| {name} | {f1(c):.4f} | {f1(c[0::2]):.4f} | {f1(c[1::2]):.4f} | "
              f"{c[:, 0].sum()} | {c[:, 1].sum() - c[:, 0].sum()} |")  # fmt: skip
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(truth), size=(args.resamples, len(truth)))
    ours = counts["BoxConsensus"]
    for name in list(rules)[:2]:
        lead = [f1(ours[d]) - f1(counts[name][d]) for d in draws]
        low, high = np.percentile(lead, [2.5, 97.5])
        print(f"\nBoxConsensus - {name}: {f1(ours) - f1(counts[name]):+.4f}, 95 % interval "
              f"[{low:+.4f}, {high:+.4f}] ({args.resamples} resamples of the gold images)")
    print("\n| BoxConsensus vs gold | count |\n|---|---:|")
    for kind, n in sorted(errors(model, crowd, truth).items()):
        print(f"| {kind} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
