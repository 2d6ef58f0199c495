"""What re-ordering the labeling queue costs: one task-data update in Label Studio, and a head.

    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/bench_priority_update.py
    PYTHONPATH=plugins .venv/bin/python tests/benchmarks/bench_priority_update.py --tasks 2000 --workers 1 4 8

Label Studio has no bulk update of task data, so the refresh after a promotion writes each
changed ``labelloop_priority`` with one ``PATCH /api/tasks/<id>`` (``LabelStudioHook.update_task_data``).
This starts the embedded stack's Label Studio (its own virtualenv, SQLite) on a free port,
imports ``--tasks`` SMS messages into a fresh project, and times ``update_task_data`` over all
of them with each ``--workers`` count (the refresh uses 4). The figures decide how large
``annotation.reorder_on_promotion`` can be: its head size times the per-task time is what a
promotion adds to the refresh. Not a pytest test: the name does not match test_*.py.
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))
TOKEN = "bench-priority-token-0123456789abcdef"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="labelloop-bench-priority-"))
    os.environ.setdefault("AIRFLOW_HOME", str(home / "airflow"))

    from labelloop.dev.stack import free_port, labelstudio_server

    server = labelstudio_server(home / "stack", free_port(), token=TOKEN).start()
    os.environ["AIRFLOW_CONN_LABELSTUDIO_DEFAULT"] = json.dumps(
        {"conn_type": "labelstudio", "host": server.url, "password": TOKEN})
    try:
        from labelloop.hooks.labelstudio import LabelStudioHook

        hook = LabelStudioHook()
        config = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
                  '<Choice value="ham"/><Choice value="spam"/></Choices></View>')
        project = hook.client.projects.create(title="bench priority", label_config=config)
        lines = (REPO / "include/demo/sms-spam/messages.jsonl").read_text().splitlines()[:args.tasks]
        hook.client.projects.import_tasks(project.id, request=[
            {"text": json.loads(line)["text"], "labelloop_priority": 0.0} for line in lines])
        tasks = {task.id: task.data for task in hook.iter_tasks(project.id)}
        print(f"{len(tasks)} tasks; Label Studio on SQLite; {platform.machine()}, {os.cpu_count()} cores")
        print("| workers | tasks | seconds | ms per task | tasks/s |\n|---:|---:|---:|---:|---:|")
        for round_number, workers in enumerate(args.workers, start=1):
            updates = {task_id: {**data, "labelloop_priority": float(round_number)} for task_id, data in tasks.items()}
            started = time.perf_counter()
            hook.update_task_data(updates, workers=workers)
            seconds = time.perf_counter() - started
            print(f"| {workers} | {len(updates)} | {seconds:.1f} | {1000 * seconds / len(updates):.1f} | "
                  f"{len(updates) / seconds:.1f} |", flush=True)
        written = {task.data["labelloop_priority"] for task in hook.iter_tasks(project.id)}
        assert written == {float(len(args.workers))}, f"not every task was updated: {written}"
    finally:
        server.stop()


if __name__ == "__main__":
    main()
