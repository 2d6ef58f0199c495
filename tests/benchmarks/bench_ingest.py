"""Benchmark ingest: records from S3 into Label Studio, three ways, side by side in one run.

    .venv/bin/python tests/benchmarks/bench_ingest.py                     # 10,000 and 100,000 (~35 min)
    .venv/bin/python tests/benchmarks/bench_ingest.py --skip 100000:ls-s3-sync   # ~10 min
    .venv/bin/python tests/benchmarks/bench_ingest.py --sizes 2000 --no-doc   # a smoke run

One Label Studio server (its own venv, SQLite, started by ``labelloop.dev.stack``) and one S3
API server (moto's ThreadedMotoServer, in this process) serve the whole run. For each size N,
N unique records are made from the real SMS messages (text + `` #i``; id and label kept) and
written as JSONL objects of 10,000 records under ``s3://bench/raw-N/``. Then each method
gets a fresh Label Studio project with the same settings (``labelloop.project.project_settings``
of ``include/projects/sms_spam.yaml``):

``labelloop``   ``Ingest(spec, hook, run_id).run(project_id)``: streams the objects through
                ObjectStoragePath, validates, de-duplicates by content hash, journals every
                batch in S3 and imports in batches of ``--batch-size`` (exactly-once import).
``labelloop-2`` the same with two batches in flight at once (the connection's extra
                ``imports_in_flight``: 2; the default is one): what concurrent POSTs do to this
                Label Studio (slower on SQLite, faster on PostgreSQL: ``--labelstudio-db``).
``raw-sdk``     what a user writes by hand: boto3 downloads each object, ``json.loads`` every
                line into a list of ``{"data": record}`` and ``projects.import_tasks`` posts it
                in chunks of ``--batch-size``. No validation, no de-duplication, no journal.
``ls-s3-sync``  Label Studio's own S3 import storage (``use_blob_urls=False``) pointed at the
                same prefix and synced: the server reads the objects (JSONL is parsed one task
                per line) and creates the tasks. Without Redis the sync runs inside the POST.

The two client-side methods run in a fresh interpreter each (``--child``), so their peak
memory is theirs alone: the kernel's peak-RSS counter is reset after the imports
(``echo 5 > /proc/self/clear_refs``) and ``VmHWM`` is read at the end; "peak MiB" is that
high-water mark (the interpreter and its imports included; "base" is the RSS before the work).
Wall time runs from the first request to the last task present (a final task count) and
excludes interpreter start-up. For every method the Label Studio server's CPU seconds and
RSS growth are sampled too, so one can see on which side of the wire the time goes.
Each method's project must hold exactly N tasks at the end, or the run fails. The methods run
interleaved, one round of each after another (``--repeat`` rounds), so load from other work on
shared cores hits them alike; "speed vs raw-sdk, paired" is raw wall / wall of the same round.
Not a pytest test: the name does not match test_*.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))

SMS = REPO / "include" / "demo" / "sms-spam" / "messages.jsonl"
SPEC = REPO / "include" / "projects" / "sms_spam.yaml"
DOC = REPO / "docs" / "benchmarks.md"
BUCKET = "bench"
TOKEN = "labelloop-bench-token-0123456789abcdef"
METHODS = ("raw-sdk", "labelloop", "labelloop-2", "ls-s3-sync")
MiB = 1024 * 1024


# Memory helpers (Linux) ----------------------------------------------------------------------

def proc_status(field: str, pid: str = "self") -> int:
    """A ``/proc/<pid>/status`` memory field in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> None:
    """Make VmHWM start again from the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


# Child processes: one method each, in a fresh interpreter --------------------------------------

class Timers:
    """Seconds spent inside wrapped callables, by name (profiling the labelloop run)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def wrap(self, owner: Any, name: str, label: str, consume: bool = False) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = original(*args, **kwargs)
                return list(result) if consume else result
            finally:
                with self.lock:  # two sending threads time their POSTs at once
                    self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started
                    self.calls[label] = self.calls.get(label, 0) + 1

        setattr(owner, name, timed)


