"""Labeling order: uncertainty first, a stratified random share, and the fewest re-orders."""

from __future__ import annotations

import random

import pytest

from labelloop.ingest.validate import content_hash
from labelloop.ordering import in_random_share, priorities, reorder

HASHES = [content_hash({"text": f"message {i}"}) for i in range(2000)]


def prediction(score: float) -> dict:
    return {"score": score, "result": []}


def test_uncertainty_orders_all_but_the_random_share() -> None:
    # Skewed like a real champion: most tasks are confident, a few are close calls.
    rng = random.Random(3)
    scores = [1 - 0.5 * rng.random() ** 4 for _ in HASHES]
    values = priorities(HASHES, [prediction(s) for s in scores], random_share=0.1, n_labels=2)
    shared = [in_random_share(h, 0.1) for h in HASHES]
    assert 0.08 < sum(shared) / len(HASHES) < 0.12
    for value, score, random_item in zip(values, scores, shared):
        if not random_item:
            assert value == round(1 - score, 6)
        assert 0 <= value <= 0.5  # random items take values from the same range: up to 1 - 1/k
    # Every head of the queue holds the random share in proportion, not only the whole queue.
    order = sorted(range(len(values)), key=lambda i: -values[i])
    share = sum(shared) / len(shared)
    for head in (50, 100, 200, 500, 1000):
        assert abs(sum(shared[i] for i in order[:head]) - head * share) <= 2, head
    # The same input gives the same order: a resumed import writes the same priorities.
    assert values == priorities(HASHES, [prediction(s) for s in scores], random_share=0.1, n_labels=2)


def test_no_model_means_random_order() -> None:
    values = priorities(HASHES, [None] * len(HASHES), random_share=0.1, n_labels=3)
    assert len(set(values)) == len(values)
    assert all(0 <= v < 2 / 3 for v in values)
    ranks = sorted(range(len(values)), key=lambda i: -values[i])
    assert ranks[:20] != list(range(20))  # not file order


def test_strata_stay_in_proportion_at_every_head_of_the_queue() -> None:
    rng = random.Random(7)
    strata = ["rare" if rng.random() < 0.07 else "common" for _ in HASHES]
    share = strata.count("rare") / len(strata)
    stratified = priorities(HASHES, [None] * len(HASHES), random_share=0.1, n_labels=2, strata=strata)
    plain = priorities(HASHES, [None] * len(HASHES), random_share=0.1, n_labels=2)
    worst = {}
    for name, values in (("stratified", stratified), ("plain", plain)):
        order = sorted(range(len(values)), key=lambda i: -values[i])
        worst[name] = max(abs(sum(strata[i] == "rare" for i in order[:head]) - head * share)
                          for head in range(10, len(order), 10))
    assert worst["stratified"] <= 2
    assert worst["plain"] > worst["stratified"]  # plain random order drifts; stratified does not


@pytest.mark.parametrize("head", [0, 1, 50, 300, 5000])
def test_reorder_puts_the_new_head_first_at_one_update_per_head_task(head: int) -> None:
    # Before: priorities of generation 0 (no model: random over [0, 0.5)). After a promotion the
    # champion's priorities carry generation 1.
    tasks = list(range(1, 1001))
    stored = dict(zip(tasks, priorities(HASHES[:1000], [None] * 1000, random_share=0.1, n_labels=2)))
    rng = random.Random(head)
    scores = [1 - 0.5 * rng.random() ** 4 for _ in tasks]
    fresh = dict(zip(tasks, priorities(HASHES[:1000], [prediction(s) for s in scores], random_share=0.1,
                                       n_labels=2, generation=1)))
    assert min(fresh.values()) >= 1 > max(stored.values())
    updates = reorder(stored, fresh, head)
    assert len(updates) == min(head, len(tasks))  # one API call per head task, however much changed
    after = {**stored, **updates}
    queue = sorted(tasks, key=lambda t: (-after[t], t))
    wanted = sorted(tasks, key=lambda t: (-fresh[t], t))
    assert queue[:head] == wanted[:head]
    assert reorder(after, fresh, head) == {}  # a re-run changes nothing
