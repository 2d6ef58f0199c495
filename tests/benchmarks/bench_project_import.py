"""What a project's setup costs Label Studio per imported task: the same raw SDK import into four projects.

    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/bench_project_import.py          # ~3 min
    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/bench_project_import.py --tasks 2000 --rounds 1

One Label Studio (its own venv, SQLite, started by ``labelloop.dev.stack``). Each round makes four
projects with ``labelloop.project.project_settings`` of include/projects/sms_spam.yaml: plain; with
the queue view the setup DAG adds (``hook.ensure_view``); with an ML backend connected as labelloop
does it (``hook.ensure_ml_backend``, which removes the event webhook Label Studio adds for a new
backend); with an ML backend connected by the SDK alone, the webhook left in place. Then the same ``--tasks`` synthetic SMS tasks go in by
``projects.import_tasks`` in batches of 1,000, and the Label Studio process's CPU seconds and the
wall time are printed per project. The ML backend is a stub HTTP server in this process that
answers every request with 200 (Label Studio checks /health and /setup when it is connected):
what is measured is Label Studio's side, not a model's. Not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
WORK = Path(tempfile.mkdtemp(prefix="labelloop-bench-project-"))
os.environ["AIRFLOW_HOME"] = str(WORK / "airflow")  # before anything imports airflow

import psutil  # noqa: E402

from bench_ingest import synthesize, write_spec  # noqa: E402

TOKEN = "labelloop-bench-token-0123456789abcdef"
VARIANTS = ("plain", "queue view", "ML backend, as labelloop connects it", "ML backend with Label Studio's event webhook")


class StubBackend(BaseHTTPRequestHandler):
    """Answers everything with 200 and an empty prediction list: enough to be connected. Counts
    what it is asked (``asked``), so the table says whether Label Studio calls it during imports."""

    asked: Counter[str] = Counter()

    def _answer(self) -> None:
        StubBackend.asked[f"{self.command} {self.path.split('?')[0]}"] += 1
        body = json.dumps({"status": "UP", "model_version": "stub", "results": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from labelloop.dev.stack import free_port, labelstudio_server
    from labelloop.project import QUEUE_VIEW, project_settings
    from labelloop.settings import LABELSTUDIO_CONN_ID
    from labelloop.spec import load_spec
    from labelloop.taskdata import PRIORITY_FIELD

    stub = ThreadingHTTPServer(("127.0.0.1", free_port()), StubBackend)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    server = labelstudio_server(WORK / "stack", free_port(), token=TOKEN).start()
    try:
        os.environ[f"AIRFLOW_CONN_{LABELSTUDIO_CONN_ID.upper()}"] = json.dumps(
            {"conn_type": "labelstudio", "host": server.url, "password": TOKEN})
        from labelloop.hooks.labelstudio import LabelStudioHook

        hook = LabelStudioHook()
        settings = project_settings(load_spec(write_spec(WORK, 0, 1000)))
        labelstudio = psutil.Process(server.process.pid)
        records = list(synthesize(args.tasks))

        def cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in [labelstudio, *labelstudio.children(recursive=True)])

        print("| round | project | wall s | Label Studio CPU s | ML backend asked during the import |\n"
              "|---:|---|---:|---:|---|")
        for number in range(args.rounds):
            for variant in VARIANTS:
                project = hook.client.projects.create(title=f"bench {number} {VARIANTS.index(variant)}", **settings).id
                if "view" in variant:
                    hook.ensure_view(project, QUEUE_VIEW, ordering=[f"-tasks:data.{PRIORITY_FIELD}"])
                stub_url = f"http://127.0.0.1:{stub.server_address[1]}"
                if variant.endswith("as labelloop connects it"):
                    hook.ensure_ml_backend(project, stub_url, "stub", None, None)
                elif variant.endswith("event webhook"):  # what Label Studio does alone: the webhook stays
                    hook.client.ml.create(url=stub_url, project=project, title="stub", is_interactive=False)
                StubBackend.asked.clear()
                before, started = cpu(), time.perf_counter()
                for start in range(0, len(records), 1000):
                    hook.client.projects.import_tasks(project, request=[{"data": r} for r in records[start:start + 1000]])
                wall, used = time.perf_counter() - started, cpu() - before
                asked = ", ".join(f"{n} `{request}`" for request, n in StubBackend.asked.items()) or "nothing"
                print(f"| {number} | {variant} | {wall:.1f} | {used:.1f} | {asked} |", flush=True)
    finally:
        server.stop()
        stub.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
