"""Retraining from the last audit that passed the gate, and the pre-label refresh after it.

Training data: the audit's consensus labels (adjudicated answers always; consensus only at
or above the spec's confidence floor), never a gold item. Evaluation data: the gold items,
the same fixed set for candidate and champion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import pandas as pd

from labelloop.hooks.labelstudio import LabelStudioHook
from labelloop.layout import Layout
from labelloop.taskdata import HASH_FIELD, PRIORITY_FIELD
from labelloop.model.prelabel import load_model, registered_model, registry_errors, task_type_of
from labelloop.spec import ProjectSpec
from labelloop.state import encode_json, parse_json, read_json, read_versioned, write_if, write_json

log = logging.getLogger(__name__)
PASSED_REMEDY = "run the audit DAG: an audit that passes the quality gate rewrites it"
PRELABELS_REMEDY = ("delete it: the next pre-label refresh re-predicts the unannotated tasks with the champion "
                    "(and the queue's generation count starts again)")
#: Seconds a refresh that stopped writing its marker still counts as running: the retrain
#: DAG's refresh and the registry watch both start one when the alias moves, and the second
#: must not predict and re-order the same tasks at once. Each step writes within a few minutes.
REFRESH_LEASE_SECONDS = 900.0


#: The metrics the approval's comparison table shows, where the kind measures them.
HEADLINE = ("accuracy", "macro_f1", "exact_match", "span_f1", "box_f1", "precision", "recall", "log_loss", "ece")


class NothingToTrain(Exception):
    """No passed audit yet, or it was already trained on: the run skips, it does not fail."""


def _texts(tasks: pd.DataFrame, field: str) -> pd.Series:
    return tasks["data"].map(lambda raw: json.loads(raw).get(field))


def training_sets(spec: ProjectSpec, consensus: pd.DataFrame, tasks: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, evaluation) tidy frames: item_id, text and the control's answer columns (label;
    start, end, label for spans), one row per label or span, an all-NA row for "nothing".

    An item trains when all its consensus rows are trusted: adjudicated, or consensus at or
    above the confidence floor (a span item is kept or dropped whole: dropping one doubtful
    span would teach the model that there is nothing there)."""
    tasks = tasks.assign(text=_texts(tasks, spec.object_field))
    gold = tasks[tasks["gold_label"].notna()]
    evaluation = gold_rows(spec, gold).reset_index(drop=True)
    trusted = (consensus["source"] == "adjudicated") | (
        (consensus["source"] == "consensus") & (consensus["confidence"] >= spec.quality.min_consensus_confidence))
    trusted = trusted.groupby(consensus["task_id"]).transform("all")
    labeled = consensus[trusted & ~consensus["task_id"].isin(gold["task_id"])]
    train = consensus_rows(spec, labeled.merge(tasks[["task_id", "text", "data"]], on="task_id"))
    return train.dropna(subset=["text"]).reset_index(drop=True), evaluation.dropna(subset=["text"])


def consensus_rows(spec: ProjectSpec, consensus: pd.DataFrame) -> pd.DataFrame:
    """The audit's consensus (one row per item: Label Studio results as JSON text, and the choices
    label) as tidy rows (item_id, text, answer columns), read by the task type."""
    task_type = task_type_of(spec)
    columns = list(task_type.columns)
    results = consensus["result"] if "result" in consensus else [None] * len(consensus)
    rows = []
    for item, text, result, label, data in zip(consensus["item_id"], consensus["text"], results,
                                               consensus["label"], consensus["data"]):
        answer = task_type.consensus_rows(result, label, json.loads(data), f"consensus of item {item!r} (result)")
        rows += [{"item_id": item, "text": text, **row} for row in answer]
    # A type may give more than its answer columns (rectangles: each box's confidence).
    extra = list(dict.fromkeys(key for row in rows for key in row if key not in {"item_id", "text", *columns}))
    return pd.DataFrame(rows, columns=["item_id", "text", *columns, *extra])


def gold_rows(spec: ProjectSpec, gold: pd.DataFrame) -> pd.DataFrame:
    """The gold tasks' known answers as tidy rows (item_id, text, answer columns), read by the
    task type from ``gold_label`` as the task meta keeps it (``TaskType.known_answer``)."""
    task_type = task_type_of(spec)
    columns = list(task_type.columns)
    rows = []
    for item, text, stored, data in zip(gold["item_id"], gold["text"], gold["gold_label"], gold["data"]):
        answer = task_type.known_answer(stored, json.loads(data), f"gold answer of item {item!r} (gold_label)")
        rows += [{"item_id": item, "text": text, **row} for row in answer] or [
            {"item_id": item, "text": text, **dict.fromkeys(columns)}]
    return pd.DataFrame(rows, columns=["item_id", "text", *columns])