def child_labelloop(args: argparse.Namespace) -> dict[str, Any]:
    from labelloop.hooks.labelstudio import LabelStudioHook
    from labelloop.ingest import state
    from labelloop.ingest import pipeline
    from labelloop.ingest.pipeline import Ingest, _ImportQueue, storage_path
    from labelloop.settings import LABELSTUDIO_CONN_ID
    from labelloop.spec import load_spec

    spec = load_spec(Path(args.spec))
    if args.in_flight:  # as a deployment sets it: the Label Studio connection's extra
        variable = f"AIRFLOW_CONN_{LABELSTUDIO_CONN_ID.upper()}"
        os.environ[variable] = json.dumps({**json.loads(os.environ[variable]),
                                           "extra": {"imports_in_flight": args.in_flight}})
    hook = LabelStudioHook()
    timers = Timers()
    # Where does the time go? Nested timers: reading contains ordering the batches, writing their
    # pending markers and the waits for a free place in the import queue (one timer also holds
    # the final wait for the last imports, which comes after reading); a sending thread's _send
    # contains import_batch, which contains the per-attempt Data Manager lookup (iter_tasks) and
    # the POST (import_tasks); the recording thread's _record commits each batch. Threads run at
    # once, so their seconds add up to more than the wall time.
    timers.wrap(Ingest, "_read_object", "read+validate+hash (objects)")
    timers.wrap(pipeline, "priorities", "  order each batch (priorities)")
    timers.wrap(_ImportQueue, "wait_oldest", "  waiting for the import queue (full, or the end)")
    timers.wrap(Ingest, "_send", "sending threads: POST")
    timers.wrap(Ingest, "_record", "recording thread: commit to the journal")
    timers.wrap(LabelStudioHook, "import_batch", "  hook.import_batch")
    timers.wrap(LabelStudioHook, "iter_tasks", "    Data Manager lookup of landed tasks", consume=True)
    timers.wrap(state, "write_json", "  journal writes (write_json)")
    timers.wrap(state, "read_json", "  journal reads (read_json)")
    # Build both clients before the clock starts, as the raw method does: the SDK client, and the
    # S3 filesystem behind ObjectStoragePath (its first use imports s3fs/aiobotocore: ~0.8 s once).
    client = hook.client
    storage_path(spec.source.uri, spec.source.conn_id).fs
    timers.wrap(client.projects, "import_tasks", "    POST import_tasks")
    profiler = None
    if args.profile_to:
        import cProfile

        profiler = cProfile.Profile()
    reset_peak_rss()
    base = proc_status("VmRSS")
    cpu0, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if profiler:
        profiler.enable()
    summary = Ingest(spec, hook, args.run_id).run(args.project)
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile_to)
    count = hook.task_count(args.project)
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall": wall, "count": count, "base": base, "peak": proc_status("VmHWM"),
        "cpu": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "summary": {key: summary[key] for key in ("objects", "read", "imported", "duplicate", "quarantined",
                                                   "balanced")},
        "timers": {name: [round(sec, 3), timers.calls[name]] for name, sec in timers.seconds.items()},
    }


def child_raw(args: argparse.Namespace) -> dict[str, Any]:
    import boto3
    from label_studio_sdk import LabelStudio

    s3 = boto3.client("s3", endpoint_url=args.endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    client = LabelStudio(base_url=args.labelstudio, api_key=args.token, timeout=300)
    reset_peak_rss()
    base = proc_status("VmRSS")
    cpu0, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    tasks = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=args.prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            tasks += [{"data": json.loads(line)} for line in body.splitlines() if line.strip()]
    loaded = time.perf_counter() - started
    for start in range(0, len(tasks), args.batch_size):
        client.projects.import_tasks(args.project, request=tasks[start:start + args.batch_size])
    count = int(client.projects.get(args.project).task_number or 0)
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall": wall, "count": count, "base": base, "peak": proc_status("VmHWM"),
        "cpu": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "timers": {"download + json.loads into a list": [round(loaded, 3), 1]},
    }


