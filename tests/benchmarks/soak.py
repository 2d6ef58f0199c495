"""Sustained load: the loop's stages run round after round for a fixed time while every server's memory is sampled.

    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/soak.py --minutes 10
    # the loop under Airflow's scheduler, 40 minutes of arrivals and 20 without:
    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/soak.py --airflow --minutes 40 --idle-minutes 20 \\
        --object-seconds 12 --round-seconds 20
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

With ``--airflow``, Airflow runs the loop instead (``airflow standalone`` of the embedded stack,
its DAG folder generating this run's spec only): ingest every minute, collect on the annotations
watcher's events (and every 10 minutes), audit and retrain on their Assets, the registry watch
every 5 minutes. This process then only drops the objects, answers the new tasks and calls
``/predict``; the RSS of the scheduler (with its LocalExecutor workers, not the task processes
they start), the DAG processor, the triggerer and the API server is sampled beside the servers'. At the
end it waits for the last records to become tasks, lets the runs finish, triggers one collect
run, and also checks that no DAG run failed but by its quality gate.

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


#: Sampled with their direct children only: the scheduler's are its LocalExecutor workers and
#: serve-logs, which live as long as it does; the task processes those workers start come and go.
DIRECT_CHILDREN_ONLY = {"airflow scheduler"}


def tree_rss_mib(process: psutil.Process, recursive: bool = True) -> float:
    """RSS of a process and its children (servers fork workers), in MiB; of this script alone
    (its children are the servers it started, sampled on their own)."""
    total = 0
    children = process.children(recursive=recursive) if process.pid != os.getpid() else []
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
            samples.rows.append((now, name, tree_rss_mib(process, name not in DIRECT_CHILDREN_ONLY)))
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


def write_spec(folder: Path, schedules: dict[str, str | None] | None = None) -> Path:
    """A spec like include/projects/sms_spam.yaml with its own name, model name, source and storage
    (and ``schedules``, for Airflow to run it)."""
    raw = yaml.safe_load(SPEC.read_text())
    if schedules:
        raw["schedules"] = schedules
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
    parser.add_argument("--airflow", action="store_true",
                        help="`airflow standalone` runs the stages on their schedules (ingest every minute); "
                             "its components' memory is sampled too")
    parser.add_argument("--csv", type=Path, default=REPO / "docs" / "soak_rss.csv")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "soak_rss.png")
    parser.add_argument("--rounds-csv", type=Path, default=REPO / "docs" / "soak_rss_rounds.csv")
    args = parser.parse_args(argv)
    given = [args.labelstudio_url, args.mlflow_url, args.backend_url]
    if any(given) and not all(given):
        parser.error("give all of --labelstudio-url, --mlflow-url and --backend-url (a running stack), or none")

    if args.airflow and any(given):
        parser.error("--airflow starts its own stack: give no URLs")
    spec_path = write_spec(STATE, AIRFLOW_SCHEDULES if args.airflow else None)
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
        if args.airflow:
            airflow = start_airflow(spec_path, urls, args)
            started_servers.append(airflow)
            processes |= airflow_components(airflow)
        processes["soak (this script)"] = psutil.Process()
        if args.airflow:
            from labelloop.dev.demo import Airflow

            return soak_on_airflow(args, spec, urls, processes, Airflow(airflow.url))
        return soak(args, spec, urls, processes)
    finally:
        for server in reversed(started_servers):
            server.stop()
        print(f"stopped {', '.join(server.name for server in started_servers) or 'nothing (a given stack)'}")
        shutil.rmtree(STATE, ignore_errors=True)


@dataclass
class Soak:
    """One soak's state: what was sent and answered, the per-round rows, the RSS samples.

    Both modes share it: objects arrive on the same clock, the same annotators answer the new
    tasks, the backend gets the same ``/predict`` calls, and the same checks close the run."""

    args: argparse.Namespace
    spec: Any
    hook: Any
    project_id: int
    backend: httpx.Client
    processes: dict[str, psutil.Process]
    users: list[Any] = field(default_factory=list)
    pool: list[dict[str, Any]] = field(default_factory=unique_records)
    sent: set[str] = field(default_factory=set)
    answers: set[tuple[int, str, str]] = field(default_factory=set)
    answered_tasks: set[int] = field(default_factory=set)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    progress: list[dict[str, Any]] = field(default_factory=list)
    samples: Samples = field(default_factory=Samples)
    started: float = field(default_factory=time.monotonic)
    objects: int = 0
    rounds: int = 0
    predict_errors: int = 0
    round_errors: int = 0
    raw: Path = field(init=False)  # the source folder objects land in

    def __post_init__(self) -> None:
        from labelloop.dev import simulate

        self.users = simulate.ensure_annotators(self.hook, len(SKILLS), self.spec.name.replace("_", "-"))
        self.raw = Path(urlparse(self.spec.source.uri).path)
        self.raw.mkdir(parents=True, exist_ok=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def drop_objects(self) -> None:
        """The objects due by now land in the source folder (on their own clock, or one a round)."""
        due = self.objects + 1 if not self.args.object_seconds else int(self.elapsed // self.args.object_seconds) + 1
        per_object = self.args.per_object
        while self.objects < due:
            chosen = [self.pool[(self.objects * per_object + i) % len(self.pool)] for i in range(per_object)]
            if self.objects * per_object >= len(self.pool):  # past the messages: a new text each
                chosen = [{**r, "text": f"{r['text']} [soak {self.objects}]"} for r in chosen]
            (self.raw / f"obj-{self.objects:05d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
            self.sent.update(r["text"] for r in chosen)
            self.objects += 1

    def answer_new(self) -> list[Any]:
        """The simulated annotators answer the tasks not answered yet, and the backend is asked
        for their predictions as Label Studio would; returns all the project's tasks."""
        from labelloop.dev import simulate

        tasks = list(self.hook.iter_tasks(self.project_id, fields="all"))
        new = [task for task in tasks if task.id not in self.answered_tasks]
        truth = {task.id: task.meta["label"] for task in new}
        drawn = simulate.simulate_labels(truth, [(u.id, s) for u, s in zip(self.users, SKILLS)], 3,
                                         self.spec.labels, seed=self.rounds)
        timed(self.seconds, "annotate", lambda: simulate.submit(self.hook, self.project_id, drawn, self.spec))
        email = {user.id: user.email for user in self.users}
        self.answers.update((task, email[user], label) for task, user, label in drawn)
        self.answered_tasks.update(truth)
        body = {"tasks": [label_studio_task(task.id, task.data["text"]) for task in new],
                "project": f"{self.project_id}.1", "label_config": self.spec.labeling_config_xml}
        try:
            if new:
                timed(self.seconds, "backend /predict",
                      lambda: self.backend.post("/predict", json=body).raise_for_status())
        except httpx.HTTPError as error:
            self.predict_errors += 1
            print(f"round {self.rounds}: /predict failed: {error}", flush=True)
        return tasks

    def run(self, one_round: Callable[[bool], list[Any]]) -> None:
        """Rounds until the data and idle minutes are over; ``one_round(idle)`` returns the tasks.
        A failed round is counted and the run goes on (it keeps its samples)."""
        sampler = threading.Thread(target=sample, args=(self.processes, self.samples, self.args.sample_seconds,
                                                        self.started), daemon=True)
        sampler.start()
        data_end = self.args.minutes * 60
        try:
            while self.elapsed < data_end + self.args.idle_minutes * 60:
                round_started = time.monotonic()
                idle = self.elapsed >= data_end
                try:
                    if not idle:
                        self.drop_objects()
                    tasks = one_round(idle)
                    self.rounds += 1
                    latest = {who: rss for _, who, rss in self.samples.rows[-len(self.processes):]}
                    self.progress.append({
                        "seconds": f"{self.elapsed:.1f}", "round": self.rounds, "idle": int(idle),
                        "objects": self.objects, "records_sent": len(self.sent), "tasks": len(tasks),
                        "answers": len(self.answers), "load1": f"{os.getloadavg()[0]:.2f}",
                        **{f"rss_mib {who}": f"{rss:.1f}" for who, rss in latest.items()}})
                    if self.rounds % 5 == 0:
                        print(f"{self.elapsed / 60:.1f} min: {self.rounds} rounds, {len(self.sent)} records, "
                              f"{len(tasks)} tasks; RSS MiB "
                              + ", ".join(f"{who} {rss:.0f}" for who, rss in latest.items()), flush=True)
                except Exception:  # noqa: BLE001 - counted and checked
                    self.round_errors += 1
                    self.rounds += 1
                    traceback.print_exc()
                time.sleep(max(0.0, self.args.round_seconds - (time.monotonic() - round_started)))
        finally:
            self.samples.stop.set()
            sampler.join()

    def finish(self, final_collect: Callable[[], Any], extra: list[tuple[str, bool]]) -> int:
        """Samples to CSV and a plot, the tables, then the checks: nothing lost, nothing twice, memory flat."""
        from labelloop.collect.table import latest_snapshot, read_snapshot
        from labelloop.layout import storage_path

        args, elapsed, rows = self.args, self.elapsed, self.samples.rows
        # The samples first: a failed check below must not lose an hour's run.
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["seconds", "process", "rss_mib"])
            writer.writerows((f"{t:.1f}", who, f"{rss:.1f}") for t, who, rss in rows)
        with args.rounds_csv.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(self.progress[0]))
            writer.writeheader()
            writer.writerows(self.progress)

        final_collect()
        tasks = list(self.hook.iter_tasks(self.project_id, fields="all"))
        texts = [task.data["text"] for task in tasks]
        table = read_snapshot(latest_snapshot(storage_path(self.spec.storage_uri, None)))["annotations"]
        collected = {(int(r.task_id), r.annotator_email, r.label) for r in table.itertuples()}
        missing = self.answers - collected

        loads = [float(p["load1"]) for p in self.progress]
        data_end = min(args.minutes * 60, elapsed)
        title = (f"soak{' on Airflow' if args.airflow else ''}: {self.objects} objects ({len(self.sent)} records) "
                 f"in {data_end / 60:.0f} min"
                 + (f", then {(elapsed - data_end) / 60:.0f} min without new data" if elapsed > data_end + 1 else "")
                 + f"\n{os.cpu_count()} shared cores, load average {min(loads):.1f}-{max(loads):.1f}")
        plot(rows, data_end, args.plot, title)

        print(f"\n{title}; {self.rounds} rounds; {len(table)} annotations collected; samples every "
              f"{args.sample_seconds:.0f} s in {args.csv}, per round in {args.rounds_csv}, plot {args.plot}\n")
        print("| stage | runs | median s | max s |\n|---|---:|---:|---:|")
        for stage, values in self.seconds.items():
            print(f"| {stage} | {len(values)} | {statistics.median(values):.2f} | {max(values):.2f} |")
        half = data_end / 2
        tasks_at = {float(p["seconds"]): p["tasks"] for p in self.progress}

        def added(start: float, end: float) -> int:
            """Label Studio tasks added between two times (seconds), from the per-round counts."""
            inside = [n for t, n in tasks_at.items() if start <= t <= end]
            return max(inside) - min(inside) if inside else 0

        print("\n| process | RSS at start MiB | at half | at end of data | at end | slope 1st half MiB/min "
              "| 2nd half | MiB per 100 tasks added, 1st half | 2nd half | slope without new data |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        slopes = {}
        for name in self.processes:
            at = [rss_at(rows, name, when) for when in (0, half, data_end, elapsed)]
            first, slopes[name] = slope(rows, name, 0, half), slope(rows, name, half, data_end)
            per_task = [(b - a) * 100 / max(1, added(s, e)) for a, b, s, e in ((at[0], at[1], 0, half),
                                                                                 (at[1], at[2], half, data_end))]
            idle_slope = f"{slope(rows, name, data_end, elapsed):+.2f}" if elapsed > data_end + 60 else "-"
            print(f"| {name} | {at[0]:.0f} | {at[1]:.0f} | {at[2]:.0f} | {at[3]:.0f} | {first:+.2f} "
                  f"| {slopes[name]:+.2f} | {per_task[0]:+.1f} | {per_task[1]:+.1f} | {idle_slope} |")
        return report_targets([
            (f"Label Studio holds one task per unique record sent ({len(tasks)} tasks, {len(self.sent)} records, "
             f"{len(texts) - len(set(texts))} duplicates)", len(tasks) == len(self.sent) == len(set(texts))
             and set(texts) == self.sent),
            (f"every answer submitted is in the collected table ({len(self.answers)} answers, "
             f"{len(missing)} missing)", not missing),
            (f"no /predict failed ({self.predict_errors} of {self.rounds})", self.predict_errors == 0),
            (f"no round failed ({self.round_errors} of {self.rounds})", self.round_errors == 0),
            *extra,
            *((f"{name}: RSS slope over the second half of the data rounds {value:+.2f} MiB/min < "
               f"{args.max_slope} MiB/min", value < args.max_slope) for name, value in slopes.items()),
        ])


# Ingest every minute, as the load asks; collect also on every watcher event.
AIRFLOW_SCHEDULES = {"ingest": "* * * * *", "collect": "*/10 * * * *"}
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def start_airflow(spec_path: Path, urls: dict[str, str], args: argparse.Namespace) -> Server:
    """`airflow standalone` of the embedded stack, its DAG folder generating the soak's spec only."""
    from labelloop.dev.stack import airflow_server

    connections = {
        settings.LABELSTUDIO_CONN_ID: {"conn_type": "labelstudio", "host": urls["labelstudio"], "password": args.token},
        settings.MLFLOW_CONN_ID: {"conn_type": "http", "host": urls["mlflow"]},
        settings.BACKEND_CONN_ID: {"conn_type": "http", "host": urls["backend"], "login": "labelloop",
                                   "password": args.backend_token},
    }
    server = airflow_server(STATE / "stack", free_port(), connections)
    server.env[settings.PROJECTS_DIR_ENV] = str(spec_path.parent)
    print("starting airflow ...", flush=True)
    return replace(server, start_timeout=args.start_timeout).start()


def airflow_components(standalone: Server) -> dict[str, psutil.Process]:
    """The standalone's component processes (each sampled with its children, the scheduler with
    its direct ones: ``DIRECT_CHILDREN_ONLY``)."""
    found: dict[str, psutil.Process] = {}
    deadline = time.monotonic() + 120
    while len(found) < len(AIRFLOW_COMPONENTS) and time.monotonic() < deadline:
        for child in psutil.Process(standalone.process.pid).children():
            command = " ".join(child.cmdline()).replace("-", "_")  # the api-server's title: "airflow api_server -- ..."
            found.update({f"airflow {name}": child for name in AIRFLOW_COMPONENTS
                          if f" {name.replace('-', '_')}" in command})
        time.sleep(2)
    missing = [name for name in AIRFLOW_COMPONENTS if f"airflow {name}" not in found]
    if missing:
        raise SystemExit(f"airflow standalone started no {', '.join(missing)} within 120 s")
    return found


def soak(args: argparse.Namespace, spec: Any, urls: dict[str, str], processes: dict[str, psutil.Process]) -> int:
    """The stages in this process, the way the tests call them, one after another each round."""
    from labelloop.audit.run import NothingToAudit, audit_latest, route_audit
    from labelloop.collect.snapshot import collect
    from labelloop.hooks.labelstudio import LabelStudioHook
    from labelloop.ingest.job import run_ingest
    from labelloop.project import ensure_project

    hook = LabelStudioHook()
    project_id, _ = ensure_project(hook, spec)
    state = Soak(args, spec, hook, project_id, backend_client(urls, args), processes)

    def one_round(idle: bool) -> list[Any]:
        run_id = "manual__soak_idle" if idle else f"manual__soak_{state.rounds:05d}"
        arrived = len(state.sent) - len(state.answered_tasks)
        summary = timed(state.seconds, "ingest", lambda: run_ingest(spec, hook, run_id, None))
        if summary["imported"] != arrived:
            print(f"round {state.rounds}: ingest imported {summary['imported']} of {arrived}", flush=True)
        tasks = state.answer_new()
        timed(state.seconds, "collect", lambda: collect(spec, hook, run_id, now()))
        try:
            outcome = timed(state.seconds, "audit", lambda: audit_latest(spec, run_id))
            timed(state.seconds, "route", lambda: route_audit(spec, hook, outcome))
        except NothingToAudit as error:
            print(f"round {state.rounds}: {error}", flush=True)
        return tasks

    state.run(one_round)
    return state.finish(lambda: collect(spec, hook, "manual__soak_final", now()), [])


AIRFLOW_STAGES = ("ingest", "collect", "audit", "retrain", "registry_watch")


def soak_on_airflow(args: argparse.Namespace, spec: Any, urls: dict[str, str], processes: dict[str, psutil.Process],
                    airflow: Any) -> int:
    """Airflow runs the loop on its own schedules (ingest every minute, collect on the annotations
    watcher's events, audit and retrain on their Assets); this process only drops objects, answers
    new tasks and calls the backend. At the end, a collect run and the runs' outcomes."""
    from labelloop.hooks.labelstudio import LabelStudioHook

    prefix = spec.dag_prefix
    airflow.run(f"{prefix}__setup")
    for stage in AIRFLOW_STAGES:
        airflow.unpause(f"{prefix}__{stage}")
    hook = LabelStudioHook()
    state = Soak(args, spec, hook, hook.find_project(spec.title).id, backend_client(urls, args), processes)
    state.run(lambda idle: state.answer_new())

    # Drain: ingest (every minute) makes a task of every record sent; they are answered too.
    deadline = time.monotonic() + 600
    while len(tasks := state.answer_new()) < len(state.sent) and time.monotonic() < deadline:
        time.sleep(20)
    print(f"drained: {len(tasks)} tasks for {len(state.sent)} records", flush=True)
    airflow.wait_idle([f"{prefix}__{stage}" for stage in ("ingest", "collect", "audit", "retrain")])
    runs, failures = airflow_outcomes(airflow, prefix)
    print("\n| DAG | runs | median s | max s |\n|---|---:|---:|---:|")
    for dag_id, durations in runs.items():
        print(f"| {dag_id} | {len(durations)} | {statistics.median(durations or [0]):.1f} "
              f"| {max(durations or [0]):.1f} |")
    for failure in failures:
        print(f"- failed: {failure}")
    return state.finish(lambda: airflow.run(f"{prefix}__collect"), [
        (f"no Airflow run failed but by its quality gate ({len(failures)} failed, "
         f"{sum(map(len, runs.values()))} runs)", not failures)])


def airflow_outcomes(airflow: Any, prefix: str) -> tuple[dict[str, list[float]], list[str]]:
    """Each stage DAG's finished run durations (s), and the failed runs whose failed tasks are not
    just the quality gate (a gate that fails is an outcome, not a fault)."""
    runs: dict[str, list[float]] = {}
    failures = []
    for stage in AIRFLOW_STAGES:
        dag_id = f"{prefix}__{stage}"
        listed = airflow.call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 1000})["dag_runs"]
        runs[dag_id] = [(datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"]))
                        .total_seconds() for run in listed if run["start_date"] and run["end_date"]]
        for run in listed:
            if run["state"] == "failed":
                failed = sorted(t for t, s in airflow.task_states(dag_id, run["dag_run_id"]).items() if s == "failed")
                if failed != ["gate"]:
                    failures.append(f"{dag_id} {run['dag_run_id']}: {failed}")
    return runs, failures


def backend_client(urls: dict[str, str], args: argparse.Namespace) -> httpx.Client:
    return httpx.Client(base_url=urls["backend"], auth=httpx.BasicAuth("labelloop", args.backend_token), timeout=60)


if __name__ == "__main__":
    sys.exit(main())