def frame_digest(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values.tobytes()).hexdigest()[:16]


def load_passed_audit(spec: ProjectSpec) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    from labelloop.collect.table import read_parquet

    layout = Layout.of(spec)
    passed = read_json(layout.quality_passed, None, expect=dict, remedy=PASSED_REMEDY)
    if passed is None:
        raise NothingToTrain("no audit has passed the quality gate yet")
    consensus = read_parquet(layout.audit_run(passed["audit"]) / "consensus.parquet")
    snapshot = layout.snapshot(passed["snapshot"])
    tasks = read_parquet(snapshot / "tasks.parquet")
    return passed, consensus, tasks


def retrain(spec: ProjectSpec, tracking_uri: str, force: bool = False, dry_run: bool = False,
            actor: str = "retrain DAG") -> dict[str, Any]:
    """Train a candidate, register it, compare with the champion; returns the decision (not yet applied)."""
    import mlflow
    from mlflow import MlflowClient

    from labelloop.model.learner import promotion_metric
    from labelloop.model.registry import decide, evaluate_champion, log_candidate, record_decision

    if spec.model is None:
        raise NothingToTrain(f"the spec {spec.name} names no model")
    learner = task_type_of(spec).learner()
    promotion_metric(learner, spec.model)  # a metric the kind does not measure fails before training
    passed, consensus, tasks = load_passed_audit(spec)
    train, evaluation = training_sets(spec, consensus, tasks)
    if evaluation.empty:
        raise NothingToTrain("no gold items to evaluate on: set annotation.gold_fraction and give records labels")
    lineage = {"snapshot": passed["snapshot"], "audit": passed["audit"], "n_train": train["item_id"].nunique(),
               "n_eval": evaluation["item_id"].nunique(), "train_digest": frame_digest(train),
               "eval_digest": frame_digest(evaluation)}
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    name = spec.model.name
    experiment = f"labelloop/{spec.name}/training"
    with registry_errors(tracking_uri, f"looking for versions of {name} trained on this data"):
        seen = client.search_model_versions(f"name='{name}' and tag.train_digest='{lineage['train_digest']}'") \
            if registered_model(client, name) is not None else []
        undecided = None if dry_run else undecided_version(client, name, experiment, lineage["train_digest"])
    if seen and not force and undecided is None:
        raise NothingToTrain(f"version {seen[0].version} was already trained on this data (audit {passed['audit']}); "
                             f"trigger with force=true to train again")
    if undecided is not None:  # an attempt killed after registering: decide on its version, register no other
        log.info("version %s of %s was registered on this data by an attempt that never decided on it: "
                 "deciding on it now", undecided.version, name)
        with registry_errors(tracking_uri, f"evaluating {name} version {undecided.version}"):
            candidate = load_model(learner.flavor, f"models:/{name}/{undecided.version}")
            version, metrics = undecided, {**learner.evaluate(candidate, evaluation), "run_id": undecided.run_id}
            client.set_model_version_tag(name, version.version, "train_digest", lineage["train_digest"])
            client.set_terminated(undecided.run_id)
    else:
        pipeline = learner.fit(spec.model, train)
        if dry_run:
            return {"dry_run": True, **lineage, "metrics": _headline(learner.evaluate(pipeline, evaluation))}
        with registry_errors(tracking_uri, f"registering a candidate of {name}"):
            version, metrics = log_candidate(spec.model, pipeline, train, evaluation, lineage,
                                             experiment=experiment, learner=learner)
            client.set_model_version_tag(name, version.version, "train_digest", lineage["train_digest"])
    with registry_errors(tracking_uri, f"evaluating the champion of {name}"):
        champion = evaluate_champion(client, name, evaluation, learner)  # raises rather than read a failure as "none"
    decision = decide(spec.model, metrics, champion[1] if champion else None, learner)
    status = "pending_approval" if decision.promote and spec.model.require_approval else (
        "approved" if decision.promote else "rejected")
    with registry_errors(tracking_uri, f"tagging {name} version {version.version} with the decision"):
        record_decision(client, name, version.version, decision, status, passed["snapshot"])
    return {
        **lineage, "version": version.version, "run_id": metrics["run_id"], "promote": decision.promote,
        "reason": decision.reason, "candidate": _headline(metrics),
        "champion": _headline(champion[1]) if champion else None,
        "champion_version": champion[0].version if champion else None, "actor": actor,
    }


