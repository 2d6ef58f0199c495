"""Benchmark ingest on the production profile: the fanned-out ingest DAG on 2 and 1 Celery workers
into Label Studio on Postgres, against the raw SDK import of the same tasks, in one run.

    .venv/bin/python tests/benchmarks/bench_ingest_celery.py                  # 40,000 records, ~12 min
    .venv/bin/python tests/benchmarks/bench_ingest_celery.py --size 4000 --no-doc   # smoke run

One production profile (``labelloop.dev.production``: Airflow on Postgres with the CeleryExecutor on
Redis, two Celery workers, Label Studio on Postgres, moto's S3 server) serves the whole run. N
unique SMS records are written as JSONL objects of ``--per-object`` records to
``s3://bench/raw-N/`` on the profile's S3 server. Then, one after another, each into a fresh
project: the raw SDK import (bench_ingest.py's ``raw-sdk`` child), the ingest DAG with both
workers, the raw import again, then the second worker is stopped (SIGTERM, as compose's `docker
stop` sends) and the DAG runs on one worker. Each DAG run has its own spec (``ingest.group_bytes:
1``: one mapped ``ingest_group`` per object), set up by its setup DAG first, so the ingest run
times the ingest alone. A DAG run's time is Airflow's own start-to-end of the run (scheduling and
the tasks' start-up included); "groups span" is first group start to last group end. Each project
must hold exactly N tasks at the end, or the run fails. Not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_ingest, beside this file

from bench_ingest import BUCKET, DOC, ServerSampler, run_child, write_objects, write_spec  # noqa: E402

MiB = 1024 * 1024


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def set_up_spec(profile: Any, airflow: Any, n: int, args: argparse.Namespace, label: str) -> Any:
    """A fresh spec whose project the setup DAG has made (settings, queue view, ML backend)."""
    from labelloop.spec import load_spec

    name = f"bench_celery_{label}_{int(time.time())}"
    path = write_spec(profile.projects_dir, n, args.batch_size, name=name, title=f"bench {name}",
                      storage_uri=f"s3://{BUCKET}/state-{name}", schedules={"ingest": None, "collect": None},
                      ingest={"group_bytes": 1, "max_groups": args.max_groups})
    spec = load_spec(path)
    for kind in ("setup", "ingest"):
        airflow.wait_for_dag(f"{spec.dag_prefix}__{kind}", timeout=300)
    airflow.run(f"{spec.dag_prefix}__setup", timeout=600)
    return spec


def run_dag_ingest(profile: Any, airflow: Any, n: int, args: argparse.Namespace, label: str) -> dict[str, Any]:
    """Set up and ingest one fresh spec through Airflow; its times and counts."""
    from labelloop.hooks.labelstudio import LabelStudioHook

    spec = set_up_spec(profile, airflow, n, args, label)
    dag_id = f"{spec.dag_prefix}__ingest"
    since = datetime.now(timezone.utc).replace(microsecond=0)
    with ServerSampler(labelstudio_pid(profile)) as sampler:
        run_id = airflow.run(dag_id, timeout=3600)["run_id"]
    requests = labelstudio_requests(profile, since, datetime.now(timezone.utc))
    run = airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
    tis = airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
    groups = [ti for ti in tis if ti["task_id"] == "ingest_group"]
    summary = airflow.xcom(dag_id, run_id, "reduce_summaries")
    hook = LabelStudioHook()
    count = hook.task_count(hook.find_project(spec.title).id)
    wall = parse_time(run["end_date"]) - parse_time(run["start_date"])
    span = max(parse_time(ti["end_date"]) for ti in groups) - min(parse_time(ti["start_date"]) for ti in groups)
    return {"wall": wall, "count": count, "groups": len(groups), "groups_span": span,
            "group_seconds": sorted(round(ti["duration"], 1) for ti in groups),
            "per_worker": groups_per_worker(profile, dag_id),
            "imported": summary["imported"], "balanced": summary["balanced"],
            "server_cpu": sampler.cpu_used, "server_rss": sampler.peak - sampler.base, "requests": requests}


def groups_per_worker(profile: Any, dag_id: str) -> list[int]:
    """How many of the run's ingest_group tasks each Celery worker ran (from the workers' own logs;
    every worker runs on this machine, so the task instances' hostname cannot tell them apart)."""
    from labelloop.dev.production import WORKERS

    counts = []
    for number in range(1, WORKERS + 1):
        log = profile.state_dir / "logs" / f"airflow-worker{number}.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        counts.append(sum(1 for line in lines if "Executing workload in Celery" in line
                          and f"dag_id={dag_id}/" in line and "task_id=ingest_group/" in line))
    return counts


