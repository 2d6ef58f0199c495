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
               n_labels: int, strata: Sequence[Hashable] | None = None) -> list[float]:
    """Priorities (highest first) for tasks given their content hashes and champion predictions."""
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
    return result


def _quantile(ordered: list[float], level: float) -> float:
    """The ``level`` quantile of sorted values (linear interpolation): a random item placed here
    is as likely to be ahead of a modelled item as behind it, so every head of the queue holds
    the random share in proportion, however the model's uncertainties are distributed."""
    position = level * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def reorder(stored: dict[int, float], fresh: dict[int, float], head: int) -> dict[int, float]:
    """The fewest updates after which the first ``head`` tasks of the queue are ``fresh``'s first.

    ``stored`` is each unlabeled task's priority in Label Studio, ``fresh`` the new champion's.
    Tasks outside the new head that sit at or above its lowest priority are demoted to their
    fresh value; tasks inside it take their fresh value where it differs. The tail keeps its old
    order (each update is one API call); the next promotion or a larger ``head`` reaches it.
    """
    ranked = sorted(fresh, key=lambda task: (-fresh[task], task))
    top, rest = ranked[:head], ranked[head:]
    if not top:
        return {}
    floor = fresh[top[-1]]
    updates = {task: fresh[task] for task in top if stored.get(task) != fresh[task]}
    updates.update({task: fresh[task] for task in rest
                    if stored.get(task, 0.0) >= floor and stored.get(task) != fresh[task]})
    return updates
