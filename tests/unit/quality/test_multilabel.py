"""Multi-label quality: metrics against reference implementations, gold scoring against
scikit-learn, consensus on real crowd answers (CoNLL-2003 entity types per sentence)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import krippendorff
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, hamming_loss, precision_recall_fscore_support
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

from labelloop.quality.agreement import InputError
from labelloop.quality.multilabel import (
    JointDawidSkene,
    MultiLabelDawidSkene,
    MultiLabelMajorityVote,
    encode_answers,
    gold_scores,
    item_agreement,
    label_agreement,
    label_kappa_matrices,
    label_kappa_pairs,
    label_scores,
    score_sets,
)

ENTITY_TYPES = ("PER", "ORG", "LOC", "MISC")
CONLL = Path(__file__).resolve().parents[2] / "data" / "conll-mturk-dev"
CONLL_SHARED = Path("/work/shared/data/conll-mturk-dev")


def conll_entity_sets(folder: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Real multi-label crowd answers: the set of entity types each MTurk worker marked in
    a sentence (11,545 answers on 2,743 sentences), and the gold set of each sentence, both
    as tidy frames (one row per type; an NA row for "no entity")."""
    folder = folder or (CONLL if CONLL.is_dir() else CONLL_SHARED)

    def rows(record: dict, spans: str) -> list[str | None]:
        return sorted({span[2] for span in record[spans]}) or [None]

    with open(folder / "crowd_spans.jsonl", encoding="utf-8") as lines:
        answers = [json.loads(line) for line in lines]
    labels = pd.DataFrame([
        (answer["item_id"], answer["annotator_id"], label)
        for answer in answers for label in rows(answer, "spans")
    ], columns=["item_id", "annotator_id", "label"])  # fmt: skip
    with open(folder / "items.jsonl", encoding="utf-8") as lines:
        items = [json.loads(line) for line in lines]
    gold = pd.DataFrame([(item["id"], label) for item in items for label in rows(item, "gold")],
                        columns=["item_id", "label"])  # fmt: skip
    return labels, gold


@pytest.fixture(scope="module")
def conll() -> tuple[pd.DataFrame, pd.DataFrame]:
    return conll_entity_sets()


def random_sets(seed: int, n_items: int = 60, n_annotators: int = 5, n_labels: int = 3,
                answered: float = 0.7, everyone: bool = False) -> pd.DataFrame:  # fmt: skip
    """Noisy copies of a true set per item; some answers empty; some annotators absent."""
    rng = np.random.default_rng(seed)
    truth = rng.random((n_items, n_labels)) < 0.4
    rows = []
    for item, annotator in itertools.product(range(n_items), range(n_annotators)):
        if not everyone and rng.random() > answered:
            continue
        said = np.where(rng.random(n_labels) < 0.8, truth[item], rng.random(n_labels) < 0.3)
        chosen = [f"L{k}" for k in np.flatnonzero(said)] or [None]
        rows += [(f"i{item:02d}", f"a{annotator}", label) for label in chosen]
    return pd.DataFrame(rows, columns=["item_id", "annotator_id", "label"])


LABELS3 = ["L0", "L1", "L2"]