#: A request line of Label Studio's log: `[2026-12-02 00:51:05,102] [django.server::...] [INFO] "GET /api/... HTTP/1.1" 200 138`.
REQUEST_LINE = re.compile(r'^\[(\S+ \S+),\d+\] \[django\.server[^"]*"(\w+) (\S+) HTTP')


def labelstudio_requests(profile: Any, since: datetime, until: datetime) -> Counter[str]:
    """Label Studio's requests between two times, by method and path (ids as N, no query): what
    the server was asked to do while one method ran."""
    log = profile.labelstudio_server().log_path
    counts: Counter[str] = Counter()
    # Each request line appears twice (Label Studio logs it through two handlers into one file).
    for line in dict.fromkeys(log.read_text(errors="replace").splitlines()):
        match = REQUEST_LINE.match(line)
        if match and since <= datetime.fromisoformat(match[1]).replace(tzinfo=timezone.utc) <= until:
            path = re.sub(r"/\d+", "/N", match[3].split("?")[0])
            counts[f"{match[2]} {path}"] += 1
    return counts


def labelstudio_pid(profile: Any) -> int:
    server = profile.labelstudio_server()
    return int(server.pid_path.read_text().strip())


def run_raw(profile: Any, project: int, prefix: str, args: argparse.Namespace) -> dict[str, Any]:
    """bench_ingest.py's raw-sdk child into ``project``."""
    since = datetime.now(timezone.utc).replace(microsecond=0)
    with ServerSampler(labelstudio_pid(profile)) as sampler:
        result = run_child("raw-sdk", args, ["--project", str(project), "--prefix", prefix,
                                             "--endpoint", profile.url("s3"), "--labelstudio", profile.url("labelstudio"),
                                             "--token", profile.secrets["labelstudio_token"]])
    result.update(server_cpu=sampler.cpu_used, server_rss=sampler.peak - sampler.base,
                  requests=labelstudio_requests(profile, since, datetime.now(timezone.utc)))
    return result


def stop_worker(profile: Any, number: int) -> None:
    """Stop one Celery worker of the running profile (its own ``stack.Server``: SIGTERM, then wait)."""
    from labelloop.dev.production import registered_workers

    profile.worker_server(number).stop()
    deadline = time.monotonic() + 60
    while profile.worker_name(number) in registered_workers(profile.broker_url):
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: worker {number} still answers on the broker after SIGTERM")
        time.sleep(2)


def table(rows: list[dict[str, Any]], n: int) -> str:
    lines = ["| method | Celery workers | wall s | records/s | speed vs raw-sdk | groups (span s) | "
             "group task s (min-max) | LS server CPU s | LS requests meanwhile (most frequent) |",
             "|---|---:|---:|---:|---:|---|---|---:|---|"]
    for row in rows:
        speed = f"{row['raw_wall'] / row['wall']:.2f}" if row.get("raw_wall") else "1.00"
        groups = (f"{row['groups']}, per worker {'+'.join(map(str, row['per_worker']))} ({row['groups_span']:.1f})"
                  if "groups" in row else "n/a")
        spread = f"{row['group_seconds'][0]}-{row['group_seconds'][-1]}" if "groups" in row else "n/a"
        lines.append(f"| {row['method']} | {row.get('workers', 'n/a')} | {row['wall']:.1f} | {n / row['wall']:,.0f} | "
                     f"{speed} | {groups} | {spread} | {row['server_cpu']:.1f} | {requests_cell(row['requests'])} |")
    return "\n".join(lines)


