"""Quality of span annotations (named entities, Label Studio ``<Labels>`` on ``<Text>``).

The tidy span frame has one row per span: ``item_id, annotator_id, start, end, label``,
character offsets into the item's text with ``end`` exclusive, as Label Studio stores them.
An answer with no spans ("nothing here" is a real answer) is one row with start, end and
label missing (NA). This module owns that frame (validation, integer encoding) and the span
metrics: pairwise agreement, scoring against gold, and consensus (token-level majority vote
over BIO tags as the baseline, span-level Dawid-Skene as the method to use). Everything
works on integer arrays with ``bincount``, sparse products and joins, so a million spans
cost seconds, not a Python loop per item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Self

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import minimize
from scipy.special import gammaln, logsumexp

from .agreement import ANNOTATOR, ITEM, LABEL, InputError, check_columns, show

START, END, CONFIDENCE, ITEM_CONFIDENCE = "start", "end", "confidence", "item_confidence"
SPAN_COLUMNS = (ITEM, ANNOTATOR, START, END, LABEL)
GOLD_COLUMNS = (ITEM, START, END, LABEL)
#: Label of the "no span here" class in span-level Dawid-Skene (code 0).
ABSENT = "<absent>"
#: Empirical-Bayes grid for the prior strength (pseudo-answers per true class).
_STRENGTHS = np.logspace(-1, 4, 51)


# --- the frame ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedSpans:
    """The span frame as integer codes.

    Answers: ``answer_item[k]`` / ``answer_annotator[k]`` is the k-th (item, annotator) pair
    that answered, sorted by item then annotator. Spans: span ``r`` belongs to answer
    ``span_answer[r]`` and covers ``[start[r], end[r])`` with label code ``label[r]``; spans
    are sorted by item, annotator, start, end, label. The indexes map codes back to ids.
    """

    answer_item: np.ndarray
    answer_annotator: np.ndarray
    span_answer: np.ndarray
    start: np.ndarray
    end: np.ndarray
    label: np.ndarray
    items: pd.Index
    annotators: pd.Index
    labels: pd.Index

    @property
    def span_item(self) -> np.ndarray:
        return self.answer_item[self.span_answer]

    @property
    def span_annotator(self) -> np.ndarray:
        return self.answer_annotator[self.span_answer]

    @property
    def n_answers(self) -> int:
        return len(self.answer_item)

    def spans_per_answer(self) -> np.ndarray:
        """answers x labels matrix of span counts."""
        n_labels = len(self.labels)
        flat = np.bincount(self.span_answer * n_labels + self.label,
                           minlength=self.n_answers * n_labels)  # fmt: skip
        return flat.reshape(self.n_answers, n_labels)


def _row(frame: pd.DataFrame, position: int, columns: tuple[str, ...]) -> str:
    """'row 7 (item_id='s1', start=4, ...)' for messages: where to look, what is there."""
    values = ", ".join(f"{column}={show(frame[column].iloc[position])}" for column in columns)
    return f"row {show(frame.index[position])} ({values})"


def _offsets(frame: pd.DataFrame, column: str, rows: np.ndarray, what: str,
             columns: tuple[str, ...]) -> np.ndarray:  # fmt: skip
    """The column as int64 for the span rows; refuses non-integers and negatives."""
    values = pd.to_numeric(frame[column].to_numpy()[rows], errors="coerce").astype(float)
    bad = np.isnan(values) | (values != np.round(values)) | (values < 0)
    if bad.any():
        position = int(rows[np.argmax(bad)])
        raise InputError(f"{what}: {_row(frame, position, columns)} has {column} "
                         f"{show(frame[column].iloc[position])}; expected a non-negative "
                         "integer character offset")  # fmt: skip
    return values.astype(np.int64)


def _label_index(values: pd.Series, labels: list | tuple | pd.Index | None) -> pd.Index:
    if labels is not None:
        return pd.Index(list(labels), name=LABEL)
    return pd.Index(sorted(pd.unique(values.dropna())), name=LABEL)


def check_spans(
    spans: pd.DataFrame,
    texts: pd.Series | None = None,
    labels: list | tuple | pd.Index | None = None,
    *,
    what: str = "spans",
    columns: tuple[str, ...] = SPAN_COLUMNS,
) -> EncodedSpans:
    """Validate the span frame and encode it; the one entry point of every span metric.

    Refused with ``InputError`` naming the row: a missing id, a row with some but not all of
    start/end/label, offsets that are not non-negative integers, ``start >= end``, an
    ``end`` past the item's text (when ``texts``, a Series of text by item_id, is given),
    an item without a text, a label outside ``labels`` (when given), the same span twice
    from one annotator. ``columns`` without annotator_id (``GOLD_COLUMNS``) reads a gold
    frame: one reference "annotator" per item.
    """
    check_columns(spans, columns, what)
    if spans.empty:
        raise InputError(f"{what}: no rows; expected one row per span, or one row with empty "
                         "start/end/label for an answer without spans")  # fmt: skip
    frame = spans if ANNOTATOR in columns else spans.assign(**{ANNOTATOR: "gold"})
    for column in (ITEM, ANNOTATOR):
        empty = frame[column].isna().to_numpy()
        if empty.any():
            raise InputError(f"{what}: {_row(frame, int(np.argmax(empty)), columns)} has an "
                             f"empty {column}; fill or drop it")  # fmt: skip
    missing = frame[[START, END, LABEL]].isna().to_numpy()
    partial = missing.any(axis=1) & ~missing.all(axis=1)
    if partial.any():
        raise InputError(f"{what}: {_row(frame, int(np.argmax(partial)), columns)} has only "
                         "some of start, end, label; give all three for a span, or none of "
                         "them for an answer without spans")  # fmt: skip
    rows = np.flatnonzero(~missing.all(axis=1))
    start = _offsets(frame, START, rows, what, columns)
    end = _offsets(frame, END, rows, what, columns)
    backwards = start >= end
    if backwards.any():
        raise InputError(f"{what}: {_row(frame, int(rows[np.argmax(backwards)]), columns)} "
                         "has start >= end; end is exclusive, so a span needs start < end")

    label_index = _label_index(frame[LABEL], labels)
    label = label_index.get_indexer(frame[LABEL].to_numpy()[rows])
    if (label < 0).any():
        position = int(rows[np.argmax(label < 0)])
        raise InputError(f"{what}: {_row(frame, position, columns)} has a label outside the "
                         f"label set; accepted: {', '.join(map(str, label_index))}")

    item, items = pd.factorize(frame[ITEM], sort=True)
    annotator, annotators = pd.factorize(frame[ANNOTATOR], sort=True)
    if texts is not None:
        if texts.index.has_duplicates:
            raise InputError(f"texts: item_id {show(texts.index[texts.index.duplicated()][0])}"
                             " occurs more than once; keep one text per item")
        length = texts.reindex(items).str.len().to_numpy(float)
        if np.isnan(length).any():
            first = int(np.flatnonzero(np.isnan(length[item]))[0])
            raise InputError(f"{what}: {_row(frame, first, columns)}: no text for this "
                             "item_id; give every item's text")
        beyond = end > length[item[rows]]
        if beyond.any():
            position = int(rows[np.argmax(beyond)])
            raise InputError(f"{what}: {_row(frame, position, columns)} ends past the text, "
                             f"which has {int(length[item[position]])} characters")

    n_annotators = len(annotators)
    answer_key = item * n_annotators + annotator
    answer_codes, answer_of_row = np.unique(answer_key, return_inverse=True)
    span_answer = answer_of_row[rows]
    order = np.lexsort((label, end, start, span_answer))
    span_answer, start, end, label = span_answer[order], start[order], end[order], label[order]
    same = ((span_answer[1:] == span_answer[:-1]) & (start[1:] == start[:-1])
            & (end[1:] == end[:-1]) & (label[1:] == label[:-1]))  # fmt: skip
    if same.any():
        position = int(rows[order[np.argmax(same) + 1]])
        raise InputError(f"{what}: {_row(frame, position, columns)} repeats a span the same "
                         "annotator already gave on this item; keep one")
    answer_item, answer_annotator = np.divmod(answer_codes, n_annotators)
    return EncodedSpans(
        answer_item=answer_item, answer_annotator=answer_annotator, span_answer=span_answer,
        start=start, end=end, label=label.astype(np.int64),
        items=pd.Index(items, name=ITEM), annotators=pd.Index(annotators, name=ANNOTATOR),
        labels=label_index,
    )  # fmt: skip


def spans_frame(records: list[dict], spans_key: str = "spans") -> pd.DataFrame:
    """``[{"item_id", "annotator_id", "spans": [[start, end, label], ...]}, ...]`` (the shape
    of a Label Studio export reduced to spans) to the tidy frame; ``[]`` becomes one NA row."""
    rows = []
    for record in records:
        ids = {key: value for key, value in record.items() if key != spans_key}
        found = record[spans_key] or [(pd.NA, pd.NA, pd.NA)]
        rows.extend({**ids, START: s, END: e, LABEL: lab} for s, e, lab in found)
    frame = pd.DataFrame(rows)
    return frame.astype({START: "Int64", END: "Int64"})


# --- matching helpers -----------------------------------------------------------------------


def _expand(first: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups [first[g], first[g] + count[g]): (group of each member, member index)."""
    group = np.repeat(np.arange(len(first)), count)
    offset = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    return group, np.repeat(first, count) + offset