def undecided_version(client: Any, name: str, experiment: str, digest: str) -> Any | None:
    """The version an earlier attempt on this data registered but was killed before deciding on (its
    training run carries the data's digest, the version no ``validation_status``), else None.

    Runs of attempts killed before they registered anything are marked KILLED on the way (they would
    stay RUNNING): Airflow starts a retry once it holds the earlier attempt dead."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    undecided = None
    for run in client.search_runs([found.experiment_id], filter_string=f"tags.`lineage.train_digest` = '{digest}'"):
        versions = client.search_model_versions(f"name='{name}' and run_id='{run.info.run_id}'")
        if versions and "validation_status" not in versions[0].tags:
            undecided = versions[0]
        elif not versions and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
    return undecided


def _headline(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: round(float(metrics[key]), 4) for key in HEADLINE if key in metrics}


def comparison_markdown(outcome: dict[str, Any], tracking_uri: str) -> str:
    """The body a person reads before approving: both models' metrics side by side."""
    champion = outcome.get("champion") or {}
    rows = "\n".join(f"| {key} | {value} | {champion.get(key, '—')} |" for key, value in outcome["candidate"].items())
    return (f"Candidate **version {outcome['version']}** vs champion **{outcome.get('champion_version') or 'none'}** "
            f"on {outcome['n_eval']} gold items ({outcome['reason']}).\n\n"
            f"| metric | candidate | champion |\n|---|---|---|\n{rows}\n\n"
            f"MLflow run: {run_page_url(tracking_uri, outcome['run_id'])}")


def run_page_url(tracking_uri: str, run_id: str) -> str:
    """The run's page in the MLflow UI (its direct-run route, which needs no experiment id)."""
    return f"{tracking_uri.rstrip('/')}/#/runs/{run_id}"


def promote(spec: ProjectSpec, tracking_uri: str, outcome: dict[str, Any], approved_by: str) -> bool:
    """Move ``champion`` to the candidate when the decision says so; True when it moved."""
    from mlflow import MlflowClient

    from labelloop.model.registry import move_champion

    if not outcome.get("promote"):
        return False
    client = MlflowClient(tracking_uri=tracking_uri)
    with registry_errors(tracking_uri, f"promoting {spec.model.name} version {outcome['version']}"):
        client.set_model_version_tag(spec.model.name, outcome["version"], "validation_status", "approved")
        move_champion(client, spec.model.name, outcome["version"], outcome["reason"], approved_by)
    return True


def reject(spec: ProjectSpec, tracking_uri: str, outcome: dict[str, Any], by: str) -> None:
    from mlflow import MlflowClient

    with registry_errors(tracking_uri, f"tagging {spec.model.name} version {outcome['version']} rejected"):
        MlflowClient(tracking_uri=tracking_uri).set_model_version_tag(
            spec.model.name, outcome["version"], "validation_status", f"rejected by {by}")


def rollback(spec: ProjectSpec, tracking_uri: str, version: str, actor: str) -> None:
    """Point ``champion`` back at an earlier version (by hand: the refresh follows on its own)."""
    from mlflow import MlflowClient

    from labelloop.model.registry import move_champion

    client = MlflowClient(tracking_uri=tracking_uri)
    with registry_errors(tracking_uri, f"rolling {spec.model.name} back to version {version}"):
        client.get_model_version(spec.model.name, version)  # fails clearly if it does not exist
        move_champion(client, spec.model.name, version, f"rollback to version {version}", actor)


def _prelabels_marker(spec: ProjectSpec) -> Any:
    return Layout.of(spec).prelabels


def queue_generation(spec: ProjectSpec) -> int:
    """How many champions have ordered the labeling queue (0 before the first refresh)."""
    return int(_read_marker(spec).get("generation", 0))


def _read_marker(spec: ProjectSpec) -> dict[str, Any]:
    return read_json(_prelabels_marker(spec), {}, expect=dict, remedy=PRELABELS_REMEDY)


def _missing_marker(spec: ProjectSpec) -> Any:
    return Layout.of(spec).prelabels_missing


def leave_for_refresh(spec: ProjectSpec, run: str, reason: str) -> None:
    """Ingest imported tasks without pre-labels (the registry did not answer): the next refresh
    (the registry watch's, within minutes) predicts them although the champion did not move."""
    write_json(_missing_marker(spec), {"run": run, "reason": reason})


