"""Simulated annotators: reproducible answers with the accuracy each annotator was given."""

from __future__ import annotations

from collections import Counter

import pytest

from labelloop.simulate import lead_time, simulate_labels

LABELS = ["a", "b", "c"]


def test_same_seed_same_answers_whatever_the_order() -> None:
    truth = {i: LABELS[i % 3] for i in range(50)}
    annotators = [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6)]
    first = simulate_labels(truth, annotators, 3, LABELS, seed=7)
    again = simulate_labels(dict(reversed(list(truth.items()))), annotators, 3, LABELS, seed=7)
    assert first == again
    assert first != simulate_labels(truth, annotators, 3, LABELS, seed=8)


def test_each_task_gets_distinct_annotators_and_accuracy_holds() -> None:
    truth = {i: LABELS[i % 3] for i in range(3000)}
    annotators = [(1, 0.95), (2, 0.75), (3, 0.5)]
    answers = simulate_labels(truth, annotators, 2, LABELS, seed=0)
    per_task = Counter(task for task, _, _ in answers)
    assert set(per_task.values()) == {2}
    assert all(len({u for t, u, _ in answers if t == task}) == 2 for task in range(20))
    for user, accuracy in annotators:
        mine = [(task, label) for task, u, label in answers if u == user]
        right = sum(label == truth[task] for task, label in mine) / len(mine)
        assert right == pytest.approx(accuracy, abs=0.04)
    wrong = Counter(label for task, _, label in answers if label != truth[task] and truth[task] == "a")
    assert set(wrong) == {"b", "c"} and abs(wrong["b"] - wrong["c"]) < 0.2 * sum(wrong.values())


def test_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="per_task"):
        simulate_labels({1: "a"}, [(1, 0.9)], 2, LABELS)
    with pytest.raises(ValueError, match="not in labels"):
        simulate_labels({1: "z"}, [(1, 0.9)], 1, LABELS)


def test_lead_time_is_reproducible_and_plausible() -> None:
    assert lead_time(3, 4) == lead_time(3, 4) != lead_time(4, 3)
    assert 0 < lead_time(3, 4) < 120
