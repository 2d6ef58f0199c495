"""Agreement metrics over the tidy label frame, and the frame itself.

This module owns the tidy frame (columns ``item_id, annotator_id, label``): its
validation and its integer encoding, which the other quality modules reuse. Every metric
works on integer codes with ``bincount`` and sparse products, so a million labels cost
seconds, not a Python loop per pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd
from scipy import sparse

from labelloop.errors import InputError

ITEM, ANNOTATOR, LABEL = "item_id", "annotator_id", "label"
COLUMNS = (ITEM, ANNOTATOR, LABEL)

#: Pairs sharing fewer items get no kappa: on a handful of items kappa is noise.
DEFAULT_MIN_SHARED = 10

Level = Literal["nominal", "ordinal", "interval", "ratio"]

# Column names other tools use (crowd-kit, MTurk, Label Studio exports), for a useful hint.
_SYNONYMS = {
    "task": ITEM, "task_id": ITEM, "item": ITEM,
    "worker": ANNOTATOR, "worker_id": ANNOTATOR, "annotator": ANNOTATOR,
    "rater": ANNOTATOR, "rater_id": ANNOTATOR, "completed_by": ANNOTATOR,
}  # fmt: skip


def show(value: object) -> str:
    """repr for messages: ``'a1'`` or ``7``, never ``np.int64(7)``."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def check_columns(frame: pd.DataFrame, required: tuple[str, ...], what: str) -> None:
    """Raise naming the first missing column, and how to fix it when the cause is common."""
    missing = [column for column in required if column not in frame.columns]
    if not missing:
        return
    found = ", ".join(map(str, frame.columns)) or "none"
    renames = [
        f"rename column {old!r} to {new!r}"
        for old, new in _SYNONYMS.items()
        if old in frame.columns and new in missing
    ]
    fix = "; ".join(renames) or f"expected columns {', '.join(required)}"
    raise InputError(f"{what}: missing column {missing[0]!r} (found: {found}); {fix}")


@dataclass(frozen=True)
class Encoded:
    """The tidy frame as integer codes: row ``r`` says annotator ``annotator[r]`` gave
    label ``label[r]`` to item ``item[r]``; the indexes map codes back to ids."""

    item: np.ndarray
    annotator: np.ndarray
    label: np.ndarray
    items: pd.Index
    annotators: pd.Index
    labels: pd.Index
    ordered: bool  # labels came as an ordered Categorical, so their order means something

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_annotators(self) -> int:
        return len(self.annotators)

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    def responses(self) -> sparse.csr_matrix:
        """items x (annotator, label) one-hot matrix: column a * n_labels + l is 1 where
        annotator a gave label l. Pairwise kappa and Dawid-Skene are products with it."""
        columns = self.annotator * self.n_labels + self.label
        return sparse.csr_matrix(
            (np.ones(len(self.item)), (self.item, columns)),
            shape=(self.n_items, self.n_annotators * self.n_labels),
        )

    def label_counts(self) -> np.ndarray:
        """items x labels matrix of vote counts."""
        flat = np.bincount(self.item * self.n_labels + self.label,
                           minlength=self.n_items * self.n_labels)  # fmt: skip
        return flat.reshape(self.n_items, self.n_labels)