def refresh_prelabels(spec: ProjectSpec, hook: LabelStudioHook, tracking_uri: str, batch_size: int = 500,
                      owner: str = "") -> dict[str, Any]:
    """Re-predict the project's unannotated tasks with the champion and put its most uncertain
    first in the labeling queue, once per champion version.

    Resumable: the marker records the last task id whose prediction was imported, so a re-run
    after a crash imports no prediction twice; re-ordering skips priorities already written.
    One at a time: the marker names its ``owner`` (a task, the same in each of its tries) and
    when it last wrote; another owner leaves a running refresh alone (``REFRESH_LEASE_SECONDS``).
    """
    from labelloop.model.prelabel import load_champion

    marker_path, missing_path = _prelabels_marker(spec), _missing_marker(spec)
    champion = load_champion(spec, tracking_uri)  # RegistryError when the registry cannot say
    missing = read_json(missing_path, None, expect=dict)  # tasks ingest imported without pre-labels
    if champion is None:
        missing_path.unlink(missing_ok=True)  # the first champion's refresh predicts every task
        return {"refreshed": 0, "reason": "no champion"}
    model_version, predict = champion
    marker = _claim_refresh(marker_path, model_version, bool(missing), owner)
    if marker is None:
        return {"refreshed": 0, "model_version": model_version, "reason": "another refresh of this version is running"}
    if marker.get("done") or "predicted_through" not in marker:  # (no such field: written by an older labelloop)
        return {"refreshed": 0, "model_version": model_version, "reason": "already refreshed for this version"}
    if missing:
        log.info("ingest run %s imported tasks without pre-labels: predicting them", missing.get("run"))
    project = hook.find_project(spec.title)
    tasks = sorted(hook.iter_unlabeled_tasks(project.id), key=lambda task: task.id)
    predictions: list[dict[str, Any]] = []
    imported = 0
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start:start + batch_size]
        predicted = predict([task.data for task in chunk])
        predictions += predicted
        new = [{"task": task.id, **prediction} for task, prediction in zip(chunk, predicted)
               if task.id > marker["predicted_through"] and not _predicted_by(task, model_version)]
        if new:
            hook.import_predictions(project.id, new)
            imported += len(new)
            marker.update(predicted_through=chunk[-1].id, heartbeat=time.time())
            write_json(marker_path, marker)
    if tasks:  # Label Studio refuses a model_version no prediction carries
        hook.set_model_version(project.id, model_version)
    write_json(marker_path, {**marker, "heartbeat": time.time()})  # the re-ordering is next
    reordered = _reorder_queue_head(spec, hook, tasks, predictions, marker["generation"])
    write_json(marker_path, {**marker, "done": True, "tasks": len(tasks)})
    if missing and read_json(missing_path, None, expect=dict) == missing:  # (not if an ingest wrote it since)
        missing_path.unlink(missing_ok=True)
    return {"refreshed": imported, "reordered": reordered, "generation": marker["generation"],
            "model_version": model_version}


def _claim_refresh(path: Any, model_version: str, missing: bool, owner: str) -> dict[str, Any] | None:
    """The marker this refresh works from, written with ``owner`` as one compare-and-swap; None
    when another owner's refresh of this version wrote it within the lease."""
    for _ in range(10):
        raw, tag = read_versioned(path)
        marker = parse_json(path, raw, {}, expect=dict, remedy=PRELABELS_REMEDY)
        if marker.get("model_version") != model_version:
            marker = {"model_version": model_version, "generation": int(marker.get("generation", 0)) + 1,
                      "predicted_through": 0, "done": False}
        elif missing and marker.get("done"):
            marker = {**marker, "predicted_through": marker.get("predicted_through", 0), "done": False}
        elif marker.get("done") or "predicted_through" not in marker:
            return marker
        elif (marker.get("owner") not in (None, owner)
              and time.time() - float(marker.get("heartbeat", 0)) < REFRESH_LEASE_SECONDS):
            log.info("pre-labels of %s are being refreshed by %s: leaving it to that task", model_version,
                     marker["owner"])
            return None
        marker = {**marker, "owner": owner, "heartbeat": time.time()}
        if write_if(path, encode_json(path, marker), tag):
            return marker
    raise RuntimeError(f"the pre-label marker {path} changed under each of 10 attempts to claim it")


def _predicted_by(task: Any, model_version: str) -> bool:
    """Whether the task already carries a prediction of this model (ingest pre-labeled it)."""
    return model_version in (p.get("model_version") if isinstance(p, dict) else getattr(p, "model_version", None)
                             for p in task.predictions or [])


def _reorder_queue_head(spec: ProjectSpec, hook: LabelStudioHook, tasks: list[Any],
                        predictions: list[dict[str, Any]], generation: int) -> int:
    """Write the new champion's priorities for the head of the queue; returns how many changed."""
    from labelloop.ordering import priorities, reorder

    stratum = spec.annotation.stratify_by
    fresh = priorities([task.data.get(HASH_FIELD, f"task-{task.id}") for task in tasks], predictions,
                       random_share=spec.annotation.random_share, n_labels=len(spec.labels),
                       strata=[task.data.get(stratum) for task in tasks] if stratum else None,
                       generation=generation)
    updates = reorder({task.id: task.data.get(PRIORITY_FIELD) for task in tasks},
                      {task.id: value for task, value in zip(tasks, fresh)}, spec.annotation.reorder_on_promotion)
    data = {task.id: task.data for task in tasks}
    hook.update_task_data({task_id: {**data[task_id], PRIORITY_FIELD: value} for task_id, value in updates.items()})
    return len(updates)
