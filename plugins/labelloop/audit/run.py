"""Audit glue: the latest collect snapshot through the audited control's task type
(``TaskType.loop_audit``: ``quality.run_audit`` for a single choice), out to storage and MLflow.

Layout under ``<storage_uri>/audit/``::

    <run>/report.html, metrics.json, consensus.parquet, gate.json
    latest.json      the last audit: {"audit": "<run>", "snapshot": ..., "gate": {...}}
    history.json     compact metrics of earlier audits (the report's "agreement over time")
    passed.json      the last audit that passed the gate: what retraining reads
    seen.json.gz     per task id, the answers the spot checks were drawn from (written by
                     routing): the next audit spot-checks only items answered since
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labelloop import settings
from labelloop.audit.gate import evaluate_gate
from labelloop.audit.prepare import (
    answered_at,
    answered_since,
    comments,
    control_answers,
    gold_answers,
    record_seen,
    task_data,
)
from labelloop.audit.routing import review_settings, review_title, route
from labelloop.collect.export import choices_answer
from labelloop.collect.table import latest_snapshot, read_parquet, read_snapshot
from labelloop.hooks.labelstudio import LabelStudioHook
from labelloop.layout import Layout, run_key
from labelloop.quality.audit import Method
from labelloop.quality.report import RunHeading, comment_section, metrics_json, page
from labelloop.spec import ProjectSpec
from labelloop.tasktypes import TaskType
from labelloop.tasktypes.comments import text_agreement
from labelloop.tasktypes.loop import LoopAudit
from labelloop.state import read_json, write_atomically, write_json

log = logging.getLogger(__name__)
METHODS: dict[str, Method] = {"majority": "majority", "dawid_skene": "dawid-skene"}
HISTORY_KEPT = 100
SEEN = "seen.json.gz"
SEEN_REMEDY = "delete it: the next audit then draws its spot check from every item again"
HISTORY_REMEDY = ("restore it from a backup, or delete it: the report's agreement-over-time chart then "
                  "starts again from the next audit")
RERUN = "clear the audit task of that run to write its outputs again"
#: One row per answered task. ``result``: the final answer in Label Studio's result format
#: (JSON text: spans keep their offsets); ``label``: a choices answer (several joined with
#: ``|``, as in the annotations table), else null.
CONSENSUS_SCHEMA = pa.schema([
    ("task_id", pa.int64()), ("item_id", pa.string()), ("item_hash", pa.string()), ("label", pa.string()),
    ("result", pa.string()), ("confidence", pa.float64()), ("source", pa.string()),
])  # fmt: skip


class NothingToAudit(Exception):
    """No snapshot yet, or too few answers for agreement: the run skips, it does not fail."""


def seed_of(run: str) -> int:
    """Each run draws its own spot check, and a re-run of a run draws the same one."""
    return int(hashlib.sha256(run.encode()).hexdigest()[:8], 16)


def consensus_table(task_type: TaskType, result: LoopAudit, tasks: pd.DataFrame) -> pa.Table:
    """Each item's final answer as Label Studio results, with the task's external id and
    content hash beside the task id."""
    rows = dict(tuple(result.consensus.groupby("item_id", sort=False)))
    empty = result.consensus.iloc[:0]
    answers = [task_type.results(rows.get(item, empty)) for item in result.items["item_id"]]
    frame = result.items.assign(result=[json.dumps(answer, ensure_ascii=False) for answer in answers],
                                label=[choices_answer(answer) for answer in answers])
    ids = tasks[["task_id", "item_id", "item_hash"]].astype({"task_id": "int64"})
    frame = frame.rename(columns={"item_id": "task_id"}).astype({"task_id": "int64"}).merge(ids, on="task_id",
                                                                                            how="left")
    return pa.Table.from_pandas(frame[CONSENSUS_SCHEMA.names], schema=CONSENSUS_SCHEMA, preserve_index=False)


def _history(layout: Layout, run: str, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Record this audit in history.json; return the audits before it (oldest first)."""
    path = layout.audit / "history.json"
    earlier = [entry for entry in read_json(path, [], expect=list, remedy=HISTORY_REMEDY) if entry["run_id"] != run]
    gold = metrics["gold"]
    entry = {"run_id": run, "agreement": metrics["agreement"],
             "gold": None if gold is None else {key: value for key, value in gold.items()
                                                if isinstance(value, int | float)}}
    write_json(path, [*earlier, entry][-HISTORY_KEPT:])
    return earlier


