"""Agreement metrics against published worked examples and reference implementations."""

from __future__ import annotations

import itertools

import krippendorff
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss
from statsmodels.stats.proportion import proportion_confint

from labelloop.quality.agreement import (
    InputError,
    encode,
    fleiss_kappa,
    gold_accuracy,
    kappa_matrix,
    krippendorff_alpha,
    pairwise_kappa,
    wilson_interval,
)

from .conftest import matrix_to_tidy

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", 4 coders x 12 units.
NAN = np.nan
KRIPPENDORFF_2011 = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
])  # fmt: skip

# Fleiss (1971) as tabulated on Wikipedia: 10 items x 5 categories, 14 raters each.
FLEISS_TABLE = np.array([
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
])  # fmt: skip


def counts_to_tidy(table: np.ndarray) -> pd.DataFrame:
    """items x categories count table to tidy rows; raters are numbered within each item."""
    rows = []
    for item, counts in enumerate(table):
        labels = np.repeat(np.arange(len(counts)), counts)
        rows += [(f"i{item}", f"r{rater}", f"c{label}") for rater, label in enumerate(labels)]
    return pd.DataFrame(rows, columns=["item_id", "annotator_id", "label"])


def test_wilson_interval_matches_statsmodels() -> None:
    n_correct = np.array([0, 1, 7, 19, 20, 450])
    n = np.array([3, 1, 10, 20, 20, 500])
    low, high = wilson_interval(n_correct, n)
    ref_low, ref_high = proportion_confint(n_correct, n, alpha=0.05, method="wilson")
    np.testing.assert_allclose(low, ref_low, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(high, ref_high, rtol=1e-12, atol=1e-15)


def test_gold_accuracy_counts_and_intervals() -> None:
    labels = pd.DataFrame({
        "item_id": ["1", "2", "3", "1", "2", "4", "4"],
        "annotator_id": ["ann", "ann", "ann", "bob", "bob", "bob", "cat"],
        "label": ["x", "y", "x", "x", "x", "y", "y"],
    })  # fmt: skip
    gold = pd.Series({"1": "x", "2": "y", "3": "y", "9": "x"})
    table = gold_accuracy(labels, gold).set_index("annotator_id")
    assert table.loc["ann", ["n_labels", "n_gold", "n_correct"]].tolist() == [3, 3, 2]
    assert table.loc["bob", ["n_labels", "n_gold", "n_correct"]].tolist() == [3, 2, 1]
    assert table.loc["ann", "accuracy"] == pytest.approx(2 / 3)
    ref = proportion_confint(2, 3, alpha=0.05, method="wilson")
    assert (table.loc["ann", "ci_low"], table.loc["ann", "ci_high"]) == pytest.approx(ref)
    assert table.loc["cat", "n_gold"] == 0 and np.isnan(table.loc["cat", "accuracy"])


def test_cohen_kappa_textbook_two_by_two() -> None:
    # Wikipedia's example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> kappa 0.40.
    pairs = [("yes", "yes")] * 20 + [("yes", "no")] * 5 + [("no", "yes")] * 10 + [("no", "no")] * 15
    labels = pd.DataFrame([
        (item, annotator, label)
        for item, pair in enumerate(pairs)
        for annotator, label in zip("AB", pair)
    ], columns=["item_id", "annotator_id", "label"])  # fmt: skip
    result = pairwise_kappa(labels, min_shared=1)
    assert result[["annotator_a", "annotator_b", "n_shared"]].values.tolist() == [["A", "B", 50]]
    assert result["kappa"].iloc[0] == pytest.approx(0.40, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairwise_kappa_equals_sklearn_per_pair(random_matrix, seed: int) -> None:
    matrix = random_matrix(seed, n_annotators=7, n_items=60, missing=0.4)
    result = pairwise_kappa(matrix_to_tidy(matrix), min_shared=1)
    expected = {}
    for a, b in itertools.combinations(range(len(matrix)), 2):
        shared = ~np.isnan(matrix[a]) & ~np.isnan(matrix[b])
        if shared.any():
            kappa = cohen_kappa_score(matrix[a, shared], matrix[b, shared])
            expected[(f"a{a:02d}", f"a{b:02d}")] = (int(shared.sum()), kappa)
    got = {(r.annotator_a, r.annotator_b): (r.n_shared, r.kappa) for r in result.itertuples()}
    assert got.keys() == expected.keys()
    for pair, (n_shared, kappa) in expected.items():
        assert got[pair][0] == n_shared
        assert got[pair][1] == pytest.approx(kappa, abs=1e-12)


def test_pairwise_kappa_min_shared_and_degenerate_pair() -> None:
    labels = pd.DataFrame({
        "item_id": [1, 2, 3, 1, 2, 3, 1, 2],
        "annotator_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 2,
        "label": ["x"] * 6 + ["x", "y"],
    })  # fmt: skip
    result = pairwise_kappa(labels, min_shared=3)
    assert result[["annotator_a", "annotator_b", "n_shared"]].values.tolist() == [["a", "b", 3]]
    # a and b both said "x" throughout: chance agreement is 1, kappa undefined (sklearn: nan).
    assert np.isnan(result["kappa"].iloc[0])
    assert len(pairwise_kappa(labels, min_shared=2)) == 3


def test_pairwise_kappa_does_not_depend_on_row_order(random_matrix) -> None:
    labels = matrix_to_tidy(random_matrix(3))
    shuffled = labels.sample(frac=1, random_state=0)
    pd.testing.assert_frame_equal(pairwise_kappa(labels, 1), pairwise_kappa(shuffled, 1))


def test_kappa_matrix_is_symmetric_with_unit_diagonal() -> None:
    pairs = pd.DataFrame({"annotator_a": ["a", "a"], "annotator_b": ["b", "c"],
                          "n_shared": [10, 12], "kappa": [0.5, -0.1]})  # fmt: skip
    matrix = kappa_matrix(pairs)
    assert list(matrix.index) == list(matrix.columns) == ["a", "b", "c"]
    assert matrix.loc["b", "a"] == matrix.loc["a", "b"] == 0.5
    assert matrix.loc["c", "a"] == -0.1
    assert np.isnan(matrix.loc["b", "c"])
    assert (np.diag(matrix) == 1).all()


def test_fleiss_kappa_wikipedia_example() -> None:
    kappa = fleiss_kappa(counts_to_tidy(FLEISS_TABLE))
    assert round(kappa, 3) == 0.210
    assert kappa == pytest.approx(statsmodels_fleiss(FLEISS_TABLE), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_fleiss_kappa_matches_statsmodels(random_matrix, seed: int) -> None:
    matrix = random_matrix(seed, n_annotators=5, n_items=50, n_labels=3, missing=0.0)
    table = np.stack([(matrix == label).sum(axis=0) for label in range(3)], axis=1)
    assert fleiss_kappa(matrix_to_tidy(matrix)) == pytest.approx(
        statsmodels_fleiss(table), abs=1e-12
    )


def test_fleiss_kappa_rejects_unequal_rater_counts() -> None:
    labels = counts_to_tidy(FLEISS_TABLE).iloc[1:]  # item i0 now has 13 raters
    with pytest.raises(ValueError, match="same number of raters.*krippendorff_alpha"):
        fleiss_kappa(labels)


@pytest.mark.parametrize(
    ("level", "published"),
    [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)],
)
def test_krippendorff_alpha_worked_example(level: str, published: float) -> None:
    alpha = krippendorff_alpha(matrix_to_tidy(KRIPPENDORFF_2011), level)
    assert round(alpha, 3) == published


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval", "ratio"])
@pytest.mark.parametrize("seed", [0, 1])
def test_krippendorff_alpha_matches_package(random_matrix, level: str, seed: int) -> None:
    matrix = random_matrix(seed, n_annotators=6, n_items=70, n_labels=5, missing=0.35) + 1
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement=level)
    assert krippendorff_alpha(matrix_to_tidy(matrix), level) == pytest.approx(expected, abs=1e-10)


def test_ordinal_alpha_uses_categorical_order() -> None:
    numeric = matrix_to_tidy(KRIPPENDORFF_2011)
    names = pd.Categorical(
        numeric["label"].map({1: "none", 2: "low", 3: "mid", 4: "high", 5: "max"}),
        categories=["none", "low", "mid", "high", "max"], ordered=True,
    )  # fmt: skip
    assert krippendorff_alpha(numeric.assign(label=names), "ordinal") == pytest.approx(
        krippendorff_alpha(numeric, "ordinal"), abs=1e-12
    )
    with pytest.raises(InputError, match="ordered pandas Categorical"):
        krippendorff_alpha(numeric.assign(label=names.astype(str)), "ordinal")


def test_encode_rejects_bad_frames() -> None:
    good = pd.DataFrame({"item_id": [1, 1], "annotator_id": ["a", "b"], "label": ["x", "y"]})
    with pytest.raises(InputError, match="missing column 'annotator_id'.*rename column 'worker'"):
        encode(good.rename(columns={"annotator_id": "worker"}))
    with pytest.raises(InputError, match="no rows"):
        encode(good.iloc[:0])
    with pytest.raises(InputError, match="1 rows have an empty label"):
        encode(good.assign(label=["x", None]))
    with pytest.raises(InputError, match="item_id=1 annotator_id='a'; keep one label"):
        encode(good.assign(annotator_id="a"))