def child_main(args: argparse.Namespace) -> None:
    result = {"labelloop": child_labelloop, "raw-sdk": child_raw}[args.child](args)
    print("RESULT " + json.dumps(result), flush=True)


# Parent: servers, data, projects, the three methods --------------------------------------------

class ServerSampler:
    """CPU seconds and peak RSS of the Label Studio server's process tree while a method runs."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak = self.base = self.rss()
        self.cpu0 = self.cpu()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def tree(self) -> list[Any]:
        return [self.root, *self.root.children(recursive=True)]

    def rss(self) -> int:
        return sum(_quiet(lambda p=p: p.memory_info().rss, 0) for p in self.tree())

    def cpu(self) -> float:
        return sum(_quiet(lambda p=p: sum(p.cpu_times()[:4]), 0.0) for p in self.tree())

    def _loop(self) -> None:
        while not self.stopping.wait(0.25):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> ServerSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()
        self.peak = max(self.peak, self.rss())
        self.cpu_used = self.cpu() - self.cpu0


def _quiet(read: Callable[[], Any], default: Any) -> Any:
    try:
        return read()
    except Exception:  # a worker that exited between listing and reading
        return default


def synthesize(n: int) -> Iterator[dict[str, Any]]:
    """N unique records from the real messages: text gets `` #i``, id and label are kept."""
    messages = [json.loads(line) for line in SMS.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i in range(n):
        base = messages[i % len(messages)]
        yield {"id": f"{base['id']}-{i}", "text": f"{base['text']} #{i}", "label": base["label"]}


def write_objects(s3: Any, n: int, per_object: int) -> tuple[str, int, int]:
    """JSONL objects of ``per_object`` records under raw-N/; returns (prefix, objects, bytes)."""
    prefix, lines, objects, size = f"raw-{n}/", [], 0, 0

    def put() -> None:
        nonlocal objects, size
        body = ("\n".join(lines) + "\n").encode("utf-8")
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}part-{objects:05d}.jsonl", Body=body)
        objects, size = objects + 1, size + len(body)
        lines.clear()

    for record in synthesize(n):
        lines.append(json.dumps(record, ensure_ascii=False))
        if len(lines) == per_object:
            put()
    if lines:
        put()
    return prefix, objects, size


