"""Consensus methods on hand-made votes, synthetic annotators and the real RTE crowd labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from crowdkit.aggregation import DawidSkene as CrowdKitDawidSkene

from labelloop.quality.consensus import DawidSkene, MajorityVote, apply_overrides


def tidy(votes: dict[str, str]) -> pd.DataFrame:
    """{"item": "xxy"} -> one row per character, annotators a0, a1, ..."""
    return pd.DataFrame([
        (item, f"a{k}", label) for item, labels in votes.items() for k, label in enumerate(labels)
    ], columns=["item_id", "annotator_id", "label"])  # fmt: skip


def accuracy(labels: pd.Series, gold: pd.Series) -> float:
    return float((labels == gold.reindex(labels.index)).mean())


def synthetic(seed: int, n_items: int = 1500, pool: int = 30, per_item: int = 5):
    """Three classes, annotators whose accuracy ranges from near chance to expert.
    Returns labels, gold, and each annotator's realised accuracy."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(3, size=n_items)
    skill = np.linspace(0.4, 0.95, pool)
    who = np.argsort(rng.random((n_items, pool)), axis=1)[:, :per_item]
    wrong = (truth[:, None] + rng.integers(1, 3, size=who.shape)) % 3
    said = np.where(rng.random(who.shape) < skill[who], truth[:, None], wrong)
    labels = pd.DataFrame({
        "item_id": np.repeat(np.arange(n_items), per_item),
        "annotator_id": who.ravel(), "label": np.array(["cat", "dog", "eel"])[said.ravel()],
    })  # fmt: skip
    gold = pd.Series(np.array(["cat", "dog", "eel"])[truth])
    realised = np.bincount(who.ravel(), weights=(said == truth[:, None]).ravel()) / np.bincount(
        who.ravel()
    )
    return labels, gold, realised


def test_majority_vote_labels_confidence_and_probas() -> None:
    model = MajorityVote().fit(tidy({"i1": "xxy", "i2": "yyy", "i3": "zyz"}))
    assert model.labels_.to_dict() == {"i1": "x", "i2": "y", "i3": "z"}
    assert model.confidence_.tolist() == pytest.approx([2 / 3, 1.0, 2 / 3])
    assert model.probas_.loc["i1"].to_dict() == pytest.approx({"x": 2 / 3, "y": 1 / 3, "z": 0})
    frame = model.to_frame()
    assert list(frame.columns) == ["item_id", "label", "confidence"]
    assert frame["item_id"].tolist() == ["i1", "i2", "i3"]


def test_majority_vote_tie_rule() -> None:
    # Overall y has 5 votes, x 3, z 2, so the ties go: i1 x/y -> y, i2 x/z -> x, i3 y/z -> y.
    votes = {"i1": "xy", "i2": "xz", "i3": "yz", "i4": "yyy", "i5": "x"}
    model = MajorityVote().fit(tidy(votes))
    assert model.labels_.to_dict() == {"i1": "y", "i2": "x", "i3": "y", "i4": "y", "i5": "x"}
    assert model.confidence_["i1"] == 0.5
    # Equal overall frequency: first in sorted label order.
    assert MajorityVote().fit_predict(tidy({"i1": "ba", "i2": "ab"})).tolist() == ["a", "a"]


def test_majority_vote_on_rte_matches_literature(rte_labels, rte_gold) -> None:
    assert round(accuracy(MajorityVote().fit_predict(rte_labels), rte_gold), 3) == 0.901


def test_dawid_skene_on_rte_at_least_as_good_as_crowd_kit(rte_labels, rte_gold) -> None:
    ours = DawidSkene().fit_predict(rte_labels)
    crowd_kit = CrowdKitDawidSkene(n_iter=100).fit_predict(
        rte_labels.rename(columns={"item_id": "task", "annotator_id": "worker"})
    )
    assert accuracy(ours, rte_gold) >= accuracy(crowd_kit, rte_gold)
    assert accuracy(ours, rte_gold) >= 0.93
    assert accuracy(ours, rte_gold) > accuracy(MajorityVote().fit_predict(rte_labels), rte_gold)


def test_dawid_skene_learns_annotator_skill() -> None:
    labels, gold, skill = synthetic(seed=0)
    model = DawidSkene().fit(labels)
    assert accuracy(model.labels_, gold) > accuracy(MajorityVote().fit_predict(labels), gold) + 0.02
    # P(says c | true c), averaged over the three classes, recovers each annotator's
    # realised accuracy against the simulated truth (which DS never sees).
    learned = [np.diag(model.errors_.loc[a].to_numpy()).mean() for a in range(len(skill))]
    np.testing.assert_allclose(learned, skill, atol=0.05)
    assert np.abs(np.subtract(learned, skill)).mean() < 0.02
    assert model.priors_.sum() == pytest.approx(1)
    assert model.priors_.to_numpy() == pytest.approx([1 / 3] * 3, abs=0.04)


def test_dawid_skene_state_shapes_and_smoothing(rte_labels) -> None:
    model = DawidSkene(n_iter=50).fit(rte_labels)
    n_annotators = rte_labels["annotator_id"].nunique()
    assert model.errors_.shape == (n_annotators * 2, 2)
    assert model.errors_.index.names == ["annotator_id", "label"]
    # Every annotator's confusion matrix has columns (true labels) summing to one, and
    # smoothing keeps annotators with five labels away from probabilities of 0 and 1.
    np.testing.assert_allclose(model.errors_.groupby(level=0).sum().to_numpy(), 1.0)
    assert 0 < model.errors_.to_numpy().min() and model.errors_.to_numpy().max() < 1
    assert 1 < model.n_iter_ < 50
    np.testing.assert_allclose(model.probas_.sum(axis=1), 1.0)
    chosen = model.probas_.columns.get_indexer(model.labels_)
    np.testing.assert_allclose(model.confidence_, model.probas_.to_numpy().max(axis=1))
    np.testing.assert_array_equal(chosen, model.probas_.to_numpy().argmax(axis=1))
    assert (model.confidence_ >= 0.5).all()


def test_dawid_skene_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="smoothing > 0"):
        DawidSkene(smoothing=0)


def test_apply_overrides_gold_beats_adjudicated() -> None:
    consensus = pd.DataFrame({"item_id": ["1", "2", "3", "4"], "label": ["x", "x", "y", "y"],
                              "confidence": [0.6, 0.7, 0.8, 0.9]})  # fmt: skip
    gold = pd.Series({"1": "y", "2": "x", "99": "x"})
    adjudicated = pd.Series({"2": "y", "3": "x"})
    result = apply_overrides(consensus, gold, adjudicated)
    assert result["label"].tolist() == ["y", "x", "x", "y"]
    assert result["confidence"].tolist() == [1.0, 1.0, 1.0, 0.9]
    assert result["source"].tolist() == ["gold", "gold", "adjudicated", "consensus"]
    assert apply_overrides(consensus)["source"].eq("consensus").all()
    pd.testing.assert_frame_equal(consensus, consensus.assign())  # input untouched
    assert consensus["label"].tolist() == ["x", "x", "y", "y"]