def requests_cell(requests: Counter[str]) -> str:
    top = ", ".join(f"{count} `{request}`" for request, count in requests.most_common(4))
    return f"{sum(requests.values())}: {top}" if requests else "0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=40_000)
    parser.add_argument("--per-object", type=int, default=5_000, help="records per JSONL object (= per group)")
    parser.add_argument("--max-groups", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--raw-into-setup-project", action="store_true",
                        help="also the raw import into a project the setup DAG made (queue view, ML backend): "
                             "is Label Studio's extra CPU for the DAG's tasks the project's or the client's?")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="labelloop-bench-celery-"))
    os.environ["AIRFLOW_HOME"] = str(work / "airflow-client")  # this process only reads connections
    import boto3
    from label_studio_sdk import LabelStudio

    from labelloop.dev.production import WORKER_CONCURRENCY, WORKERS, ProductionProfile
    from labelloop.project import project_settings
    from labelloop.spec import load_spec

    command = ".venv/bin/python tests/benchmarks/bench_ingest_celery.py " + " ".join(sys.argv[1:])
    projects = work / "projects"
    projects.mkdir()
    profile = ProductionProfile.create(work / "production", projects_dir=projects)
    profile.require_services()
    rows: list[dict[str, Any]] = []
    n = args.size
    try:
        started = time.monotonic()
        profile.start(report=lambda line: print(line, flush=True))
        print(f"production profile up in {time.monotonic() - started:.0f} s", flush=True)
        for conn_id, conn in profile.connections().items():
            os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
        s3 = boto3.client("s3", endpoint_url=profile.url("s3"), region_name="us-east-1",
                          aws_access_key_id=profile.s3_access_key,
                          aws_secret_access_key=profile.secrets["s3_secret_key"])
        s3.create_bucket(Bucket=BUCKET)
        prefix, objects, size = write_objects(s3, n, args.per_object)
        print(f"N={n:,}: {objects} JSONL objects, {size / MiB:.1f} MiB under s3://{BUCKET}/{prefix}", flush=True)
        client = LabelStudio(base_url=profile.url("labelstudio"), api_key=profile.secrets["labelstudio_token"],
                             timeout=300)
        airflow = profile.airflow_client()
        settings = project_settings(load_spec(write_spec(work, n, args.batch_size)))  # as bench_ingest.py
        # Interleaved, so load from other work hits both alike: raw, DAG on 2 workers, raw, DAG on 1.
        for workers in (WORKERS, 1):
            if workers < WORKERS:
                for number in range(workers + 1, WORKERS + 1):
                    stop_worker(profile, number)
            project = client.projects.create(title=f"bench raw {workers}w {int(time.time())}", **settings).id
            raw = run_raw(profile, project, prefix, args)
            raw.update(method="raw-sdk")
            print(f"  raw-sdk: {raw['wall']:.1f} s, {n / raw['wall']:,.0f} rec/s, tasks {raw['count']:,}", flush=True)
            ours = run_dag_ingest(profile, airflow, n, args, f"{workers}w")
            ours.update(method="labelloop ingest DAG", workers=workers, raw_wall=raw["wall"])
            print(f"  labelloop on {workers} worker(s): {ours['wall']:.1f} s, {n / ours['wall']:,.0f} rec/s, "
                  f"tasks {ours['count']:,}, {ours['groups']} groups in {ours['groups_span']:.1f} s, per worker "
                  f"{ours['per_worker']}, group tasks {ours['group_seconds']} s", flush=True)
            for result in (raw, ours):
                if result["count"] != n:
                    raise SystemExit(f"FAILED: {result['method']} left {result['count']:,} tasks, expected {n:,}")
            if (ours["imported"], ours["balanced"]) != (n, True):
                raise SystemExit(f"FAILED: the ingest summary says imported {ours['imported']:,}, "
                                 f"balanced {ours['balanced']}")
            rows += [raw, ours]
        if args.raw_into_setup_project:
            from labelloop.hooks.labelstudio import LabelStudioHook

            spec = set_up_spec(profile, airflow, n, args, "raw")
            raw = run_raw(profile, LabelStudioHook().find_project(spec.title).id, prefix, args)
            raw.update(method="raw-sdk into a project the setup DAG made")
            print(f"  raw-sdk into a set-up project: {raw['wall']:.1f} s, LS CPU {raw['server_cpu']:.1f} s", flush=True)
            rows.append(raw)
    finally:
        profile.stop()
        profile.drop()
        shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()
    machine = (f"{os.cpu_count()} cores shared with other work (load average {load[0]:.1f} at the end), "
               f"{WORKER_CONCURRENCY} task processes per Celery worker, Label Studio on PostgreSQL 15, "
               f"{objects} objects of {args.per_object:,} records = {objects} mapped groups")
    body = table(rows, n)
    print("\n" + machine + "\n\n" + body)
    if not args.no_doc:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with args.doc.open("a", encoding="utf-8") as doc:
            doc.write(f"\n### Celery run of {stamp}, N={n:,}\n\n`{command}`\n\nMachine: {machine}.\n\n{body}\n")
        print(f"\nappended to {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