def _codes(column: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Codes in sorted order of the values, so results do not depend on row order."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy(np.int64), column.cat.categories
    codes, uniques = pd.factorize(column, sort=True)
    return codes.astype(np.int64, copy=False), pd.Index(uniques)


def encode(labels: pd.DataFrame) -> Encoded:
    """Validate the tidy frame and encode it; the one entry point of every metric."""
    check_columns(labels, COLUMNS, "labels")
    if labels.empty:
        raise InputError("labels: no rows; expected one row per (item_id, annotator_id) label")
    (item, items), (annotator, annotators), (label, label_index) = (
        _codes(labels[column]) for column in COLUMNS
    )
    for column, codes in zip(COLUMNS, (item, annotator, label)):
        n_empty = int((codes < 0).sum())
        if n_empty:
            raise InputError(f"labels: {n_empty} rows have an empty {column}; fill or drop them")
    pair = pd.Series(item * len(annotators) + annotator)
    duplicated = pair.duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = labels[duplicated].iloc[0]
        n_pairs = pair[duplicated].nunique()
        raise InputError(
            f"labels: {n_pairs} (item_id, annotator_id) pairs occur more than once, e.g. "
            f"item_id={show(first[ITEM])} annotator_id={show(first[ANNOTATOR])}; "
            "keep one label per annotator per item"
        )
    ordered = isinstance(labels[LABEL].dtype, pd.CategoricalDtype) and labels[LABEL].cat.ordered
    return Encoded(
        item=item, annotator=annotator, label=label,
        items=items.rename(ITEM), annotators=annotators.rename(ANNOTATOR),
        labels=label_index.rename(LABEL), ordered=bool(ordered),
    )  # fmt: skip


def check_answers(answers: pd.Series, what: str = "gold") -> pd.Series:
    """Gold (or adjudicated) answers: a Series of labels indexed by item_id, one per item."""
    if answers.index.has_duplicates:
        item = answers.index[answers.index.duplicated()][0]
        raise InputError(
            f"{what}: item_id {show(item)} occurs more than once; keep one {what} label per item"
        )
    return answers.dropna()


def wilson_interval(
    n_correct: np.ndarray, n: np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval: unlike the normal approximation it stays inside [0, 1] and is
    sensible for an annotator who has seen only a few gold items. NaN where n == 0."""
    n_correct, n = np.asarray(n_correct, float), np.asarray(n, float)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = n_correct / n
        denominator = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denominator
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return centre - half, centre + half


def gold_accuracy(labels: pd.DataFrame, gold: pd.Series, confidence: float = 0.95) -> pd.DataFrame:
    """Per annotator: labels given, gold items seen, correct, accuracy and Wilson interval.

    Every annotator gets a row; those who saw no gold have NaN accuracy, which is the
    honest answer and tells the reviewer whom gold does not cover yet.
    """
    enc = encode(labels)
    gold = check_answers(gold).reindex(enc.items)
    has_gold = gold.notna().to_numpy()[enc.item]
    gold_code = enc.labels.get_indexer(gold)  # -1: no gold, or a label nobody used
    correct = has_gold & (gold_code[enc.item] == enc.label)
    size = enc.n_annotators
    n_gold = np.bincount(enc.annotator, weights=has_gold, minlength=size).astype(np.int64)
    n_correct = np.bincount(enc.annotator, weights=correct, minlength=size).astype(np.int64)
    low, high = wilson_interval(n_correct, n_gold, confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = n_correct / n_gold
    return pd.DataFrame({
        ANNOTATOR: enc.annotators,
        "n_labels": np.bincount(enc.annotator, minlength=size),
        "n_gold": n_gold, "n_correct": n_correct, "accuracy": accuracy,
        "ci_low": low, "ci_high": high,
    })  # fmt: skip


def pairwise_kappa(labels: pd.DataFrame, min_shared: int = DEFAULT_MIN_SHARED) -> pd.DataFrame:
    """Cohen's kappa for every annotator pair sharing at least ``min_shared`` items.

    One sparse product gives every pair's contingency table at once: with X the
    ``Encoded.responses()`` one-hot matrix, (X.T @ X)[(a, l), (b, m)] counts the items
    where a said l and b said m. Kappa is NaN when both annotators used one and the same
    label throughout (chance agreement is 1), as in scikit-learn.
    Columns: annotator_a, annotator_b (a < b in sorted order), n_shared, kappa.
    """
    enc = encode(labels)
    n_labels = enc.n_labels
    responses = enc.responses()
    tables = (responses.T @ responses).tocoo()
    a, label_a = np.divmod(tables.row.astype(np.int64), n_labels)
    b, label_b = np.divmod(tables.col.astype(np.int64), n_labels)
    upper = a < b
    a, b, label_a, label_b = a[upper], b[upper], label_a[upper], label_b[upper]
    count = tables.data[upper]

    pair_codes, pair = np.unique(a * enc.n_annotators + b, return_inverse=True)
    n_pairs = len(pair_codes)
    n_shared = np.bincount(pair, weights=count, minlength=n_pairs)
    agreed = np.bincount(pair, weights=count * (label_a == label_b), minlength=n_pairs)

    def marginal(label: np.ndarray) -> np.ndarray:
        flat = np.bincount(pair * n_labels + label, weights=count, minlength=n_pairs * n_labels)
        return flat.reshape(n_pairs, n_labels)

    observed = agreed / n_shared
    chance = (marginal(label_a) * marginal(label_b)).sum(axis=1) / n_shared**2
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = np.where(chance < 1, (observed - chance) / (1 - chance), np.nan)

    keep = n_shared >= min_shared
    first, second = np.divmod(pair_codes[keep], enc.n_annotators)
    return pd.DataFrame({
        "annotator_a": enc.annotators[first], "annotator_b": enc.annotators[second],
        "n_shared": n_shared[keep].astype(np.int64), "kappa": kappa[keep],
    })  # fmt: skip


def kappa_matrix(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pivot ``pairwise_kappa`` output to a symmetric annotator x annotator matrix
    (diagonal 1, NaN for pairs below ``min_shared``), e.g. for a heatmap."""
    ids = pd.Index(pd.concat([pairs["annotator_a"], pairs["annotator_b"]]).unique())
    ids = ids.sort_values()
    first, second = ids.get_indexer(pairs["annotator_a"]), ids.get_indexer(pairs["annotator_b"])
    matrix = np.full((len(ids), len(ids)), np.nan)
    matrix[first, second] = matrix[second, first] = pairs["kappa"].to_numpy()
    np.fill_diagonal(matrix, 1.0)
    return pd.DataFrame(matrix, index=ids.rename("annotator_a"), columns=ids.rename("annotator_b"))


def fleiss_kappa(labels: pd.DataFrame) -> float:
    """Fleiss' kappa (1971). Defined only when every item has the same number of raters;
    for anything else use ``krippendorff_alpha``, which handles missing ratings."""
    enc = encode(labels)
    counts = enc.label_counts()
    raters = counts.sum(axis=1)
    if (raters != raters[0]).any():
        odd = int(np.argmax(raters != raters[0]))
        raise InputError(
            f"Fleiss' kappa needs the same number of raters on every item, found "
            f"{raters.min()} to {raters.max()} (item_id {show(enc.items[0])} has {raters[0]}, "
            f"item_id {show(enc.items[odd])} has {raters[odd]}); use krippendorff_alpha instead"
        )
    n = int(raters[0])
    if n < 2:
        raise InputError("Fleiss' kappa needs at least 2 raters per item, found 1")
    per_item = (counts * (counts - 1)).sum(axis=1) / (n * (n - 1))
    share = counts.sum(axis=0) / counts.sum()
    chance = float((share**2).sum())
    if chance == 1:
        return float("nan")
    return float((per_item.mean() - chance) / (1 - chance))


def _squared_distances(enc: Encoded, totals: np.ndarray, level: Level) -> np.ndarray:
    """Krippendorff's difference function delta^2 between every pair of label values."""
    if level == "nominal":
        return 1.0 - np.eye(enc.n_labels)
    if level == "ordinal" and enc.ordered:
        order = np.arange(enc.n_labels)
    else:
        values = pd.to_numeric(pd.Series(enc.labels), errors="coerce").to_numpy(float)
        if np.isnan(values).any():
            bad = enc.labels[np.isnan(values)][0]
            need = "an ordered pandas Categorical, or numbers" if level == "ordinal" else "numbers"
            raise InputError(f"{level} alpha needs labels that are {need}; got {show(bad)}")
        if level != "ordinal":
            difference = values[:, None] - values[None, :]
            if level == "interval":
                return difference**2
            total = values[:, None] + values[None, :]
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(total == 0, 0.0, (difference / total) ** 2)
        order = np.argsort(values)
    # Ordinal: distance between c <= k is sum(n_g, g=c..k) - (n_c + n_k) / 2, which is the
    # difference of the mid-ranks cumsum(n)_g - n_g / 2 in the label order.
    ranked = totals[order]
    mid_rank = np.empty(enc.n_labels)
    mid_rank[order] = np.cumsum(ranked) - ranked / 2
    return (mid_rank[:, None] - mid_rank[None, :]) ** 2


def krippendorff_alpha(labels: pd.DataFrame, level: Level = "nominal") -> float:
    """Krippendorff's alpha (2011) from the coincidence matrix; any number of annotators
    per item, missing labels allowed. Items with one label carry no pairable values.

    ``ordinal`` ranks numeric labels by value, other labels by the order of an ordered
    Categorical; ``interval`` and ``ratio`` need numeric labels. NaN when nothing is
    pairable or only one value occurs.
    """
    if level not in ("nominal", "ordinal", "interval", "ratio"):
        raise ValueError(f"level must be nominal, ordinal, interval or ratio, got {level!r}")
    enc = encode(labels)
    counts = sparse.csr_matrix(
        (np.ones(len(enc.item)), (enc.item, enc.label)), shape=(enc.n_items, enc.n_labels)
    )
    per_item = np.asarray(counts.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        weight = np.where(per_item > 1, 1 / (per_item - 1), 0.0)
    weighted = sparse.diags(weight) @ counts
    # o_ck = sum over items of ordered pairs of different raters (c, k), / (m_u - 1).
    coincidence = (counts.T @ weighted).toarray()
    coincidence -= np.diag(np.asarray(weighted.sum(axis=0)).ravel())
    totals = coincidence.sum(axis=1)
    n = totals.sum()
    distance = _squared_distances(enc, totals, level)
    expected = (np.outer(totals, totals) * distance).sum()
    if n < 2 or expected == 0:
        return float("nan")
    return float(1 - (n - 1) * (coincidence * distance).sum() / expected)