def indicator(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """(item_id, annotator_id) x labels 0/1 table, built independently of the library."""
    chosen = frame.dropna(subset=["label"]).assign(one=1)
    table = chosen.pivot_table(index=["item_id", "annotator_id"], columns="label",
                               values="one", fill_value=0)  # fmt: skip
    answers = frame[["item_id", "annotator_id"]].drop_duplicates()
    index = pd.MultiIndex.from_frame(answers).sort_values()
    return table.reindex(index=index, columns=labels, fill_value=0).astype(int)


def test_label_kappa_matches_sklearn_on_every_pair() -> None:
    frame = random_sets(1)
    table = indicator(frame, LABELS3)
    pairs = label_kappa_pairs(frame, LABELS3, min_shared=5)
    assert set(pairs["label"]) == set(LABELS3) and len(pairs) == 3 * 10
    for row in pairs.itertuples():
        a = table.xs(row.annotator_a, level="annotator_id")[row.label]
        b = table.xs(row.annotator_b, level="annotator_id")[row.label]
        shared = a.index.intersection(b.index)
        assert row.n_shared == len(shared)
        assert row.kappa == pytest.approx(cohen_kappa_score(a[shared], b[shared]), abs=1e-12)
    matrices = label_kappa_matrices(pairs)
    l1 = matrices["L1"]
    assert l1.shape == (5, 5) and np.allclose(np.diag(l1), 1)
    first = pairs[pairs["label"] == "L1"].iloc[0]
    assert l1.loc[first.annotator_b, first.annotator_a] == first.kappa
    means = label_agreement(frame, LABELS3, min_shared=5)["kappa_mean"]
    assert means.to_dict() == pytest.approx(pairs.groupby("label")["kappa"].mean().to_dict())


def test_label_fleiss_and_alpha_match_statsmodels_and_krippendorff() -> None:
    complete, partial = random_sets(2, everyone=True), random_sets(3)
    full_table, part_table = indicator(complete, LABELS3), indicator(partial, LABELS3)
    by_label = label_agreement(complete, LABELS3)
    partial_alpha = label_agreement(partial, LABELS3)
    for label in LABELS3:
        present = full_table[label].groupby(level="item_id").sum().to_numpy()
        counts = np.column_stack([5 - present, present])
        assert by_label.loc[label, "fleiss_kappa"] == pytest.approx(statsmodels_fleiss(counts))
        for frame, table, result in ((complete, full_table, by_label),
                                     (partial, part_table, partial_alpha)):  # fmt: skip
            reliability = table[label].unstack("item_id").to_numpy(float)  # NaN: no answer
            expected = krippendorff.alpha(reliability_data=reliability,
                                          level_of_measurement="nominal")  # fmt: skip
            assert result.loc[label, "krippendorff_alpha"] == pytest.approx(expected)
    assert partial_alpha["fleiss_kappa"].isna().all()  # raters per item differ
    assert by_label["prevalence"].to_dict() == pytest.approx(full_table.mean().to_dict())


def test_item_jaccard_exact_match_and_empty_answers() -> None:
    frame = pd.DataFrame([
        ("both-empty", "a", None), ("both-empty", "b", None),
        ("half", "a", "L0"), ("half", "a", "L1"), ("half", "b", "L0"),
        ("three", "a", "L0"), ("three", "b", "L0"), ("three", "c", None),
        ("alone", "a", "L2"),
    ], columns=["item_id", "annotator_id", "label"])  # fmt: skip
    table = item_agreement(frame, LABELS3).set_index("item_id")
    assert table.loc["both-empty", ["n_answers", "n_pairs", "jaccard", "exact_match"]].tolist() == [
        2, 1, 1.0, 1.0]  # fmt: skip
    assert table.loc["half", ["jaccard", "exact_match"]].tolist() == [0.5, 0.0]
    # {L0}, {L0}, {}: pairs score 1, 0, 0.
    assert table.loc["three", ["n_pairs", "jaccard", "exact_match"]].tolist() == pytest.approx(
        [3, 1 / 3, 1 / 3])  # fmt: skip
    assert table.loc["alone", "n_pairs"] == 0 and np.isnan(table.loc["alone", "jaccard"])
    # An empty answer is an answer with every label absent: it counts in the binary frames.
    answers = encode_answers(frame, LABELS3)
    both_empty = answers.item == answers.items.get_loc("both-empty")
    assert len(answers.item) == 8 and both_empty.sum() == 2
    assert not answers.chosen[both_empty].any()


def test_gold_scores_match_sklearn() -> None:
    frame = random_sets(4)
    truth = random_sets(5, n_annotators=1, answered=1.0).drop(columns="annotator_id")
    truth = truth[truth["item_id"] != "i07"]  # one item without gold
    table = indicator(frame, LABELS3)
    gold_table = indicator(truth.assign(annotator_id="g"), LABELS3).droplevel("annotator_id")
    scores = gold_scores(frame, truth, LABELS3).set_index("annotator_id")
    per_label = label_scores(frame, truth, LABELS3).set_index(["annotator_id", "label"])
    for annotator, said in table.groupby(level="annotator_id"):
        said = said.droplevel("annotator_id")
        said = said[said.index.isin(gold_table.index)]
        true = gold_table.loc[said.index].to_numpy()
        row = scores.loc[annotator]
        assert row["n_gold"] == len(said) and row["n_cells"] == 3 * len(said)
        assert row["accuracy"] == pytest.approx(1 - hamming_loss(true, said.to_numpy()))
        assert row["exact_match"] == pytest.approx((true == said.to_numpy()).all(axis=1).mean())
        precision, recall, f1, support = precision_recall_fscore_support(
            true, said.to_numpy(), zero_division=np.nan)
        ours = per_label.loc[annotator].loc[LABELS3]
        np.testing.assert_allclose(ours["precision"], precision)
        np.testing.assert_allclose(ours["recall"], recall)
        np.testing.assert_allclose(ours["f1"], f1)
        assert ours["support"].tolist() == support.tolist()
        macro = precision_recall_fscore_support(true, said.to_numpy(), average="macro",
                                                zero_division=np.nan)[2]  # fmt: skip
        assert row["macro_f1"] == pytest.approx(macro)
        assert row["ci_low"] < row["accuracy"] < row["ci_high"]


def test_empty_gold_and_empty_consensus_are_sets_not_gaps() -> None:
    frame = pd.DataFrame([
        ("i1", "a", None), ("i1", "b", None), ("i1", "c", "L0"),
        ("i2", "a", "L1"), ("i2", "b", "L1"), ("i2", "c", "L1"),
    ], columns=["item_id", "annotator_id", "label"])  # fmt: skip
    gold = pd.DataFrame({"item_id": ["i1", "i2"], "label": [None, "L1"]})
    scores = gold_scores(frame, gold, LABELS3).set_index("annotator_id")
    assert scores["n_gold"].tolist() == [2, 2, 2]
    assert scores.loc["a", ["accuracy", "exact_match"]].tolist() == [1.0, 1.0]
    assert scores.loc["c", "accuracy"] == pytest.approx(5 / 6)
    model = MultiLabelMajorityVote(LABELS3).fit(frame)
    assert model.labels_.to_dict() == {"i1": (), "i2": ("L1",)}
    consensus = model.to_frame()
    assert consensus["item_id"].tolist() == ["i1", "i2"] and pd.isna(consensus["label"][0])
    assert consensus["confidence"].tolist() == pytest.approx([2 / 3, 1.0])
    assert score_sets(consensus, gold, LABELS3)["exact_match"] == 1.0


def test_exclusive_label_resolved_by_posterior() -> None:
    # none 4/5 + A 3/5: {none} (0.8 * 0.4) beats {A} (0.2 * 0.6).
    # none 3/5 + A, B 4/5: {A, B} (0.4 * 0.8 * 0.8) beats {none} (0.6 * 0.2 * 0.2).
    sets = {"x": ["none", "none", "none A", "none A", "A"],
            "y": ["none A B", "none A B", "none", "A B", "A B"]}  # fmt: skip
    frame = pd.DataFrame([
        (item, f"a{k}", label)
        for item, answers in sets.items() for k, answer in enumerate(answers)
        for label in answer.split()
    ], columns=["item_id", "annotator_id", "label"])  # fmt: skip
    labels = ["A", "B", "none"]
    free = MultiLabelMajorityVote(labels).fit(frame)
    assert free.labels_.to_dict() == {"x": ("A", "none"), "y": ("A", "B", "none")}
    ruled = MultiLabelMajorityVote(labels, exclusive=["none"]).fit(frame)
    assert ruled.labels_.to_dict() == {"x": ("none",), "y": ("A", "B")}
    # Conditioned on a valid set: P({none}) = 0.32 / (0.2 + 0.32) on x.
    assert ruled.confidence_["x"] == pytest.approx(0.32 / 0.52)
    # Marginals over the valid sets {}, {A}, {none}: P(A) = 0.2 * 0.6 / 0.52.
    assert ruled.probas_.loc["x"].tolist() == pytest.approx([0.12 / 0.52, 0, 0.32 / 0.52])
    for model in (MultiLabelDawidSkene(labels, ["none"]), JointDawidSkene(labels, ["none"])):
        chosen = model.fit_predict(frame)
        assert all("none" not in found or found == ("none",) for found in chosen)


def test_validation_errors_name_the_problem() -> None:
    frame = pd.DataFrame({"item_id": ["i1", "i1"], "annotator_id": ["a", "a"],
                          "label": ["L0", "Locaton"]})  # fmt: skip
    with pytest.raises(InputError, match=r"label 'Locaton' is not in the label set \(item_id "
                       r"'i1', annotator_id 'a'.*accepted: L0, L1, L2, or empty"):  # fmt: skip
        item_agreement(frame, LABELS3)
    twice = frame.assign(label="L0")
    with pytest.raises(InputError, match="label 'L0' occurs more than once for item_id 'i1'"):
        encode_answers(twice, LABELS3)
    mixed = frame.assign(label=["L0", None])
    with pytest.raises(InputError, match="both an empty row .* and chosen labels"):
        MultiLabelMajorityVote(LABELS3).fit(mixed)
    gold = pd.DataFrame({"item_id": ["i1"], "label": ["L9"]})
    with pytest.raises(InputError, match=r"gold: label 'L9' is not in .* \(item_id 'i1';"):
        gold_scores(frame.iloc[:1], gold, LABELS3)
    with pytest.raises(InputError, match="exclusive label 'nothing' is not in the label set"):
        JointDawidSkene(LABELS3, exclusive=["nothing"])
    with pytest.raises(InputError, match="missing column 'annotator_id'.*rename column 'worker'"):
        label_agreement(frame.rename(columns={"annotator_id": "worker"}), LABELS3)
    with pytest.raises(InputError, match="label set: 'L0' occurs twice"):
        label_agreement(frame, ["L0", "L0"])


def test_dawid_skene_learns_sensitivity_and_specificity() -> None:
    # Annotator a0 misses half of L0; a1..a4 are reliable. Every item answered by all.
    rng = np.random.default_rng(7)
    truth = rng.random((400, 2)) < 0.5
    rows = []
    for item in range(400):
        for annotator in range(5):
            said = truth[item] ^ (rng.random(2) < 0.05)
            if annotator == 0:
                said[0] = truth[item, 0] and rng.random() < 0.5
            rows += [(item, annotator, label) for label in np.array(["L0", "L1"])[said]] or [
                (item, annotator, None)]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["item_id", "annotator_id", "label"])
    for model in (MultiLabelDawidSkene(["L0", "L1"]), JointDawidSkene(["L0", "L1"])):
        model.fit(frame)
        assert model.sensitivity_.loc[0, "L0"] == pytest.approx(0.5, abs=0.07)
        assert model.specificity_.loc[0, "L0"] > 0.97
        assert model.sensitivity_.loc[1:, "L1"].min() > 0.9


