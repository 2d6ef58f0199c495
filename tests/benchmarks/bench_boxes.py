"""Benchmark the box quality library on 1,000,000 synthetic boxes.

    .venv/bin/python tests/benchmarks/bench_boxes.py                # the full run
    .venv/bin/python tests/benchmarks/bench_boxes.py --images 2000  # a smoke run

100,000 images x 5 annotators (drawn from a pool of 200) x 2 boxes each: every image has
two pedestrian-sized objects, each annotator's box is the object jittered by their own
localisation noise, or (at their own false-box rate) a box somewhere else; gold for one
image in ten. Agreement, gold scores and both consensus rules run one after another on the
same frame; the peak RSS is the kernel's counter, reset after the data is built.
Not a pytest test: the name does not match test_*.py.
"""

from __future__ import annotations

import argparse
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
from labelloop.quality.boxes import (  # noqa: E402
    BoxAgreement,
    BoxConsensus,
    MajorityBoxes,
    box_gold_scores,
)

POOL, PER_IMAGE, BOXES, SEED = 200, 5, 2, 0


def synthesize(n_images: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(SEED)
    noise = rng.uniform(0.5, 4.0, POOL)  # pixels of jitter per edge
    false_rate = rng.uniform(0.0, 0.3, POOL)
    slot = np.arange(BOXES)
    truth = np.column_stack([100 + 300 * slot + rng.uniform(0, 100, BOXES), np.full(BOXES, 300.0),
                             np.full(BOXES, 20.0), np.full(BOXES, 45.0)])  # fmt: skip
    shift = rng.uniform(0, 600, size=(n_images, 1, 1))
    objects = truth[None, :, :] + np.concatenate([shift, np.zeros((n_images, 1, 3))], axis=2)
    who = np.argsort(rng.random((n_images, POOL)), axis=1)[:, :PER_IMAGE]
    drawn = objects[:, None, :, :] + rng.normal(size=(n_images, PER_IMAGE, BOXES, 4)) * noise[
        who][:, :, None, None]  # fmt: skip
    drawn[..., 2:] = np.maximum(drawn[..., 2:], 1.0)
    false = rng.random((n_images, PER_IMAGE, BOXES)) < false_rate[who][:, :, None]
    drawn[..., 0] = np.where(false, rng.uniform(900, 1200, false.shape), drawn[..., 0])
    image = np.repeat(np.arange(n_images), PER_IMAGE * BOXES)
    boxes = pd.DataFrame({
        "item_id": image, "annotator_id": np.repeat(who.ravel(), BOXES),
        **{c: drawn[..., k].ravel() for k, c in enumerate("xywh")}, "label": "pedestrian",
    })  # fmt: skip
    gold_images = np.arange(0, n_images, 10)
    gold = pd.DataFrame({
        "item_id": np.repeat(gold_images, BOXES),
        **{c: objects[gold_images][..., k].ravel() for k, c in enumerate("xywh")},
        "label": "pedestrian",
    })  # fmt: skip
    return boxes, gold


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    args = parser.parse_args()
    boxes, gold = synthesize(args.images)
    baseline = reset_peak_rss()
    timings = {}
    started = time.perf_counter()
    for name, run in [
        ("agreement", lambda: BoxAgreement().fit(boxes).summary_),
        ("gold scores", lambda: box_gold_scores(boxes, gold)),
        ("BoxConsensus (EM)", lambda: BoxConsensus().fit(boxes)),
        ("MajorityBoxes", lambda: MajorityBoxes().fit(boxes)),
    ]:
        began = time.perf_counter()
        result = run()
        timings[name] = time.perf_counter() - began
        print(f"... {name}: {timings[name]:.1f} s", file=sys.stderr)
        if isinstance(result, BoxConsensus):
            consensus = result
        elif isinstance(result, MajorityBoxes):
            majority = result
    total = time.perf_counter() - started
    f1, majority_f1 = (box_gold_scores(rule.boxes_.assign(annotator_id="c"), gold)["f1"].iloc[0]
                       for rule in (consensus, majority))  # fmt: skip
    model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                 .splitlines() if line.startswith("model name"))  # fmt: skip
    print(f"{len(boxes):,} boxes ({args.images:,} images x {PER_IMAGE} of {POOL} annotators x "
          f"{BOXES}); {model}, {os.cpu_count()} cores visible (shared), Python "
          f"{platform.python_version()}\n")  # fmt: skip
    print("| step | wall time (s) |\n|---|---:|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.1f} |")
    peak = peak_rss_mib()
    print(f"| **all four** | **{total:.1f}** |\n")
    print(f"peak RSS {peak:.0f} MiB (baseline with data {baseline:.0f} MiB); "
          f"F1 vs synthetic gold: BoxConsensus {f1:.4f} ({consensus.n_iter_} EM iterations), "
          f"MajorityBoxes {majority_f1:.4f}")
    return report_targets([(f"{total:.1f} s (< 60 s) and peak {peak:.0f} MiB (< 4096 MiB)",
                            total < 60 and peak < 4096)])


if __name__ == "__main__":
    sys.exit(main())
