"""From a collect snapshot's tables to the quality library's inputs: pure pandas.

The audit's item is the Label Studio task (``item_id`` = task id: always present and
unique, while external ids may be missing); the annotator is shown by e-mail. The spot
check draws only from items answered since the audits before (``answered_since``).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import pandas as pd

from labelloop.errors import InputError

if TYPE_CHECKING:
    from labelloop.tasktypes import TaskType

log = logging.getLogger(__name__)


def _answered(rows: pd.DataFrame) -> pd.DataFrame:
    """Answers that count: not skipped, with a label; the latest per (task, annotator)."""
    rows = rows[~rows["was_cancelled"].astype(bool) & rows["label"].notna()]
    return rows.sort_values(["updated_at", "annotation_id"], kind="stable").drop_duplicates(
        ["task_id", "annotator_id"], keep="last")


def annotator_key(rows: pd.DataFrame) -> pd.Series:
    """E-mail when the export had it, else the user id as text."""
    return rows["annotator_email"].astype(object).where(
        rows["annotator_email"].notna(), "user " + rows["annotator_id"].astype(str))


def of_control(rows: pd.DataFrame, control: str) -> pd.DataFrame:
    """The rows of one control (the table has a row per annotation and control)."""
    return rows[rows["control"] == control]


def audit_labels(annotations: pd.DataFrame, control: str) -> pd.DataFrame:
    """The tidy frame ``item_id, annotator_id, label`` (item = task id) of the single-choice
    ``control``, one answer per pair."""
    rows = _answered(of_control(annotations, control))
    return pd.DataFrame({
        "item_id": rows["task_id"].astype("int64").to_numpy(),
        "annotator_id": annotator_key(rows).astype(str).to_numpy(),
        "label": rows["label"].astype(str).to_numpy(),
    })


def task_data(tasks: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """Each task's data by task id (span answers are checked against its text)."""
    return {int(task_id): json.loads(data) for task_id, data in zip(tasks["task_id"], tasks["data"])}


def control_answers(rows: pd.DataFrame, task_type: TaskType, data: dict[int, dict[str, Any]], *,
                    key: str = "task_id", one_per_item: bool = False) -> pd.DataFrame:
    """The tidy answers (``item_id, annotator_id`` and the type's columns) of one control, read
    from the ``result`` column by its task type: skipped annotations and ones without an answer
    of that control left out, the latest answer per (item, annotator), or per item with
    ``one_per_item`` (reviews: the last reviewer decides). ``key`` is the column naming the
    item (``source_task_id`` for review annotations). An answer the config does not allow (a
    label it no longer offers, a span past the text) is left out with a warning: one bad
    annotation must not stop every later audit."""
    rows = of_control(rows, task_type.control.name)
    rows = rows[~rows["was_cancelled"].astype(bool) & rows[key].notna()]
    rows = rows.sort_values(["updated_at", "annotation_id"], kind="stable")
    latest: dict[Any, list[dict[str, Any]]] = {}
    for row, who in zip(rows.itertuples(), annotator_key(rows)):
        item = int(getattr(row, key))
        where = f"annotation {row.annotation_id} of task {row.task_id}"
        try:
            answer = task_type.answer_rows(json.loads(row.result), data.get(item, {}), where)
        except InputError as error:
            log.warning("left out of the audit: %s", error)
            continue
        if answer:
            latest[item if one_per_item else (item, str(who))] = [
                {"item_id": item, "annotator_id": str(who), **cells} for cells in answer]
    columns = ["item_id", "annotator_id", *task_type.columns]
    frame = pd.DataFrame([cells for answer in latest.values() for cells in answer], columns=columns)
    return frame.astype({"item_id": "int64", "annotator_id": str})


def gold_answers(tasks: pd.DataFrame, task_type: TaskType, data: dict[int, dict[str, Any]],
                 answered: pd.Series) -> pd.DataFrame | None:
    """The known answers of gold tasks someone answered (``item_id`` and the type's columns),
    read from ``gold_label`` by the task type, or None when there are none. A known answer the
    config no longer allows is left out with a warning (ingest checked it when it arrived)."""
    rows = []
    gold = tasks[tasks["gold_label"].notna() & tasks["task_id"].astype("int64").isin(answered)]
    for task_id, known in zip(gold["task_id"].astype("int64"), gold["gold_label"]):
        try:
            cells = task_type.known_answer(known, data.get(int(task_id), {}), f"gold of task {task_id}")
        except InputError as error:
            log.warning("gold left out of the audit: %s", error)
            continue
        rows += [{"item_id": int(task_id), **row} for row in cells]
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["item_id", *task_type.columns]).astype({"item_id": "int64"})


