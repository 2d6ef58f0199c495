"""Span quality: agreement, gold scoring and consensus, on hand-made spans and on the real
CoNLL-2003 MTurk crowd spans (tests/data/conll-mturk-dev).

seqeval is not installed in .venv, so the independent reference is a plain set computation
in this file (exact-span F1 is set intersection, which is what seqeval computes too).
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.quality.agreement import InputError
from labelloop.quality.spans import (
    SpanDawidSkene,
    TokenMajorityVote,
    check_spans,
    gold_span_scores,
    pairwise_span_f1,
    span_agreement,
    span_f1,
    span_f1_matrix,
    spans_frame,
)

CONLL = Path(__file__).resolve().parents[2] / "data" / "conll-mturk-dev"


@pytest.fixture(scope="module")
def conll() -> dict:
    with open(CONLL / "items.jsonl", encoding="utf-8") as lines:
        items = [json.loads(line) for line in lines]
    with open(CONLL / "crowd_spans.jsonl", encoding="utf-8") as lines:
        crowd = [json.loads(line) for line in lines]
    return {
        "texts": pd.Series({item["id"]: item["text"] for item in items}),
        "gold": spans_frame([{"item_id": item["id"], "spans": item["gold"]} for item in items]),
        "crowd": spans_frame(crowd),
        "gold_sets": {item["id"]: {tuple(s) for s in item["gold"]} for item in items},
        "answers": {(c["item_id"], c["annotator_id"]): {tuple(s) for s in c["spans"]}
                    for c in crowd},  # fmt: skip
    }


def frame(rows: list[tuple]) -> pd.DataFrame:
    """(item, annotator, start, end, label) tuples; None for an empty answer's cells."""
    data = pd.DataFrame(rows, columns=["item_id", "annotator_id", "start", "end", "label"])
    return data.astype({"start": "Int64", "end": "Int64"})


# --- agreement ------------------------------------------------------------------------------


def test_pairwise_exact_f1_matches_set_computation(conll: dict) -> None:
    by_annotator: dict[str, dict[str, set]] = defaultdict(dict)
    for (item, annotator), spans in conll["answers"].items():
        by_annotator[annotator][item] = spans
    expected = {}
    for a, b in combinations(sorted(by_annotator), 2):
        shared = by_annotator[a].keys() & by_annotator[b].keys()
        if shared:
            matches = sum(len(by_annotator[a][i] & by_annotator[b][i]) for i in shared)
            total = sum(len(by_annotator[a][i]) + len(by_annotator[b][i]) for i in shared)
            expected[a, b] = (len(shared), matches, 2 * matches / total if total else np.nan)

    pairs = pairwise_span_f1(conll["crowd"])
    got = {(r.annotator_a, r.annotator_b): (r.n_shared, r.exact_matches, r.exact_f1)
           for r in pairs.itertuples()}  # fmt: skip
    assert got.keys() == expected.keys()
    for pair, (n_shared, matches, f1) in expected.items():
        assert got[pair][:2] == (n_shared, matches)
        assert got[pair][2] == pytest.approx(f1, nan_ok=True)


def test_partial_matches_are_one_to_one_and_per_label() -> None:
    spans = frame([
        ("s1", "a", 0, 5, "PER"), ("s1", "a", 6, 10, "PER"), ("s1", "a", 12, 15, "LOC"),
        ("s1", "b", 0, 10, "PER"), ("s1", "b", 12, 15, "ORG"),
        ("s2", "a", 0, 3, "LOC"), ("s2", "b", 0, 3, "LOC"),
        ("s3", "a", None, None, None),  # b did not answer s3: not shared, not counted
    ])  # fmt: skip
    row = pairwise_span_f1(spans).iloc[0]
    assert (row.n_shared, row.n_spans_a, row.n_spans_b) == (2, 4, 3)
    assert row.exact_matches == 1  # s2 LOC
    assert row.partial_matches == 2  # s2 LOC, and [0,10) with one of a's two PER halves
    assert row.exact_f1 == pytest.approx(2 / 7)
    assert row.partial_f1 == pytest.approx(4 / 7)

    by_label = pairwise_span_f1(spans, by_label=True).set_index("label")
    assert by_label.loc["PER", ["n_spans_a", "n_spans_b", "partial_matches"]].tolist() == [2, 1, 1]
    assert by_label.loc["LOC", "exact_f1"] == pytest.approx(2 * 1 / 3)
    assert by_label.loc["ORG", "exact_f1"] == 0.0

    matrix = span_f1_matrix(pairwise_span_f1(spans), "partial_f1")
    assert matrix.loc["a", "b"] == matrix.loc["b", "a"] == pytest.approx(4 / 7)
    summary = span_agreement(pairwise_span_f1(spans))
    assert summary["exact_f1"] == pytest.approx(2 / 7)
    assert summary["n_answer_pairs"] == 2


