"""Learning curve: held-out accuracy against labeled items, uncertainty ordering vs random ordering.

    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/bench_learning_curve.py          # ~5 min
    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/bench_learning_curve.py --seeds 0 --max 300 --no-plot  # smoke

Data: the real SMS messages (``include/demo/sms-spam/messages.jsonl``), de-duplicated by text
as ingest does (4,444 lines -> 4,165 unique). A fixed test set (1,000 messages, stratified by
label, seed 1234) never enters training; the rest is the pool.

For every seed, every policy starts from the same random 50 labeled pool items (drawn again
if they hold only one label) and grows in rounds: 50 items a round up to 500 labeled, then 100
a round up to 1,500. After each round the model is refit from scratch with labelloop's own
``fit(Model(name="bench"), texts, labels)`` (word + char TF-IDF, calibrated LinearSVC) and
scored on the test set with ``evaluate`` (accuracy, spam F1). Policies, all in the same run:

``uncertainty``    the real ingest policy: ``predictions(spec, model, ...)`` on the unlabeled pool,
                   then ``priorities(hashes, predictions, random_share=0.1, n_labels=2)`` (``labelloop.ordering``);
                   the round labels the highest priorities (ties broken by content hash).
``uncertainty-0``  the same with ``random_share=0`` (pure uncertainty; ``--no-share0`` drops it).
``random``         the next items of a seeded random permutation of the pool.

Annotators: ``perfect`` gives the true label. ``noisy`` (``--no-noisy`` drops it) gives the
majority vote of 3 annotators drawn per item from 10 whose accuracies are spread evenly over
0.75-0.95 (binary labels: a wrong answer is the other label); the votes are drawn once per
seed for the whole pool, so every policy sees the same label for the same item. The test set
always keeps its true labels. Not a pytest test: the name does not match test_*.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))
# The spec expands ${LABELLOOP_STORE}; nothing is written there by this script.
os.environ.setdefault("LABELLOOP_STORE", f"file://{tempfile.gettempdir()}/labelloop-bench-store")

from labelloop.ingest.validate import content_hash  # noqa: E402
from labelloop.model.prelabel import predictions  # noqa: E402
from labelloop.model.train import evaluate, fit  # noqa: E402
from labelloop.ordering import priorities  # noqa: E402
from labelloop.spec import Model, load_spec  # noqa: E402

DATA = REPO / "include/demo/sms-spam/messages.jsonl"
SPEC = REPO / "include/projects/sms_spam.yaml"
TEST_SEED = 1234
ANNOTATOR_ACCURACIES = np.linspace(0.75, 0.95, 10)


def load_unique() -> tuple[list[str], np.ndarray]:
    first: dict[str, str] = {}
    for line in DATA.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        first.setdefault(record["text"], record["label"])
    return list(first), np.asarray(list(first.values()))


def stratified_split(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = round(test_size * len(members) / len(labels))
        test.extend(rng.choice(members, size=take, replace=False))
    test = np.sort(np.asarray(test))
    return np.setdiff1d(np.arange(len(labels)), test), test


def schedule(start: int, step_small: int, switch: int, step_large: int, maximum: int) -> list[int]:
    sizes, n = [start], start
    while n < maximum:
        n += step_small if n < switch else step_large
        sizes.append(min(n, maximum))
    return sizes


def noisy_labels(truth: np.ndarray, seed: int) -> np.ndarray:
    """Majority vote of 3 distinct simulated annotators per item (binary: wrong = the other label)."""
    rng = np.random.default_rng(10_000 + seed)
    classes = np.unique(truth)
    who = np.argsort(rng.random((len(truth), len(ANNOTATOR_ACCURACIES))), axis=1)[:, :3]
    right = rng.random(who.shape) < ANNOTATOR_ACCURACIES[who]
    code = np.searchsorted(classes, truth)
    votes = np.where(right, code[:, None], 1 - code[:, None])
    return classes[(votes.sum(axis=1) >= 2).astype(int)]


def run_policy(policy: str, share: float, spec: Any, texts: list[str], hashes: list[str], pool: np.ndarray,
               annotated: np.ndarray, test: np.ndarray, truth: np.ndarray, initial: np.ndarray,
               order: np.ndarray, sizes: list[int]) -> list[dict[str, Any]]:
    """One learning curve: rows of (n_labeled, accuracy, spam F1, ...) for the given policy."""
    labeled, start = list(initial), set(initial)
    unlabeled = [i for i in (order if policy == "random" else pool) if i not in start]
    test_texts, test_truth = [texts[i] for i in test], truth[test]
    rows, picks_random_share = [], 0
    model: Any = None  # the previous round's model ranks the pool (round 0 starts from `initial`)
    for round_index, size in enumerate(sizes):
        started = time.perf_counter()
        if round_index:
            need = size - len(labeled)
            if policy == "random":
                chosen, unlabeled = unlabeled[:need], unlabeled[need:]
            else:
                candidates = np.asarray(unlabeled)
                rows_data = [{"text": texts[i]} for i in candidates]
                predicted = predictions(spec, model, f"bench:{round_index}", rows_data)
                keys = np.asarray(priorities([hashes[i] for i in candidates], predicted, random_share=share, n_labels=2))
                top = np.lexsort((np.asarray([hashes[i] for i in candidates]), -keys))[:need]
                chosen = list(candidates[top])
                uncertainty = np.asarray([1.0 - p["score"] for p in predicted])[top]
                picks_random_share += int(np.sum(~np.isclose(keys[top], np.round(uncertainty, 6))))
                taken = set(chosen)
                unlabeled = [i for i in unlabeled if i not in taken]
            labeled.extend(chosen)
        model = fit(Model(name="bench"), [texts[i] for i in labeled], list(annotated[labeled]))
        metrics = evaluate(model, test_texts, test_truth)
        rows.append({"n": len(labeled), "accuracy": metrics["accuracy"], "f1_spam": metrics["f1_spam"],
                     "spam_labeled": int(np.sum(truth[labeled] == "spam")),
                     "label_errors": int(np.sum(annotated[labeled] != truth[labeled])),
                     "random_share_picks": picks_random_share, "seconds": time.perf_counter() - started})
    return rows


def summary_table(results: dict[str, dict[str, list[list[dict]]]], sizes: list[int], metric: str,
                  variant: str, policies: list[str]) -> str:
    """Markdown: mean [min-max] over seeds per size and policy, plus the uncertainty - random gap."""
    head = "| labeled | " + " | ".join(policies) + " | uncertainty - random |"
    lines = [head, "|" + "---:|" * (len(policies) + 2)]
    for index, size in enumerate(sizes):
        cells, means = [], {}
        for policy in policies:
            values = np.asarray([curve[index][metric] for curve in results[variant][policy]])
            means[policy] = values.mean()
            cells.append(f"{100 * values.mean():.2f} [{100 * values.min():.2f}-{100 * values.max():.2f}]")
        gap = 100 * (means["uncertainty"] - means["random"])
        lines.append(f"| {size:,} | " + " | ".join(cells) + f" | {gap:+.2f} |")
    return "\n".join(lines)


def plot(results: dict, sizes: list[int], policies: list[str], variants: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"uncertainty": "tab:blue", "uncertainty-0": "tab:green", "random": "tab:orange"}
    styles = {"perfect": "-", "noisy": "--"}
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for axis, metric, name in ((axes[0], "accuracy", "accuracy"), (axes[1], "f1_spam", "spam F1")):
        for variant in variants:
            for policy in policies:
                if policy not in results[variant]:
                    continue
                values = np.asarray([[row[metric] for row in curve] for curve in results[variant][policy]])
                label = f"{policy} ({variant} labels)"
                axis.plot(sizes, values.mean(axis=0), styles[variant], color=colors[policy], label=label,
                          marker="o", markersize=2.5)
                axis.fill_between(sizes, values.min(axis=0), values.max(axis=0), color=colors[policy], alpha=0.12)
        axis.set_xlabel("labeled items")
        axis.set_ylabel(f"held-out {name}")
        axis.grid(alpha=0.3)
        low = np.percentile([row[metric] for variant in variants for curves in results[variant].values()
                             for curve in curves for row in curve], 2)
        axis.set_ylim(max(0.0, low - 0.01), 1.0)
    axes[1].legend(fontsize=8, loc="lower right")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--start", type=int, default=50)
    parser.add_argument("--max", type=int, default=1500)
    parser.add_argument("--random-share", type=float, default=0.1)
    parser.add_argument("--no-noisy", action="store_true", help="perfect annotator only")
    parser.add_argument("--no-share0", action="store_true", help="drop the random_share=0 curve")
    parser.add_argument("--plot", type=Path, default=REPO / "docs/learning_curve.png")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--json", type=Path, help="write every curve point here")
    args = parser.parse_args()

    began = time.perf_counter()
    spec = load_spec(SPEC)
    texts, truth = load_unique()
    hashes = [content_hash({"text": text}) for text in texts]
    pool, test = stratified_split(truth, args.test_size, TEST_SEED)
    sizes = schedule(args.start, 50, 500, 100, args.max)
    variants = ["perfect"] + ([] if args.no_noisy else ["noisy"])
    policies = ["uncertainty"] + ([] if args.no_share0 else ["uncertainty-0"]) + ["random"]
    print(f"{len(texts):,} unique messages ({np.sum(truth == 'spam')} spam); test {len(test):,} "
          f"({np.sum(truth[test] == 'spam')} spam), pool {len(pool):,}; sizes {sizes}; seeds {args.seeds}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)

    results: dict[str, dict[str, list[list[dict]]]] = {v: {p: [] for p in policies} for v in variants}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        while True:
            initial = rng.choice(pool, size=args.start, replace=False)
            if len(np.unique(truth[initial])) > 1:
                break
        order = rng.permutation(pool)
        for variant in variants:
            annotated = truth.copy()
            if variant == "noisy":
                annotated[pool] = noisy_labels(truth[pool], seed)
                print(f"seed {seed} noisy: majority vote wrong on {np.mean(annotated[pool] != truth[pool]):.1%} "
                      f"of the pool", flush=True)
            for policy in policies:
                if variant == "noisy" and policy == "uncertainty-0":
                    continue  # kept short: the share-0 curve runs on perfect labels only
                share = 0.0 if policy == "uncertainty-0" else args.random_share
                kind = "random" if policy == "random" else "uncertainty"
                curve = run_policy(kind, share, spec, texts, hashes, pool, annotated, test, truth,
                                   initial, order, sizes)
                results[variant][policy].append(curve)
                last = curve[-1]
                print(f"seed {seed} {variant:7s} {policy:13s}: at {sizes[1]} {100 * curve[1]['accuracy']:.2f}%, "
                      f"at {last['n']} {100 * last['accuracy']:.2f}% acc, F1 {last['f1_spam']:.4f}; "
                      f"{last['spam_labeled']} spam labeled, {last['label_errors']} label errors, "
                      f"{last['random_share_picks']} random-share picks ({sum(r['seconds'] for r in curve):.0f} s)",
                      flush=True)
        if "noisy" in results:
            results["noisy"].pop("uncertainty-0", None)

    for variant in variants:
        shown = [p for p in policies if p in results[variant]]
        for metric, name in (("accuracy", "accuracy %"), ("f1_spam", "spam F1 x100")):
            print(f"\n{variant} labels, held-out {name}, mean [min-max] over seeds {args.seeds}\n")
            print(summary_table(results, sizes, metric, variant, shown))
    print("\nspam among labeled items at the last size (mean over seeds):")
    for variant in variants:
        for policy, curves in results[variant].items():
            spam = np.mean([curve[-1]["spam_labeled"] for curve in curves])
            extra = np.mean([curve[-1]["random_share_picks"] for curve in curves])
            errors = np.mean([curve[-1]["label_errors"] for curve in curves])
            print(f"  {variant:7s} {policy:13s} {spam:6.1f} spam / {sizes[-1]}, {errors:5.1f} label errors, "
                  f"{extra:5.1f} random-share picks")
    if args.json:
        args.json.write_text(json.dumps({"sizes": sizes, "seeds": args.seeds, "results": results}, indent=1))
    if not args.no_plot:
        plot(results, sizes, policies, variants, args.plot,
             f"SMS spam, {len(test):,} held-out messages, {len(args.seeds)} seeds (line: mean, band: min-max); "
             f"uncertainty = ingest priority, random_share={args.random_share}")
        print(f"\nplot: {args.plot}")
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
