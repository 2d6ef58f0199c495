"""`make demo`: the loop end to end on the embedded stack, driven through Airflow's REST API.

Starts Label Studio, MLflow and Airflow on 127.0.0.1 (ports in ``StackConfig``), drops the
SMS spam messages into the local object store, then triggers the project's DAGs in order
and waits for each, exactly as a person would from the Airflow UI.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import httpx

from labelloop import settings
from labelloop.stack import DEFAULT_ADMIN, DEFAULT_PASSWORD, StackConfig, StackError, up

DEMO_DATA = settings.INCLUDE_DIR / "demo" / "sms-spam" / "messages.jsonl"


class Airflow:
    """The few REST calls the demo needs (the embedded stack runs with all users as admins)."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=f"{base_url}/api/v2", timeout=30)

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.http.get(f"/dags/{dag_id}").status_code != 200:
            if time.monotonic() > deadline:
                raise StackError(f"Airflow has not parsed {dag_id} after {timeout:.0f} s; "
                                 f"see `airflow dags list-import-errors`")
            time.sleep(2)

    def run(self, dag_id: str, conf: dict[str, Any] | None = None, timeout: float = 1800) -> dict[str, Any]:
        """Trigger a run and wait for it; raise with the failed tasks when it fails."""
        self.wait_for_dag(dag_id)
        self.http.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        response = self.http.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        response.raise_for_status()
        run_id = response.json()["dag_run_id"]
        deadline = time.monotonic() + timeout
        while True:
            state = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
            if state in {"success", "failed"}:
                break
            if time.monotonic() > deadline:
                raise StackError(f"{dag_id} run {run_id} still {state} after {timeout:.0f} s")
            time.sleep(2)
        if state == "failed":
            tis = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
            failed = [ti["task_id"] for ti in tis if ti["state"] == "failed"]
            raise StackError(f"{dag_id} run {run_id} failed in {failed}; open the task logs in the Airflow UI")
        return {"run_id": run_id}

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        url = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        return self.http.get(url, params={"deserialize": True}).json().get("value")


def drop_demo_data(source_uri: str) -> str:
    """Copy the demo messages to the spec's raw folder (once: the same object is not new again)."""
    from labelloop.ingest.pipeline import storage_path

    target = storage_path(source_uri, None) / DEMO_DATA.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(DEMO_DATA.read_bytes())
    return str(target)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m labelloop demo", description=__doc__)
    parser.add_argument("--project", default="sms_spam", help="spec name under include/projects/")
    args = parser.parse_args(argv)
    from labelloop.spec import load_specs

    config = StackConfig()
    try:
        up(config)
        spec = next((s for s in load_specs() if s.name == args.project), None)
        if spec is None:
            raise StackError(f"no spec named {args.project!r} in {settings.projects_dir()}")
        print(f"demo data: {drop_demo_data(spec.source.uri)}", flush=True)
        airflow = Airflow(f"http://127.0.0.1:{config.airflow_port}")
        for stage in ("setup", "ingest"):
            dag_id = f"{spec.dag_prefix}__{stage}"
            print(f"running {dag_id} ...", flush=True)
            run = airflow.run(dag_id)
            if stage == "ingest":
                summary = airflow.xcom(dag_id, run["run_id"], "ingest") or {}
                print("  ingest: " + ", ".join(f"{k} {summary.get(k)}" for k in
                                                ("read", "imported", "duplicate", "quarantined")))
    except (StackError, httpx.HTTPError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"""
labelloop demo done.
  Airflow       http://127.0.0.1:{config.airflow_port}   (all local users are admins)
  Label Studio  http://127.0.0.1:{config.labelstudio_port}   ({DEFAULT_ADMIN} / {DEFAULT_PASSWORD})
  MLflow        http://127.0.0.1:{config.mlflow_port}
  object store  {config.store_uri}
Stop everything with `make stack-down`.""")
    return 0