# --- gold scoring ---------------------------------------------------------------------------


def test_gold_scores_match_set_computation(conll: dict) -> None:
    gold = conll["gold_sets"]
    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for (item, annotator), spans in conll["answers"].items():
        if item in gold:
            counts = expected[annotator]
            counts[0] += 1
            counts[1] += len(spans)
            counts[2] += len(gold[item])
            counts[3] += len(spans & gold[item])

    scores = gold_span_scores(conll["crowd"], conll["gold"]).set_index("annotator_id")
    assert set(scores.index) == set(expected)
    for annotator, (n_items, n_spans, n_gold, matches) in expected.items():
        row = scores.loc[annotator]
        assert [row.n_items, row.n_spans, row.n_gold_spans, row.exact_matches] == [
            n_items, n_spans, n_gold, matches]  # fmt: skip
        assert row.f1 == pytest.approx(2 * matches / (n_spans + n_gold))
        errors = row.label_errors + row.boundary_errors + row.label_and_boundary_errors
        assert errors + row.false_spans == n_spans - matches


def test_gold_error_kinds_and_empty_answers() -> None:
    gold = frame([
        ("s1", None, 0, 5, "PER"), ("s1", None, 10, 15, "LOC"), ("s1", None, 20, 25, "ORG"),
        ("s1", None, 30, 35, "MISC"),
        ("s2", None, None, None, None),  # gold says: no entity
    ]).drop(columns="annotator_id")  # fmt: skip
    spans = frame([
        ("s1", "a", 0, 5, "PER"),      # exact
        ("s1", "a", 10, 15, "ORG"),    # label error
        ("s1", "a", 20, 23, "ORG"),    # boundary error
        ("s1", "a", 31, 35, "PER"),    # label and boundary error
        ("s1", "a", 40, 45, "LOC"),    # false span
        ("s2", "a", 0, 4, "PER"),      # false span on a no-entity item
        ("s1", "lazy", None, None, None),  # answered "nothing": four misses, not ignored
        ("s3", "lazy", 0, 4, "PER"),   # no gold for s3: left out
    ])  # fmt: skip
    scores = gold_span_scores(spans, gold).set_index("annotator_id")
    a = scores.loc["a"]
    assert (a.n_items, a.n_spans, a.n_gold_spans, a.exact_matches) == (2, 6, 4, 1)
    assert (a.label_errors, a.boundary_errors, a.label_and_boundary_errors) == (1, 1, 1)
    assert (a.false_spans, a.misses) == (2, 0)
    assert a.precision == pytest.approx(1 / 6) and a.recall == pytest.approx(1 / 4)
    lazy = scores.loc["lazy"]
    assert (lazy.n_items, lazy.n_spans, lazy.n_gold_spans, lazy.misses) == (1, 0, 4, 4)
    assert lazy.recall == 0.0 and lazy.f1 == 0.0 and np.isnan(lazy.precision)

    by_label = gold_span_scores(spans, gold, by_label=True).set_index(["annotator_id", "label"])
    assert by_label.loc[("a", "PER"), ["n_spans", "n_gold_spans", "exact_matches"]].tolist() == [
        3, 1, 1]  # fmt: skip
    assert by_label.loc[("lazy", "MISC"), "misses"] == 1


# --- consensus ------------------------------------------------------------------------------


def test_consensus_beats_token_majority_vote_on_real_crowd(conll: dict) -> None:
    crowd, gold, texts = conll["crowd"], conll["gold"], conll["texts"]
    majority = span_f1(TokenMajorityVote().fit_predict(crowd, texts), gold)["f1"]
    model = SpanDawidSkene().fit(crowd)
    consensus = span_f1(model.spans_, gold)["f1"]
    assert 0.64 <= majority <= 0.66  # published on the test split: 0.654
    assert consensus >= 0.71
    assert consensus > majority + 0.05
    assert model.spans_["confidence"].between(0, 1).all()
    assert set(model.item_confidence_.index) == set(crowd["item_id"])
    assert model.text_rounds_ == 0  # no texts: votes only


