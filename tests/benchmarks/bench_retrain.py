"""Retrain + register + evaluate wall time for 5,000 labeled items, against a real MLflow server.

    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/bench_retrain.py             # ~1 min
    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/bench_retrain.py --rounds 2  # shorter

The embedded stack's MLflow server (``labelloop.dev.stack.mlflow_server``: SQLite backend, local
artifacts, one worker) runs on a free port in a temporary folder for the whole run and is
stopped at the end.

Data: the SMS messages de-duplicated by text give only 4,165 items. 300 of them (stratified by
label, seed 1234) are the gold evaluation set and never enter training; the other 3,865 all
enter training, and 1,135 suffixed copies (``text + " #<i>"``, label kept) of training
messages drawn at random (seed = round number) bring it to 5,000. The copies are near
duplicates, so the figures measure time, not what 5,000 distinct messages would teach.

Each round does what ``labelloop.model.retrain.retrain`` + ``promote`` do, timed in parts:

``fit``               ``train.fit(spec.model, texts, labels)`` (word + char TF-IDF, calibrated LinearSVC)
``log_candidate``     ``registry.log_candidate``: evaluate on gold, an MLflow run with the datasets'
                      lineage, params, metrics, confusion plot, ``log_model`` + a new registered
                      version; plus the ``train_digest`` version tag retrain sets
``evaluate_champion`` ``registry.evaluate_champion``: load ``models:/<name>/<champion>`` from the
                      server and evaluate it on the same gold set (nothing to do in round 1)
``decide``            ``registry.decide`` + ``registry.record_decision`` (tags on the version)
``move_champion``     ``registry.move_champion`` (alias + history tag). Run in every round, also
                      when ``decide`` says no, so that the move is timed each time.

Round 1 is the first model (no champion yet) and pays the process's first-use costs (MLflow's
lazy imports, the experiment's creation); Airflow runs every retrain in a fresh task process,
so round 1 is the closer figure for a real DAG run. Rounds 2+ have a champion to beat.
Not a pytest test: the name does not match test_*.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))
os.environ.setdefault("LABELLOOP_STORE", f"file://{tempfile.gettempdir()}/labelloop-bench-store")

DATA = REPO / "include/demo/sms-spam/messages.jsonl"
SPEC = REPO / "include/projects/sms_spam.yaml"
PARTS = ("fit", "log_candidate", "evaluate_champion", "decide", "move_champion")


def datasets(n_train: int, n_gold: int, seed: int):
    import pandas as pd

    first: dict[str, str] = {}
    for line in DATA.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        first.setdefault(record["text"], record["label"])
    frame = pd.DataFrame({"text": list(first), "label": list(first.values())})
    frame.insert(0, "item_id", [f"sms-{i:05d}" for i in range(len(frame))])
    rng = np.random.default_rng(1234)
    gold_index = np.concatenate([
        rng.choice(group.index.to_numpy(), size=round(n_gold * len(group) / len(frame)), replace=False)
        for _, group in frame.groupby("label")])
    gold = frame.loc[np.sort(gold_index)].reset_index(drop=True)
    base = frame.drop(index=gold_index).reset_index(drop=True)
    extra = n_train - len(base)
    if extra < 0:
        return base.sample(n_train, random_state=seed).reset_index(drop=True), gold, 0
    copies = base.sample(extra, replace=extra > len(base), random_state=seed).reset_index(drop=True)
    copies = copies.assign(text=copies["text"] + [f" #{i}" for i in range(extra)],
                           item_id=copies["item_id"] + [f"-copy{i}" for i in range(extra)])
    return pd.concat([base, copies], ignore_index=True), gold, extra


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=5000, help="training items")
    parser.add_argument("--gold", type=int, default=300, help="gold evaluation items")
    parser.add_argument("--rounds", type=int, default=4, help="round 1 = first model, then with a champion")
    args = parser.parse_args()

    began = time.perf_counter()
    import_started = time.perf_counter()
    import mlflow
    from mlflow import MlflowClient

    from labelloop.model.registry import decide, evaluate_champion, log_candidate, move_champion, record_decision
    from labelloop.model.retrain import frame_digest
    from labelloop.model.train import fit
    from labelloop.spec import load_spec
    from labelloop.dev.stack import free_port, mlflow_server
    imports = time.perf_counter() - import_started

    spec = load_spec(SPEC)
    model = spec.model
    print(f"model {model.name}: metric {model.metric}, margin {model.promotion_margin}, floor {model.min_score}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; mlflow {mlflow.__version__}; "
          f"imports (mlflow, sklearn, labelloop) {imports:.1f} s; load average {os.getloadavg()[0]:.2f}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="labelloop-bench-retrain-") as folder:
        server = mlflow_server(Path(folder), free_port())
        started = time.perf_counter()
        server.start()
        try:
            print(f"MLflow server {server.url} healthy after {time.perf_counter() - started:.1f} s", flush=True)
            mlflow.set_tracking_uri(server.url)
            client = MlflowClient(tracking_uri=server.url)
            for round_number in range(1, args.rounds + 1):
                train, gold, copies = datasets(args.items, args.gold, seed=round_number)
                lineage = {"snapshot": f"bench/sms-{args.items}/round-{round_number}", "snapshot_run": f"bench-{round_number}",
                           "n_train": len(train), "n_eval": len(gold),
                           "train_digest": frame_digest(train), "eval_digest": frame_digest(gold)}
                times: dict[str, float] = {}

                clock = time.perf_counter()
                pipeline = fit(model, train["text"], train["label"])
                times["fit"] = time.perf_counter() - clock

                clock = time.perf_counter()
                version, metrics = log_candidate(model, pipeline, train, gold, lineage,
                                                 experiment="labelloop/bench/training")
                client.set_model_version_tag(model.name, version.version, "train_digest", lineage["train_digest"])
                times["log_candidate"] = time.perf_counter() - clock

                clock = time.perf_counter()
                champion = evaluate_champion(client, model.name, gold)
                times["evaluate_champion"] = time.perf_counter() - clock

                clock = time.perf_counter()
                decision = decide(model, metrics, champion[1] if champion else None)
                record_decision(client, model.name, version.version, decision,
                                "approved" if decision.promote else "rejected", lineage["snapshot"])
                times["decide"] = time.perf_counter() - clock

                clock = time.perf_counter()
                move_champion(client, model.name, version.version,
                              decision.reason if decision.promote else "benchmark: timing the alias move", "bench")
                times["move_champion"] = time.perf_counter() - clock

                times["total"] = sum(times[part] for part in PARTS)
                rows.append(times)
                print(f"round {round_number}: {len(train):,} train ({copies:,} suffixed copies, "
                      f"{int((train['label'] == 'spam').sum())} spam), {len(gold)} gold -> version {version.version}, "
                      f"gold accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}; "
                      f"champion {champion[0].version if champion else 'none'}; promote={decision.promote} "
                      f"({decision.reason}); "
                      + ", ".join(f"{key} {value:.2f} s" for key, value in times.items()), flush=True)
            history = [f"v{entry['version']}" for entry in json.loads(
                client.get_registered_model(model.name).tags["labelloop.champion_history"])]
            print(f"champion history: {' -> '.join(history)}")
        finally:
            server.stop()

    print("\n| part | round 1 (first model, cold process) | rounds 2+ (champion to beat): median [min-max] |")
    print("|---|---:|---:|")
    for part in (*PARTS, "total"):
        later = [row[part] for row in rows[1:]]
        spread = (f"{statistics.median(later):.2f} s [{min(later):.2f}-{max(later):.2f}]" if later else "—")
        print(f"| {part} | {rows[0][part]:.2f} s | {spread} |")
    print(f"\n(whole script {time.perf_counter() - began:.0f} s, MLflow server start and stop included; "
          f"load average at the end {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