def write_spec(folder: Path, n: int, batch_size: int, attempt: int | str = 0, **overrides: Any) -> Path:
    """The SMS spec reading raw-N/, with its own journal folder per run (a shared one would skip);
    ``overrides`` replace top-level keys (``name``, ``schedules``, ``ingest``...)."""
    import yaml

    raw = yaml.safe_load(SPEC.read_text())
    raw.update(name=f"bench_{n}", title=f"bench {n} labelloop",
               labeling_config=str(REPO / "include" / raw["labeling_config"]),
               guidelines=str(REPO / "include" / raw["guidelines"]),
               storage_uri=f"s3://{BUCKET}/state-{n}-{attempt}", import_batch_size=batch_size)
    raw["source"]["uri"] = f"s3://{BUCKET}/raw-{n}/"
    raw.update(overrides)
    path = folder / f"{raw['name']}_{attempt}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_child(method: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", method,
               "--batch-size", str(args.batch_size), *extra]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{method} child failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-5000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def run_storage_sync(client: Any, project: int, prefix: str, endpoint: str, n: int) -> dict[str, Any]:
    storage = client.import_storage.s3.create(
        project=project, bucket=BUCKET, prefix=prefix, use_blob_urls=False, recursive_scan=False,
        s3endpoint=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1", presign=False, title=f"bench {prefix}")
    outcome: dict[str, Any] = {}

    def sync() -> None:  # without Redis, Label Studio runs the whole sync inside this request
        try:
            outcome["storage"] = client.import_storage.s3.sync(
                storage.id, request_options={"timeout_in_seconds": 7200, "max_retries": 0})
        except Exception as error:  # reported below
            outcome["error"] = error

    started = time.perf_counter()
    worker = threading.Thread(target=sync, daemon=True)
    worker.start()
    count, reached = 0, None
    while worker.is_alive():
        worker.join(2.0)
        count = int(client.projects.get(project).task_number or 0)
        if reached is None and count >= n:
            reached = time.perf_counter() - started
    wall = time.perf_counter() - started
    count = int(client.projects.get(project).task_number or 0)
    info = client.import_storage.s3.get(storage.id)
    status = getattr(info, "status", None)
    note = f"storage status {status}"
    if "error" in outcome:
        note += f"; sync request failed: {outcome['error']}"
    meta = getattr(info, "meta", None) or {}
    if isinstance(meta, dict) and meta.get("validation_errors"):
        note += f"; {len(meta['validation_errors'])} validation errors"
    return {"wall": wall, "count": count, "note": note, "first_full_count": reached}


def report(result: dict[str, Any], n: int, method: str, attempt: int) -> None:
    client_side = (f"client CPU {result['cpu']:.1f} s  peak {fmt_mib(result['peak'])} MiB "
                   f"(base {fmt_mib(result['base'])})  ") if "peak" in result else ""
    print(f"  {method:10} #{attempt} {result['wall']:8.1f} s  {n / result['wall']:8,.0f} rec/s  "
          f"tasks {result['count']:,}  {client_side}"
          f"LS CPU {result['server_cpu']:.1f} s  LS RSS +{fmt_mib(result['server_rss'])} MiB", flush=True)
    for name, (seconds, calls) in result.get("timers", {}).items():
        print(f"      {name:45} {seconds:8.2f} s  {calls:6} calls", flush=True)
    for key in ("summary", "note"):
        if result.get(key):
            print(f"      {key}: {result[key]}", flush=True)


def fmt_mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MiB:,.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| N | method | wall s | records/s | peak MiB (base) | wall vs raw-sdk | speed vs raw-sdk, paired | "
            "LS server CPU s | LS server RSS +MiB |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for row in rows:
        raw = next(r for r in rows if r["n"] == row["n"] and r["method"] == "raw-sdk") \
            if any(r["n"] == row["n"] and r["method"] == "raw-sdk" for r in rows) else None
        ratio = f"{row['wall'] / raw['wall']:.2f}x" if raw else "n/a"
        peak = f"{fmt_mib(row.get('peak'))} ({fmt_mib(row.get('base'))})" if row.get("peak") else "n/a (in the server)"
        walls = row.get("walls", [row["wall"]])
        wall = f"{row['wall']:,.1f}" + (f" ({min(walls):,.1f}-{max(walls):,.1f})" if len(walls) > 1 else "")
        speeds = row.get("speeds") or []
        speed = "n/a" if not speeds else f"{speeds[len(speeds) // 2]:.2f}" + (
            f" ({speeds[0]:.2f}-{speeds[-1]:.2f})" if len(speeds) > 1 else "")
        lines.append(f"| {row['n']:,} | {row['method']} | {wall} | {row['n'] / row['wall']:,.0f} | "
                     f"{peak} | {ratio} | {speed} | {row['server_cpu']:,.1f} | {fmt_mib(row['server_rss'])} |")
    return "\n".join(lines)


def breakdown(rows: list[dict[str, Any]]) -> str:
    """Where labelloop's wall time goes, per size (nested timers: indented = inside the line above)."""
    ours = [row for row in rows if row["method"].startswith("labelloop")]
    if not ours:
        return ""
    names = list(ours[0]["timers"])
    order = ["read+validate+hash (objects)", "  order each batch (priorities)",
             "  waiting for the import queue (full, or the end)",
             "sending threads: POST", "  hook.import_batch",
             "    Data Manager lookup of landed tasks", "    POST import_tasks",
             "recording thread: commit to the journal",
             "  journal writes (write_json)", "  journal reads (read_json)"]
    names = [name for name in order if name in names] + [name for name in names if name not in order]
    head = "| seconds in | " + " | ".join(f"{row['method']} N={row['n']:,}" for row in ours) + " |"
    lines = [head, "|---|" + "---:|" * len(ours)]
    for name in names:
        cells = []
        for row in ours:
            seconds, calls = row["timers"].get(name, [0.0, 0])
            cells.append(f"{seconds:,.1f} ({calls} calls)")
        label = name.strip().replace("  ", " ")
        lines.append(f"| {'&nbsp;' * (len(name) - len(name.lstrip()))}{label} | " + " | ".join(cells) + " |")
    lines.append("| whole run (wall) | " + " | ".join(f"{row['wall']:,.1f}" for row in ours) + " |")
    lines.append("| client CPU (user+sys) | " + " | ".join(f"{row['cpu']:,.1f}" for row in ours) + " |")
    return "\n".join(lines)


def machine(database: str) -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    version = subprocess.run([str(REPO / ".venv-labelstudio" / "bin" / "python"), "-c",
                              "import label_studio; print(label_studio.__version__)"],
                             capture_output=True, text=True).stdout.strip() or "?"
    return (f"{os.cpu_count()} cores shared with other work ({model}), Python {platform.python_version()}, "
            f"Label Studio {version} Community on {'PostgreSQL' if database == 'postgres' else 'SQLite'} (no Redis), "
            f"moto S3 server in the benchmark process")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--per-object", type=int, default=10_000, help="records per JSONL object")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["raw-sdk", "labelloop", "ls-s3-sync"])
    parser.add_argument("--skip", nargs="*", default=[], metavar="N:METHOD",
                        help="leave out one method at one size, e.g. 100000:ls-s3-sync")
    parser.add_argument("--doc", type=Path, default=DOC, help="markdown file the results are appended to")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each client-side method per size (fresh project each); the table "
                             "shows the median, min-max in brackets (the S3 sync runs once)")
    parser.add_argument("--keep", action="store_true", help="keep the Label Studio data folder")
    parser.add_argument("--labelstudio-db", choices=["sqlite", "postgres"], default="sqlite",
                        help="Label Studio's database: SQLite in the run's folder, or a database of its own "
                             "on the production profile's PostgreSQL (dropped at the end)")
    parser.add_argument("--profile", action="store_true",
                        help="run the labelloop child under cProfile and print the top functions")
    # child mode (internal)
    parser.add_argument("--child", choices=["labelloop", "raw-sdk"], help=argparse.SUPPRESS)
    parser.add_argument("--project", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--labelstudio", help=argparse.SUPPRESS)
    parser.add_argument("--token", default=TOKEN, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument("--in-flight", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return 0

    work = Path(tempfile.mkdtemp(prefix="labelloop-bench-ingest-"))
    os.environ["AIRFLOW_HOME"] = str(work / "airflow")  # before anything imports airflow
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "false"
    import boto3
    from label_studio_sdk import LabelStudio
    from moto.server import ThreadedMotoServer

    from labelloop.settings import AWS_CONN_ID, LABELSTUDIO_CONN_ID
    from labelloop.dev.production import ProductionProfile
    from labelloop.dev.stack import free_port, labelstudio_server

    command = ".venv/bin/python tests/benchmarks/bench_ingest.py " + " ".join(sys.argv[1:])
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per S3 request
    server = postgres = None
    try:
        moto.start()
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        os.environ[f"AIRFLOW_CONN_{AWS_CONN_ID.upper()}"] = json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}})
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)

        print(f"starting Label Studio (fresh {args.labelstudio_db}: ~1 min)...", flush=True)
        if args.labelstudio_db == "postgres":  # the production profile's database, role and settings
            postgres = ProductionProfile.create(work / "stack")
            postgres.secrets["labelstudio_token"] = TOKEN
            postgres.require_services()
            postgres.provision()
            server = postgres.labelstudio_server().start()
        else:
            server = labelstudio_server(work / "stack", free_port(), token=TOKEN).start()
        os.environ[f"AIRFLOW_CONN_{LABELSTUDIO_CONN_ID.upper()}"] = json.dumps(
            {"conn_type": "labelstudio", "host": server.url, "password": TOKEN})
        client = LabelStudio(base_url=server.url, api_key=TOKEN, timeout=300)

        from labelloop.project import project_settings
        from labelloop.spec import load_spec

        # The same project settings for every method (they do not depend on N).
        settings = project_settings(load_spec(write_spec(work, 0, args.batch_size)))
        # Warm-up: the first import into a fresh server pays for lazy imports and caches.
        warm = client.projects.create(title="bench warm-up", **settings).id
        client.projects.import_tasks(warm, request=[{"data": r} for r in synthesize(500)])
        client.projects.delete(warm)

        for n in args.sizes:
            prefix, objects, size = write_objects(s3, n, args.per_object)
            print(f"\nN={n:,}: {objects} JSONL objects, {size / MiB:.1f} MiB under s3://{BUCKET}/{prefix}", flush=True)
            methods = [method for method in args.methods if f"{n}:{method}" not in args.skip]
            notes += [f"{method} at N={n:,} was not run (--skip)" for method in args.methods if method not in methods]
            runs: dict[str, list[dict[str, Any]]] = {method: [] for method in methods}
            # Interleaved (raw-sdk, labelloop, raw-sdk, labelloop, ...): load from other work on the
            # shared cores hits every method alike, and run i of each method can be paired.
            for attempt in range(args.repeat):
                for method in methods:
                    if method == "ls-s3-sync" and attempt:
                        continue  # the slow one runs once
                    project = client.projects.create(title=f"bench {n} {method} {attempt}", **settings).id
                    with ServerSampler(server.process.pid) as sampler:
                        if method.startswith("labelloop"):
                            profile = work / f"{method}-{n}-{attempt}.prof"
                            spec_path = write_spec(work, n, args.batch_size, f"{method}-{attempt}")
                            result = run_child("labelloop", args, [
                                "--project", str(project), "--n", str(n), "--spec", str(spec_path),
                                "--run-id", f"bench__{n}__{attempt}",
                                *(["--in-flight", "2"] if method == "labelloop-2" else []),
                                *(["--profile-to", str(profile)] if args.profile else [])])
                            if args.profile:
                                import pstats

                                pstats.Stats(str(profile)).sort_stats("cumulative").print_stats(35)
                        elif method == "raw-sdk":
                            result = run_child(method, args, ["--project", str(project), "--prefix", prefix,
                                                              "--endpoint", endpoint, "--labelstudio", server.url])
                        else:
                            result = run_storage_sync(client, project, prefix, endpoint, n)
                    result.update(n=n, method=method, server_cpu=sampler.cpu_used,
                                  server_rss=sampler.peak - sampler.base)
                    report(result, n, method, attempt)
                    if result["count"] != n:
                        raise SystemExit(f"FAILED: {method} left {result['count']:,} tasks in project {project}, "
                                         f"expected {n:,} ({result.get('note', '')})")
                    runs[method].append(result)
            raw_walls = [run["wall"] for run in runs.get("raw-sdk", [])]
            for method in methods:
                # Speed vs the raw import of the same round: raw wall / this wall (>= 1.0: no slower).
                speeds = sorted(raw / run["wall"] for raw, run in zip(raw_walls, runs[method]))
                ordered = sorted(runs[method], key=lambda run: run["wall"])
                median = dict(ordered[len(ordered) // 2])
                median["walls"] = [run["wall"] for run in ordered]
                median["speeds"] = speeds
                rows.append(median)
    finally:
        if server is not None:
            server.stop()
        if postgres is not None:
            postgres.drop()
        moto.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")

    print("\n" + table(rows))
    print("\n" + breakdown(rows))
    for note in notes:
        print(f"- {note}")
    if not args.no_doc:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        block = (f"\n### Run of {stamp}\n\n`{command}`\n\nMachine: {machine(args.labelstudio_db)}.\n\n{table(rows)}\n"
                 + "".join(f"\n- {note}" for note in notes) + f"\n\n{breakdown(rows)}\n")
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        with args.doc.open("a", encoding="utf-8") as doc:
            doc.write(block)
        print(f"\nappended to {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
