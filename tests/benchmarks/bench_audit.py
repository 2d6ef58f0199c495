"""Benchmark the quality library on 1,000,000 synthetic annotations.

    .venv/bin/python tests/benchmarks/bench_audit.py            # the full run (minutes)
    .venv/bin/python tests/benchmarks/bench_audit.py --items 2000   # a smoke run

100,000 items x 10 annotators drawn (by activity weight, without replacement) from a pool
of 200 with accuracies between 0.45 and 0.95, 3 labels, seed 0. Every case runs in a fresh
subprocess that builds the same data and imports its library; then the kernel's peak-RSS
counter is reset (``echo 5 > /proc/self/clear_refs``), so the peak read afterwards with
``getrusage(...).ru_maxrss`` belongs to the case: "baseline" is the RSS with the data
loaded, "peak" the highest RSS while the case ran (data included).
Not a pytest test: the name does not match test_*.py.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from measure import peak_rss_mib, report_targets, reset_peak_rss

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))

POOL, PER_ITEM, LABELS, SEED = 200, 10, np.array(["ant", "bee", "cat"]), 0
SKLEARN_SAMPLE = 400  # pairs timed with the per-pair loop; the rest is extrapolated


def synthesize(n_items: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Tidy labels and the true label per item (code), reproducible from SEED."""
    rng = np.random.default_rng(SEED)
    activity = rng.lognormal(sigma=0.7, size=POOL)  # some annotators work far more than others
    accuracy = rng.uniform(0.45, 0.95, size=POOL)
    truth = rng.choice(len(LABELS), size=n_items, p=[0.5, 0.3, 0.2])
    chunks = []
    for start in range(0, n_items, 10_000):  # chunked: keep the generator's own memory small
        n = min(10_000, n_items - start)
        # Gumbel top-k: PER_ITEM distinct annotators per item, drawn in proportion to activity.
        keys = np.log(activity) + rng.gumbel(size=(n, POOL))
        chunks.append(np.argpartition(-keys, PER_ITEM, axis=1)[:, :PER_ITEM])
    who = np.concatenate(chunks)
    right = rng.random(who.shape) < accuracy[who]
    wrong = (truth[:, None] + rng.integers(1, len(LABELS), size=who.shape)) % len(LABELS)
    said = np.where(right, truth[:, None], wrong)
    labels = pd.DataFrame({
        "item_id": np.char.add("item", np.repeat(np.arange(n_items), PER_ITEM).astype(str)),
        "annotator_id": np.char.add("ann", who.ravel().astype(str)),
        "label": LABELS[said.ravel()],
    }).astype(str)  # fmt: skip
    return labels, truth


def accuracy_vs_truth(predicted: pd.Series, truth: np.ndarray) -> float:
    items = np.char.add("item", np.arange(len(truth)).astype(str))
    return float((predicted.reindex(items).to_numpy() == LABELS[truth]).mean())


# --- the cases: each returns a note for the table ------------------------------------------


def ours_pairwise(labels: pd.DataFrame, truth: np.ndarray) -> str:
    from labelloop.quality import pairwise_kappa

    pairs = pairwise_kappa(labels, min_shared=1)
    return f"{len(pairs)} pairs"


def sklearn_pair_loop(labels: pd.DataFrame, truth: np.ndarray) -> tuple[str, float]:
    """The tutorial approach: pivot wide, then cohen_kappa_score on each pair's shared items.
    Times SKLEARN_SAMPLE random pairs and extrapolates to all pairs (returned as seconds)."""
    from sklearn.metrics import cohen_kappa_score

    started = time.perf_counter()
    wide = labels.pivot(index="item_id", columns="annotator_id", values="label")
    pivot_seconds = time.perf_counter() - started
    all_pairs = list(itertools.combinations(wide.columns, 2))
    rng = np.random.default_rng(SEED)
    sample = [all_pairs[i] for i in rng.choice(len(all_pairs), SKLEARN_SAMPLE, replace=False)]
    started = time.perf_counter()
    for a, b in sample:
        shared = wide[[a, b]].dropna()
        if len(shared):
            cohen_kappa_score(shared[a], shared[b])
    loop_seconds = time.perf_counter() - started
    estimate = pivot_seconds + loop_seconds * len(all_pairs) / len(sample)
    note = (f"EXTRAPOLATED: pivot {pivot_seconds:.1f} s + {len(sample)} of {len(all_pairs)} "
            f"pairs timed ({loop_seconds:.1f} s), scaled to all pairs")  # fmt: skip
    return note, estimate


def ours_alpha(labels: pd.DataFrame, truth: np.ndarray) -> str:
    from labelloop.quality import krippendorff_alpha

    return f"alpha {krippendorff_alpha(labels, 'nominal'):.4f}"


def package_alpha(labels: pd.DataFrame, truth: np.ndarray) -> tuple[str, float]:
    """krippendorff.alpha needs an annotators x items matrix; building it is timed apart."""
    import krippendorff

    started = time.perf_counter()
    item, _ = pd.factorize(labels["item_id"])
    annotator, _ = pd.factorize(labels["annotator_id"])
    code, _ = pd.factorize(labels["label"], sort=True)
    matrix = np.full((annotator.max() + 1, item.max() + 1), np.nan)
    matrix[annotator, item] = code
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal")
    seconds = time.perf_counter() - started
    return f"alpha {alpha:.4f}; matrix build ({build_seconds:.2f} s) not counted", seconds


