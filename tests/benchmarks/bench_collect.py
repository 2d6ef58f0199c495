"""Benchmark collect: a full export vs an incremental collect after 100 new annotations, by project size.

    .venv/bin/python tests/benchmarks/bench_collect.py                    # 10,000 and 100,000 tasks
    .venv/bin/python tests/benchmarks/bench_collect.py --sizes 2000       # a smoke run

One Label Studio server (its own venv, SQLite, started by ``labelloop.dev.stack``) serves the run. For
each size N a fresh project gets N SMS tasks without annotations through ``projects.import_tasks``
(batches of 10,000), then ``collect`` runs three times on file storage: the first is a full export
(no snapshot yet, started once the safety overlap has passed since the import), then 100
annotations are created (4 threads) and the second run is incremental; the third run is a reconciliation
(``full=True``: incremental + full export, compared row for row). Wall times are printed as a
Markdown table row per size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))
TOKEN = "bench-collect-token-0123456789abcdef01234567"


def spec_for(folder: Path, n: int) -> Path:
    raw = yaml.safe_load((REPO / "include" / "projects" / "sms_spam.yaml").read_text())
    raw.update(name=f"bench_collect_{n}", title=f"bench collect {n} {int(time.time())}",
               labeling_config=str(REPO / "include" / raw["labeling_config"]),
               guidelines=str(REPO / "include" / raw["guidelines"]), storage_uri=f"file://{folder / f'store-{n}'}")
    raw["source"]["uri"] = f"file://{folder / 'raw'}/"
    path = folder / f"bench_collect_{n}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def timed(step, *args, **kwargs):
    started = time.monotonic()
    result = step(*args, **kwargs)
    return result, time.monotonic() - started


def bench(hook, folder: Path, n: int, annotations: int) -> dict[str, float]:
    from labelloop.collect import merge
    from labelloop.collect.snapshot import collect
    from labelloop.project import ensure_project
    from labelloop.spec import load_spec

    spec = load_spec(spec_for(folder, n))
    project_id, _ = ensure_project(hook, spec)
    texts = [json.loads(line)["text"] for line in (REPO / "include/demo/sms-spam/messages.jsonl").open()]
    _, imported = timed(lambda: [hook.client.projects.import_tasks(
        project_id, request=[{"data": {"text": f"{texts[i % len(texts)]} #{i}"}} for i in range(start, min(n, start + 10_000))])
        for start in range(0, n, 10_000)])
    # Tasks changed within the overlap before a collect are fetched again by the next one: start the
    # first collect after it, so the second measures the steady state (only the new annotations).
    time.sleep(merge.SAFETY_OVERLAP.total_seconds() + 2)
    full, full_s = timed(collect, spec, hook, "manual__2026-03-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00")
    ids = [task.id for _, task in zip(range(annotations), hook.iter_tasks(project_id, page_size=annotations))]
    result = [{"from_name": spec.control_name, "to_name": "text", "type": "choices", "value": {"choices": ["spam"]}}]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda task: hook.create_annotation(task, result, lead_time=1.0), ids))
    incremental, incremental_s = timed(collect, spec, hook, "manual__2026-03-02T00:00:00+00:00",
                                       "2026-03-02T00:00:00+00:00")
    reconciled, reconcile_s = timed(collect, spec, hook, "manual__2026-03-03T00:00:00+00:00",
                                    "2026-03-03T00:00:00+00:00", full=True)
    assert full["mode"] == "full" and incremental["mode"] == "incremental" and reconciled["mode"] == "reconcile"
    assert incremental["counts"]["annotations"] == annotations and not reconciled["differing_tasks"]
    hook.delete_project(project_id)
    return {"tasks": n, "import_s": imported, "full_s": full_s, "incremental_s": incremental_s,
            "fetched": incremental["fetched_tasks"]["main"], "reconcile_s": reconcile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--annotations", type=int, default=100)
    args = parser.parse_args()
    from labelloop.dev.stack import free_port, labelstudio_server

    with tempfile.TemporaryDirectory(prefix="bench-collect-") as tmp:
        folder = Path(tmp)
        server = labelstudio_server(folder / "stack", free_port(), token=TOKEN).start()
        try:
            os.environ["AIRFLOW_CONN_LABELSTUDIO_DEFAULT"] = json.dumps(
                {"conn_type": "labelstudio", "host": server.url, "password": TOKEN})
            from labelloop.hooks.labelstudio import LabelStudioHook

            hook = LabelStudioHook(timeout=1800.0)
            print("| tasks | import s | full collect s | incremental collect s (100 new annotations) | tasks fetched | reconcile s |")
            print("|---:|---:|---:|---:|---:|---:|")
            for n in args.sizes:
                row = bench(hook, folder, n, args.annotations)
                print(f"| {row['tasks']:,} | {row['import_s']:.1f} | {row['full_s']:.1f} | {row['incremental_s']:.2f} "
                      f"| {row['fetched']} | {row['reconcile_s']:.1f} |", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
