"""Review routing: doubtful items go to a review project where a senior reviewer decides.

Label Studio Community has no review workflow, so labelloop keeps a second project,
"<title> — review", with the same labeling config. Each routed item is a copy of its task
with every annotator's answer of the audited control as a prediction (model_version = the
annotator's e-mail; the task type writes it: a choice, a set of choices, spans), so the
reviewer accepts one or corrects it in one click. The reviewer's annotation is collected
with the next snapshot and becomes the item's adjudicated answer. An item is
routed once: review tasks carry the item's content hash, and hashes already there are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pandas as pd

from labelloop.hooks.labelstudio import LabelStudioHook
from labelloop.taskdata import BATCH_FIELD, HASH_FIELD, SOURCE_TASK_FIELD
from labelloop.quality import disagreements
from labelloop.spec import ProjectSpec

REASONS = ("spot_check", "low_confidence", "disagreement")
IMPORT_CHUNK = 1000


def review_title(spec: ProjectSpec) -> str:
    return f"{spec.title} — review"


def review_settings(spec: ProjectSpec) -> dict[str, Any]:
    """One reviewer per item, answers shown as predictions, the annotators' guidelines."""
    note = ("<p><b>Review.</b> Each prediction is one annotator's answer (model version = "
            "their e-mail). Accept the right one or choose the correct label.</p>")
    return {
        "description": f"Items labelloop routed for review from '{spec.title}'.",
        "label_config": spec.labeling_config_xml,
        "expert_instruction": note + spec.guidelines_html,
        "show_instruction": True,
        "maximum_annotations": 1,
        "show_collab_predictions": True,
    }


def select_for_review(labels: pd.DataFrame, consensus: pd.DataFrame, spot_check: Iterable[Any],
                      low_confidence: Iterable[Any], disagreeing: Iterable[Any] | None = None) -> dict[Any, list[str]]:
    """Item id -> why it needs a look, for the spot-check sample, doubtful consensus and disagreements.

    ``disagreeing``: the items whose annotators disagree, by the task type's rule
    (``TaskType.disagreements``); None reads them from single-choice ``labels``.
    Items whose answer is already settled (gold, or adjudicated earlier) are left out.
    """
    settled = set(consensus.loc[consensus["source"] != "consensus", "item_id"])
    disagreeing = disagreements(labels) if disagreeing is None else disagreeing
    picked: dict[Any, list[str]] = {}
    for reason, items in zip(REASONS, (spot_check, low_confidence, disagreeing)):
        for item in items:
            if item not in settled:
                picked.setdefault(item, []).append(reason)
    return dict(sorted(picked.items()))


def review_key(task: pd.Series) -> str:
    """The item's content hash; tasks made outside labelloop have none and use their id."""
    return str(task["item_hash"]) if pd.notna(task["item_hash"]) else f"task-{task['task_id']}"


def review_tasks(spec: ProjectSpec, selected: dict[int, list[str]], labels: pd.DataFrame,
                 consensus: pd.DataFrame, tasks: pd.DataFrame, run: str) -> list[dict[str, Any]]:
    """Label Studio tasks for the review project (pure: the caller imports them). ``labels``:
    the tidy answers of the audited control; ``consensus``: item_id, label, confidence (and
    ``result``, the final answer as Label Studio results, when the audit wrote it)."""
    task_type = spec.task_type
    by_task = tasks.set_index(tasks["task_id"].astype("int64"))
    verdict = consensus.set_index("item_id")
    answers = labels[labels["item_id"].isin(list(selected))].groupby("item_id")
    out = []
    for task_id, reasons in selected.items():
        task = by_task.loc[task_id]
        data = {k: v for k, v in json.loads(task["data"]).items() if k != BATCH_FIELD}
        data.update({HASH_FIELD: review_key(task), SOURCE_TASK_FIELD: int(task_id)})
        given = answers.get_group(task_id) if task_id in answers.groups else labels.iloc[:0]
        label = verdict.at[task_id, "label"]
        out.append({
            "data": data,
            "meta": {"reasons": reasons, "routed_by": run,
                     "consensus": str(label) if pd.notna(label) else json.loads(verdict.at[task_id, "result"]),
                     "confidence": float(verdict.at[task_id, "confidence"])},
            "predictions": task_type.review_predictions(given, data),
        })
    return out


def route(hook: LabelStudioHook, spec: ProjectSpec, run: str, labels: pd.DataFrame, consensus: pd.DataFrame,
          metrics: dict[str, Any], tasks: pd.DataFrame) -> dict[str, Any]:
    """Put newly selected items into the review project (created on first use); returns counts."""
    selected = select_for_review(labels, consensus, metrics["review"]["spot_check"],
                                 metrics["review"]["low_confidence"], spec.task_type.disagreements(labels))
    from labelloop.ingest.images import connect_image_storage

    project, _ = hook.upsert_project(review_title(spec), **review_settings(spec))
    connect_image_storage(hook, spec, project.id)  # reviewers see the images (s3:// URIs resolve there too)
    routed = {(task.data or {}).get(HASH_FIELD) for task in hook.iter_tasks(project.id)}
    new = [task for task in review_tasks(spec, selected, labels, consensus, tasks, run)
           if task["data"][HASH_FIELD] not in routed]
    for start in range(0, len(new), IMPORT_CHUNK):
        batch_id = f"review-{run}-{start // IMPORT_CHUNK}"
        # The batch id in the data is how a retry finds the tasks of a POST whose answer was lost.
        batch = [{**task, "data": {**task["data"], BATCH_FIELD: batch_id}} for task in new[start:start + IMPORT_CHUNK]]
        hook.import_batch(project.id, batch, batch_id, key_field=HASH_FIELD, batch_field=BATCH_FIELD)
    reasons = pd.Series([r for rs in selected.values() for r in rs], dtype=object).value_counts()
    return {"review_project_id": project.id, "selected": len(selected), "routed": len(new),
            "already_routed": len(selected) - len(new),
            "reasons": {reason: int(reasons.get(reason, 0)) for reason in REASONS}}