def test_text_prior_lifts_consensus_on_real_crowd(conll: dict) -> None:
    """With the texts, each candidate's prior comes from a text model fitted to the EM
    posteriors (cross-fitted): 0.719 -> 0.772 on dev; published DS on test is 0.744."""
    crowd, gold, texts = conll["crowd"], conll["gold"], conll["texts"]
    model = SpanDawidSkene().fit(crowd, texts)
    with_text = span_f1(model.spans_, gold)
    votes_only = span_f1(SpanDawidSkene(text_prior=False).fit_predict(crowd, texts), gold)
    assert with_text["f1"] >= 0.76
    assert with_text["f1"] > votes_only["f1"] + 0.04
    assert with_text["precision"] > votes_only["precision"]  # junk spans sunk
    assert 1 <= model.text_rounds_ <= 20
    assert model.spans_["confidence"].between(0, 1).all()


def test_token_majority_vote_on_unaligned_spans() -> None:
    texts = pd.Series({"s1": "in New York City now", "s2": "nothing here"})
    spans = frame([
        ("s1", "a", 3, 9, "LOC"),    # "New Yo": covers the tokens New and York
        ("s1", "b", 3, 11, "LOC"),   # "New York"
        ("s1", "c", 12, 16, "ORG"),  # "City" alone: outvoted by O
        ("s2", "a", None, None, None), ("s2", "b", 0, 7, "MISC"), ("s2", "c", None, None, None),
    ])  # fmt: skip
    result = TokenMajorityVote().fit_predict(spans, texts)
    assert result[["item_id", "start", "end", "label"]].astype(object).where(
        result.notna(), None).values.tolist() == [["s1", 3, 11, "LOC"], ["s2", None, None, None]]
    assert result["confidence"].tolist() == pytest.approx([2 / 3, 2 / 3])


def test_span_dawid_skene_output_shape_and_overlaps() -> None:
    rows = []
    for k in range(6):  # four reliable annotators agree on [0, 4) PER; one marks [0, 9)
        rows += [(f"s{k}", f"a{j}", 0, 4, "PER") for j in range(4)]
        rows += [(f"s{k}", "wide", 0, 9, "PER"), (f"s{k}", "a0", 10, 14, "LOC")]
    rows += [("empty", f"a{j}", None, None, None) for j in range(4)]
    model = SpanDawidSkene().fit(frame(rows))
    result = model.spans_
    assert list(result.columns) == ["item_id", "start", "end", "label", "confidence",
                                    "item_confidence"]  # fmt: skip
    per_item = result[result["item_id"] == "s0"]
    assert per_item[["start", "end"]].astype(int).values.tolist()[0] == [0, 4]
    assert not ((per_item["start"] == 0) & (per_item["end"] == 9)).any()
    empty = result[result["item_id"] == "empty"]
    assert len(empty) == 1 and empty[["start", "end", "label"]].isna().all(axis=None)
    assert empty["confidence"].iloc[0] == 1.0
    assert model.candidates_["accepted"].dtype == bool


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(("row", "message"), [
    (("s1", "a", 5, 5, "PER"), r"row 1 .*start >= end"),
    (("s1", "a", -1, 3, "PER"), r"row 1 .*start -1; expected a non-negative integer"),
    (("s1", "a", 1.5, 3, "PER"), r"row 1 .*start 1.5"),
    (("s1", "a", 1, None, "PER"), r"row 1 .*only some of start, end, label"),
    (("s1", "a", 0, 3, "PERSON"), r"row 1 .*outside the label set; accepted: PER, LOC"),
    (("s1", "a", 0, 30, "PER"), r"row 1 .*ends past the text, which has 11 characters"),
    (("s1", "a", 0, 2, "PER"), r"row 1 .*repeats a span"),
    (("s9", "a", 0, 2, "PER"), r"row 1 .*no text for this item_id"),
    ((None, "a", 0, 2, "PER"), r"row 1 .*empty item_id"),
])  # fmt: skip
def test_invalid_spans_are_refused_naming_the_row(row: tuple, message: str) -> None:
    spans = pd.DataFrame([("s1", "a", 0, 2, "PER"), row],
                         columns=["item_id", "annotator_id", "start", "end", "label"])
    with pytest.raises(InputError, match=message):
        check_spans(spans, texts=pd.Series({"s1": "Ann met Bob"}), labels=["PER", "LOC"])


def test_missing_column_and_empty_frame() -> None:
    with pytest.raises(InputError, match="missing column 'annotator_id'.*rename column 'worker'"):
        check_spans(pd.DataFrame(columns=["item_id", "worker", "start", "end", "label"]))
    with pytest.raises(InputError, match="no rows"):
        check_spans(frame([]))
    with pytest.raises(InputError, match="needs texts"):
        TokenMajorityVote().fit(frame([("s1", "a", 0, 2, "PER")]))
