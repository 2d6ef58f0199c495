"""Labeling order (active learning): which tasks people see first. Pure functions, no I/O.

Every task carries ``labelloop_priority`` in its data and the project's queue view sorts by it,
highest first. With a champion model, a task's priority is its uncertainty, 1 - the top
probability. A random share of tasks (and every task while there is no model) is ordered at
random instead, so the labeled sample stays unbiased: a random task takes the uncertainty
found at a random quantile of the batch's modelled tasks, so every head of the queue holds
the random share in proportion (uniform over [0, 1 - 1/k) for k labels while there is no
model). Random positions are *stratified*: within one call each stratum's items are spread
evenly over the quantiles, so any head of the queue also holds the strata in proportion (one
stratum when the spec names no ``stratify_by``).

When a new champion is promoted, the refresh re-scores the unlabeled tasks and rewrites only
the head of the queue (``reorder``), with the next *generation* added: priority = generation
+ value. Tasks scored by the current champion (the new head, and what ingest imports from
then on) rank before tasks scored by an older one, at a cost of one update per head task.

Everything is a function of the content hash (and the batch it comes in), so a re-run or a
resumed import computes the same priorities.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any


def unit(content: str, salt: str = "") -> float:
    """A stable pseudo-random number in [0, 1) from a content hash (same item, same number)."""
    digest = content if not salt else hashlib.blake2b((salt + content).encode(), digest_size=8).hexdigest()
    return int(digest[:8], 16) / 0x1_0000_0000


def in_random_share(content: str, share: float) -> bool:
    return unit(content, "random-share") < share


def priorities(hashes: Sequence[str], predictions: Sequence[dict[str, Any] | None], *, random_share: float,
               n_labels: int, strata: Sequence[Hashable] | None = None, generation: int = 0) -> list[float]:
    """Priorities (highest first) for tasks given their content hashes and champion predictions.

    ``generation`` counts the champions that have ordered the queue (see ``reorder``): it is
    added to every priority, so tasks scored by the current champion come before tasks scored
    by an older one.
    """
    result = [0.0] * len(hashes)
    shuffled: dict[Hashable, list[int]] = defaultdict(list)
    for i, (content, prediction) in enumerate(zip(hashes, predictions, strict=True)):
        if prediction is None or in_random_share(content, random_share):
            shuffled[strata[i] if strata is not None else None].append(i)
        else:
            result[i] = round(1.0 - float(prediction["score"]), 6)
    uncertainties = sorted(result[i] for i, p in enumerate(predictions) if p is not None
                           and not in_random_share(hashes[i], random_share))
    for members in shuffled.values():
        members.sort(key=lambda i: (unit(hashes[i], "priority"), hashes[i]))
        for rank, i in enumerate(members):
            # Rank r of n takes a random point of the r-th of n equal slices: strata interleave.
            level = 1.0 - (rank + unit(hashes[i], "jitter")) / len(members)
            result[i] = round(_quantile(uncertainties, level) if uncertainties else level * (1.0 - 1.0 / n_labels), 6)
    return [round(generation + value, 6) for value in result]


def _quantile(ordered: list[float], level: float) -> float:
    """The ``level`` quantile of sorted values (linear interpolation): a random item placed here
    is as likely to be ahead of a modelled item as behind it, so every head of the queue holds
    the random share in proportion, however the model's uncertainties are distributed."""
    position = level * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def reorder(stored: dict[int, float | None], fresh: dict[int, float], head: int) -> dict[int, float]:
    """The updates that put a new champion's ``head`` most urgent tasks first in the queue.

    ``fresh`` are the new champion's priorities, computed with the next generation, so they
    exceed every priority written before: writing the head alone makes it the queue's first
    ``head`` tasks in the new order, at one API call per task, however much the order changed.
    The rest keeps its older (lower) priorities until a later promotion reaches it.
    """
    top = sorted(fresh, key=lambda task: (-fresh[task], task))[:head]
    return {task: fresh[task] for task in top if stored.get(task) != fresh[task]}