def test_consensus_on_real_conll_entity_types(conll: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    labels, gold = conll
    assert labels.groupby(["item_id", "annotator_id"]).ngroups == 11_545
    agreement = item_agreement(labels, ENTITY_TYPES)
    assert len(agreement) == 2_743
    results = {
        name: score_sets(model.fit(labels).to_frame(), gold, ENTITY_TYPES)
        for name, model in (("mv", MultiLabelMajorityVote(ENTITY_TYPES)),
                            ("ds", MultiLabelDawidSkene(ENTITY_TYPES)),
                            ("joint", JointDawidSkene(ENTITY_TYPES)))  # fmt: skip
    }
    assert {result["n_items"] for result in results.values()} == {2_743}
    figures = {(name, score): results[name][score]
               for name in results for score in ("exact_match", "macro_f1")}  # fmt: skip
    assert figures == pytest.approx({
        ("mv", "exact_match"): 0.5851, ("mv", "macro_f1"): 0.6906,
        ("ds", "exact_match"): 0.6708, ("ds", "macro_f1"): 0.7920,
        ("joint", "exact_match"): 0.6832, ("joint", "macro_f1"): 0.7925,
    }, abs=5e-4)  # fmt: skip
    for name in ("ds", "joint"):
        assert results[name]["exact_match"] >= results["mv"]["exact_match"]
        assert results[name]["macro_f1"] >= results["mv"]["macro_f1"]