def _pairs_within(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (i, j), i != j, of positions sharing a group value; ``groups``
    must be sorted. Cost is the sum of squared group sizes, small for spans of one item."""
    _, first, count = np.unique(groups, return_index=True, return_counts=True)
    group, left = _expand(first, count)
    _, right = _expand(first[group], count[group])
    left = np.repeat(left, count[group])
    keep = left != right
    return left[keep], right[keep]


def _rank(score: np.ndarray) -> np.ndarray:
    """0 for the highest score; ties go to the lower position, so results are reproducible."""
    rank = np.empty(len(score), np.int64)
    rank[np.lexsort((np.arange(len(score)), -score))] = np.arange(len(score))
    return rank


def _greedy_matching(first: np.ndarray, second: np.ndarray, score: np.ndarray) -> np.ndarray:
    """One-to-one matching of ``first`` nodes to ``second`` nodes, greedy in descending
    ``score``; returns a mask over the pairs. Vectorised: each round accepts every pair that
    is the best live pair of both its nodes and retires those nodes, which gives exactly the
    one-pair-at-a-time greedy result."""
    n = len(score)
    first = np.unique(first, return_inverse=True)[1]
    second = np.unique(second, return_inverse=True)[1]
    rank = _rank(score)
    chosen, alive = np.zeros(n, bool), np.ones(n, bool)
    while alive.any():
        live = np.flatnonzero(alive)
        best_first = np.full(first.max() + 1, n)
        best_second = np.full(second.max() + 1, n)
        np.minimum.at(best_first, first[live], rank[live])
        np.minimum.at(best_second, second[live], rank[live])
        winner = live[(best_first[first[live]] == rank[live])
                      & (best_second[second[live]] == rank[live])]  # fmt: skip
        chosen[winner] = True
        used_first = np.zeros(len(best_first), bool)
        used_second = np.zeros(len(best_second), bool)
        used_first[first[winner]] = used_second[second[winner]] = True
        alive &= ~(used_first[first] | used_second[second])
    return chosen


def _greedy_non_overlapping(left: np.ndarray, right: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Keep nodes greedily in descending ``score``, dropping every node that clashes (an
    edge ``left[e]``-``right[e]``) with a kept one; returns the keep mask over nodes.
    Vectorised like ``_greedy_matching``: each round keeps the undecided nodes that outrank
    all their undecided neighbours."""
    rank = _rank(score)
    n = len(score)
    kept, dropped = np.zeros(n, bool), np.zeros(n, bool)
    while True:
        undecided = ~kept & ~dropped
        live = undecided[left] & undecided[right]
        best_neighbour = np.full(n, n)
        np.minimum.at(best_neighbour, left[live], rank[right[live]])
        np.minimum.at(best_neighbour, right[live], rank[left[live]])
        winner = undecided & (rank < best_neighbour)
        kept |= winner
        dropped[right[live & winner[left]]] = True
        dropped[left[live & winner[right]]] = True
        if not live.any():
            return kept


def _overlap(start_a, end_a, start_b, end_b) -> np.ndarray:
    """Characters shared by [start_a, end_a) and [start_b, end_b); <= 0 when disjoint."""
    return np.minimum(end_a, end_b) - np.maximum(start_a, start_b)


def _f1(matches: np.ndarray, n_first: np.ndarray, n_second: np.ndarray) -> np.ndarray:
    """2 * matches / (n_first + n_second): F1 without choosing which side is the reference;
    NaN where neither side has a span (F1 is undefined, not perfect)."""
    total = np.asarray(n_first, float) + n_second
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * matches / total, np.nan)


# --- agreement between annotators -----------------------------------------------------------