def audit_latest(spec: ProjectSpec, run_id: str, review_url: str | None = None) -> dict[str, Any]:
    """Audit the latest snapshot; write report, metrics, consensus and gate; log them to MLflow.
    ``review_url`` (``review_project_url``) is the review project the report links to."""
    layout, run = Layout.of(spec), run_key(run_id)
    folder = latest_snapshot(layout.root)
    if folder is None:
        raise NothingToAudit(f"no collect snapshot under {layout.collect} yet; run the collect DAG first")
    tables = read_snapshot(folder)
    task_type = spec.task_type
    data = task_data(tables["tasks"])
    answers = control_answers(tables["annotations"], task_type, data)
    annotators = answers["annotator_id"].nunique()
    if annotators < 2:
        raise NothingToAudit(f"snapshot {folder.name} has {answers.groupby(['item_id', 'annotator_id']).ngroups} "
                             f"answers of {task_type.control.describe()} from {annotators} annotators; agreement "
                             f"needs two or more")
    fresh = answered_since(answered_at(tables["annotations"], task_type), read_seen(layout), run)

    def audit_control(control_type: TaskType, answers: pd.DataFrame) -> LoopAudit:
        """(Gold and known answers are the model's control's: ``source.label_field`` holds one.)"""
        return control_type.loop_audit(
            answers, gold_answers(tables["tasks"], control_type, data, answers["item_id"])
            if control_type is task_type else None,
            control_answers(tables["review_annotations"], control_type, data, key="source_task_id",
                            one_per_item=True),
            method=METHODS[spec.quality.consensus], seed=seed_of(run),
            spot_check_fraction=spec.quality.spot_check_fraction, spot_check_among=fresh,
            low_confidence_threshold=spec.quality.min_consensus_confidence, run_id=run, data=data,
        )

    result = audit_control(task_type, answers)
    control = task_type.control
    metrics = {**result.metrics, "control": {"name": control.name, "kind": control.kind, "tag": control.tag},
               "comments": comments(tables["annotations"], comment_types(spec))}
    # Every other audited control on its own; one that fewer than two annotators answered is listed.
    others: dict[str, tuple[TaskType, LoopAudit]] = {}
    for other in spec.audited_types[1:]:
        name, other_answers = other.control.name, control_answers(tables["annotations"], other, data)
        own = {"kind": other.kind, "tag": other.control.tag}
        if other_answers["annotator_id"].nunique() > 1:
            others[name] = (other, audit_control(other, other_answers))
            metrics.setdefault("controls", {})[name] = {**own, **others[name][1].metrics}
        else:
            metrics.setdefault("controls", {})[name] = {**own, "not_audited": "fewer than two annotators answered it"}
    if spec.quality.comment_agreement:
        metrics["comment_agreement"] = text_agreement(metrics["comments"])
    gate = evaluate_gate(metrics, spec.quality, task_type,
                         [(audit.metrics, other) for other, audit in others.values()]).to_dict(spec.name)
    history = _history(layout, run, metrics)
    out = layout.audit_run(run)
    with tempfile.TemporaryDirectory(prefix="labelloop-audit-") as tmp:
        local = Path(tmp)
        (local / "metrics.json").write_text(metrics_json(metrics), encoding="utf-8")
        heading = RunHeading(spec.title, datetime.now(UTC), run, gate, review_url)
        report = report_html(task_type, metrics, history, heading, spec.audited_types[1:])
        (local / "report.html").write_text(report, encoding="utf-8")
        pq.write_table(consensus_table(task_type, result, tables["tasks"]), local / "consensus.parquet")
        for name, (other, audit) in others.items():  # the model's control keeps consensus.parquet
            pq.write_table(consensus_table(other, audit, tables["tasks"]), local / f"consensus.{name}.parquet")
        (local / "gate.json").write_text(json.dumps(gate, indent=1), encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        # gate.json last: a folder holding it is complete (a worker killed mid-write leaves none).
        for file in sorted(local.iterdir(), key=lambda file: (file.name == "gate.json", file.name)):
            write_atomically(out / file.name, file.read_bytes())
        mlflow_run = log_to_mlflow(spec, run, metrics, gate, local, task_type)
    outcome = {"audit": run, "uri": str(out), "snapshot": folder.name, "gate": gate, "mlflow_run_id": mlflow_run,
               "counts": metrics["counts"],
               "review": {"answered_since_last_audit": len(fresh),
                          "spot_check": len(metrics["review"]["spot_check"]),
                          "low_confidence": len(metrics["review"]["low_confidence"]),
                          "disagreements": metrics["review"]["n_disagreements"]}}
    write_json(layout.audit / "latest.json", {k: v for k, v in outcome.items() if k != "uri"})
    return outcome


def report_html(task_type: TaskType, metrics: dict[str, Any], history: list[dict[str, Any]],
                heading: RunHeading | None = None, others: Sequence[TaskType] = ()) -> str:
    """report.html: ``heading`` (project, time, gate, review link), a section per audited control
    by its task type (the model's control first, with the history; then ``others``, from
    ``metrics["controls"]``), then the comments."""
    import html

    title = f"Label audit {html.escape(str(metrics.get('run_id') or ''))}".strip()
    own = {key: value for key, value in metrics.items() if key not in ("comments", "control", "controls")}
    sections = [f"<h2>{html.escape(task_type.control.describe())}</h2>", *task_type.loop_report_sections(own, history)]
    for other in others:
        other_metrics = metrics["controls"][other.control.name]
        sections.append(f"<h2>{html.escape(other.control.describe())}</h2>")
        sections += ([f"<p>Not audited: {html.escape(other_metrics['not_audited'])}.</p>"]
                     if "not_audited" in other_metrics else other.loop_report_sections(other_metrics, []))
    return page(title, "".join([*sections, comment_section(metrics["comments"])]), heading)


def review_project_url(spec: ProjectSpec, hook: LabelStudioHook) -> str:
    """The review project's page, for the report's link: created here when no audit has routed
    to it yet (routing, right after the audit, would create it the same way)."""
    project, _ = hook.upsert_project(review_title(spec), **review_settings(spec))
    return hook.project_url(project.id)


def comment_types(spec: ProjectSpec) -> list[Any]:
    """The spec's comment controls as task types (their text is listed in the report)."""
    from labelloop.tasktypes import read_controls

    return [t for t in read_controls(spec.labeling_config_xml, str(spec.labeling_config)) if t.kind == "comment"]


def read_seen(layout: Layout) -> dict[str, dict[str, str]]:
    """What earlier audits' spot checks were drawn from (see ``audit.prepare.record_seen``)."""
    return read_json(layout.audit / SEEN, {}, expect=dict, remedy=SEEN_REMEDY)


def route_audit(spec: ProjectSpec, hook: LabelStudioHook, outcome: dict[str, Any]) -> dict[str, Any]:
    """Route the items an audit picked (``outcome`` from ``audit_latest``) to the review project.

    Then record the answers this audit's spot check was drawn from, so the next audit draws
    only from items answered since; a failed routing records nothing and its items stay due.
    """
    layout, run = Layout.of(spec), outcome["audit"]
    tables = read_snapshot(layout.snapshot(outcome["snapshot"]))
    out = layout.audit_run(run)
    consensus = read_parquet(out / "consensus.parquet")[["task_id", "label", "result", "confidence", "source"]]
    consensus = consensus.rename(columns={"task_id": "item_id"}).astype({"item_id": "int64"})
    task_type = spec.task_type
    answers = control_answers(tables["annotations"], task_type, task_data(tables["tasks"]))
    routed = route(hook, spec, run, answers, consensus,
                   read_json(out / "metrics.json", {}, expect=dict, remedy=RERUN), tables["tasks"])
    seen = record_seen(answered_at(tables["annotations"], task_type), read_seen(layout), run)
    write_json(layout.audit / SEEN, seen)
    return routed


def mark_passed(spec: ProjectSpec, outcome: dict[str, Any]) -> dict[str, Any]:
    """Point ``audit/passed.json`` at this audit; retraining reads its consensus from there."""
    pointer = {"audit": outcome["audit"], "consensus": f"{outcome['audit']}/consensus.parquet",
               "snapshot": outcome["snapshot"], "summary": outcome["gate"]["summary"]}
    write_json(Layout.of(spec).quality_passed, pointer)
    return pointer


def _scalars(metrics: dict[str, Any], gate: dict[str, Any], task_type: TaskType) -> dict[str, float]:
    """The numbers worth a chart in MLflow (the task type's, then the review's; undefined ones
    are left out)."""
    review = metrics["review"]
    values = {
        **task_type.scalars(metrics),
        "spot_check_items": len(review["spot_check"]),
        "low_confidence_items": len(review["low_confidence"]),
        "disagreement_items": review["n_disagreements"],
        "gate_passed": float(gate["passed"]),
    }
    return {name: float(value) for name, value in values.items() if value is not None}


def log_to_mlflow(spec: ProjectSpec, run: str, metrics: dict[str, Any], gate: dict[str, Any],
                  folder: Path, task_type: TaskType) -> str | None:
    """One MLflow run per audit run (a re-run updates it). Best effort: without an MLflow
    connection, or with MLflow down, the audit is complete without it (its files are in storage)."""
    from labelloop.model.prelabel import RegistryError, registry_errors, tracking_uri

    uri = tracking_uri()
    if uri is None:
        log.info("no Airflow connection %r: the audit is not logged to MLflow", settings.MLFLOW_CONN_ID)
        return None
    try:
        with registry_errors(uri, f"logging audit {run}"):
            return _log_run(uri, spec, run, metrics, gate, folder, task_type)
    except RegistryError as error:
        log.warning("audit %s is complete but not logged to MLflow (a re-run of this run logs it): %s", run, error)
        return None


def _log_run(uri: str, spec: ProjectSpec, run: str, metrics: dict[str, Any], gate: dict[str, Any],
             folder: Path, task_type: TaskType) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=uri)
    name = f"labelloop/{spec.name}/quality"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    found = client.search_runs([experiment_id], filter_string=f"tags.labelloop_run = '{run}'", max_results=1)
    params = [Param(key, str(value)) for key, value in sorted(spec.quality.model_dump().items())]
    if found:  # params are immutable: logged once, by the first attempt that got that far
        run_id, params = found[0].info.run_id, [] if found[0].data.params else params
    else:
        run_id = client.create_run(experiment_id, run_name=run, tags={"labelloop_run": run,
                                                                        "labelloop_project": spec.name}).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in _scalars(metrics, gate, task_type).items()],
                     params=params)
    client.set_tag(run_id, "gate", "passed" if gate["passed"] else "failed")
    client.log_artifacts(run_id, str(folder))
    client.set_terminated(run_id)
    log.info("audit logged to MLflow %s, experiment %r, run %s", uri, name, run_id)
    return run_id
