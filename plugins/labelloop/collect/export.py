"""Flatten a Label Studio JSON export into tidy rows: pure Python, no server, no Airflow.

One row per annotation and control: the control's results verbatim, as JSON text in
``result`` (spans with their offsets, every chosen label, boxes, comments: nothing is
flattened away), and for a choices control its answer in ``label`` as well. Every control
of the config gets a row (an annotation without results for it, such as a skip, gives
``[]``), and so does any other control a result names, so nothing an annotator did is
dropped. One row per task. Column meanings are in docs/collect-audit.md; ``table`` fixes
their names and types.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from labelloop.taskdata import HASH_FIELD, ID_FIELD, SOURCE_TASK_FIELD


def answer(value: dict[str, Any]) -> str | None:
    """The label(s) of one result value; several choices are joined with ``|`` in sorted order."""
    for key in ("choices", "labels", "taxonomy"):
        chosen = value.get(key)
        if chosen:
            flat = ["/".join(map(str, c)) if isinstance(c, list) else str(c) for c in chosen]
            return "|".join(sorted(flat))
    for key in ("rating", "number", "text"):
        if value.get(key) not in (None, "", []):
            chosen = value[key]
            return str(chosen[0] if isinstance(chosen, list) and len(chosen) == 1 else chosen)
    return None


def annotator_of(annotation: dict[str, Any]) -> tuple[int | None, str | None]:
    """(id, e-mail) of who completed it; the export gives a dict when completed_by is expanded."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return who.get("id"), who.get("email")
    return who, None


def shown_prediction(task: dict[str, Any], annotation: dict[str, Any]) -> dict[str, Any] | None:
    """The prediction the annotator saw, as Label Studio recorded it on the annotation (the one
    of the project's model version; ``{}`` when there was none), else the one it started from."""
    if isinstance(annotation.get("prediction"), dict) and annotation["prediction"]:
        return annotation["prediction"]
    parent = annotation.get("parent_prediction")
    if parent is None:
        return None
    return next((p for p in task.get("predictions") or [] if isinstance(p, dict) and p.get("id") == parent), None)


def _review(annotation: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """The last review decision (Enterprise exports carry ``reviews``; Community has none)."""
    reviews = [r for r in annotation.get("reviews") or [] if isinstance(r, dict)]
    if not reviews:
        return None, None, None
    last = max(reviews, key=lambda r: str(r.get("created_at") or ""))
    accepted = last.get("accepted")
    status = None if accepted is None else ("accepted" if accepted else "rejected")
    who = last.get("created_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    reviewer = None if who is None else str(who)
    return status, reviewer, last.get("created_at")


def _item(task: dict[str, Any]) -> dict[str, Any]:
    """What every row of a task repeats: ids, known label and gold answer from the task meta."""
    data = task.get("data") or {}
    meta = task.get("meta") or {}
    known = meta.get("label")
    source = data.get(SOURCE_TASK_FIELD)
    return {
        "task_id": task["id"],
        "item_id": None if data.get(ID_FIELD) is None else str(data[ID_FIELD]),
        "item_hash": data.get(HASH_FIELD),
        "gold_label": known if meta.get("gold") and known is not None else None,
        "known_label": known,
        "source_task_id": None if source is None else int(source),
    }


def annotation_rows(tasks: Iterable[dict[str, Any]], controls: Sequence[str]) -> list[dict[str, Any]]:
    """One row per annotation and control (columns: ``table.ANNOTATIONS_SCHEMA``); ``controls``
    are the config's control names, and controls only a result names get rows too."""
    rows = []
    for task in tasks:
        item = _item(task)
        for annotation in task.get("annotations") or []:
            annotator_id, email = annotator_of(annotation)
            prediction = shown_prediction(task, annotation) or {}
            status, reviewer, reviewed_at = _review(annotation)
            base = {
                **item,
                "annotation_id": annotation.get("id"),
                "annotator_id": annotator_id,
                "annotator_email": email,
                "lead_time": annotation.get("lead_time"),
                "created_at": annotation.get("created_at"),
                "updated_at": annotation.get("updated_at"),
                "was_cancelled": bool(annotation.get("was_cancelled")),
                "ground_truth": bool(annotation.get("ground_truth")),
                "prediction_model_version": prediction.get("model_version"),
                "prediction_score": prediction.get("score"),
                "review_status": status,
                "reviewed_by": reviewer,
                "reviewed_at": reviewed_at,
            }
            results = [result for result in annotation.get("result") or [] if isinstance(result, dict)]
            named = [str(result.get("from_name")) for result in results]
            for control in dict.fromkeys([*controls, *named]):
                own = [result for result in results if result.get("from_name") == control]
                rows.append({**base, "control": control, "label": choices_answer(own),
                             "result": json.dumps(own, ensure_ascii=False, sort_keys=True)})
    return rows


def choices_answer(results: list[dict[str, Any]]) -> str | None:
    """The label column: a choices control's answer (several joined with ``|``), else None."""
    if not results or any(result.get("type") != "choices" for result in results):
        return None
    chosen = [answer(result.get("value") or {}) for result in results]
    return "|".join(sorted(label for label in chosen if label)) or None


def task_rows(tasks: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task (columns: ``table.TASKS_SCHEMA``); ``data`` is the task data as JSON text."""
    rows = []
    for task in tasks:
        annotations = task.get("annotations") or []
        cancelled = sum(bool(a.get("was_cancelled")) for a in annotations)
        rows.append({
            **_item(task),
            "n_annotations": len(annotations) - cancelled,
            "n_cancelled": cancelled,
            "n_predictions": len(task.get("predictions") or []),
            "created_at": task.get("created_at"),
            "data": json.dumps(task.get("data") or {}, ensure_ascii=False, sort_keys=True),
        })
    return rows


def choice_result(control_name: str, to_name: str, label: str) -> list[dict[str, Any]]:
    """A Choices answer as Label Studio stores it (the inverse of ``answer``)."""
    return [{"from_name": control_name, "to_name": to_name, "type": "choices",
             "value": {"choices": label.split("|")}}]


def snapshot_counts(annotations: list[dict[str, Any]], tasks: list[dict[str, Any]],
                    reviews: list[dict[str, Any]]) -> dict[str, int]:
    """What a snapshot holds, for its manifest, the run's log and the Asset event."""
    answered = [row for row in annotations if not row["was_cancelled"]]
    return {
        "tasks": len(tasks),
        "labelled_tasks": sum(row["n_annotations"] > 0 for row in tasks),
        "annotations": len({row["annotation_id"] for row in answered}),
        "cancelled": len({row["annotation_id"] for row in annotations if row["was_cancelled"]}),
        "rows": len(annotations),
        "annotators": len({row["annotator_id"] for row in answered}),
        "review_annotations": len({row["annotation_id"] for row in reviews if not row["was_cancelled"]}),
    }