def pairwise_span_f1(spans: pd.DataFrame, *, by_label: bool = False, min_shared: int = 1,
                     labels: list | None = None) -> pd.DataFrame:  # fmt: skip
    """Span F1 between every two annotators over the items both answered.

    ``exact`` counts a match when start, end and label are equal; ``partial`` when two spans
    of the same label overlap, matched one-to-one (greedy by characters shared). F1 is
    ``2 * matches / (spans of a + spans of b)`` on the shared items, so it is symmetric.
    Columns: annotator_a, annotator_b (a < b in sorted order), [label,] n_shared, n_spans_a,
    n_spans_b, exact_matches, partial_matches, exact_f1, partial_f1. ``by_label`` gives one
    row per pair and label that either annotator used on the shared items.
    """
    enc = check_spans(spans, labels=labels)
    n_annotators, n_labels = len(enc.annotators), len(enc.labels)
    # Every pair of answers on one item, a < b (answers are sorted by item, then annotator).
    first, second = _pairs_within(enc.answer_item)
    keep = first < second
    first, second = first[keep], second[keep]
    pair_key = enc.answer_annotator[first] * n_annotators + enc.answer_annotator[second]
    pair_codes, pair_of = np.unique(pair_key, return_inverse=True)
    n_pairs = len(pair_codes)
    n_shared = np.bincount(pair_of, minlength=n_pairs)
    counts = enc.spans_per_answer()
    flat = (pair_of[:, None] * n_labels + np.arange(n_labels)).ravel()
    spans_a = np.bincount(flat, counts[first].ravel(), n_pairs * n_labels).reshape(n_pairs, -1)
    spans_b = np.bincount(flat, counts[second].ravel(), n_pairs * n_labels).reshape(n_pairs, -1)

    # Span pairs of different annotators on one item with the same label, overlapping.
    item, annotator = enc.span_item, enc.span_annotator
    order = np.lexsort((annotator, enc.label, item))
    left, right = _pairs_within((item * n_labels + enc.label)[order])
    left, right = order[left], order[right]
    shared = _overlap(enc.start[left], enc.end[left], enc.start[right], enc.end[right])
    keep = (annotator[left] < annotator[right]) & (shared > 0)
    left, right, shared = left[keep], right[keep], shared[keep]
    span_pair = np.searchsorted(pair_codes, annotator[left] * n_annotators + annotator[right])
    exact = (enc.start[left] == enc.start[right]) & (enc.end[left] == enc.end[right])
    # One-to-one within each annotator pair: a span of a may match one span of b and one of c.
    matched = _greedy_matching(left * n_annotators + annotator[right],
                               right * n_annotators + annotator[left], shared)
    cell = span_pair * n_labels + enc.label[left]
    exact_matches = np.bincount(cell[exact], minlength=n_pairs * n_labels).reshape(n_pairs, -1)
    partial_matches = np.bincount(cell[matched], minlength=n_pairs * n_labels).reshape(n_pairs, -1)

    if not by_label:
        spans_a, spans_b = spans_a.sum(1, keepdims=True), spans_b.sum(1, keepdims=True)
        exact_matches = exact_matches.sum(1, keepdims=True)
        partial_matches = partial_matches.sum(1, keepdims=True)
    width = spans_a.shape[1]
    pair = np.repeat(np.arange(n_pairs), width)
    a, b = np.divmod(pair_codes[pair], n_annotators)
    result = pd.DataFrame({
        "annotator_a": enc.annotators[a], "annotator_b": enc.annotators[b],
        "n_shared": n_shared[pair], "n_spans_a": spans_a.ravel().astype(np.int64),
        "n_spans_b": spans_b.ravel().astype(np.int64),
        "exact_matches": exact_matches.ravel(), "partial_matches": partial_matches.ravel(),
    })  # fmt: skip
    if by_label:
        result.insert(2, LABEL, np.tile(enc.labels.to_numpy(), n_pairs))
        result = result[(result["n_spans_a"] + result["n_spans_b"]) > 0]
    result["exact_f1"] = _f1(result["exact_matches"], result["n_spans_a"], result["n_spans_b"])
    result["partial_f1"] = _f1(result["partial_matches"], result["n_spans_a"],
                               result["n_spans_b"])  # fmt: skip
    return result[result["n_shared"] >= min_shared].reset_index(drop=True)


def span_f1_matrix(pairs: pd.DataFrame, metric: str = "exact_f1") -> pd.DataFrame:
    """Pivot ``pairwise_span_f1`` (overall, not by label) to a symmetric annotator x
    annotator matrix of ``metric``: diagonal 1, NaN for pairs without shared items."""
    if LABEL in pairs.columns:
        raise InputError("span_f1_matrix needs pairwise_span_f1(..., by_label=False) output")
    ids = pd.Index(pd.concat([pairs["annotator_a"], pairs["annotator_b"]]).unique()).sort_values()
    first, second = ids.get_indexer(pairs["annotator_a"]), ids.get_indexer(pairs["annotator_b"])
    matrix = np.full((len(ids), len(ids)), np.nan)
    matrix[first, second] = matrix[second, first] = pairs[metric].to_numpy()
    np.fill_diagonal(matrix, 1.0)
    return pd.DataFrame(matrix, index=ids.rename("annotator_a"), columns=ids.rename("annotator_b"))


def span_agreement(pairs: pd.DataFrame) -> pd.Series:
    """Project-level agreement from ``pairwise_span_f1`` output (overall, not by label):
    ``exact_f1`` / ``partial_f1`` pooled over every pair of answers on a shared item
    (micro), and ``mean_pair_exact_f1`` / ``mean_pair_partial_f1``, the unweighted mean over
    annotator pairs (macro; pairs with no spans at all skipped)."""
    if LABEL in pairs.columns:
        raise InputError("span_agreement needs pairwise_span_f1(..., by_label=False) output")
    total = pairs["n_spans_a"].sum() + pairs["n_spans_b"].sum()
    return pd.Series({
        "n_pairs": len(pairs), "n_answer_pairs": int(pairs["n_shared"].sum()),
        "exact_f1": float(_f1(pairs["exact_matches"].sum(), total, 0)),
        "partial_f1": float(_f1(pairs["partial_matches"].sum(), total, 0)),
        "mean_pair_exact_f1": float(pairs["exact_f1"].mean()),
        "mean_pair_partial_f1": float(pairs["partial_f1"].mean()),
    })  # fmt: skip


# --- scoring against gold -------------------------------------------------------------------

#: The error columns of ``gold_span_scores``.
ERRORS = ("label_errors", "boundary_errors", "label_and_boundary_errors", "false_spans", "misses")