def gold_frame(tasks: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame | None:
    """Gold answers (``item_id, label``) of labelled tasks, or None when there are none.

    A gold label no annotator used is dropped with a warning: the labels come from the same
    spec, so it means a small sample, not a spelling mismatch the library should refuse.
    """
    gold = tasks.loc[tasks["gold_label"].notna(), ["task_id", "gold_label"]]
    gold = pd.DataFrame({"item_id": gold["task_id"].astype("int64").to_numpy(),
                         "label": gold["gold_label"].astype(str).to_numpy()})
    gold = gold[gold["item_id"].isin(labels["item_id"])]
    unused = ~gold["label"].isin(labels["label"].unique())
    if unused.any():
        log.warning("dropping %d gold items whose label no annotator used yet: %s",
                    int(unused.sum()), sorted(gold.loc[unused, "label"].unique()))
        gold = gold[~unused]
    return gold if len(gold) else None


def adjudicated_labels(review_annotations: pd.DataFrame, control: str) -> pd.Series | None:
    """The reviewers' answers by task id of the main project (the latest answer wins)."""
    rows = of_control(review_annotations, control)
    rows = rows[rows["source_task_id"].notna()]
    rows = _answered(rows).sort_values(["updated_at", "annotation_id"], kind="stable")
    rows = rows.drop_duplicates("source_task_id", keep="last")
    if rows.empty:
        return None
    return pd.Series(rows["label"].astype(str).to_numpy(), name="label",
                     index=pd.Index(rows["source_task_id"].astype("int64").to_numpy(), name="item_id"))


def comments(annotations: pd.DataFrame, controls: list[TaskType]) -> list[dict[str, Any]]:
    """What annotators wrote in the comment controls, verbatim: one entry per task, annotator
    and control, with the latest answer's text (skipped annotations included: a person who
    skips an unclear item is the one most likely to say why)."""
    listed = []
    for task_type in controls:
        rows = of_control(annotations, task_type.control.name)
        rows = rows.sort_values(["updated_at", "annotation_id"], kind="stable").drop_duplicates(
            ["task_id", "annotator_id"], keep="last")
        for row, who in zip(rows.itertuples(), annotator_key(rows)):
            where = f"annotation {row.annotation_id} of task {row.task_id}"
            for answer in task_type.answer_rows(json.loads(row.result), {}, where):
                listed.append({"item_id": int(row.task_id), "annotator_id": str(who),
                               "control": task_type.control.name, "text": answer["text"]})
    return sorted(listed, key=lambda entry: (entry["item_id"], entry["annotator_id"]))


#: What the audit remembers of an item: when its latest answer was made or changed, and the
#: audit run that first saw the item so answered.
Seen = dict[str, str]


def answered_at(annotations: pd.DataFrame, task_type: TaskType | None = None) -> pd.Series:
    """Per task id, when its latest counted answer was made or last changed (ISO text, UTC).

    The audit keeps this per item: an item whose time moved has answers no audit has seen.
    With ``task_type``, the answers of its control count, an empty one too where the type
    says "nothing" is an answer (spans, multiple choice); without, every labelled row.
    """
    if task_type is None:
        rows = _answered(annotations)
    else:
        rows = of_control(annotations, task_type.control.name)
        nothing_counts = bool(task_type.answer_rows([], {}, "an empty answer"))
        rows = rows[~rows["was_cancelled"].astype(bool) & ((rows["result"] != "[]") | nothing_counts)]
    latest = rows.groupby(rows["task_id"].astype("int64"))["updated_at"].max()
    return latest.map(lambda stamp: stamp.isoformat()).rename_axis("item_id")


def answered_since(answered: pd.Series, seen: dict[str, Seen], run: str) -> pd.Index:
    """Task ids whose answers ``seen`` does not hold yet: new or changed since, or first seen by
    ``run`` itself (so a re-run of an audit draws the same spot check as its first attempt)."""

    def unseen(task_id: int, at: str) -> bool:
        before = seen.get(str(task_id))
        return before is None or before["answered_at"] != at or before["run"] == run

    return pd.Index([task_id for task_id, at in answered.items() if unseen(task_id, at)],
                    dtype="int64", name="item_id")


def record_seen(answered: pd.Series, seen: dict[str, Seen], run: str) -> dict[str, Seen]:
    """``seen`` after ``run``: every item of the snapshot, with the answers ``run`` saw; items
    whose answers did not change keep the run that first saw them."""
    fresh = set(answered_since(answered, seen, run))
    return {str(task_id): {"answered_at": at, "run": run} if task_id in fresh else seen[str(task_id)]
            for task_id, at in answered.items()}
