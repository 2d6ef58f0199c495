"""Incremental collect, the pure part: watermarks, merging changed tasks into a snapshot, finding
the id ranges whose counts disagree with Label Studio, and the row-for-row reconciliation diff.

No server and no Airflow: frames in, frames out. ``snapshot`` calls Label Studio and storage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd

#: The watermark is when the previous export started (server clock); changes are fetched from this
#: long before it, so a task saved in a transaction that committed after that export read the
#: table still gets picked up. Tasks saved in that minute are fetched twice, which is harmless.
SAFETY_OVERLAP = timedelta(seconds=60)
#: Label Studio's Data Manager reads Datetime filter values in this format (UTC).
FILTER_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
#: Upper bound of the last id range: tasks created after the newest one known fall in it.
MAX_TASK_ID = 2**62
#: A range with at most this many known tasks is re-fetched whole instead of split further.
LEAF_TASKS = 256


@dataclass(frozen=True)
class Totals:
    """What Label Studio counts for a set of tasks (its task list answer's totals)."""

    tasks: int
    annotations: int  # not cancelled
    predictions: int


def changed_since(watermark: str) -> str:
    """The Data Manager filter value for tasks updated after the watermark minus the overlap."""
    return (_instant(watermark) - SAFETY_OVERLAP).astimezone(timezone.utc).strftime(FILTER_TIME_FORMAT)


def _instant(value: str) -> datetime:
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by task id, keeping each task's rows in export order: full and merged tables compare
    row for row, and every snapshot reads the same whichever way it was made."""
    return frame.sort_values("task_id", kind="stable").reset_index(drop=True)


def merge(previous: pd.DataFrame, fresh: pd.DataFrame, replaced: Iterable[int]) -> pd.DataFrame:
    """The previous rows minus every row of a ``replaced`` task, plus the fresh rows.

    ``replaced`` holds every task fetched again (and every task of a re-checked id range), so an
    annotation deleted from a fetched task, or a task gone from a re-checked range, disappears.
    """
    kept = previous[~previous["task_id"].isin(set(replaced))]
    parts = [part for part in (kept, fresh) if len(part)]
    merged = pd.concat(parts, ignore_index=True) if parts else previous.iloc[0:0]
    return ordered(merged.astype(previous.dtypes.to_dict()))


def local_totals(tasks: pd.DataFrame, low: int, high: int) -> Totals:
    """Our tasks table's counts for ids ``low..high`` (inclusive), as Label Studio would count them."""
    inside = tasks[(tasks["task_id"] >= low) & (tasks["task_id"] <= high)]
    return Totals(len(inside), int(inside["n_annotations"].sum()), int(inside["n_predictions"].sum()))


def stale_ranges(known_ids: Sequence[int], ours: Callable[[int, int], Totals],
                 theirs: Callable[[int, int], Totals], leaf: int | None = None) -> list[tuple[int, int]]:
    """Id ranges (inclusive) where our counts and Label Studio's differ, by bisection over the known
    ids: changes Label Studio does not stamp on the task (a deleted task, predictions imported for
    existing tasks) cost O(changes x log(tasks)) count queries, never a listing of the project."""
    ids, leaf = sorted(known_ids), LEAF_TASKS if leaf is None else leaf

    def search(low: int, high: int, inside: list[int]) -> list[tuple[int, int]]:
        if ours(low, high) == theirs(low, high):
            return []
        if len(inside) <= leaf:
            return [(low, high)]
        middle = inside[len(inside) // 2]
        left = [i for i in inside if i < middle]
        return search(low, middle - 1, left) + search(middle, high, inside[len(left):])

    return search(0, MAX_TASK_ID, ids)


def in_ranges(ids: Iterable[int], ranges: Sequence[tuple[int, int]]) -> set[int]:
    return {i for i in ids if any(low <= i <= high for low, high in ranges)}


def unchanged_since(tasks: set[int], updated: dict[int, str | None], moment: str) -> list[int]:
    """The tasks Label Studio last stamped before ``moment`` (or not at all, or not any more: a
    deleted task), sorted. A reconciliation compares only those: a task changed while its two
    exports ran differs between them for that reason alone."""
    cutoff = _instant(moment)
    return sorted(task for task in tasks if not updated.get(task) or _instant(updated[task]) < cutoff)


def differing_tasks(expected: pd.DataFrame, got: pd.DataFrame) -> list[int]:
    """Task ids whose rows differ between two tables of the same schema (compared exactly, in order)."""
    def by_task(frame: pd.DataFrame) -> dict[int, list[tuple[Any, ...]]]:
        rows: dict[int, list[tuple[Any, ...]]] = {}
        frame = ordered(frame)
        for row in frame.astype(object).where(frame.notna(), None).itertuples(index=False):
            rows.setdefault(int(row.task_id), []).append(tuple(row))
        return rows

    left, right = by_task(expected), by_task(got)
    return sorted(task for task in left.keys() | right.keys() if left.get(task) != right.get(task))
