"""Collect and audit against a real Label Studio, with simulated annotators as real users.

30 SMS tasks (15 spam, 15 ham, about half of them gold) get 3 answers each from 4 simulated
annotators (90 annotations, ~6 s of POSTs). Collect must give back exactly who answered
what; audit must write its report, route doubtful items to the review project once, take
a reviewer's answer as the adjudicated label, route nothing more while nobody annotates,
and pass or fail the gate as the thresholds say. Ingest starts collect only with new tasks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.sdk import BaseNotifier

from labelloop.dev import simulate
from labelloop.audit.prepare import audit_labels
from labelloop.audit.routing import review_title, select_for_review
from labelloop.collect.snapshot import collect
from labelloop.collect.table import ANNOTATIONS_SCHEMA, latest_snapshot, read_parquet, read_snapshot
from labelloop.factory import quality_passed_asset, tasks_asset
from labelloop.ingest.pipeline import Ingest
from labelloop.layout import storage_path
from labelloop.layout import run_key
from labelloop.state import read_json
from labelloop.project import ensure_project
from labelloop.spec import load_spec

pytestmark = pytest.mark.integration
SMS = Path(__file__).resolve().parents[2] / "include" / "demo" / "sms-spam" / "messages.jsonl"
ACCURACIES = (1.0, 0.95, 0.9, 0.85)


class FileNotifier(BaseNotifier):
    """Writes its rendered ``message`` to ``path``: a delivery notifier the spec's ``quality.notify``
    names and configures (``params``), as it would Slack's or SMTP's."""

    template_fields = ("message",)

    def __init__(self, path: str, message: str) -> None:
        super().__init__()
        self.path = path
        self.message = message

    def notify(self, context: Any) -> None:
        Path(self.path).write_text(self.message)


def write_sms(folder: Path, per_label: int = 15) -> None:
    rows = [json.loads(line) for line in SMS.open()]
    chosen = [r for r in rows if r["label"] == "spam"][:per_label] + [r for r in rows if r["label"] == "ham"][:per_label]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sms.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))


def asset_events(name: str) -> int:
    from sqlalchemy import func, select

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.scalar(select(func.count()).select_from(AssetEvent)
                              .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                              .where(AssetModel.name == name))


def task_states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_collect_audit_review_loop(run_dag, labelstudio_hook, make_spec, tmp_path, monkeypatch) -> None:
    hook = labelstudio_hook
    write_sms(tmp_path / "raw")
    # A large spot check: a fresh draw per audit (the old behaviour) would route new items.
    path = make_spec(annotation={"gold_fraction": 0.5}, quality={"spot_check_fraction": 0.5})
    spec = load_spec(path)
    project_id, _ = ensure_project(hook, spec)
    assert Ingest(spec, hook, "manual__seed").run(project_id)["imported"] == 30

    # Simulated annotators: real users, created once.
    prefix = spec.name.replace("_", "-")
    users = simulate.ensure_annotators(hook, len(ACCURACIES), prefix)
    assert [u.id for u in simulate.ensure_annotators(hook, len(ACCURACIES), prefix)] == [u.id for u in users]
    email = {u.id: u.email for u in users}
    truth = {task.id: task.meta["label"] for task in hook.iter_tasks(project_id, fields="all")}
    answers = simulate.simulate_labels(truth, [(u.id, a) for u, a in zip(users, ACCURACIES)], 3, spec.labels, seed=1)
    assert simulate.submit(hook, project_id, answers, spec) == 90
    assert simulate.submit(hook, project_id, answers, spec) == 0  # a re-run adds nothing

    # Collect: exactly who answered what.
    first = run_dag(path, "collect")
    assert first.state == "success"
    root = storage_path(spec.storage_uri, None)
    folder = latest_snapshot(root)
    assert folder.name == run_key(first.run_id)
    tables = read_snapshot(folder)
    annotations = tables["annotations"]
    got = {(int(r.task_id), r.annotator_email, r.label) for r in annotations.itertuples()}
    assert got == {(task, email[user], label) for task, user, label in answers}
    assert len(annotations) == 90 and annotations["annotation_id"].is_unique
    assert annotations.groupby("annotator_email").size().sum() == 90
    assert (annotations["lead_time"] > 0).all() and not annotations["was_cancelled"].any()
    gold = tables["tasks"].dropna(subset=["gold_label"])
    assert 5 <= len(gold) <= 25 and (gold["gold_label"] == gold["known_label"]).all()
    manifest = read_json(folder / "manifest.json", {})
    assert manifest["counts"]["annotations"] == 90 and manifest["review_project_id"] is None

    # Re-running that collect run rewrites the same snapshot, never a second one.
    collect(spec, hook, first.run_id, first.run_after.isoformat())
    assert [p.name for p in (root / "collect" / "snapshots").iterdir()] == [folder.name]
    assert len(read_snapshot(folder)["annotations"]) == 90

    # Audit: report to storage and MLflow, review routing, gate passed -> asset event.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "http",
                                                                  "host": f"file://{tmp_path / 'mlruns'}"}))
    passed_asset = quality_passed_asset(spec).name
    audit = run_dag(path, "audit")
    assert task_states(audit) == {"audit": "success", "route": "success", "gate": "success"}
    out = root / "audit" / run_key(audit.run_id)
    assert {p.name for p in out.iterdir()} == {"report.html", "metrics.json", "consensus.parquet", "gate.json"}
    metrics = read_json(out / "metrics.json", {})
    assert metrics["counts"]["annotations"] == 90 and metrics["counts"]["annotators"] == 4
    assert metrics["gold"]["n_items"] == len(gold)
    assert read_json(out / "gate.json", {})["passed"]
    assert read_json(root / "audit" / "passed.json", {})["audit"] == run_key(audit.run_id)
    assert asset_events(passed_asset) == 1
    assert read_json(root / "audit" / "latest.json", {})["review"]["answered_since_last_audit"] == 30

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"file://{tmp_path / 'mlruns'}")
    experiment = client.get_experiment_by_name(f"labelloop/{spec.name}/quality")
    [mlflow_run] = client.search_runs([experiment.experiment_id])
    assert mlflow_run.data.metrics["annotations"] == 90 and mlflow_run.data.metrics["gate_passed"] == 1
    assert {a.path for a in client.list_artifacts(mlflow_run.info.run_id)} >= {"report.html", "metrics.json"}

    consensus = read_parquet(out / "consensus.parquet")
    expected = select_for_review(audit_labels(annotations, spec.control_name),
                                 consensus.drop(columns="item_id").rename(columns={"task_id": "item_id"}),
                                 metrics["review"]["spot_check"], metrics["review"]["low_confidence"])
    review = hook.find_project(review_title(spec))
    routed = list(hook.iter_tasks(review.id, fields="all"))
    assert expected and sorted(t.data["labelloop_task_id"] for t in routed) == sorted(expected)
    assert metrics["review"]["spot_check"], "the first audit spot-checks the new items"
    for task in routed:
        mine = {(email[u], label) for t, u, label in answers if t == task.data["labelloop_task_id"]}
        shown = {(p.model_version, p.result[0]["value"]["choices"][0]) for p in task.predictions}
        assert shown == mine

    # A reviewer overrules the consensus of one routed item; the next audit adopts it.
    target = routed[0]
    item = target.data["labelloop_task_id"]
    before = consensus.set_index("task_id").loc[item]
    corrected = next(label for label in spec.labels if label != before["label"])
    hook.create_annotation(target.id, [{"from_name": "label", "to_name": "text", "type": "choices",
                                        "value": {"choices": [corrected]}}])
    assert run_dag(path, "collect").state == "success"
    assert len(read_snapshot(latest_snapshot(root))["review_annotations"]) == 1
    again = run_dag(path, "audit")
    assert task_states(again)["route"] == "success"
    after = read_parquet(root / "audit" / run_key(again.run_id) / "consensus.parquet").set_index("task_id").loc[item]
    assert (after["label"], after["source"]) == (corrected, "adjudicated")
    hashes = [t.data["labelloop_hash"] for t in hook.iter_tasks(review.id)]
    assert len(hashes) == len(set(hashes)), "an item was routed twice"
    # No annotation since the first audit: nothing to spot-check, nothing new routed.
    assert hook.task_count(review.id) == len(routed)
    assert read_json(root / "audit" / run_key(again.run_id) / "metrics.json", {})["review"]["spot_check"] == []
    assert read_json(root / "audit" / "latest.json", {})["review"]["answered_since_last_audit"] == 0
    assert len(client.search_runs([experiment.experiment_id])) == 2

    # Thresholds the data cannot meet: the gate fails, says why, notifies, and emits nothing.
    raw = yaml.safe_load(path.read_text())
    notified = tmp_path / "notified.txt"
    raw["quality"].update(min_kappa=0.99, min_alpha=0.99, notify={
        "notifier": f"{__name__}:FileNotifier",
        "params": {"path": str(notified), "message": "{{ quality_gate_message }}"}})
    path.write_text(yaml.safe_dump(raw))
    failed = run_dag(path, "audit")
    assert failed.state == "failed"
    assert task_states(failed) == {"audit": "success", "route": "success", "gate": "failed"}
    gate = read_json(root / "audit" / run_key(failed.run_id) / "gate.json", {})
    assert not gate["passed"]
    below = [check for check in gate["checks"] if check["status"] == "failed"]
    assert [check["threshold_name"] for check in below] == ["min_kappa", "min_alpha"]
    message = notified.read_text().splitlines()
    assert message[0] == f"Quality gate FAILED for {spec.title}: 2 metric(s) below their floor."
    for line, check in zip(message[1:3], below, strict=True):
        assert line.startswith(f"- {check['metric']}: {check['value']:.3f}, needs {check['threshold_name']} 0.990 "
                               f"(short by {0.99 - check['value']:.3f})")
    assert message[3:] == [f"Report: {spec.storage_uri}/audit/{run_key(failed.run_id)}/report.html"]
    assert asset_events(passed_asset) == 2  # the two passing audits only
    assert read_json(root / "audit" / "passed.json", {})["audit"] == run_key(again.run_id)
    assert hook.task_count(review.id) == len(routed), "a second audit without new annotations routed items"


def test_ingest_starts_collect_only_when_it_imported_tasks(run_dag, labelstudio_hook, make_spec, tmp_path) -> None:
    """The tasks Asset (collect's trigger) gets an event from a run that imported tasks, none
    from a run that found nothing new."""
    write_sms(tmp_path / "raw", per_label=2)
    path = make_spec()
    spec = load_spec(path)
    asset = tasks_asset(spec).name

    importing = {"list_groups": "success", "ingest_group": "success", "reduce_summaries": "success"}
    first = run_dag(path, "ingest")
    assert first.state == "success" and task_states(first) == {**importing, "announce": "success"}
    assert asset_events(asset) == 1

    nothing_new = run_dag(path, "ingest")
    assert nothing_new.state == "success"
    assert asset_events(asset) == 1, "an ingest that imported nothing started collect"
    assert task_states(nothing_new) == {**importing, "announce": "skipped"}


def test_empty_project_gives_an_empty_snapshot_and_nothing_to_audit(run_dag, labelstudio_hook, make_spec) -> None:
    path = make_spec()
    spec = load_spec(path)
    ensure_project(labelstudio_hook, spec)
    run = run_dag(path, "collect")
    assert run.state == "success"
    root = storage_path(spec.storage_uri, None)
    tables = read_snapshot(latest_snapshot(root))
    assert all(len(frame) == 0 for frame in tables.values())
    assert list(tables["annotations"].columns) == ANNOTATIONS_SCHEMA.names
    assert read_json(root / "collect" / "latest.json", {})["counts"]["annotations"] == 0

    audit = run_dag(path, "audit")
    assert task_states(audit) == {"audit": "skipped", "route": "skipped", "gate": "skipped"}
    assert asset_events(quality_passed_asset(spec).name) == 0


def test_simulate_cli_labels_the_queue_with_the_skills_given(labelstudio_hook, make_spec, tmp_path,
                                                             monkeypatch, capsys) -> None:
    """`python -m labelloop simulate` on a real project: one perfect annotator and one who
    always answers "spam"; a dead server is a one-line error."""
    hook = labelstudio_hook
    write_sms(tmp_path / "raw", per_label=10)
    path = make_spec()
    spec = load_spec(path)
    project_id, _ = ensure_project(hook, spec)
    assert Ingest(spec, hook, "manual__seed").run(project_id)["imported"] == 20
    monkeypatch.setenv("LABELLOOP_PROJECTS_DIR", str(path.parent))
    always_spam = tmp_path / "always-spam.json"
    always_spam.write_text(json.dumps({"ham": {"spam": 1.0}, "spam": {"spam": 1.0}}))
    prefix = f"cli-{spec.name[-6:]}"
    args = ["--project", spec.name, "--count", "8", "--skills", "1.0", str(always_spam),
            "--per-task", "2", "--prefix", prefix]

    assert simulate.main(args) == 0
    assert "answered 16 times" in capsys.readouterr().out
    users = {u.id: u.username for u in simulate.ensure_annotators(hook, 2, prefix)}
    tasks = list(hook.iter_tasks(project_id, fields="all"))
    labeled = [task for task in tasks if task.annotations]
    assert len(labeled) == 8
    for task in labeled:
        answers = {users[a["completed_by"]]: a["result"][0]["value"]["choices"][0] for a in task.annotations}
        assert answers == {f"{prefix}-01": task.meta["label"], f"{prefix}-02": "spam"}
    assert simulate.main(args) == 0  # the next 8 of the queue, not the same ones again
    assert sum(bool(task.annotations) for task in hook.iter_tasks(project_id, fields="all")) == 16

    dead = {"conn_type": "labelstudio", "host": "http://127.0.0.1:9", "password": "x"}
    monkeypatch.setenv("AIRFLOW_CONN_LABELSTUDIO_DEFAULT", json.dumps(dead))
    capsys.readouterr()
    assert simulate.main(args) == 1
    assert "error: Label Studio at http://127.0.0.1:9" in capsys.readouterr().err
