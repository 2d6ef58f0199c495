"""`make demo`: the loop end to end on the embedded stack, driven through Airflow's REST API.

Starts Label Studio, MLflow and Airflow on 127.0.0.1 (ports in ``StackConfig``), drops the
SMS spam messages into the local object store, then triggers the project's DAGs in order
and waits for each, exactly as a person would from the Airflow UI.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any

import httpx

from labelloop import settings
from labelloop.spec import ProjectSpec
from labelloop.dev.stack import DEFAULT_ADMIN, DEFAULT_PASSWORD, StackConfig, StackError, airflow_env, up

DEMO_DATA = settings.INCLUDE_DIR / "demo" / "sms-spam" / "messages.jsonl"


class Airflow:
    """The few REST calls the demo needs (the embedded stack runs with all users as admins;
    elsewhere pass ``token``, an access token from the api-server's /auth/token)."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=f"{base_url}/api/v2", timeout=60, headers=headers,
                                 transport=httpx.HTTPTransport(retries=3))

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One REST call; retried on 5xx, which SQLite behind a busy scheduler still answers now and then."""
        for attempt in range(5):
            response = self.http.request(method, path, **kwargs)
            if response.status_code < 500 or attempt == 4:
                break
            time.sleep(2**attempt)
        response.raise_for_status()
        return response.json()

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.http.get(f"/dags/{dag_id}").status_code != 200:  # 404 until parsed
            if time.monotonic() > deadline:
                raise StackError(f"Airflow has not parsed {dag_id} after {timeout:.0f} s; "
                                 f"see `airflow dags list-import-errors`")
            time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self.wait_for_dag(dag_id)
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Start a run now (as the UI's Trigger button does); returns its run id."""
        self.unpause(dag_id)
        return self.call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})[
            "dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 1800) -> str:
        """Wait for a run to finish; raise with the failed tasks when it fails."""
        deadline = time.monotonic() + timeout
        while (state := self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]) not in {"success", "failed"}:
            if time.monotonic() > deadline:
                raise StackError(f"{dag_id} run {run_id} still {state} after {timeout:.0f} s; "
                                 f"its tasks: {self.task_states(dag_id, run_id)}")
            time.sleep(2)
        if state == "failed":
            failed = [task for task, task_state in self.task_states(dag_id, run_id).items() if task_state == "failed"]
            raise StackError(f"{dag_id} run {run_id} failed in {failed}; open the task logs in the Airflow UI")
        return state

    def run(self, dag_id: str, conf: dict[str, Any] | None = None, timeout: float = 1800) -> dict[str, Any]:
        """Trigger a run and wait for it."""
        run_id = self.trigger(dag_id, conf)
        self.wait_for_run(dag_id, run_id, timeout)
        return {"run_id": run_id}

    def wait_for_task(self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.task_states(dag_id, run_id).get(task_id)) not in states:
            if time.monotonic() > deadline:
                raise StackError(f"{dag_id} run {run_id}: {task_id} still {state} after {timeout:.0f} s")
            time.sleep(2)
        return state

    def respond(self, dag_id: str, run_id: str, task_id: str, options: list[str]) -> dict[str, Any]:
        """Answer a human-in-the-loop task, as a person does under Required Actions."""
        return self.call("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
                         json={"chosen_options": options})

    def wait_for_triggered_run(self, dag_id: str, after: str, timeout: float = 1800,
                               worked: str | None = None) -> dict[str, Any]:
        """Wait for the first run of ``dag_id`` queued after ``after`` (an Asset event started it).

        With ``worked``, the first such run in which that task did not skip (a retrain that found
        its data trained on already skips ``train``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.call("GET", f"/dags/{dag_id}/dagRuns", params={
                "run_after_gte": after, "order_by": "run_after", "limit": 50})["dag_runs"]
            for run in runs:
                if run["state"] not in {"success", "failed"}:
                    break  # an earlier run is still going: the one wanted may be this one
                if worked is None or self._worked(dag_id, run, worked):
                    return {"run_id": run["dag_run_id"], "state": run["state"]}
            time.sleep(2)
        raise StackError(f"no finished run of {dag_id} after {after} within {timeout:.0f} s")

    def last_worked_run(self, dag_id: str, after: str, worked: str) -> dict[str, Any] | None:
        """The latest finished run of ``dag_id`` queued after ``after`` in which ``worked`` did not skip."""
        runs = self.call("GET", f"/dags/{dag_id}/dagRuns", params={
            "run_after_gte": after, "order_by": "-run_after", "limit": 50})["dag_runs"]
        for run in runs:
            if run["state"] in {"success", "failed"} and self._worked(dag_id, run, worked):
                return {"run_id": run["dag_run_id"], "state": run["state"]}
        return None

    def _worked(self, dag_id: str, run: dict[str, Any], task_id: str) -> bool:
        """Whether ``task_id`` did not skip in this run (a retrain with nothing new skips ``train``)."""
        return self.task_states(dag_id, run["dag_run_id"]).get(task_id) != "skipped"

    def now(self) -> str:
        return datetime.now(timezone.utc).isoformat()

    def wait_idle(self, dag_ids: list[str], timeout: float = 1800) -> None:
        """Let runs started by Asset events finish, so the next wait sees only the runs it starts."""
        deadline = time.monotonic() + timeout
        for dag_id in dag_ids:
            while self.call("GET", f"/dags/{dag_id}/dagRuns", params={"state": ["queued", "running"]})[
                    "total_entries"]:
                if time.monotonic() > deadline:
                    raise StackError(f"{dag_id} still has runs in progress after {timeout:.0f} s")
                time.sleep(2)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        url = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        return self.call("GET", url, params={"deserialize": True}).get("value")


ROUND_SPLIT = 2500           # round 1 drops the first messages, round 2 the rest
LABELED_PER_ROUND = 300      # tasks the simulated annotators label per round (3 answers each)
ACCURACIES = [0.75, 0.8, 0.85, 0.9, 0.95]


def drop_round(source_uri: str, name: str, lines: list[str]) -> str:
    """Put one round's raw messages in the spec's raw folder (once: the same object is not new again)."""
    from labelloop.layout import storage_path

    target = storage_path(source_uri, None) / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(lines) + "\n")
    return str(target)


def held_out_quality(spec: ProjectSpec, uri: str) -> dict[str, Any] | None:
    """The champion on demo messages that never entered training or evaluation."""
    import json

    import mlflow

    from labelloop.model.retrain import load_passed_audit, training_sets
    from labelloop.model.train import evaluate

    _, consensus, tasks = load_passed_audit(spec)
    train, evaluation = training_sets(spec, consensus, tasks)
    seen = set(train["text"]) | set(evaluation["text"])
    held_out = [r for r in map(json.loads, DEMO_DATA.read_text().splitlines()) if r["text"] not in seen]
    from labelloop.model.registry import champion_version

    mlflow.set_tracking_uri(uri)
    champion = champion_version(mlflow.MlflowClient(), spec.model.name)
    if champion is None:
        return None
    version = champion.version
    model = mlflow.sklearn.load_model(f"models:/{spec.model.name}/{version}")
    metrics = evaluate(model, [r["text"] for r in held_out], [r["label"] for r in held_out])
    return {"version": version, "n": len(held_out), "accuracy": metrics["accuracy"], "f1_spam": metrics.get("f1_spam")}


def latest_report(spec: ProjectSpec) -> str:
    from labelloop.layout import Layout
    from labelloop.state import read_json

    root = Layout.of(spec).audit
    latest = read_json(root / "latest.json", None)
    return str(root / latest["audit"] / "report.html") if latest else "none (no audit ran)"


def run_loop(config: StackConfig, spec: ProjectSpec, airflow: Airflow) -> None:
    from labelloop.hooks.labelstudio import LabelStudioHook
    from labelloop.dev.simulate import label_queue

    prefix = spec.dag_prefix
    # Setup first: an unpaused ingest schedules a run at once. Then everything is unpaused, so each
    # Asset event (ingest -> collect -> audit -> retrain) starts the next DAG, as in production;
    # the demo only triggers setup, ingest and collect.
    airflow.run(f"{prefix}__setup")
    for stage in ("ingest", "collect", "audit", "retrain", "registry_watch"):
        airflow.unpause(f"{prefix}__{stage}")
    hook = LabelStudioHook()
    lines = DEMO_DATA.read_text().splitlines()
    for number, chunk in enumerate((lines[:ROUND_SPLIT], lines[ROUND_SPLIT:]), start=1):
        round_started = airflow.now()
        print(f"round {number}: {drop_round(spec.source.uri, f'round{number}.jsonl', chunk)}", flush=True)
        run = airflow.run(f"{prefix}__ingest")
        summary = airflow.xcom(f"{prefix}__ingest", run["run_id"], "reduce_summaries") or {}
        print("  ingest: " + ", ".join(f"{k} {summary.get(k)}" for k in ("read", "imported", "duplicate", "quarantined")))
        project_id = hook.find_project(spec.title).id
        labeled = label_queue(hook, spec, project_id, LABELED_PER_ROUND, ACCURACIES, seed=number)
        print(f"  simulated annotators ({', '.join(map(str, ACCURACIES))} accurate) answered {labeled} times", flush=True)
        airflow.wait_idle([f"{prefix}__{stage}" for stage in ("collect", "audit", "retrain")])
        started = airflow.now()
        airflow.run(f"{prefix}__collect")
        audit = airflow.wait_for_triggered_run(f"{prefix}__audit", after=started)
        outcome = airflow.xcom(f"{prefix}__audit", audit["run_id"], "audit") or {}
        print(f"  audit: {outcome.get('gate', {}).get('summary', audit['state'])}")
        if airflow.task_states(f"{prefix}__audit", audit["run_id"]).get("gate") != "success":
            print("  the quality gate failed: no retraining this round")
            continue
        retrain = airflow.wait_for_triggered_run(f"{prefix}__retrain", after=started)
        if airflow.task_states(f"{prefix}__retrain", retrain["run_id"]).get("train") == "skipped":
            # The annotations watcher collected this round's answers while the annotators worked, and
            # the retrain after it trained on them: this one found nothing new. Report that one.
            retrain = airflow.last_worked_run(f"{prefix}__retrain", after=round_started, worked="train") or retrain
        trained = airflow.xcom(f"{prefix}__retrain", retrain["run_id"], "train") or {}
        print(f"  retrain: version {trained.get('version')} — "
              f"{'promoted' if trained.get('promote') else 'not promoted'}: {trained.get('reason')}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m labelloop demo", description=__doc__)
    parser.add_argument("--project", default="sms_spam", help="spec name under include/projects/")
    parser.add_argument("--profile", choices=["embedded", "production"], default="embedded",
                        help="production: on labelloop.dev.production's stack (Postgres, Celery workers, S3)")
    args = parser.parse_args(argv)
    config = StackConfig()
    airflow_url, airflow_login = f"http://127.0.0.1:{config.airflow_port}", "all local users are admins"
    labelstudio_url, mlflow_url = f"http://127.0.0.1:{config.labelstudio_port}", f"http://127.0.0.1:{config.mlflow_port}"
    from labelloop.spec import SpecError, spec_named

    try:
        if args.profile == "production":
            from labelloop.dev.production import ProductionProfile

            profile = ProductionProfile.load_or_create(config.state_dir / "production")
            profile.start(report=lambda line: print(line, flush=True))
            os.environ.update(profile.airflow_env())
            airflow = profile.airflow_client()
            airflow_url, airflow_login = profile.airflow_url, f"admin, password in {profile.passwords_file}"
            labelstudio_url, mlflow_url = profile.url("labelstudio"), profile.url("mlflow")
        else:
            os.environ.update(airflow_env(config.state_dir, config.airflow_port, config.connections()))
            up(config)
            airflow = Airflow(airflow_url)
        spec = spec_named(args.project)
        if spec.model is None:
            raise StackError(f"spec {args.project!r} has no model: section; the demo's loop retrains a model")
        run_loop(config, spec, airflow)
        quality = held_out_quality(spec, mlflow_url)
    except (StackError, SpecError, httpx.HTTPError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    champion = (f"{spec.model.name} version {quality['version']}: {quality['accuracy']:.2%} accuracy, spam F1 "
                f"{quality['f1_spam']:.3f} on {quality['n']} messages that never entered training"
                if quality else "none yet: no candidate cleared model.min_score (see the retrain runs)")
    print(f"""
labelloop demo done.
  champion      {champion}
  quality report {latest_report(spec)}
  Airflow       {airflow_url}   ({airflow_login})
  Label Studio  {labelstudio_url}   ({DEFAULT_ADMIN} / {DEFAULT_PASSWORD})
  MLflow        {mlflow_url}
Stop everything with `python -m labelloop stack down --profile {args.profile}`.""")
    return 0
