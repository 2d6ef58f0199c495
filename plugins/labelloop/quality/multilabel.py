"""Multi-label choices (Label Studio ``<Choices choice="multiple">``): the answer frame,
agreement per label and per item, gold scoring, and consensus sets.

The frame is agreement.py's tidy frame with one row per *chosen* label; an answer that chose
nothing is one row whose label is NA (a real answer: every label absent). The label set comes
from the project config, so a label nobody chose is still known to be absent. Per-label
metrics and per-label Dawid-Skene reuse the single-label code on a derived binary frame
("was this label chosen?"), so both kinds of task share one implementation of each metric.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import logsumexp

from .agreement import (
    ANNOTATOR,
    COLUMNS,
    DEFAULT_MIN_SHARED,
    ITEM,
    LABEL,
    InputError,
    _codes,
    check_columns,
    fleiss_kappa,
    kappa_matrix,
    krippendorff_alpha,
    pairwise_kappa,
    show,
    wilson_interval,
)
from .consensus import DawidSkene

#: JointDawidSkene keeps a posterior over every valid set per item; beyond this many sets
#: (10 free labels) the items x sets matrices stop fitting in memory on big batches.
MAX_JOINT_SETS = 1024

GOLD = "gold"


@dataclass(frozen=True)
class Answers:
    """The multi-label frame as one row per answer (an annotator's set for an item), sorted
    by item then annotator: ``chosen[r, l]`` says whether answer ``r`` chose label ``l``."""

    item: np.ndarray  # answer -> item code
    annotator: np.ndarray  # answer -> annotator code
    chosen: np.ndarray  # answers x labels, bool
    items: pd.Index
    annotators: pd.Index
    labels: pd.Index  # the config's label set, in config order

    @property
    def n_items(self) -> int:
        return len(self.items)

    def binary(self, label: int) -> pd.DataFrame:
        """The single-label tidy frame "was label ``label`` chosen?" (bool). Ids are integer
        codes, which keep the sorted order of the real ids and factorize fast."""
        return pd.DataFrame({ITEM: self.item, ANNOTATOR: self.annotator,
                             LABEL: self.chosen[:, label]})  # fmt: skip

    def per_item(self) -> sparse.csr_matrix:
        """items x answers incidence matrix: sums answers' rows into their item's row."""
        n = len(self.item)
        return sparse.csr_matrix((np.ones(n), (self.item, np.arange(n))), shape=(self.n_items, n))

    def per_annotator(self) -> sparse.csr_matrix:
        """annotators x answers incidence matrix."""
        n = len(self.item)
        shape = (len(self.annotators), n)
        return sparse.csr_matrix((np.ones(n), (self.annotator, np.arange(n))), shape=shape)


def check_label_set(labels: Sequence[Hashable]) -> pd.Index:
    """The config's label set as an Index: non-empty, no NA, no repeats."""
    index = pd.Index(list(labels), name=LABEL)
    if index.empty:
        raise InputError("label set: empty; list the <Choice> values of the config")
    if index.hasnans:
        raise InputError("label set: contains an empty label; every <Choice> needs a value")
    if index.has_duplicates:
        raise InputError(f"label set: {show(index[index.duplicated()][0])} occurs twice")
    return index


def _accepted(labels: pd.Index) -> str:
    return ", ".join(map(str, labels)) + ", or empty for an answer that chose nothing"


def _where(row: pd.Series, what: str) -> str:
    place = f"item_id {show(row[ITEM])}"
    return place if what == GOLD else f"{place}, annotator_id {show(row[ANNOTATOR])}"


def encode_answers(
    data: pd.DataFrame, labels: Sequence[Hashable], what: str = "labels"
) -> Answers:
    """Validate the multi-label frame against the label set and encode it; the one entry
    point of every function here. Refuses a label outside the set, a label given twice in
    one answer, and an answer that has both an empty row and labels."""
    label_set = check_label_set(labels)
    check_columns(data, COLUMNS, what)
    if data.empty:
        raise InputError(
            f"{what}: no rows; expected one row per chosen label (label empty for an answer "
            "that chose nothing)"
        )
    (item, items), (annotator, annotators) = _codes(data[ITEM]), _codes(data[ANNOTATOR])
    for column, codes in ((ITEM, item), (ANNOTATOR, annotator)):
        n_empty = int((codes < 0).sum())
        if n_empty:
            raise InputError(f"{what}: {n_empty} rows have an empty {column}; fill or drop them")
    present = data[LABEL].notna().to_numpy()
    label = np.full(len(data), -1, dtype=np.int64)
    label[present] = label_set.get_indexer(data[LABEL].to_numpy()[present])
    unknown = present & (label < 0)
    if unknown.any():
        values = pd.unique(data[LABEL].to_numpy()[unknown])
        raise InputError(
            f"{what}: label {show(values[0])} is not in the label set "
            f"({_where(data[unknown].iloc[0], what)}; {int(unknown.sum())} rows, "
            f"{len(values)} unknown labels); accepted: {_accepted(label_set)}"
        )

    pair_codes, answer = np.unique(item * len(annotators) + annotator, return_inverse=True)
    cell = pd.Series(answer * (len(label_set) + 1) + label + 1)  # +1: NA is its own "label"
    repeated = cell.duplicated(keep=False).to_numpy()
    if repeated.any():
        row = data[repeated].iloc[0]
        given = "an empty row" if pd.isna(row[LABEL]) else f"label {show(row[LABEL])}"
        raise InputError(
            f"{what}: {given} occurs more than once for {_where(row, what)}; "
            "keep one row per chosen label"
        )
    has_empty = np.bincount(answer[~present], minlength=len(pair_codes)) > 0
    has_label = np.bincount(answer[present], minlength=len(pair_codes)) > 0
    if (has_empty & has_label).any():
        row = data[has_empty[answer] & has_label[answer]].iloc[0]
        raise InputError(
            f"{what}: {_where(row, what)} has both an empty row (chose nothing) and chosen "
            "labels; drop the empty row or the labels"
        )
    chosen = np.zeros((len(pair_codes), len(label_set)), dtype=bool)
    chosen[answer[present], label[present]] = True
    answer_item, answer_annotator = np.divmod(pair_codes, len(annotators))
    return Answers(
        item=answer_item, annotator=answer_annotator, chosen=chosen,
        items=items.rename(ITEM), annotators=annotators.rename(ANNOTATOR), labels=label_set,
    )  # fmt: skip


def encode_gold(gold: pd.DataFrame, labels: Sequence[Hashable]) -> Answers:
    """Gold sets: a frame ``item_id, label``, one row per gold label, an NA label for an
    item whose gold set is empty. Encoded as the answers of one annotator, ``"gold"``."""
    check_columns(gold, (ITEM, LABEL), GOLD)
    return encode_answers(gold.assign(**{ANNOTATOR: GOLD}), labels, what=GOLD)


# --- agreement -----------------------------------------------------------------------------


def _label_pairs(answers: Answers, min_shared: int) -> pd.DataFrame:
    frames = []
    for code, label in enumerate(answers.labels):
        pairs = pairwise_kappa(answers.binary(code), min_shared)
        pairs["annotator_a"] = answers.annotators.take(pairs["annotator_a"])
        pairs["annotator_b"] = answers.annotators.take(pairs["annotator_b"])
        frames.append(pairs.assign(label=label))
    return pd.concat(frames, ignore_index=True)[
        ["label", "annotator_a", "annotator_b", "n_shared", "kappa"]
    ]


def label_kappa_pairs(
    data: pd.DataFrame, labels: Sequence[Hashable], min_shared: int = DEFAULT_MIN_SHARED
) -> pd.DataFrame:
    """Binary Cohen's kappa per label ("chosen or not") for every annotator pair sharing at
    least ``min_shared`` items. Columns: label, annotator_a, annotator_b, n_shared, kappa."""
    return _label_pairs(encode_answers(data, labels), min_shared)


def label_kappa_matrices(pairs: pd.DataFrame) -> dict[Hashable, pd.DataFrame]:
    """``label_kappa_pairs`` output as one annotator x annotator matrix per label."""
    return {label: kappa_matrix(group) for label, group in pairs.groupby("label", sort=False)}


def label_agreement(
    data: pd.DataFrame, labels: Sequence[Hashable], min_shared: int = DEFAULT_MIN_SHARED
) -> pd.DataFrame:
    """Per label: how often it was chosen and how well annotators agree on choosing it.

    Columns (index: label): n_chosen, prevalence (share of answers choosing it),
    kappa_mean (mean binary Cohen's kappa over pairs with at least ``min_shared`` shared
    items and a defined kappa), n_pairs, fleiss_kappa (NaN unless every item has the same
    number, >= 2, of answers), krippendorff_alpha (nominal). A label nobody chose has NaN
    agreement: there is no variation to agree on.
    """
    answers = encode_answers(data, labels)
    pairs = _label_pairs(answers, min_shared)
    kappa = pairs.dropna(subset=["kappa"]).groupby("label")["kappa"]
    raters = np.bincount(answers.item, minlength=answers.n_items)
    fleiss_defined = raters.min() == raters.max() >= 2
    rows = []
    for code in range(len(answers.labels)):
        binary = answers.binary(code)
        rows.append((
            int(answers.chosen[:, code].sum()), float(answers.chosen[:, code].mean()),
            fleiss_kappa(binary) if fleiss_defined else np.nan, krippendorff_alpha(binary),
        ))  # fmt: skip
    table = pd.DataFrame(rows, index=answers.labels,
                         columns=["n_chosen", "prevalence", "fleiss_kappa", "krippendorff_alpha"])
    table.insert(2, "kappa_mean", kappa.mean().reindex(answers.labels))
    table.insert(3, "n_pairs", kappa.size().reindex(answers.labels, fill_value=0))
    return table


def _answer_pairs(answers: Answers) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (first, second) of answers on the same item; answers are sorted by item."""
    per_item = np.bincount(answers.item, minlength=answers.n_items)
    start = np.cumsum(per_item) - per_item
    position = np.arange(len(answers.item)) - start[answers.item]
    partners = per_item[answers.item] - 1 - position
    first = np.repeat(np.arange(len(answers.item)), partners)
    offset = np.arange(len(first)) - np.repeat(np.cumsum(partners) - partners, partners)
    return first, first + 1 + offset


def item_agreement(data: pd.DataFrame, labels: Sequence[Hashable]) -> pd.DataFrame:
    """Per item: n_answers, n_pairs, jaccard (mean over answer pairs of |A & B| / |A | B|,
    1 for two empty sets: they agree), exact_match (share of pairs with identical sets).
    NaN for an item with one answer. Sets are packed into bits, so a pair costs a few bytes."""
    answers = encode_answers(data, labels)
    first, second = _answer_pairs(answers)
    bits = np.packbits(answers.chosen, axis=1)
    both = np.bitwise_count(bits[first] & bits[second]).sum(axis=1, dtype=np.int64)
    either = np.bitwise_count(bits[first] | bits[second]).sum(axis=1, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        jaccard = np.where(either == 0, 1.0, both / either)
    pair_item, size = answers.item[first], answers.n_items
    n_pairs = np.bincount(pair_item, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({
            ITEM: answers.items,
            "n_answers": np.bincount(answers.item, minlength=size),
            "n_pairs": n_pairs,
            "jaccard": np.bincount(pair_item, weights=jaccard, minlength=size) / n_pairs,
            "exact_match": np.bincount(pair_item, weights=both == either, minlength=size) / n_pairs,
        })  # fmt: skip


# --- gold ----------------------------------------------------------------------------------


def _gold_counts(answers: Answers, gold: Answers) -> dict[str, np.ndarray]:
    """Per annotator x label confusion counts on gold items, plus per-annotator item counts."""
    gold_row = gold.items.get_indexer(answers.items)[answers.item]  # gold answer == gold item
    scored = gold_row >= 0
    said, truth = answers.chosen[scored], gold.chosen[gold_row[scored]]
    by_annotator = answers.per_annotator()[:, scored]

    def count(cells: np.ndarray) -> np.ndarray:
        return np.asarray(by_annotator @ cells.astype(np.float64)).astype(np.int64)

    return {
        "tp": count(said & truth), "fp": count(said & ~truth),
        "fn": count(~said & truth), "tn": count(~said & ~truth),
        "n_answers": np.bincount(answers.annotator, minlength=len(answers.annotators)),
        "n_gold": count(np.ones((len(said), 1), dtype=bool))[:, 0],
        "n_exact": count((said == truth).all(axis=1, keepdims=True))[:, 0],
    }  # fmt: skip


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1, NaN where undefined (as sklearn with zero_division=nan)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"precision": tp / (tp + fp), "recall": tp / (tp + fn),
                "f1": 2 * tp / (2 * tp + fp + fn)}  # fmt: skip


def _scores(answers: Answers, gold: Answers, confidence: float) -> pd.DataFrame:
    counts = _gold_counts(answers, gold)
    n_gold = counts["n_gold"]
    n_cells = n_gold * len(answers.labels)
    n_correct = (counts["tp"] + counts["tn"]).sum(axis=1)
    f1 = _f1(counts["tp"], counts["fp"], counts["fn"])["f1"]
    n_defined = (~np.isnan(f1)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = n_correct / n_cells
        exact_match = counts["n_exact"] / n_gold
        macro_f1 = np.where(n_defined > 0, np.nansum(f1, axis=1) / n_defined, np.nan)
    # An item's cells are not independent draws, so the interval counts items, not cells.
    low, high = wilson_interval(accuracy * n_gold, n_gold, confidence)
    return pd.DataFrame({
        ANNOTATOR: answers.annotators, "n_answers": counts["n_answers"], "n_gold": n_gold,
        "n_cells": n_cells, "n_correct": n_correct, "accuracy": accuracy,
        "ci_low": low, "ci_high": high, "exact_match": exact_match, "macro_f1": macro_f1,
    })  # fmt: skip


def gold_scores(
    data: pd.DataFrame, gold: pd.DataFrame, labels: Sequence[Hashable], confidence: float = 0.95
) -> pd.DataFrame:
    """Per annotator on gold items: the per-cell (Hamming) accuracy over items x labels, a
    Wilson interval for it, exact-set match rate and macro-F1 over labels.

    Columns: annotator_id, n_answers, n_gold (gold items answered), n_cells (n_gold x
    labels), n_correct (cells), accuracy, ci_low, ci_high, exact_match, macro_f1. The
    interval counts gold items, not cells (an item's cells are not independent), so it is
    conservative. macro_f1 averages the labels whose F1 is defined (the label occurs in the
    gold or in the answers). Annotators without gold get NaN, as in ``gold_accuracy``.
    """
    return _scores(encode_answers(data, labels), encode_gold(gold, labels), confidence)


def label_scores(
    data: pd.DataFrame, gold: pd.DataFrame, labels: Sequence[Hashable]
) -> pd.DataFrame:
    """Per annotator and label on gold items: support (gold positives), tp, fp, fn,
    precision, recall, f1; NaN where a ratio is undefined (0 / 0)."""
    answers = encode_answers(data, labels)
    counts = _gold_counts(answers, encode_gold(gold, labels))
    shape = counts["tp"].shape
    tp_fp_fn = {key: counts[key] for key in ("tp", "fp", "fn")}
    columns = {
        ANNOTATOR: np.repeat(answers.annotators.to_numpy(), shape[1]),
        LABEL: np.tile(answers.labels.to_numpy(), shape[0]),
        "support": (counts["tp"] + counts["fn"]).ravel(),
        **{key: value.ravel() for key, value in tp_fp_fn.items()},
        **{key: value.ravel() for key, value in _f1(**tp_fp_fn).items()},
    }
    return pd.DataFrame(columns)


def score_sets(
    predicted: pd.DataFrame, gold: pd.DataFrame, labels: Sequence[Hashable]
) -> pd.Series:
    """A consensus (frame item_id, label; e.g. ``to_frame()``) against gold: n_items,
    exact_match, hamming_accuracy, macro_f1 over the gold items it covers."""
    as_answers = predicted[[ITEM, LABEL]].assign(**{ANNOTATOR: "consensus"})
    row = _scores(encode_answers(as_answers, labels, "consensus"), encode_gold(gold, labels), 0.95)
    row = row.iloc[0]
    return pd.Series({
        "n_items": int(row["n_gold"]), "exact_match": row["exact_match"],
        "hamming_accuracy": row["accuracy"], "macro_f1": row["macro_f1"],
    })  # fmt: skip


# --- consensus -----------------------------------------------------------------------------


class _SetAggregator:
    """What every multi-label consensus learns: one set per item, its probability, and each
    label's marginal probability. ``exclusive`` labels (e.g. "none of these") exclude all
    others, so the consensus is always a set an annotator was allowed to give."""

    labels_: pd.Series  # item_id -> tuple of chosen labels, config order; () = none
    probas_: pd.DataFrame  # item_id x label -> P(label in the true set)
    confidence_: pd.Series  # item_id -> P(the true set is exactly labels_)

    def __init__(self, labels: Sequence[Hashable], exclusive: Sequence[Hashable] = ()) -> None:
        self.labels = check_label_set(labels)
        unknown = [label for label in exclusive if label not in self.labels]
        if unknown:
            raise InputError(
                f"exclusive label {show(unknown[0])} is not in the label set; accepted: "
                + ", ".join(map(str, self.labels))
            )
        self.exclusive = tuple(exclusive)
        self._is_exclusive = self.labels.isin(self.exclusive)

    def fit(self, data: pd.DataFrame) -> Self:
        raise NotImplementedError

    def fit_predict(self, data: pd.DataFrame) -> pd.Series:
        """Fit on the multi-label frame and return the consensus set per item_id."""
        return self.fit(data).labels_

    def to_frame(self) -> pd.DataFrame:
        """Tidy consensus: item_id, label, confidence; one row per chosen label (confidence:
        its marginal probability), an NA row for an empty set (confidence: P(empty))."""
        item, label = np.nonzero(self._chosen)
        empty = np.flatnonzero(~self._chosen.any(axis=1))
        items = self.probas_.index
        frame = pd.DataFrame({
            ITEM: np.concatenate([items.take(item), items.take(empty)]),
            LABEL: [*self.labels.take(label), *[pd.NA] * len(empty)],
            "confidence": np.concatenate([self.probas_.to_numpy()[item, label],
                                          self.confidence_.to_numpy()[empty]]),
        })  # fmt: skip
        order = np.argsort(np.concatenate([item, empty]), kind="stable")
        return frame.iloc[order].reset_index(drop=True)

    def _store(self, items: pd.Index, marginal: np.ndarray, chosen: np.ndarray,
               probability: np.ndarray) -> None:  # fmt: skip
        self._chosen = chosen
        self.probas_ = pd.DataFrame(marginal, index=items, columns=self.labels)
        names = self.labels.to_numpy()
        self.labels_ = pd.Series([tuple(names[row]) for row in chosen], index=items, name=LABEL)
        self.confidence_ = pd.Series(probability, index=items, name="confidence")

    def _store_independent(self, items: pd.Index, p: np.ndarray) -> None:
        """From independent per-label probabilities: the most probable set that obeys the
        exclusive labels, and probabilities conditioned on obeying them.

        Valid sets have no exclusive label, or one exclusive label alone. The best set
        without one takes each other label iff p > 0.5 (ties: absent); the best with one is
        {x} for some exclusive x. Whichever is likelier wins, so "x and others" resolves by
        posterior: x alone against the others without x.
        """
        exclusive, q = self._is_exclusive, 1 - p
        no_exclusive = q[:, exclusive].prod(axis=1)
        free = np.zeros_like(p, dtype=bool)
        free[:, ~exclusive] = p[:, ~exclusive] > 0.5
        best_free = np.where(free, p, q)[:, ~exclusive].prod(axis=1) * no_exclusive
        others_absent = q[:, ~exclusive].prod(axis=1)
        columns = np.flatnonzero(exclusive)
        alone = np.column_stack([  # P({x}) = p_x * prod of q over every other label
            p[:, x] * others_absent * np.delete(q[:, exclusive], k, axis=1).prod(axis=1)
            for k, x in enumerate(columns)
        ]) if len(columns) else np.zeros((len(p), 0))  # fmt: skip
        candidates = np.column_stack([best_free, alone])
        winner = candidates.argmax(axis=1)  # ties: the set without an exclusive label
        chosen = np.where((winner == 0)[:, None], free, False)
        picked = winner > 0
        chosen[np.flatnonzero(picked), columns[winner[picked] - 1]] = True
        valid = no_exclusive + alone.sum(axis=1)
        marginal = p * no_exclusive[:, None]  # P(l and no exclusive label), l not exclusive
        marginal[:, columns] = alone
        with np.errstate(invalid="ignore", divide="ignore"):
            self._store(items, marginal / valid[:, None], chosen,
                        candidates.max(axis=1) / valid)  # fmt: skip


class MultiLabelMajorityVote(_SetAggregator):
    """Per-label majority vote: a label is in the set when more than half of the item's
    answers chose it (a tie leaves it out); its probability is that share."""

    def fit(self, data: pd.DataFrame) -> Self:
        answers = encode_answers(data, self.labels)
        per_item = answers.per_item()
        votes = np.asarray(per_item @ answers.chosen.astype(np.float64))
        self._store_independent(answers.items, votes / np.asarray(per_item.sum(axis=1)))
        return self


class MultiLabelDawidSkene(_SetAggregator):
    """Binary relevance: each label an independent binary Dawid-Skene problem (consensus.py's
    ``DawidSkene`` on the frame "was the label chosen?"), then the exclusive rule.

    Learned besides the set: ``sensitivity_`` and ``specificity_`` (annotator x label:
    P(chooses l | l true), P(leaves l out | l false); NaN for a label chosen in every
    answer or in none, where one of them means nothing), ``n_iter_`` per label.
    """

    sensitivity_: pd.DataFrame
    specificity_: pd.DataFrame
    n_iter_: pd.Series

    def __init__(
        self, labels: Sequence[Hashable], exclusive: Sequence[Hashable] = (), *,
        n_iter: int = 100, tol: float = 1e-5, smoothing: float = 0.01,
    ) -> None:  # fmt: skip
        super().__init__(labels, exclusive)
        DawidSkene(n_iter, tol, smoothing)  # refuses bad parameters now, not at fit time
        self.n_iter, self.tol, self.smoothing = n_iter, tol, smoothing

    def fit(self, data: pd.DataFrame) -> Self:
        answers = encode_answers(data, self.labels)
        shape = (answers.n_items, len(self.labels))
        p, n_iter = np.zeros(shape), []
        sensitivity = np.full((len(answers.annotators), len(self.labels)), np.nan)
        specificity = sensitivity.copy()
        for code in range(len(self.labels)):
            model = DawidSkene(self.n_iter, self.tol, self.smoothing).fit(answers.binary(code))
            probas = model.probas_.reindex(columns=[False, True], fill_value=0.0)
            p[:, code] = probas[True].reindex(range(answers.n_items)).to_numpy()
            errors = model.errors_  # rows (annotator code, said), columns truth
            if errors.shape[1] == 2:
                sensitivity[:, code] = errors[True].xs(True, level=LABEL).to_numpy()
                specificity[:, code] = errors[False].xs(False, level=LABEL).to_numpy()
            n_iter.append(model.n_iter_)
        self._store_independent(answers.items, p)
        self.sensitivity_ = pd.DataFrame(sensitivity, index=answers.annotators, columns=self.labels)
        self.specificity_ = pd.DataFrame(specificity, index=answers.annotators, columns=self.labels)
        self.n_iter_ = pd.Series(n_iter, index=self.labels, name="n_iter")
        return self


class JointDawidSkene(_SetAggregator):
    """Dawid-Skene over whole sets: the true set of an item is one of the valid sets (every
    subset of the non-exclusive labels, or one exclusive label alone) with a learned prior,
    and each annotator chooses each label with their own sensitivity / specificity.

    Per-label Dawid-Skene treats labels as unrelated; here the prior over sets learns which
    labels go together (and that an exclusive label goes with none), so the evidence for
    one label informs the others. It has as few annotator parameters as per-label
    Dawid-Skene (two per annotator and label), unlike Dawid-Skene on sets as classes
    (a confusion matrix over every set per annotator). EM from the majority-vote shares;
    ``smoothing`` is the pseudo-count of every count, as in ``DawidSkene``. Posterior ties
    go to the first set in the order of ``sets_``. At most ``MAX_JOINT_SETS`` valid sets.

    Learned besides the set: ``sets_`` (the valid sets, tuples), ``priors_`` (Series by
    set), ``sensitivity_``, ``specificity_`` (annotator x label), ``n_iter_``,
    ``log_likelihood_`` (mean per answer).
    """

    sets_: list[tuple[Hashable, ...]]
    priors_: pd.Series
    sensitivity_: pd.DataFrame
    specificity_: pd.DataFrame
    n_iter_: int
    log_likelihood_: float

    def __init__(
        self, labels: Sequence[Hashable], exclusive: Sequence[Hashable] = (), *,
        n_iter: int = 100, tol: float = 1e-5, smoothing: float = 0.01,
    ) -> None:  # fmt: skip
        super().__init__(labels, exclusive)
        if n_iter < 1 or tol < 0 or smoothing <= 0:
            raise ValueError("JointDawidSkene needs n_iter >= 1, tol >= 0 and smoothing > 0")
        n_free = int((~self._is_exclusive).sum())
        n_sets = 2**n_free + len(self.exclusive)
        if n_sets > MAX_JOINT_SETS:
            raise InputError(
                f"JointDawidSkene: {n_free} non-exclusive labels make {n_sets} possible sets, "
                f"more than {MAX_JOINT_SETS}; use MultiLabelDawidSkene"
            )
        self.n_iter, self.tol, self.smoothing = n_iter, tol, smoothing
        self._states = self._valid_sets(n_free)

    def _valid_sets(self, n_free: int) -> np.ndarray:
        """sets x labels, bool: the empty set first, then by size of the binary count."""
        free = (np.arange(2**n_free)[:, None] >> np.arange(n_free)) & 1
        states = np.zeros((2**n_free + len(self.exclusive), len(self.labels)), dtype=bool)
        states[: 2**n_free, ~self._is_exclusive] = free.astype(bool)
        for k, column in enumerate(np.flatnonzero(self._is_exclusive)):
            states[2**n_free + k, column] = True
        return states

    def fit(self, data: pd.DataFrame) -> Self:
        answers = encode_answers(data, self.labels)
        states = self._states.astype(np.float64)
        said = answers.chosen.astype(np.float64)
        per_item, per_annotator = answers.per_item(), answers.per_annotator()
        # Start: each item's sets weighted as if labels were independent with the vote shares.
        share = np.asarray(per_item @ said) / np.asarray(per_item.sum(axis=1))
        share = np.clip(share, 1e-6, 1 - 1e-6)
        log_joint = np.log(share) @ states.T + np.log(1 - share) @ (1 - states).T
        posterior = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
        previous = -np.inf
        for iteration in range(1, self.n_iter + 1):
            priors, sensitivity, specificity = self._m_step(posterior, states, said,
                                                            answers, per_annotator)  # fmt: skip
            # log P(answer | set) = sum over labels of log P(said_l | l in set); linear in
            # the set's indicator, so it sums over an item's answers before meeting the sets.
            sens, spec = sensitivity[answers.annotator], specificity[answers.annotator]
            if_true = said * np.log(sens) + (1 - said) * np.log(1 - sens)
            if_false = said * np.log(1 - spec) + (1 - said) * np.log(spec)
            base = np.asarray(per_item @ if_false.sum(axis=1)).ravel()
            shift = (per_item @ (if_true - if_false)) @ states.T
            log_joint = np.log(priors) + base[:, None] + shift
            log_evidence = logsumexp(log_joint, axis=1)
            posterior = np.exp(log_joint - log_evidence[:, None])
            log_likelihood = float(log_evidence.sum() / len(answers.item))
            if log_likelihood - previous < self.tol:
                break
            previous = log_likelihood

        best = posterior.argmax(axis=1)
        self._store(answers.items, posterior @ states, self._states[best],
                    posterior[np.arange(len(best)), best])  # fmt: skip
        names = self.labels.to_numpy()
        self.sets_ = [tuple(names[row]) for row in self._states]
        self.priors_ = pd.Series(priors, index=pd.Index(self.sets_, tupleize_cols=False),
                                 name="prior")  # fmt: skip
        self.sensitivity_ = pd.DataFrame(sensitivity, index=answers.annotators, columns=self.labels)
        self.specificity_ = pd.DataFrame(specificity, index=answers.annotators, columns=self.labels)
        self.n_iter_, self.log_likelihood_ = iteration, log_likelihood
        return self

    def _m_step(self, posterior: np.ndarray, states: np.ndarray, said: np.ndarray,
                answers: Answers, per_annotator: sparse.csr_matrix,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """Smoothed set priors and each annotator's per-label sensitivity and specificity."""
        priors = posterior.sum(axis=0) + self.smoothing
        true = (posterior @ states)[answers.item]  # P(label in the true set), per answer
        s = self.smoothing
        sensitivity = (per_annotator @ (true * said) + s) / (per_annotator @ true + 2 * s)
        specificity = ((per_annotator @ ((1 - true) * (1 - said)) + s)
                       / (per_annotator @ (1 - true) + 2 * s))  # fmt: skip
        return priors / priors.sum(), np.asarray(sensitivity), np.asarray(specificity)
