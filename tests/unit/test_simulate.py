"""Simulated annotators: reproducible answers with the accuracy each annotator was given."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import astuple
from pathlib import Path

import pandas as pd
import pytest

from labelloop.quality.consensus import DawidSkene
from labelloop.dev.simulate import check_skill, lead_time, main, parse_skill, simulate_labels

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


# -- other kinds: drawn through the task type (TaskType.simulation_skill / simulate) -------------

CONLL = Path(__file__).resolve().parents[1] / "data" / "conll-mturk-dev" / "items.jsonl"
REPO = Path(__file__).resolve().parents[2]


def shipped_control(config: str):
    from labelloop.tasktypes import read_controls

    [control] = [t for t in read_controls((REPO / "include" / "labeling" / config).read_text()) if t.kind != "comment"]
    return control


def conll_items() -> list[dict]:
    return [json.loads(line) for line in CONLL.read_text().splitlines()]


def within(drawn: int, n: int, rate: float) -> bool:
    """A drawn count is within 4 standard errors of ``rate`` of ``n`` draws."""
    return abs(drawn / n - rate) <= 4 * (rate * (1 - rate) / n) ** 0.5 + 1e-9


def test_single_choice_through_its_task_type_draws_what_simulate_labels_draws() -> None:
    """label_queue now goes through the task type: the recorded single-choice figures must not move."""
    from labelloop.dev.simulate import simulate_results
    from labelloop.tasktypes import read_controls

    [control] = read_controls('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
                              '<Choice value="a"/><Choice value="b"/><Choice value="c"/></Choices></View>')
    truth = {i: LABELS[i % 3] for i in range(8)}
    annotators = [(1, 0.9), (2, 0.6), (3, 0.75)]
    results = simulate_results(control, {i: [{"label": label}] for i, label in truth.items()},
                               dict.fromkeys(truth, {}), annotators, 2, seed=5)
    assert [(task, user, result[0]["value"]["choices"][0]) for task, user, result in results] == simulate_labels(
        truth, annotators, 2, LABELS, seed=5)


def test_multilabel_answers_miss_and_add_labels_at_the_configured_rates() -> None:
    from labelloop.dev.simulate import simulate_results

    control = shipped_control("conll_entity_types.xml")
    items = conll_items()
    truth = {i: [{"label": label} for label in sorted({s[2] for s in item["gold"]})] or [{"label": None}]
             for i, item in enumerate(items)}
    skills = {1: {"miss": {"PER": 0.1, "ORG": 0.3, "LOC": 0.05, "MISC": 0.5}, "false_positive": 0.08},
              2: 0.9}
    answers = simulate_results(control, truth, dict.fromkeys(truth, {}), list(skills.items()), 2, seed=4)
    assert len(answers) == 2 * len(items)
    for user, skill in skills.items():
        expected = control.simulation_skill(skill)
        for label in control.control.labels:
            mine = [(task, {c for r in result for c in r["value"]["choices"]})
                    for task, u, result in answers if u == user]
            present = [label in chosen for task, chosen in mine if {"label": label} in truth[task]]
            absent = [label in chosen for task, chosen in mine if {"label": label} not in truth[task]]
            assert within(present.count(False), len(present), expected.miss[label]), (user, label, "miss")
            assert within(absent.count(True), len(absent), expected.false_positive[label]), (user, label, "false +")
    assert all(result == [] or result[0]["type"] == "choices" for _, _, result in answers)


def test_span_answers_follow_the_configured_miss_false_shift_and_confusion_rates() -> None:
    from labelloop.dev.simulate import simulate_results, words

    control = shipped_control("conll_ner.xml")
    # every span can move an edge: the text has a word outside it or the span has two words
    items = [item for item in conll_items() if len(words(item["text"])) >= 2]
    truth = {i: [{"start": s, "end": e, "label": label} for s, e, label in item["gold"]]
             or [{"start": None, "end": None, "label": None}] for i, item in enumerate(items)}
    data = {i: {"text": item["text"]} for i, item in enumerate(items)}
    skill = {"miss": 0.2, "false_span": 0.15, "boundary_shift": 0.1, "confusion": 0.25}
    answers = simulate_results(control, truth, data, [(7, skill)], 1, seed=9)

    n_true = kept = shifted = unshifted = confused = items_with_room = false_items = 0
    for task, _, result in answers:
        text, gold = items[task]["text"], {(s, e): label for s, e, label in items[task]["gold"]}
        spans = [(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in result]
        assert all(text[r["value"]["start"]:r["value"]["end"]] == r["value"]["text"] for r in result)
        false = [s for s in spans if not any(s[0] < e and b < s[1] for b, e in gold)]
        from_truth = [s for s in spans if s not in false]
        n_true, kept = n_true + len(gold), kept + len(from_truth)
        items_with_room += any(not any(a < e and b < z for b, e in gold) for a, z in words(text))
        false_items += len(false)
        assert len(false) <= 1
        for start, end, label in from_truth:
            if (start, end) in gold:
                unshifted += 1
                confused += label != gold[start, end]
            else:
                shifted += 1
    assert within(n_true - kept, n_true, skill["miss"])
    assert within(shifted, kept, skill["boundary_shift"])
    assert within(confused, unshifted, skill["confusion"])
    assert within(false_items, items_with_room, skill["false_span"])


def test_a_perfect_span_annotator_gives_the_truth_and_an_accuracy_sets_every_rate() -> None:
    from labelloop.dev.simulate import SpanSkill, simulate_results

    control = shipped_control("conll_ner.xml")
    item = conll_items()[0]
    truth = [{"start": s, "end": e, "label": label} for s, e, label in item["gold"]]
    [(_, _, result)] = simulate_results(control, {1: truth}, {1: {"text": item["text"]}}, [(1, 1.0)], 1)
    assert [(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in result] == [
        tuple(span) for span in item["gold"]]
    assert astuple(SpanSkill.of(0.8)) == pytest.approx((0.2, 0.2, 0.1, 0.1))  # miss, false span, shift, confusion


@pytest.mark.parametrize(("config", "skill", "message"), [
    ("conll_ner.xml", {"miss": 0.1, "typo": 0.2}, r"unknown \['typo'\]"),
    ("conll_ner.xml", {"miss": 1.5}, "miss must be a probability"),
    ("conll_ner.xml", [0.1], "a spans skill is an accuracy or an object"),
    ("conll_entity_types.xml", {"miss": {"PERSON": 0.1}}, r"labels \['PERSON'\]"),
    ("conll_entity_types.xml", {"false_positive": -0.1}, "false_positive must be a probability"),
    ("conll_entity_types.xml", 2.0, "an accuracy must be a probability"),
    ("conll_entity_types.xml", {"miss": 0.1, "confusion": 0.2}, r"unknown \['confusion'\]"),
])
def test_refuses_a_broken_skill_of_another_kind(config, skill, message) -> None:
    with pytest.raises(ValueError, match=message):
        shipped_control(config).simulation_skill(skill)


@pytest.mark.parametrize("project", ["conll_ner", "conll_entity_types"])
def test_cli_checks_a_skill_of_the_projects_kind_before_calling_label_studio(project, tmp_path, capsys) -> None:
    skill = tmp_path / "skill.json"
    skill.write_text(json.dumps({"miss": 0.1, "sometimes": 0.5}))
    assert main(["--project", project, "--skills", "0.9", str(skill)]) == 2
    assert "unknown ['sometimes']" in capsys.readouterr().err
