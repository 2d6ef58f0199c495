"""Simulated annotators: reproducible answers with the accuracy each annotator was given."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from labelloop.quality.consensus import DawidSkene
from labelloop.simulate import check_skill, lead_time, main, parse_skill, simulate_labels

SMS = Path(__file__).resolve().parents[2] / "include" / "demo" / "sms-spam" / "messages.jsonl"

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


def test_confusion_matrix_answers_follow_their_rows() -> None:
    truth = {i: LABELS[i % 3] for i in range(6000)}
    blind = {"a": {"a": 1.0}, "b": {"a": 0.5, "b": 0.5}, "c": {"c": 0.7, "b": 0.3}}
    answers = simulate_labels(truth, [(1, blind)], 1, LABELS, seed=3)
    shares = pd.crosstab([truth[t] for t, _, _ in answers], [label for _, _, label in answers], normalize="index")
    assert shares.loc["a", "a"] == 1
    assert shares.loc["b", "a"] == pytest.approx(0.5, abs=0.03) and "c" not in shares.loc["b"][lambda r: r > 0]
    assert shares.loc["c", "c"] == pytest.approx(0.7, abs=0.03) and shares.loc["c", "a"] == 0


def test_an_accuracy_draws_the_same_answers_as_before_confusion_matrices() -> None:
    """The demo's and the loop test's recorded figures rest on these exact draws."""
    answers = simulate_labels({i: LABELS[i % 3] for i in range(8)}, [(1, 0.9), (2, 0.6), (3, 0.75)], 2, LABELS, seed=5)
    assert answers == [(0, 3, "a"), (0, 2, "b"), (1, 2, "a"), (1, 1, "b"), (2, 2, "c"), (2, 1, "c"), (3, 1, "a"),
                       (3, 3, "a"), (4, 1, "b"), (4, 2, "a"), (5, 3, "c"), (5, 2, "c"), (6, 1, "a"), (6, 3, "b"),
                       (7, 1, "b"), (7, 2, "b")]


def test_dawid_skene_recovers_the_configured_confusion_matrices() -> None:
    """With true labels known, the audit's estimates can be checked against the truth."""
    records = [json.loads(line) for line in SMS.read_text().splitlines()[:3000]]
    truth = dict(enumerate(record["label"] for record in records))
    skills = {1: {"ham": {"ham": 0.98, "spam": 0.02}, "spam": {"spam": 0.6, "ham": 0.4}},  # misses spam
              2: {"ham": {"ham": 0.9, "spam": 0.1}, "spam": {"spam": 0.97, "ham": 0.03}},  # sees spam too often
              3: 0.95, 4: 0.9}
    answers = simulate_labels(truth, list(skills.items()), 3, ["ham", "spam"], seed=12)
    frame = pd.DataFrame(answers, columns=["item_id", "annotator_id", "label"])
    model = DawidSkene().fit(frame)
    true_label = frame["item_id"].map(truth)
    drawn = pd.crosstab([frame["annotator_id"], frame["label"]], true_label)
    drawn = drawn / drawn.groupby(level=0).transform("sum")  # what each annotator really did, per true label
    for annotator, skill in skills.items():
        rows = skill if isinstance(skill, dict) else {
            right: {answer: skill if answer == right else 1 - skill for answer in ("ham", "spam")}
            for right in ("ham", "spam")}
        for right, row in rows.items():
            n = ((frame["annotator_id"] == annotator) & (true_label == right)).sum()
            for answer, probability in row.items():
                # the simulator: a drawn rate is within 4 standard errors of the configured one
                error = 4 * (probability * (1 - probability) / n) ** 0.5 + 1e-9
                assert drawn.loc[(annotator, answer), right] == pytest.approx(probability, abs=error)
                # the audit: Dawid-Skene, blind to the truth, finds what each annotator did
                assert model.errors_.loc[(annotator, answer), right] == pytest.approx(
                    drawn.loc[(annotator, answer), right], abs=0.03), (annotator, right, answer)
    accuracy = sum(model.labels_[item] == truth[item] for item in truth) / len(truth)
    assert accuracy > 0.98  # the best annotator alone is right 95% of the time


@pytest.mark.parametrize(("skill", "message"), [
    (1.2, "between 0 and 1"),
    ({"a": {"a": 0.5, "b": 0.4}}, "sum to 1"),
    ({"a": {"a": 1.5, "b": -0.5}}, "sum to 1"),
    ({"a": {"a": "1"}}, "sum to 1"),
    ({"a": {"z": 1.0}}, r"labels \['z'\]"),
    ({"z": {"a": 1.0}}, r"labels \['z'\]"),
])
def test_refuses_a_broken_skill(skill, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_skill(skill, LABELS)


def test_a_missing_confusion_row_is_named() -> None:
    with pytest.raises(ValueError, match="no row for true label 'b'"):
        simulate_labels({1: "b"}, [(1, {"a": {"a": 1.0}})], 1, LABELS)


def test_parse_skill(tmp_path) -> None:
    assert parse_skill("0.9") == 0.9
    matrix = tmp_path / "m.json"
    matrix.write_text('{"a": {"a": 1}}')
    assert parse_skill(str(matrix)) == {"a": {"a": 1}}
    matrix.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a confusion matrix"):
        parse_skill(str(matrix))
    matrix.write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        parse_skill(str(matrix))
    with pytest.raises(ValueError, match="neither an accuracy nor a readable file"):
        parse_skill(str(tmp_path / "missing.json"))


def test_cli_refuses_bad_input_before_calling_label_studio(capsys) -> None:
    assert main(["--project", "nope"]) == 2
    assert "no spec named 'nope'" in capsys.readouterr().err
    assert main(["--skills", "0.9", "1.5"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert main(["--count", "-5"]) == 2
    assert "at least 1" in capsys.readouterr().err


def test_lead_time_is_reproducible_and_plausible() -> None:
    assert lead_time(3, 4) == lead_time(3, 4) != lead_time(4, 3)
    assert 0 < lead_time(3, 4) < 120
