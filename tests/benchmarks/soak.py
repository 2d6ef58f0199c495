"""Sustained load: the loop's stages run round after round for a fixed time while every server's memory is sampled.

    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/soak.py --minutes 10
    # against a stack `python -m labelloop stack up` left running (nothing is started or stopped):
    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/soak.py --labelstudio-url http://127.0.0.1:18081 \\
        --token ... --mlflow-url http://127.0.0.1:15000 --backend-url http://127.0.0.1:19090 --backend-token ...

What runs: unless given URLs, Label Studio, MLflow and the pre-label backend of the embedded stack
(``labelloop.dev.stack``'s start functions, a private state folder), with a champion registered
the way the retrain DAG does (``bench_backend.register_champion``) under a model name of this run's
own. Each round, in this process, the way the tests call the stages: a new object of
``--per-object`` unique SMS records lands in the source folder (or, with ``--object-seconds``,
every object that arrived on that clock since the last round), ingest imports it (the champion
pre-labels it), simulated annotators (``labelloop.dev.simulate``) answer its tasks, the new tasks
are sent to the backend's ``/predict`` as Label Studio would, collect writes a snapshot and the
audit runs and routes. A sampler thread records the RSS of each server's process tree and of this
process every ``--sample-seconds``.

With ``--idle-minutes``, the rounds then go on without new objects: the same requests (ingest
finds nothing, collect and audit re-run under one run id, so MLflow updates one run), no new data:
memory that still grows then grows with requests, not with data. Each round also records the
records sent, Label Studio's task and answer counts, the load average and every RSS (``--rounds-csv``).

At the end: Label Studio holds one task per unique record sent (no loss, no duplicate), every
answer submitted is in the collected annotations table, no ``/predict`` failed, and each
process's RSS slope over the second half of the data rounds is below ``--max-slope`` MiB/min. Writes the
samples as CSV and an RSS-over-time plot, prints a markdown summary; exit code 1 if a check failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
STATE = Path(tempfile.mkdtemp(prefix="labelloop-soak-"))
# Before anything imports airflow (the hooks do): a private home, no examples.
os.environ.setdefault("AIRFLOW_HOME", str(STATE / "airflow"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "false"

import httpx  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402

from labelloop import settings  # noqa: E402
from labelloop.dev.stack import (DEFAULT_TOKEN, Server, backend_server, free_port, labelstudio_server,  # noqa: E402
                                 mlflow_server)
from bench_backend import register_champion, task as label_studio_task  # noqa: E402
from measure import report_targets  # noqa: E402

SMS = REPO / "include" / "demo" / "sms-spam" / "messages.jsonl"
SPEC = REPO / "include" / "projects" / "sms_spam.yaml"
BACKEND_TOKEN = "soak-backend-token-0123456789abcdef"
SKILLS = (0.95, 0.9, 0.85, 0.8)


@dataclass
class Samples:
    """RSS samples (seconds since start, process name, MiB), appended by the sampler thread."""

    rows: list[tuple[float, str, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def tree_rss_mib(process: psutil.Process) -> float:
    """RSS of a process and all its children (servers fork workers), in MiB; of this script
    alone (its children are the servers it started, sampled on their own)."""
    total = 0
    children = process.children(recursive=True) if process.pid != os.getpid() else []
    for member in [process, *children]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def listener(url: str) -> psutil.Process:
    """The process listening on the URL's port (a server of a stack this script did not start)."""
    port = urlparse(url).port
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    raise SystemExit(f"no process of this user listens on port {port} ({url}): is the stack up?")


def sample(processes: dict[str, psutil.Process], samples: Samples, every: float, started: float) -> None:
    while not samples.stop.is_set():
        now = time.monotonic() - started
        for name, process in processes.items():
            samples.rows.append((now, name, tree_rss_mib(process)))
        samples.stop.wait(every)


