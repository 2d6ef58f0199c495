"""Review routing: spot checks, disagreements, low-confidence items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labelloop.quality.sampling import disagreements, low_confidence, spot_check_sample


def strata_covered(labels: pd.DataFrame, sample: pd.Index) -> pd.Series:
    """Per (annotator, label) stratum: how many of its rows fall on sampled items."""
    picked = labels["item_id"].isin(sample)
    return picked.groupby([labels["annotator_id"], labels["label"]]).sum()


def test_spot_check_is_reproducible_unique_and_independent_of_row_order(rte_labels) -> None:
    sample = spot_check_sample(rte_labels, fraction=0.05, seed=7)
    assert sample.is_unique and sample.is_monotonic_increasing
    assert sample.name == "item_id"
    assert set(sample) <= set(rte_labels["item_id"])
    shuffled = rte_labels.sample(frac=1, random_state=1)
    assert sample.equals(spot_check_sample(shuffled, fraction=0.05, seed=7))
    assert not sample.equals(spot_check_sample(rte_labels, fraction=0.05, seed=8))


def test_spot_check_covers_every_stratum_at_least_fraction(rte_labels) -> None:
    sample = spot_check_sample(rte_labels, fraction=0.05, seed=0)
    sizes = rte_labels.groupby(["annotator_id", "label"]).size()
    covered = strata_covered(rte_labels, sample)
    # Every non-empty stratum, including annotators with five labels, is checked, and at
    # least ceil(5%) of each stratum's labels are on sampled items.
    assert (covered >= 1).all()
    assert (covered >= np.ceil(0.05 * sizes)).all()
    assert len(sample) < len(rte_labels["item_id"].unique())


def test_spot_check_takes_exactly_ceil_fraction_per_stratum() -> None:
    # One annotator, disjoint items: each stratum is sampled alone, so counts are exact.
    labels = pd.DataFrame({
        "item_id": range(30), "annotator_id": "a", "label": ["x"] * 21 + ["y"] * 9,
    })  # fmt: skip
    sample = spot_check_sample(labels, fraction=0.1, seed=3)
    picked = labels[labels["item_id"].isin(sample)]
    assert picked["label"].value_counts().to_dict() == {"x": 3, "y": 1}


def test_spot_check_fraction_edges(rte_labels) -> None:
    assert len(spot_check_sample(rte_labels, fraction=0.0)) == 0
    assert len(spot_check_sample(rte_labels, fraction=1.0)) == rte_labels["item_id"].nunique()
    with pytest.raises(ValueError, match="between 0 and 1"):
        spot_check_sample(rte_labels, fraction=1.5)


def test_disagreements_and_low_confidence() -> None:
    labels = pd.DataFrame({
        "item_id": ["1", "1", "2", "2", "3"], "annotator_id": ["a", "b", "a", "b", "a"],
        "label": ["x", "y", "x", "x", "y"],
    })  # fmt: skip
    assert disagreements(labels).tolist() == ["1"]
    consensus = pd.DataFrame({"item_id": ["1", "2", "3"], "label": ["x", "x", "y"],
                              "confidence": [0.5, 1.0, 0.4]})  # fmt: skip
    assert low_confidence(consensus, threshold=0.7).tolist() == ["3", "1"]
    assert low_confidence(consensus, threshold=0.4).empty


def test_spot_check_draws_only_among_the_items_given(rte_labels) -> None:
    items = rte_labels["item_id"].drop_duplicates().sort_values()
    new = set(items.iloc[::3])  # a third of the items were answered since the last spot check
    sample = spot_check_sample(rte_labels, fraction=0.2, seed=5, among=new)
    assert len(sample) and set(sample) <= new
    # Strata are made of the new items' labels only: each still gets at least ceil(fraction).
    fresh = rte_labels[rte_labels["item_id"].isin(new)]
    sizes = fresh.groupby(["annotator_id", "label"]).size()
    assert (strata_covered(fresh, sample) >= np.ceil(0.2 * sizes)).all()
    # The same draw as on the new items' labels alone; nothing new, nothing drawn.
    assert sample.equals(spot_check_sample(fresh, fraction=0.2, seed=5))
    assert spot_check_sample(rte_labels, fraction=0.2, seed=5, among=[]).empty
    assert spot_check_sample(rte_labels, fraction=0.2, seed=5, among=None).equals(
        spot_check_sample(rte_labels, fraction=0.2, seed=5))