def gold_span_scores(spans: pd.DataFrame, gold: pd.DataFrame, *, by_label: bool = False,
                     labels: list | None = None) -> pd.DataFrame:  # fmt: skip
    """Per annotator (and label, with ``by_label``): micro exact-span P/R/F1 against gold
    over the items both have, with the errors taken apart.

    ``gold`` has columns item_id, start, end, label (one NA row for an item whose gold is
    "no entity"). An annotator's empty answer on an item with gold spans counts those spans
    as missed; items the annotator did not answer, or without gold, are left out.
    Each predicted span that is not an exact match is one of: ``label_errors`` (a gold span
    has the same boundaries, another label), ``boundary_errors`` (overlaps a gold span of
    the same label), ``label_and_boundary_errors`` (overlaps only gold spans of other labels),
    ``false_spans`` (overlaps no gold span). ``misses``: gold spans that no span of the
    annotator overlaps. By label, predicted-span errors count under the predicted label,
    misses under the gold label.
    Columns: annotator_id, [label,] n_items, n_spans, n_gold_spans, exact_matches,
    precision, recall, f1, then the error counts.
    """
    if labels is None:  # one label index for both frames, so codes compare
        labels = sorted(set(spans[LABEL].dropna()) | set(gold[LABEL].dropna())) if (
            LABEL in spans.columns and LABEL in gold.columns) else None
    enc = check_spans(spans, labels=labels)
    ref = check_spans(gold, labels=enc.labels, what="gold", columns=GOLD_COLUMNS)
    n_labels = len(enc.labels)
    gold_item = ref.items.get_indexer(enc.items)  # annotator item code -> gold answer code
    answer_gold = gold_item[enc.answer_item]  # -1: no gold for this item
    scored = answer_gold >= 0

    # Gold spans, repeated once per scored answer on their item.
    gold_first = np.searchsorted(ref.span_answer, np.arange(ref.n_answers))
    gold_count = np.bincount(ref.span_answer, minlength=ref.n_answers)
    scored_answers = np.flatnonzero(scored)
    owner, gold_span = _expand(gold_first[answer_gold[scored_answers]],
                               gold_count[answer_gold[scored_answers]])  # fmt: skip
    gold_answer = scored_answers[owner]  # the annotator's answer each gold copy is scored in

    # Predicted spans on gold items, and every (predicted span, gold copy) pair that overlaps.
    pred = np.flatnonzero(scored[enc.span_answer])
    pred_answer = enc.span_answer[pred]
    both = np.concatenate([pred_answer, gold_answer])
    side = np.concatenate([np.zeros(len(pred), bool), np.ones(len(gold_answer), bool)])
    order = np.argsort(both, kind="stable")
    left, right = _pairs_within(both[order])
    left, right = order[left], order[right]
    keep = ~side[left] & side[right]
    p, g = pred[left[keep]], gold_span[right[keep] - len(pred)]
    gold_copy = right[keep] - len(pred)
    overlaps = _overlap(enc.start[p], enc.end[p], ref.start[g], ref.end[g]) > 0
    p_local, gold_copy = left[keep][overlaps], gold_copy[overlaps]
    p, g = p[overlaps], g[overlaps]
    same_bounds = (enc.start[p] == ref.start[g]) & (enc.end[p] == ref.end[g])
    same_label = enc.label[p] == ref.label[g]

    def any_by(index: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
        return np.bincount(index[mask], minlength=size) > 0

    n_pred = len(pred)
    exact = any_by(p_local, same_bounds & same_label, n_pred)
    label_error = ~exact & any_by(p_local, same_bounds, n_pred)
    boundary_error = ~exact & ~label_error & any_by(p_local, same_label, n_pred)
    overlapping = any_by(p_local, np.ones(len(p_local), bool), n_pred)
    both_error = overlapping & ~exact & ~label_error & ~boundary_error
    missed = ~any_by(gold_copy, np.ones(len(gold_copy), bool), len(gold_answer))

    size = len(enc.annotators) * (n_labels if by_label else 1)

    def tally(answer: np.ndarray, label: np.ndarray,
              weight: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        key = enc.answer_annotator[answer]
        if by_label:
            key = key * n_labels + label
        return np.bincount(key, weights=weight, minlength=size).astype(np.int64)

    pred_label, gold_label = enc.label[pred], ref.label[gold_span]
    n_spans, n_gold = tally(pred_answer, pred_label), tally(gold_answer, gold_label)
    matches = tally(pred_answer, pred_label, exact)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = matches / n_spans, matches / n_gold
    n_items = np.bincount(enc.answer_annotator[scored_answers], minlength=len(enc.annotators))
    result = pd.DataFrame({
        ANNOTATOR: np.repeat(enc.annotators, n_labels) if by_label else enc.annotators,
        "n_items": np.repeat(n_items, n_labels) if by_label else n_items,
        "n_spans": n_spans, "n_gold_spans": n_gold, "exact_matches": matches,
        "precision": precision, "recall": recall, "f1": _f1(matches, n_spans, n_gold),
        "label_errors": tally(pred_answer, pred_label, label_error),
        "boundary_errors": tally(pred_answer, pred_label, boundary_error),
        "label_and_boundary_errors": tally(pred_answer, pred_label, both_error),
        "false_spans": tally(pred_answer, pred_label, ~overlapping),
        "misses": tally(gold_answer, gold_label, missed),
    })  # fmt: skip
    if by_label:
        result.insert(1, LABEL, np.tile(enc.labels.to_numpy(), len(enc.annotators)))
        result = result[(result["n_spans"] + result["n_gold_spans"]) > 0]
    return result.reset_index(drop=True)


# --- tokens ---------------------------------------------------------------------------------

_TOKEN = re.compile(r"\S+")


@dataclass(frozen=True)
class Tokens:
    """Whitespace tokens of every item: token ``t`` belongs to item code ``item[t]`` and
    covers characters ``[start[t], end[t])``; tokens are sorted by item, then position."""

    item: np.ndarray
    start: np.ndarray
    end: np.ndarray
    first: np.ndarray  # item code -> its first token
    count: np.ndarray  # item code -> number of tokens

    def covering(self, item: np.ndarray, start: np.ndarray, end: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """First and last token (inclusive) each span overlaps; last < first when the span
        covers only whitespace. Spans need not align to tokens: "New Yo" covers "New York"."""
        width = int(max(self.end.max(initial=0), end.max(initial=0))) + 1
        token_end_key = self.item * width + self.end
        token_start_key = self.item * width + self.start
        first = np.searchsorted(token_end_key, item * width + start, side="right")
        last = np.searchsorted(token_start_key, item * width + end, side="left") - 1
        return first, last


def tokenize(texts: pd.Series, items: pd.Index) -> Tokens:
    """Split every item's text on whitespace, with character offsets."""
    missing = items.difference(texts.index)
    if len(missing):
        raise InputError(f"texts: no text for item_id {show(missing[0])}; give every item's text")
    starts, ends, counts = [], [], []
    for text in texts.reindex(items).astype(str):
        found = [(m.start(), m.end()) for m in _TOKEN.finditer(text)]
        counts.append(len(found))
        starts.extend(s for s, _ in found)
        ends.extend(e for _, e in found)
    count = np.array(counts, np.int64)
    return Tokens(
        item=np.repeat(np.arange(len(items)), count), start=np.array(starts, np.int64),
        end=np.array(ends, np.int64), first=np.cumsum(count) - count, count=count,
    )  # fmt: skip


# --- consensus ------------------------------------------------------------------------------


class _SpanAggregator:
    """What every span consensus learns: the consensus spans with confidences."""

    spans_: pd.DataFrame  # item_id, start, end, label, confidence, item_confidence
    item_confidence_: pd.Series  # item_id -> confidence in the item's whole answer

    def fit(self, data: pd.DataFrame, texts: pd.Series | None = None) -> Self:
        raise NotImplementedError

    def fit_predict(self, data: pd.DataFrame, texts: pd.Series | None = None) -> pd.DataFrame:
        """Fit on the span frame; return the consensus in the same tidy shape (item_id,
        start, end, label, confidence, item_confidence; one NA row per "no entity" item)."""
        return self.fit(data, texts).spans_

    def _store(self, enc: EncodedSpans, item: np.ndarray, start: np.ndarray, end: np.ndarray,
               label: np.ndarray, confidence: np.ndarray,
               item_confidence: np.ndarray) -> None:  # fmt: skip
        self.item_confidence_ = pd.Series(item_confidence, index=enc.items, name=ITEM_CONFIDENCE)
        empty = np.setdiff1d(np.arange(len(enc.items)), item)
        item = np.concatenate([item, empty])
        order = np.lexsort((np.concatenate([start, np.zeros(len(empty), np.int64)]), item))
        found = np.concatenate([np.ones(len(start), bool), np.zeros(len(empty), bool)])[order]
        pad = np.zeros(len(empty), np.int64)
        frame = pd.DataFrame({
            ITEM: enc.items.take(item[order]),
            START: pd.array(np.concatenate([start, pad])[order], "Int64"),
            END: pd.array(np.concatenate([end, pad])[order], "Int64"),
            LABEL: enc.labels.take(np.concatenate([label, pad])[order]).astype(object),
            CONFIDENCE: np.concatenate([confidence, item_confidence[empty]])[order],
            ITEM_CONFIDENCE: item_confidence[item[order]],
        })  # fmt: skip
        frame.loc[~found, [START, END, LABEL]] = pd.NA
        self.spans_ = frame


class TokenMajorityVote(_SpanAggregator):
    """The baseline: majority vote per whitespace token over BIO tags, decoded to spans.

    Each annotator who answered an item tags every token: B-x on the first token a span of
    label x covers, I-x on the others, O elsewhere (spans that cut a token cover it). Ties go
    to O, then to the first label in label order. Decoding follows conlleval: an I-x that
    does not continue an x span opens one. Confidence of a span: the lowest vote share of a
    winning tag among its tokens; of an item: the lowest over all its tokens. Needs texts.
    """

    def fit(self, data: pd.DataFrame, texts: pd.Series | None = None) -> Self:
        if texts is None:
            raise InputError("TokenMajorityVote needs texts: a Series of text by item_id")
        enc = check_spans(data, texts=texts)
        tokens = tokenize(texts, enc.items)
        n_tags = 1 + 2 * len(enc.labels)  # O, then B-x, I-x for each label x
        first, last = tokens.covering(enc.span_item, enc.start, enc.end)
        width = np.maximum(last - first + 1, 0)
        span, token = _expand(first, width)
        tag = 1 + 2 * enc.label[span] + (token != first[span])
        # One tag per (answer, token): an annotator's overlapping spans do not vote twice.
        answer = enc.span_answer[span]
        order = np.lexsort((enc.start[span], token, answer))
        answer, token, tag = answer[order], token[order], tag[order]
        once = np.ones(len(token), bool)
        once[1:] = (answer[1:] != answer[:-1]) | (token[1:] != token[:-1])
        token, tag = token[once], tag[once]
        n_tokens = len(tokens.item)
        votes = np.bincount(token * n_tags + tag, minlength=n_tokens * n_tags)
        votes = votes.reshape(n_tokens, n_tags).astype(float)
        answers_per_item = np.bincount(enc.answer_item, minlength=len(enc.items))
        votes[:, 0] = answers_per_item[tokens.item] - votes[:, 1:].sum(axis=1)
        winner = votes.argmax(axis=1)  # first maximum: O, then label order
        share = votes[np.arange(n_tokens), winner] / answers_per_item[tokens.item]

        label = np.where(winner > 0, (winner - 1) // 2, -1)
        inside = (winner > 0) & ((winner - 1) % 2 == 1)
        previous = np.concatenate([[-1], label[:-1]])
        first_in_item = np.arange(n_tokens) == tokens.first[tokens.item]
        opens = (label >= 0) & (~inside | (previous != label) | first_in_item)
        member = np.flatnonzero(label >= 0)
        span_of = np.cumsum(opens)[member] - 1
        n_spans = int(opens.sum())
        heads = np.flatnonzero(opens)
        span_end = np.zeros(n_spans, np.int64)
        np.maximum.at(span_end, span_of, tokens.end[member])
        confidence = np.ones(n_spans)
        np.minimum.at(confidence, span_of, share[member])
        item_confidence = np.ones(len(enc.items))
        np.minimum.at(item_confidence, tokens.item, share)
        self._store(enc, tokens.item[heads], tokens.start[heads], span_end, label[heads],
                    confidence, item_confidence)  # fmt: skip
        return self


class SpanDawidSkene(_SpanAggregator):
    """Dawid-Skene over candidate spans, with annotators shrunk toward the crowd.

    Every distinct (item, start, end) some annotator marked is a candidate. Each annotator
    who answered the item "votes" on it: the label they gave those exact boundaries, or
    absent. EM learns, per annotator, a confusion matrix over {absent, labels} (absent
    included, so it captures recall and false spans) and a prior over the classes; a
    candidate is accepted when its most probable class is a label. Overlapping accepted
    candidates are resolved greedily by posterior, highest first.

    Annotators seen on a handful of items would get extreme confusion matrices, and EM then
    trusts them blindly; so each annotator's counts get a Dirichlet prior centred on the
    pooled confusion of the whole crowd. ``shrinkage="auto"`` picks its strength (per true
    class) by empirical Bayes: the strength under which the annotators' soft counts are
    most likely (Dirichlet-multinomial), re-estimated in each M-step, so nothing is tuned
    on gold. A number fixes the strength (0 is plain Dawid-Skene). ``smoothing`` is the
    small pseudo-count that keeps every probability above 0.

    With ``texts`` (and ``text_prior=True``) the class prior of each candidate comes from
    what it looks like, as in Raykar et al. (2010), "Learning from crowds": a multinomial
    logistic regression (L2 ``text_penalty``) on cheap features of the candidate (its
    lowercased words, shapes, length, neighbouring words; see ``candidate_features``) is
    fitted to the current posteriors and gives the prior, refitted after each EM run until
    no prior moves by more than 0.01 or ``text_rounds`` refits. It pools evidence across
    sentences ("Reuters" is an ORG everywhere) and sinks junk spans that look like no
    entity. It is cross-fitted over two folds of items, so a candidate's prior never learns
    from its own votes (fitted in-sample the prior just echoes the posterior: worse on dev).
    With the text prior, ``shrinkage="auto"`` means 0: the text prior already steadies EM,
    and plain Dawid-Skene was better on the design half of the dev data.

    Confidence of a span: the posterior of its class; of an item: the product over the
    item's candidates of the posterior of the decision taken (label or absent), i.e. the
    probability that the whole answer is right; 1.0 when nobody marked anything.
    Learned: ``spans_``, ``item_confidence_``, ``candidates_`` (every candidate with its
    class posteriors and ``accepted``), ``priors_``, ``errors_`` (index (annotator_id,
    observed), columns true class), ``shrinkage_`` (strength per true class), ``n_iter_``
    (EM iterations of the last run), ``text_rounds_`` (text-model fits; 0 without texts),
    ``log_likelihood_``.
    """

    candidates_: pd.DataFrame
    text_rounds_: int
    priors_: pd.Series
    errors_: pd.DataFrame
    shrinkage_: pd.Series
    n_iter_: int
    log_likelihood_: float

    def __init__(self, n_iter: int = 100, tol: float = 1e-6, smoothing: float = 0.01,
                 shrinkage: float | Literal["auto"] = "auto", *, text_prior: bool = True,
                 text_rounds: int = 20, text_penalty: float = 1.0) -> None:  # fmt: skip
        if n_iter < 1 or tol < 0 or smoothing <= 0:
            raise ValueError("SpanDawidSkene needs n_iter >= 1, tol >= 0 and smoothing > 0")
        if shrinkage != "auto" and not (isinstance(shrinkage, int | float) and shrinkage >= 0):
            raise ValueError(f"shrinkage must be 'auto' or a number >= 0, got {shrinkage!r}")
        if text_rounds < 0 or text_penalty <= 0:
            raise ValueError("SpanDawidSkene needs text_rounds >= 0 and text_penalty > 0")
        self.n_iter, self.tol, self.smoothing, self.shrinkage = n_iter, tol, smoothing, shrinkage
        self.text_prior, self.text_rounds, self.text_penalty = text_prior, text_rounds, text_penalty

    def fit(self, data: pd.DataFrame, texts: pd.Series | None = None) -> Self:
        """``texts`` is optional: given, offsets are checked against them and (with
        ``text_prior``) they give each candidate its class prior."""
        enc = check_spans(data, texts=texts)
        n_classes, n_annotators = 1 + len(enc.labels), len(enc.annotators)
        # Candidates: distinct (item, start, end), in the spans' (sorted) order.
        item = enc.span_item
        key = pd.MultiIndex.from_arrays([item, enc.start, enc.end])
        candidate_of_span, uniques = key.factorize()
        cand_item = uniques.get_level_values(0).to_numpy(np.int64)
        cand_start = uniques.get_level_values(1).to_numpy(np.int64)
        cand_end = uniques.get_level_values(2).to_numpy(np.int64)
        n_cand = len(cand_item)
        # A vote of every answer on the candidate's item: absent (0) unless it marked it.
        answer_first = np.searchsorted(enc.answer_item, np.arange(len(enc.items)))
        answer_count = np.bincount(enc.answer_item, minlength=len(enc.items))
        vote_cand, vote_answer = _expand(answer_first[cand_item], answer_count[cand_item])
        vote_annotator = enc.answer_annotator[vote_answer]
        vote_class = np.zeros(len(vote_cand), np.int64)
        # The annotator's own label on those boundaries (the first label, if they gave two).
        marked = pd.Series(enc.label + 1, index=candidate_of_span * n_annotators
                           + enc.span_annotator)  # fmt: skip
        marked = marked[~marked.index.duplicated()]
        position = marked.index.get_indexer(vote_cand * n_annotators + vote_annotator)
        vote_class[position >= 0] = marked.to_numpy()[position[position >= 0]]

        responses = sparse.csr_matrix(
            (np.ones(len(vote_cand)), (vote_cand, vote_annotator * n_classes + vote_class)),
            shape=(n_cand, n_annotators * n_classes),
        )
        responses_t = responses.T.tocsr()
        counts = np.asarray(sparse.csr_matrix(
            (np.ones(len(vote_cand)), (vote_cand, vote_class)), shape=(n_cand, n_classes)
        ).todense())  # fmt: skip
        probas = counts / counts.sum(axis=1, keepdims=True)  # start from the vote shares
        features = None
        if texts is not None and self.text_prior:
            features = candidate_features(texts, enc.items, cand_item, cand_start, cand_end)
        log_prior: np.ndarray | None = None  # per candidate, from the text model
        rounds = 1 + (self.text_rounds if features is not None else 0)
        iteration, log_likelihood = 0, -np.inf
        weights: list[np.ndarray | None] = [None] * _TEXT_FOLDS
        shrinkage = 0 if features is not None and self.shrinkage == "auto" else self.shrinkage
        text_rounds = 0
        for round_ in range(rounds):
            if round_ > 0:
                text_rounds = round_
                last_prior = log_prior
                log_prior = _text_log_prior(features, probas, cand_item, self.text_penalty,
                                            weights)  # fmt: skip
                if last_prior is not None and np.abs(
                        np.exp(log_prior) - np.exp(last_prior)).max() < _TEXT_TOL:
                    break
            previous = -np.inf
            for iteration in range(1, self.n_iter + 1):
                priors, errors, strength = self._m_step(responses_t, probas, n_annotators,
                                                         shrinkage)  # fmt: skip
                log_joint = responses @ np.log(errors).reshape(-1, n_classes)
                log_joint += np.log(priors) if log_prior is None else log_prior
                log_evidence = logsumexp(log_joint, axis=1)
                probas = np.exp(log_joint - log_evidence[:, None])
                log_likelihood = float(log_evidence.sum() / max(len(vote_cand), 1))
                if log_likelihood - previous < self.tol:
                    break
                previous = log_likelihood

        winner = probas.argmax(axis=1)
        score = probas[np.arange(n_cand), winner]
        accepted = np.flatnonzero(winner > 0)
        # Overlapping accepted candidates of one item: keep the most probable, greedily.
        order = np.argsort(cand_item[accepted], kind="stable")
        left, right = _pairs_within(cand_item[accepted][order])
        left, right = order[left], order[right]
        a, b = accepted[left], accepted[right]
        shared = _overlap(cand_start[a], cand_end[a], cand_start[b], cand_end[b])
        clash = (left < right) & (shared > 0)
        keep = np.zeros(n_cand, bool)
        keep[accepted] = _greedy_non_overlapping(left[clash], right[clash], score[accepted])
        decision = np.where(keep, winner, 0)
        decision_proba = probas[np.arange(n_cand), decision]
        item_confidence = np.exp(np.bincount(cand_item, weights=np.log(decision_proba),
                                             minlength=len(enc.items)))  # fmt: skip
        kept = np.flatnonzero(keep)
        self._store(enc, cand_item[kept], cand_start[kept], cand_end[kept], winner[kept] - 1,
                    score[kept], item_confidence)  # fmt: skip

        classes = pd.Index([ABSENT, *enc.labels], name=LABEL)
        self.candidates_ = pd.DataFrame(probas, columns=classes).assign(**{
            ITEM: enc.items.take(cand_item), START: cand_start, END: cand_end, "accepted": keep,
        })[[ITEM, START, END, "accepted", *classes]]  # fmt: skip
        self.priors_ = pd.Series(priors, index=classes, name="prior")
        rows = pd.MultiIndex.from_product([enc.annotators, classes], names=[ANNOTATOR, "observed"])
        self.errors_ = pd.DataFrame(errors.reshape(-1, n_classes), index=rows,
                                    columns=classes.rename("true_class"))  # fmt: skip
        self.shrinkage_ = pd.Series(strength, index=classes, name="shrinkage")
        self.n_iter_, self.log_likelihood_ = iteration, log_likelihood
        self.text_rounds_ = text_rounds
        return self

    def _m_step(self, responses_t: sparse.csr_matrix, probas: np.ndarray, n_annotators: int,
                shrinkage: float | Literal["auto"]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """Priors, errors[a, observed, true] = P(a votes observed | true), prior strength."""
        n_classes = probas.shape[1]
        counts = np.asarray(responses_t @ probas).reshape(n_annotators, n_classes, n_classes)
        pooled = counts.sum(axis=0) + self.smoothing
        pooled /= pooled.sum(axis=0, keepdims=True)
        if shrinkage == "auto":
            strength = _empirical_bayes_strength(counts, pooled)
        else:
            strength = np.full(n_classes, float(shrinkage))
        counts = counts + self.smoothing + strength * pooled
        errors = counts / counts.sum(axis=1, keepdims=True)
        priors = probas.sum(axis=0) + self.smoothing
        return priors / priors.sum(), errors, strength


# --- the text model: a prior for each candidate from what it looks like ------------------

_SHAPE_RULES = ((r"[A-Z]", "X"), (r"[a-z]", "x"), (r"[0-9]", "d"), (r"(.)\1+", r"\1"))
#: Cross-fitting folds of the text model (by item), so no candidate's prior learns from itself.
_TEXT_FOLDS = 2
#: Stop refitting the text model once no candidate's prior moves by more than this.
_TEXT_TOL = 0.01
#: The text model of a fold learns from at most about this many candidates (whole items, every
#: k-th): beyond it the prior barely changes, and its cost would grow with the project; every
#: candidate still gets its prior from the model.
_TEXT_FIT_MAX = 150_000


def _shapes(words: pd.Series) -> pd.Series:
    """'McDonald' -> 'XxXx', 'U.S.' -> 'X.X.', '1996-08-23' -> 'd-d-d'."""
    for pattern, replacement in _SHAPE_RULES:
        words = words.str.replace(pattern, replacement, regex=True)
    return words


def candidate_features(texts: pd.Series, items: pd.Index, cand_item: np.ndarray,
                       cand_start: np.ndarray, cand_end: np.ndarray) -> sparse.csr_matrix:
    """Binary features of each candidate span from its text, one row per candidate: the
    lowercased span, its words, shapes, length, first/last word shape, suffix of its last
    word, the word and shape before and after it, whether it cuts a token, and whether the
    sentence is all capitals (a headline). Cheap and language-agnostic on purpose: they let
    evidence pool across sentences ("Reuters" is an ORG everywhere)."""
    tokens = tokenize(texts, items)
    item_texts = texts.reindex(items).astype(str)
    words = item_texts.str.split().explode().dropna().reset_index(drop=True)
    lower = words.str.lower()
    shape = _shapes(words)
    first, last = tokens.covering(cand_item, cand_start, cand_end)
    last = np.maximum(last, first)  # a whitespace-only span: treat as its next token
    n_tokens = len(words)
    first, last = np.minimum(first, n_tokens - 1), np.minimum(last, n_tokens - 1)
    item_first = tokens.first[cand_item]
    item_last = item_first + tokens.count[cand_item] - 1
    text_array = item_texts.to_numpy()
    span_text = pd.Series([text_array[i][s:e] for i, s, e in zip(cand_item, cand_start, cand_end)])
    headline = (item_texts.str.upper() == item_texts).to_numpy()[cand_item]
    cuts = (tokens.start[first] != cand_start) | (tokens.end[last] != cand_end)
    length = np.minimum(last - first + 1, 5)
    member_cand, member_token = _expand(first, last - first + 1)
    n_cand = len(cand_item)

    def at(values: pd.Series, position: np.ndarray, inside: np.ndarray) -> pd.Series:
        picked = values.to_numpy()[np.clip(position, 0, n_tokens - 1)].astype(object)
        picked[~inside] = "<edge>"
        return pd.Series(picked)

    has_before, has_after = first > item_first, last < item_last
    columns = {  # feature kind -> (candidate rows, values)
        "span": (np.arange(n_cand), span_text.str.lower()),
        "word": (member_cand, lower.iloc[member_token].reset_index(drop=True)),
        "shape": (member_cand, shape.iloc[member_token].reset_index(drop=True)),
        "first_shape": (np.arange(n_cand), shape.iloc[first].reset_index(drop=True)),
        "last_shape": (np.arange(n_cand), shape.iloc[last].reset_index(drop=True)),
        "suffix": (np.arange(n_cand), lower.iloc[last].str[-3:].reset_index(drop=True)),
        "before": (np.arange(n_cand), at(lower, first - 1, has_before)),
        "before_shape": (np.arange(n_cand), at(shape, first - 1, has_before)),
        "after": (np.arange(n_cand), at(lower, last + 1, has_after)),
        "after_shape": (np.arange(n_cand), at(shape, last + 1, has_after)),
        "length": (np.arange(n_cand), pd.Series(length.astype(str))),
        "flags": (np.arange(n_cand), pd.Series(np.char.add(np.where(cuts, "cut", "whole"),
                                                          np.where(headline, "|head", "|body")))),
    }  # fmt: skip
    rows, cols, width = [], [], 1  # column 0: the bias
    rows.append(np.arange(n_cand))
    cols.append(np.zeros(n_cand, np.int64))
    for rows_of, values in columns.values():
        codes, uniques = pd.factorize(values)
        rows.append(rows_of)
        cols.append(codes + width)
        width += len(uniques)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    matrix = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_cand, width))
    matrix.data[:] = 1.0  # a word twice in one span is still one feature
    # A feature of one item only cannot carry evidence to another item: drop it.
    owner = sparse.csr_matrix((np.ones(n_cand), (cand_item, np.arange(n_cand))),
                              shape=(len(items), n_cand))  # fmt: skip
    n_items_with = np.asarray(((owner @ matrix) > 0).sum(axis=0)).ravel()
    n_items_with[0] = 2  # the bias stays
    return matrix[:, np.flatnonzero(n_items_with >= 2)].tocsr()


def _fit_softmax(features: sparse.csr_matrix, targets: np.ndarray, penalty: float,
                 start: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Multinomial logistic regression on soft targets (the EM posteriors), L2 penalty on
    every weight but the bias; returns the weights (features x classes). Newton-CG with an
    exact Hessian-vector product: a dozen steps, far faster here than L-BFGS."""
    n_features, n_classes = features.shape[1], targets.shape[1]
    scale = np.full((n_features, 1), penalty)
    scale[0] = 0.0
    transposed = features.T.tocsr()

    def class_probas(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = features @ weights
        log_probas = scores - logsumexp(scores, axis=1, keepdims=True)
        return log_probas, np.exp(log_probas)

    def loss(flat: np.ndarray) -> tuple[float, np.ndarray]:
        weights = flat.reshape(n_features, n_classes)
        log_probas, probas = class_probas(weights)
        value = -(targets * log_probas).sum() + 0.5 * (scale * weights**2).sum()
        gradient = transposed @ (probas - targets) + scale * weights
        return float(value), gradient.ravel()

    cache: dict[bytes, np.ndarray] = {}  # Newton-CG asks for many products at one point

    def hessian_times(flat: np.ndarray, vector: np.ndarray) -> np.ndarray:
        key = flat.tobytes()
        if key not in cache:
            cache.clear()
            cache[key] = class_probas(flat.reshape(n_features, n_classes))[1]
        probas = cache[key]
        direction = vector.reshape(n_features, n_classes)
        moved = features @ direction
        curvature = probas * (moved - (probas * moved).sum(axis=1, keepdims=True))
        return (transposed @ curvature + scale * direction).ravel()

    initial = np.zeros(n_features * n_classes) if start is None else start.ravel()
    result = minimize(loss, initial, jac=True, hessp=hessian_times,
                      method="Newton-CG", options={"maxiter": 5, "xtol": 1e-3})  # fmt: skip
    return result.x.reshape(n_features, n_classes)


def _text_log_prior(features: sparse.csr_matrix, probas: np.ndarray, cand_item: np.ndarray,
                    penalty: float, weights: list) -> np.ndarray:
    """log P(class | candidate's text features), cross-fitted: each fold of items gets the
    model fitted on the other folds' posteriors, so a candidate's own votes never shape its
    prior (else the prior would just echo the posterior back)."""
    fold = cand_item % _TEXT_FOLDS
    log_prior = np.empty_like(probas)
    for k in range(_TEXT_FOLDS):
        train, test = fold != k, fold == k
        stride = -(-int(train.sum()) // _TEXT_FIT_MAX)  # ceil: 1 unless the fold is large
        if stride > 1:
            train &= (cand_item // _TEXT_FOLDS) % stride == 0
        weights[k] = _fit_softmax(features[train], probas[train], penalty, weights[k])
        scores = features[test] @ weights[k]
        log_prior[test] = scores - logsumexp(scores, axis=1, keepdims=True)
    return log_prior


def _empirical_bayes_strength(counts: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """Per true class k, the Dirichlet strength s (prior mean: the pooled column
    ``pooled[:, k]``) that maximises the Dirichlet-multinomial likelihood of every
    annotator's soft counts ``counts[a, :, k]``; chosen on a log grid."""
    s = _STRENGTHS[:, None, None, None]  # grid x annotator x observed x true
    alpha = s * pooled[None, None]
    n = counts[None]
    total = counts.sum(axis=1)[None]  # grid x annotator x true
    log_likelihood = (gammaln(s[..., 0]) - gammaln(total + s[..., 0])).sum(axis=1) + (
        gammaln(n + alpha) - gammaln(alpha)
    ).sum(axis=(1, 2))
    return _STRENGTHS[np.argmax(log_likelihood, axis=0)]


# --- evaluation helper ----------------------------------------------------------------------


def span_f1(predicted: pd.DataFrame, gold: pd.DataFrame, labels: list | None = None) -> pd.Series:
    """Micro exact-span precision, recall and F1 of a consensus (item_id, start, end, label;
    NA rows for "no entity") against gold, over the items both have."""
    frame = predicted[list(GOLD_COLUMNS)].assign(**{ANNOTATOR: "consensus"})
    row = gold_span_scores(frame, gold, labels=labels).iloc[0]
    return row[["n_items", "n_spans", "n_gold_spans", "exact_matches", "precision", "recall", "f1"]]