def slope(rows: list[tuple[float, str, float]], name: str, start: float, end: float) -> float:
    """Least-squares RSS slope of one process between two times (seconds), in MiB/min."""
    import numpy as np

    mine = [(t, rss) for t, who, rss in rows if who == name and start <= t <= end]
    return float(np.polyfit([t / 60 for t, _ in mine], [rss for _, rss in mine], 1)[0]) if len(mine) > 2 else 0.0


def rss_at(rows: list[tuple[float, str, float]], name: str, when: float) -> float:
    """The process's first RSS sample at or after ``when`` seconds (its last one if none)."""
    mine = [(t, rss) for t, who, rss in rows if who == name]
    return next((rss for t, rss in mine if t >= when), mine[-1][1])


def plot(rows: list[tuple[float, str, float]], data_end: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name in dict.fromkeys(who for _, who, _ in rows):
        mine = [(t / 60, rss) for t, who, rss in rows if who == name]
        axes.plot([t for t, _ in mine], [rss for _, rss in mine], label=name)
    axes.axvline(data_end / 120, color="grey", linestyle=":", label="second half of the data rounds")
    if rows[-1][0] > data_end + 1:
        axes.axvspan(data_end / 60, rows[-1][0] / 60, color="grey", alpha=0.15, label="rounds without new data")
    axes.set(xlabel="minutes", ylabel="RSS, MiB (process and its children)", title=title)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


def write_spec(folder: Path) -> Path:
    """A spec like include/projects/sms_spam.yaml with its own name, model name, source and storage."""
    raw = yaml.safe_load(SPEC.read_text())
    name = f"soak_{uuid.uuid4().hex[:8]}"
    raw.update(name=name, title=f"soak {name}", labeling_config=str(REPO / "include" / raw["labeling_config"]),
               guidelines=str(REPO / "include" / raw["guidelines"]), storage_uri=f"file://{folder / 'store'}")
    raw["source"]["uri"] = f"file://{folder / 'raw'}/"
    raw["model"]["name"] = f"{name}_prelabel"
    projects = folder / "projects"
    projects.mkdir(parents=True, exist_ok=True)
    path = projects / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def unique_records() -> list[dict[str, Any]]:
    """The SMS messages with a text seen once each (the content hash is over the text)."""
    seen, records = set(), []
    for line in SMS.open():
        record = json.loads(line)
        if record["text"] not in seen:
            seen.add(record["text"])
            records.append(record)
    return records


def now() -> str:
    """A collect run's ``run_after``: now, as Airflow gives it."""
    return datetime.now(UTC).isoformat()


def timed(seconds: dict[str, list[float]], stage: str, call: Callable[[], Any]) -> Any:
    started = time.monotonic()
    result = call()
    seconds.setdefault(stage, []).append(time.monotonic() - started)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--per-object", type=int, default=5, help="records in each round's new object")
    parser.add_argument("--object-seconds", type=float, default=0,
                        help="a new object arrives every this many seconds, whatever the rounds take (0: one a round)")
    parser.add_argument("--round-seconds", type=float, default=0, help="least time per round (0: back to back)")
    parser.add_argument("--idle-minutes", type=float, default=0,
                        help="rounds without new objects after the data rounds (requests, no new data)")
    parser.add_argument("--sample-seconds", type=float, default=5)
    parser.add_argument("--start-timeout", type=float, default=900,
                        help="seconds each server may take to answer (a loaded machine migrates slowly)")
    parser.add_argument("--max-slope", type=float, default=3.0, help="MiB/min allowed over the second half")
    parser.add_argument("--labelstudio-url")
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="Label Studio token (with --labelstudio-url)")
    parser.add_argument("--mlflow-url")
    parser.add_argument("--backend-url")
    parser.add_argument("--backend-token", default=BACKEND_TOKEN)
    parser.add_argument("--csv", type=Path, default=REPO / "docs" / "soak_rss.csv")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "soak_rss.png")
    parser.add_argument("--rounds-csv", type=Path, default=REPO / "docs" / "soak_rss_rounds.csv")
    args = parser.parse_args(argv)
    given = [args.labelstudio_url, args.mlflow_url, args.backend_url]
    if any(given) and not all(given):
        parser.error("give all of --labelstudio-url, --mlflow-url and --backend-url (a running stack), or none")

    spec_path = write_spec(STATE)
    started_servers: list[Server] = []
    try:
        if all(given):
            urls = dict(zip(("labelstudio", "mlflow", "backend"), given))
            processes = {name: listener(url) for name, url in urls.items()}
        else:
            for server in (labelstudio_server(STATE, free_port(), args.token), mlflow_server(STATE, free_port())):
                print(f"starting {server.name} ...", flush=True)
                started_servers.append(replace(server, start_timeout=args.start_timeout).start())
            urls = {server.name: server.url for server in started_servers}
        os.environ[f"AIRFLOW_CONN_{settings.LABELSTUDIO_CONN_ID.upper()}"] = json.dumps(
            {"conn_type": "labelstudio", "host": urls["labelstudio"], "password": args.token})
        os.environ[f"AIRFLOW_CONN_{settings.MLFLOW_CONN_ID.upper()}"] = json.dumps(
            {"conn_type": "http", "host": urls["mlflow"]})
        os.environ["MLFLOW_TRACKING_URI"] = urls["mlflow"]

        from labelloop.spec import load_spec

        spec = load_spec(spec_path)
        if not all(given):
            records = [json.loads(line) for line in SMS.open()]
            print(f"registered {spec.model.name}:{register_champion(urls['mlflow'], spec.model, records)}",
                  flush=True)
            backend = backend_server(STATE, free_port(), spec.name, args.backend_token, urls["mlflow"],
                                     projects_dir=spec_path.parent)
            print("starting backend ...", flush=True)
            started_servers.append(replace(backend, start_timeout=args.start_timeout).start())
            urls["backend"] = backend.url
            processes = {server.name: psutil.Process(server.process.pid) for server in started_servers}
        processes["soak (this script)"] = psutil.Process()
        return soak(args, spec, urls, processes)
    finally:
        for server in reversed(started_servers):
            server.stop()
        print(f"stopped {', '.join(server.name for server in started_servers) or 'nothing (a given stack)'}")
        shutil.rmtree(STATE, ignore_errors=True)