def ours_dawid_skene(labels: pd.DataFrame, truth: np.ndarray) -> str:
    from labelloop.quality import DawidSkene

    model = DawidSkene(n_iter=100, tol=1e-5).fit(labels)
    return f"{model.n_iter_} iterations, accuracy {accuracy_vs_truth(model.labels_, truth):.4f}"


def crowd_kit_dawid_skene(labels: pd.DataFrame, truth: np.ndarray) -> str:
    from crowdkit.aggregation import DawidSkene

    data = labels.rename(columns={"item_id": "task", "annotator_id": "worker"})
    model = DawidSkene(n_iter=100, tol=1e-5).fit(data)
    iterations = len(model.loss_history_)
    return f"{iterations} iterations, accuracy {accuracy_vs_truth(model.labels_, truth):.4f}"


def ours_full_audit(labels: pd.DataFrame, truth: np.ndarray) -> str:
    from labelloop.quality import run_audit

    metrics = run_audit(labels, method="dawid-skene").metrics
    return f"all metrics + DS; {metrics['agreement']['n_pairs']} pairs with >= 10 shared"


OURS, SKLEARN, KRIPPENDORFF, CROWD_KIT = (
    "labelloop.quality",
    "sklearn.metrics",
    "krippendorff",
    "crowdkit.aggregation",
)
#: name -> (task, implementation, module imported before the clock starts, function)
CASES: dict[str, tuple[str, str, str, Callable[..., object]]] = {
    "ours_pairwise": ("all-pairs Cohen's kappa", "labelloop pairwise_kappa", OURS, ours_pairwise),
    "sklearn_loop": ("all-pairs Cohen's kappa", "sklearn cohen_kappa_score per pair", SKLEARN,
                     sklearn_pair_loop),
    "ours_alpha": ("Krippendorff's alpha, nominal", "labelloop krippendorff_alpha", OURS,
                   ours_alpha),
    "package_alpha": ("Krippendorff's alpha, nominal", "krippendorff 0.9 alpha", KRIPPENDORFF,
                      package_alpha),
    "ours_ds": ("Dawid-Skene (n_iter 100, tol 1e-5)", "labelloop DawidSkene", OURS,
                ours_dawid_skene),
    "crowdkit_ds": ("Dawid-Skene (n_iter 100, tol 1e-5)", "crowd-kit 1.4.2 DawidSkene", CROWD_KIT,
                    crowd_kit_dawid_skene),
    "ours_audit": ("whole audit", "labelloop run_audit", OURS, ours_full_audit),
}  # fmt: skip


def run_case(name: str, n_items: int) -> None:
    """Child process: build the data, run one case, print one JSON line."""
    _, _, module, case = CASES[name]
    labels, truth = synthesize(n_items)
    importlib.import_module(module)  # import time is not what is compared
    baseline = reset_peak_rss()
    started = time.perf_counter()
    outcome = case(labels, truth)
    seconds = time.perf_counter() - started
    note, seconds = outcome if isinstance(outcome, tuple) else (outcome, seconds)
    print(json.dumps({"seconds": seconds, "peak_mib": peak_rss_mib(), "baseline_mib": baseline,
                      "note": note, "rows": len(labels)}))  # fmt: skip


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                  .splitlines() if line.startswith("model name")), platform.processor())  # fmt: skip
    return (
        f"{model}, {os.cpu_count()} cores visible (shared), Python "
        f"{platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.items)
        return 0

    results = {}
    for name in CASES:
        done = subprocess.run(
            [sys.executable, __file__, "--case", name, "--items", str(args.items)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"... {name}: {results[name]['seconds']:.2f} s", file=sys.stderr)

    rows = results["ours_pairwise"]["rows"]
    print(f"{rows:,} annotations ({args.items:,} items x {PER_ITEM} of {POOL} annotators, "
          f"{len(LABELS)} labels, seed {SEED}); {machine()}\n")  # fmt: skip
    print("| task | implementation | wall time (s) | peak RSS (MiB) | baseline RSS (MiB) "
          "| peak - baseline (MiB) | notes |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---|")
    for name, (task, implementation, _, _) in CASES.items():
        r = results[name]
        print(f"| {task} | {implementation} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | "
              f"{r['baseline_mib']:.0f} | {r['peak_mib'] - r['baseline_mib']:.0f} | "
              f"{r['note']} |")  # fmt: skip

    def speedup(slow: str, fast: str) -> float:
        return results[slow]["seconds"] / results[fast]["seconds"]

    kappa = speedup("sklearn_loop", "ours_pairwise")
    alpha = speedup("package_alpha", "ours_alpha")
    dawid_skene = speedup("crowdkit_ds", "ours_ds")
    peak = max(r["peak_mib"] for r in results.values())
    checks = [
        (f"pairwise kappa >= 10x faster than the per-pair loop: {kappa:.0f}x", kappa >= 10),
        (f"alpha no slower than the krippendorff package: {alpha:.1f}x", alpha >= 1),
        (f"Dawid-Skene no slower than crowd-kit: {dawid_skene:.1f}x", dawid_skene >= 1),
        (f"peak RSS under 4 GiB: largest {peak:.0f} MiB", peak < 4096),
    ]
    return report_targets(checks)


if __name__ == "__main__":
    sys.exit(main())
