"""Benchmark the pre-label ML backend: latency per request and predictions per second.

    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/bench_backend.py
    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/bench_backend.py --requests 50 --batch-sizes 1,100,1000

What runs: a real MLflow server (``labelloop.dev.stack.mlflow_server``, SQLite, one worker) and
the backend exactly as the stack runs it (``backend_server``: uvicorn, ONE worker, in a
subprocess on a free port). The served champion is what the retrain DAG produces: the spec's
model (by default word 1-2-gram + char 2-5-gram TF-IDF into a calibrated linear SVM) fitted on
the real SMS messages (``include/demo/sms-spam/messages.jsonl``), logged and registered by
``log_candidate`` and made ``@champion`` by ``move_champion``, the retrain DAG's own functions.

What is timed: one client (httpx, keep-alive, Basic auth as Label Studio sends it) posts
``/predict`` requests one after another, each carrying B tasks shaped like the ones Label
Studio sends (``TaskSimpleSerializer``: id, data, meta, annotations, predictions, ...) with
SMS texts drawn at random; a few warm-up requests are not counted. Latency is client-side
wall time per request (send to parsed JSON); predictions/s = tasks answered / total time of
the timed requests. ``/setup`` (which Label Studio calls before every batch) is timed too.
The request count is bounded (``--requests`` per batch size), so this part takes about a
minute plus the servers' start-up (~30 s); the load cases add ``2 * --seconds``.

Then load (``--clients`` concurrent clients, each its own keep-alive connection, posting
one-task ``/predict`` requests back to back for ``--seconds``): latency percentiles, errors and
requests/s, first with MLflow up, then with the MLflow server stopped (the backend must keep
serving the champion it loaded, say so in ``/health`` as ``registry_error``, and answer within
the same bounds). ``--clients 0`` leaves the load cases out.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))

from labelloop.dev.stack import backend_server  # noqa: E402
from labelloop.spec import Model, load_spec  # noqa: E402
from labelloop.dev.stack import free_port, mlflow_server  # noqa: E402
from measure import report_targets  # noqa: E402

SMS = REPO / "include" / "demo" / "sms-spam" / "messages.jsonl"
SPEC = REPO / "include" / "projects" / "sms_spam.yaml"
TOKEN = "bench-backend-token-0123456789abcdef"


def register_champion(tracking_uri: str, model: Model, records: list[dict[str, Any]]) -> str:
    """Train, log and promote exactly as the retrain DAG does (a tenth of the messages is the evaluation set)."""
    import mlflow
    import pandas as pd

    from labelloop.model.registry import log_candidate, move_champion
    from labelloop.model.train import fit

    frame = pd.DataFrame(records).rename(columns={"id": "item_id"})[["item_id", "text", "label"]]
    train, evaluation = frame.iloc[len(frame) // 10:], frame.iloc[: len(frame) // 10]
    mlflow.set_tracking_uri(tracking_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        version, _ = log_candidate(model, fit(model, train["text"], train["label"]), train, evaluation,
                                   {"snapshot": str(SMS)}, "bench-backend")
    move_champion(mlflow.MlflowClient(), model.name, version.version, "benchmark", "bench_backend.py")
    return str(version.version)


def task(task_id: int, text: str) -> dict[str, Any]:
    """A task as Label Studio 1.23 serializes it for /predict (TaskSimpleSerializer)."""
    return {"id": task_id, "data": {"text": text, "labelloop_id": f"sms-{task_id:05d}"}, "meta": {},
            "created_at": "2026-01-01T00:00:00.000000Z", "updated_at": "2026-01-01T00:00:00.000000Z",
            "is_labeled": False, "overlap": 3, "inner_id": task_id, "total_annotations": 0,
            "cancelled_annotations": 0, "total_predictions": 0, "comment_count": 0,
            "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": 1,
            "updated_by": None, "file_upload": None, "comment_authors": [], "annotations": [],
            "predictions": []}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def timed(client: httpx.Client, method: str, path: str, body: Any, count: int, warmup: int) -> list[float]:
    latencies = []
    for index in range(warmup + count):
        payload = body() if callable(body) else body
        started = time.perf_counter()
        response = client.request(method, path, json=payload)
        response.raise_for_status()
        response.json()
        if index >= warmup:
            latencies.append(time.perf_counter() - started)
    return latencies


def under_load(url: str, body: Any, clients: int, seconds: float) -> tuple[list[float], int]:
    """``clients`` threads, each with its own connection, posting ``body()`` until ``seconds`` pass:
    the latencies of the answered requests and how many failed (an error status or no answer)."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client_loop(_: int) -> None:
        with httpx.Client(base_url=url, auth=httpx.BasicAuth("labelloop", TOKEN), timeout=30) as client:
            while time.monotonic() < deadline:
                payload = body()
                started = time.perf_counter()
                try:
                    client.post("/predict", json=payload).raise_for_status()
                    elapsed = time.perf_counter() - started
                    with lock:
                        latencies.append(elapsed)
                except httpx.HTTPError:
                    with lock:
                        errors[0] += 1

    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(client_loop, range(clients)))
    return latencies, errors[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="timed requests per batch size")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-sizes", default="1,100", help="tasks per request, comma-separated")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients of the load cases (0: none)")
    parser.add_argument("--seconds", type=float, default=60, help="length of each load case")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    rng = random.Random(args.seed)
    records = [json.loads(line) for line in SMS.open()]
    texts = [record["text"] for record in records]
    spec = load_spec(SPEC)
    name = f"{spec.model.name}_bench"

    with tempfile.TemporaryDirectory(prefix="labelloop-bench-backend-") as folder:
        state = Path(folder)
        mlflow = mlflow_server(state, free_port())
        backend = None
        try:
            started = time.monotonic()
            mlflow.start()
            print(f"mlflow up in {time.monotonic() - started:.0f} s", flush=True)
            started = time.monotonic()
            version = register_champion(mlflow.url, spec.model.model_copy(update={"name": name}), records)
            print(f"registered {name}:{version} in {time.monotonic() - started:.1f} s", flush=True)
            # The spec names sms_spam_prelabel; serve the bench model under the same spec.
            projects = state / "projects"
            projects.mkdir()
            raw = SPEC.read_text().replace(f"name: {spec.model.name}", f"name: {name}")
            raw = raw.replace("labeling_config: labeling/", f"labeling_config: {REPO}/include/labeling/")
            raw = raw.replace("guidelines: guidelines/", f"guidelines: {REPO}/include/guidelines/")
            (projects / "sms_spam.yaml").write_text(raw)
            # A 2 s registry poll: the outage case sees /health report it within seconds.
            backend = backend_server(state, free_port(), spec.name, TOKEN, mlflow.url, projects_dir=projects,
                                     poll_seconds=2)
            started = time.monotonic()
            backend.start()
            with httpx.Client(base_url=backend.url, auth=httpx.BasicAuth("labelloop", TOKEN),
                              timeout=120) as client:
                while client.get("/health").json()["model_version"] != f"{name}:{version}":
                    time.sleep(0.2)
                print(f"backend serving {name}:{version} {time.monotonic() - started:.1f} s after start\n",
                      flush=True)
                rows = []
                load_rows: list[tuple[str, list[float], int, float, bool]] = []
                setup = timed(client, "POST", "/setup", {"project": "1.1", "schema": spec.labeling_config_xml},
                              args.requests, args.warmup)
                rows.append(("/setup", "-", len(setup), setup, None))
                for size in sizes:
                    def body(size: int = size) -> dict[str, Any]:
                        return {"tasks": [task(i, rng.choice(texts)) for i in range(size)], "project": "1.1",
                                "label_config": spec.labeling_config_xml, "params": {"context": None}}

                    latencies = timed(client, "POST", "/predict", body, args.requests, args.warmup)
                    rows.append(("/predict", str(size), len(latencies), latencies,
                                 size * len(latencies) / sum(latencies)))
                if args.clients:
                    def one() -> dict[str, Any]:
                        return {"tasks": [task(1, rng.choice(texts))], "project": "1.1",
                                "label_config": spec.labeling_config_xml, "params": {"context": None}}

                    for case in ("MLflow up", "MLflow stopped"):
                        if case == "MLflow stopped":
                            mlflow.stop()
                            while "registry_error" not in (health := client.get("/health").json()):
                                time.sleep(0.5)
                            print(f"MLflow stopped; /health: {health}", flush=True)
                        latencies, errors = under_load(backend.url, one, args.clients, args.seconds)
                        health = client.get("/health").json()
                        served = health["model_version"] == f"{name}:{version}"
                        load_rows.append((case, latencies, errors, args.seconds, served))
        finally:
            if backend is not None:
                backend.stop()
            mlflow.stop()

    print("| endpoint | tasks/request | requests | p50 ms | p95 ms | p99 ms | mean ms | predictions/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for endpoint, size, count, latencies, rate in rows:
        print(f"| `{endpoint}` | {size} | {count} | {percentile(latencies, 50) * 1000:.1f} | "
              f"{percentile(latencies, 95) * 1000:.1f} | {percentile(latencies, 99) * 1000:.1f} | "
              f"{statistics.mean(latencies) * 1000:.1f} | {f'{rate:,.0f}' if rate else '-'} |")
    if not load_rows:
        return 0
    print(f"\n{args.clients} concurrent clients, one-task `/predict`, {args.seconds:.0f} s each:\n")
    print("| case | requests | errors | p50 ms | p95 ms | p99 ms | requests/s | champion still served |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for case, latencies, errors, seconds, served in load_rows:
        print(f"| {case} | {len(latencies)} | {errors} | {percentile(latencies, 50) * 1000:.1f} | "
              f"{percentile(latencies, 95) * 1000:.1f} | {percentile(latencies, 99) * 1000:.1f} | "
              f"{len(latencies) / seconds:,.0f} | {'yes' if served else 'NO'} |")
    up, down = load_rows[0], load_rows[-1]
    return report_targets([
        ("no request failed under load, MLflow up or stopped", all(row[2] == 0 for row in load_rows)),
        ("the champion is still served with MLflow stopped", down[4]),
        (f"p99 with MLflow stopped within 2x the p99 with it up + 50 ms "
         f"({percentile(down[1], 99) * 1000:.0f} vs {percentile(up[1], 99) * 1000:.0f} ms)",
         percentile(down[1], 99) <= 2 * percentile(up[1], 99) + 0.05),
    ])


if __name__ == "__main__":
    sys.exit(main())