def soak(args: argparse.Namespace, spec: Any, urls: dict[str, str], processes: dict[str, psutil.Process]) -> int:
    """The rounds, then the checks; ``spec`` is the run's own ProjectSpec."""
    from labelloop.audit.run import NothingToAudit, audit_latest, route_audit
    from labelloop.collect.snapshot import collect
    from labelloop.collect.table import latest_snapshot, read_snapshot
    from labelloop.dev import simulate
    from labelloop.hooks.labelstudio import LabelStudioHook
    from labelloop.ingest.job import run_ingest
    from labelloop.layout import storage_path
    from labelloop.project import ensure_project

    hook = LabelStudioHook()
    project_id, _ = ensure_project(hook, spec)
    users = simulate.ensure_annotators(hook, len(SKILLS), spec.name.replace("_", "-"))
    email = {user.id: user.email for user in users}
    pool = unique_records()
    raw = Path(urlparse(spec.source.uri).path)
    raw.mkdir(parents=True, exist_ok=True)
    backend = httpx.Client(base_url=urls["backend"], auth=httpx.BasicAuth("labelloop", args.backend_token),
                           timeout=60)
    sent: set[str] = set()
    answers: set[tuple[int, str, str]] = set()
    answered_tasks: set[int] = set()
    seconds: dict[str, list[float]] = {}
    predict_errors = rounds = round_errors = 0
    progress: list[dict[str, Any]] = []
    samples = Samples()
    started = time.monotonic()
    sampler = threading.Thread(target=sample, args=(processes, samples, args.sample_seconds, started), daemon=True)
    sampler.start()
    data_end = args.minutes * 60
    deadline = started + data_end + args.idle_minutes * 60
    objects = 0
    try:
        while time.monotonic() < deadline:
            round_started = time.monotonic()
            try:
                idle = round_started - started >= data_end
                # Objects arrive on their own clock (or one a round); ingest takes all that arrived.
                due = 0 if idle else (objects + 1 if not args.object_seconds
                                      else int((round_started - started) // args.object_seconds) + 1)
                while objects < due:
                    chosen = [pool[(objects * args.per_object + i) % len(pool)] for i in range(args.per_object)]
                    if objects * args.per_object >= len(pool):  # past the messages: a new text each
                        chosen = [{**r, "text": f"{r['text']} [soak {objects}]"} for r in chosen]
                    (raw / f"obj-{objects:05d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
                    sent.update(r["text"] for r in chosen)
                    objects += 1
                arrived = len(sent) - len(answered_tasks)
                run_id = "manual__soak_idle" if idle else f"manual__soak_{rounds:05d}"
                summary = timed(seconds, "ingest", lambda: run_ingest(spec, hook, run_id, None))
                if summary["imported"] != arrived:
                    print(f"round {rounds}: ingest imported {summary['imported']}", flush=True)
                tasks_now = list(hook.iter_tasks(project_id, fields="all"))
                new = [task for task in tasks_now if task.id not in answered_tasks]
                truth = {task.id: task.meta["label"] for task in new}
                drawn = simulate.simulate_labels(truth, [(u.id, s) for u, s in zip(users, SKILLS)], 3, spec.labels,
                                                 seed=rounds)
                timed(seconds, "annotate", lambda: simulate.submit(hook, project_id, drawn, spec))
                answers.update((task, email[user], label) for task, user, label in drawn)
                answered_tasks.update(truth)
                body = {"tasks": [label_studio_task(task.id, task.data["text"]) for task in new],
                        "project": f"{project_id}.1", "label_config": spec.labeling_config_xml}
                try:
                    if new:
                        timed(seconds, "backend /predict", lambda: backend.post("/predict", json=body).raise_for_status())
                except httpx.HTTPError as error:
                    predict_errors += 1
                    print(f"round {rounds}: /predict failed: {error}", flush=True)
                timed(seconds, "collect", lambda: collect(spec, hook, run_id, now()))
                try:
                    outcome = timed(seconds, "audit", lambda: audit_latest(spec, run_id))
                    timed(seconds, "route", lambda: route_audit(spec, hook, outcome))
                except NothingToAudit as error:
                    print(f"round {rounds}: {error}", flush=True)
                rounds += 1
                latest = {who: rss for _, who, rss in samples.rows[-len(processes):]}
                progress.append({"seconds": f"{time.monotonic() - started:.1f}", "round": rounds, "idle": int(idle),
                                 "objects": objects, "records_sent": len(sent), "tasks": len(tasks_now),
                                 "answers": len(answers), "load1": f"{os.getloadavg()[0]:.2f}",
                                 **{f"rss_mib {who}": f"{rss:.1f}" for who, rss in latest.items()}})
                if rounds % 5 == 0:
                    print(f"{(time.monotonic() - started) / 60:.1f} min: {rounds} rounds, {len(sent)} records; RSS MiB "
                          + ", ".join(f"{who} {rss:.0f}" for who, rss in latest.items()), flush=True)
            except Exception:  # noqa: BLE001 - counted and checked; the run goes on and keeps its samples
                round_errors += 1
                rounds += 1
                traceback.print_exc()
            time.sleep(max(0.0, args.round_seconds - (time.monotonic() - round_started)))
    finally:
        samples.stop.set()
        sampler.join()
    elapsed = time.monotonic() - started

    # The samples first: a failed check below must not lose an hour's run.
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["seconds", "process", "rss_mib"])
        writer.writerows((f"{t:.1f}", who, f"{rss:.1f}") for t, who, rss in samples.rows)
    with args.rounds_csv.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(progress[0]))
        writer.writeheader()
        writer.writerows(progress)

    # Nothing lost, nothing twice: one task per unique record, every answer collected.
    final = collect(spec, hook, "manual__soak_final", now())
    tasks = list(hook.iter_tasks(project_id, fields="all"))
    texts = [task.data["text"] for task in tasks]
    table = read_snapshot(latest_snapshot(storage_path(spec.storage_uri, None)))["annotations"]
    collected = {(int(r.task_id), r.annotator_email, r.label) for r in table.itertuples()}
    missing = answers - collected

    loads = [float(p["load1"]) for p in progress]
    data_end = min(data_end, elapsed)
    title = (f"soak: {objects} objects ({len(sent)} records) in {data_end / 60:.0f} min"
             + (f", then {(elapsed - data_end) / 60:.0f} min without new data" if elapsed > data_end + 1 else "")
             + f"\n{os.cpu_count()} shared cores, load average {min(loads):.1f}-{max(loads):.1f}")
    plot(samples.rows, data_end, args.plot, title)

    print(f"\n{title}; {rounds} rounds; {final['counts']['annotations']} annotations collected; samples every "
          f"{args.sample_seconds:.0f} s in {args.csv}, per round in {args.rounds_csv}, plot {args.plot}\n")
    print("| stage | runs | median s | max s |\n|---|---:|---:|---:|")
    for stage, values in seconds.items():
        print(f"| {stage} | {len(values)} | {statistics.median(values):.2f} | {max(values):.2f} |")
    half = data_end / 2
    tasks_at = {float(p["seconds"]): p["tasks"] for p in progress}
    def added(start: float, end: float) -> int:
        """Label Studio tasks added between two times (seconds), from the per-round counts."""
        inside = [n for t, n in tasks_at.items() if start <= t <= end]
        return max(inside) - min(inside) if inside else 0
    print("\n| process | RSS at start MiB | at half | at end of data | at end | slope 1st half MiB/min "
          "| 2nd half | MiB per 100 tasks added, 1st half | 2nd half | slope without new data |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    slopes = {}
    for name in processes:
        at = [rss_at(samples.rows, name, when) for when in (0, half, data_end, elapsed)]
        first, slopes[name] = slope(samples.rows, name, 0, half), slope(samples.rows, name, half, data_end)
        per_task = [(b - a) * 100 / max(1, added(s, e)) for a, b, s, e in ((at[0], at[1], 0, half),
                                                                             (at[1], at[2], half, data_end))]
        idle_slope = f"{slope(samples.rows, name, data_end, elapsed):+.2f}" if elapsed > data_end + 60 else "-"
        print(f"| {name} | {at[0]:.0f} | {at[1]:.0f} | {at[2]:.0f} | {at[3]:.0f} | {first:+.2f} | {slopes[name]:+.2f} "
              f"| {per_task[0]:+.1f} | {per_task[1]:+.1f} | {idle_slope} |")
    return report_targets([
        (f"Label Studio holds one task per unique record sent ({len(tasks)} tasks, {len(sent)} records, "
         f"{len(texts) - len(set(texts))} duplicates)", len(tasks) == len(sent) == len(set(texts))
         and set(texts) == sent),
        (f"every answer submitted is in the collected table ({len(answers)} answers, {len(missing)} missing)",
         not missing),
        (f"no /predict failed ({predict_errors} of {rounds})", predict_errors == 0),
        (f"no round failed ({round_errors} of {rounds})", round_errors == 0),
        *((f"{name}: RSS slope over the second half of the data rounds {value:+.2f} MiB/min < "
           f"{args.max_slope} MiB/min", value < args.max_slope) for name, value in slopes.items()),
    ])


if __name__ == "__main__":
    sys.exit(main())
