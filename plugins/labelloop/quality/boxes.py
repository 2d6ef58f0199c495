"""Bounding-box quality: IoU matching, agreement, gold scores and consensus boxes.

The box frame is the tidy frame of region tasks: one row per box, columns
``item_id, annotator_id, x, y, w, h, label`` in pixels with a top-left origin. An answer
with no boxes ("no object", a real answer) is one row whose x, y, w, h and label are all
empty. Gold and consensus use the same frame without ``annotator_id``.

Everything is vectorised over the whole project: the candidate box pairs of every
(item, annotator pair) are built with ``np.repeat`` arithmetic, their IoU in one pass, and
only the rare pairs where one box could match two others go through
``scipy.optimize.linear_sum_assignment``. See docs/boxes.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from scipy.special import logsumexp
from scipy.stats import binom

from .agreement import ANNOTATOR, ITEM, LABEL, InputError, check_columns, show

X, Y, W, H = "x", "y", "w", "h"
COORDS = (X, Y, W, H)
BOX_COLUMNS = (ITEM, ANNOTATOR, X, Y, W, H, LABEL)
CONSENSUS_COLUMNS = (ITEM, X, Y, W, H, LABEL, "confidence")
#: The row of ``BoxAgreement.summary_`` and ``pairs_`` that pools every label.
OVERALL = "(all)"
#: Matched pairs need IoU >= this: the PASCAL VOC convention, and the smallest threshold at
#: which one box can overlap two disjoint boxes enough to match either, but not both.
DEFAULT_THRESHOLD = 0.5
#: Clusters that no annotator drew both of merge when their mean boxes overlap at IoU >= this
#: (``cluster_boxes``): a loose box 1.7 times as wide and tall as a tight one of the same
#: object overlaps it at 0.35, and whoever saw two overlapping objects drew both (no merge).
DEFAULT_MERGE_IOU = 0.3


# --- the frame ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedBoxes:
    """The box frame as integer codes. Answers are the distinct (item, annotator) pairs in
    sorted order; boxes are sorted by answer, so the boxes of answer ``k`` are rows
    ``start[k] : start[k] + count[k]`` of ``coords``/``label``."""

    answer_item: np.ndarray  # (n_answers,) item code
    answer_annotator: np.ndarray  # (n_answers,) annotator code
    answer: np.ndarray  # (n_boxes,) answer code, non-decreasing
    coords: np.ndarray  # (n_boxes, 4) x, y, w, h
    label: np.ndarray  # (n_boxes,) label code
    items: pd.Index
    annotators: pd.Index
    labels: pd.Index

    @property
    def n_answers(self) -> int:
        return len(self.answer_item)

    @property
    def count(self) -> np.ndarray:
        return np.bincount(self.answer, minlength=self.n_answers)

    @property
    def start(self) -> np.ndarray:
        count = self.count
        return np.cumsum(count) - count

    @property
    def box_item(self) -> np.ndarray:
        return self.answer_item[self.answer]

    @property
    def box_annotator(self) -> np.ndarray:
        return self.answer_annotator[self.answer]


def _check_boxes(frame: pd.DataFrame, what: str, with_annotator: bool) -> tuple[np.ndarray, ...]:
    """Validate a box frame; return (coords with NaN rows for "no object", is_box mask)."""
    required = BOX_COLUMNS if with_annotator else tuple(c for c in BOX_COLUMNS if c != ANNOTATOR)
    check_columns(frame, required, what)
    if frame.empty:
        raise InputError(f"{what}: no rows; expected one row per box, or one row with empty "
                         "x, y, w, h, label for an answer with no boxes")  # fmt: skip
    for column in (ITEM, ANNOTATOR) if with_annotator else (ITEM,):
        empty = frame[column].isna().to_numpy()
        if empty.any():
            raise InputError(f"{what}: row {show(frame.index[empty.argmax()])} has an empty "
                             f"{column}; fill or drop it")  # fmt: skip
    coords = np.empty((len(frame), 4))
    for k, column in enumerate(COORDS):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
        bad = np.isnan(values) & frame[column].notna().to_numpy()
        if bad.any():
            row = bad.argmax()
            raise InputError(f"{what}: row {show(frame.index[row])} has {column}="
                             f"{show(frame[column].iloc[row])}; expected a number of pixels")  # fmt: skip
        coords[:, k] = values
    missing = np.isnan(coords)
    no_label = frame[LABEL].isna().to_numpy()
    is_box = ~missing.any(axis=1)
    partial = (missing.any(axis=1) & ~missing.all(axis=1)) | (is_box == no_label)
    if partial.any():
        row = partial.argmax()
        raise InputError(
            f"{what}: row {show(frame.index[row])} fills only some of x, y, w, h, label; a box "
            "fills all five, an answer with no boxes leaves all five empty"
        )
    bad = is_box & (~np.isfinite(coords).all(axis=1) | (coords[:, 2] < 0) | (coords[:, 3] < 0))
    if bad.any():
        row = bad.argmax()
        raise InputError(f"{what}: row {show(frame.index[row])} has w={coords[row, 2]:g}, "
                         f"h={coords[row, 3]:g}; expected finite coordinates and w, h >= 0")  # fmt: skip
    return coords, is_box


def _sorted_index(values: pd.Series) -> pd.Index:
    return pd.Index(pd.unique(values)).sort_values()


def encode_boxes(
    frame: pd.DataFrame,
    what: str = "boxes",
    with_annotator: bool = True,
    items: pd.Index | None = None,
    labels: pd.Index | None = None,
) -> EncodedBoxes:
    """Validate a box frame and encode it. Without annotators (gold, consensus) every item
    is one answer. ``items``/``labels`` fix the code spaces, so gold lines up with the
    annotators' boxes; rows whose item is not in ``items`` are dropped."""
    coords, is_box = _check_boxes(frame, what, with_annotator)
    item_values = frame[ITEM]
    items = _sorted_index(item_values) if items is None else items
    labels = _sorted_index(frame.loc[is_box, LABEL]) if labels is None else labels
    item = items.get_indexer(item_values)
    annotators = _sorted_index(frame[ANNOTATOR]) if with_annotator else pd.Index([what])
    annotator = annotators.get_indexer(frame[ANNOTATOR]) if with_annotator else np.zeros(
        len(frame), np.int64)  # fmt: skip
    keep = item >= 0
    key = item.astype(np.int64) * len(annotators) + annotator
    codes, answer = np.unique(key[keep], return_inverse=True)
    n_boxes = np.bincount(answer, weights=is_box[keep], minlength=len(codes))
    n_rows = np.bincount(answer, minlength=len(codes))
    mixed = (n_boxes > 0) & (n_rows > n_boxes) | (n_boxes == 0) & (n_rows > 1)
    if mixed.any():
        bad_item, bad_annotator = np.divmod(codes[mixed.argmax()], len(annotators))
        who = f" annotator_id={show(annotators[bad_annotator])}" if with_annotator else ""
        raise InputError(
            f"{what}: item_id={show(items[bad_item])}{who} has a row with no box and "
            "another row as well; an answer with no boxes is exactly one row with empty "
            "x, y, w, h, label"
        )
    box_rows = keep & is_box
    box_answer = answer[is_box[keep]]
    label = labels.get_indexer(frame.loc[box_rows, LABEL])
    box_coords = coords[box_rows]
    # Sort boxes by answer, then by position: results never depend on row order.
    order = np.lexsort((label, *box_coords.T[::-1], box_answer))
    answer_item, answer_annotator = np.divmod(codes, len(annotators))
    return EncodedBoxes(
        answer_item=answer_item, answer_annotator=answer_annotator, answer=box_answer[order],
        coords=box_coords[order], label=label[order], items=items.rename(ITEM),
        annotators=annotators.rename(ANNOTATOR), labels=labels.rename(LABEL),
    )  # fmt: skip


# --- IoU and one-to-one matching ------------------------------------------------------------


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of x, y, w, h boxes along the last axis, broadcasting; 0 where both are empty."""
    ix = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    iy = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_iou(a: np.ndarray | Sequence[Sequence[float]], b: np.ndarray | Sequence[Sequence[float]]
            ) -> np.ndarray:  # fmt: skip
    """n x m IoU matrix of two lists of [x, y, w, h] boxes."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    return _iou(a[:, None, :], b[None, :, :])


def _check_threshold(threshold: float) -> float:
    if not 0 < threshold <= 1:
        raise ValueError(f"IoU threshold must be in (0, 1], got {threshold!r}")
    return float(threshold)


def _cross(
    left_start: np.ndarray, left_count: np.ndarray, right_start: np.ndarray,
    right_count: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Every (left box, right box) of every answer pair p, as (p, left row, right row),
    sorted by p then left row."""
    sizes = left_count * right_count
    pair = np.repeat(np.arange(len(sizes)), sizes)
    offset = np.arange(len(pair)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    columns = right_count[pair]
    return pair, left_start[pair] + offset // columns, right_start[pair] + offset % columns


def _one_to_one(pair: np.ndarray, left: np.ndarray, right: np.ndarray, iou: np.ndarray,
                threshold: float) -> np.ndarray:  # fmt: skip
    """Mask of matched candidates: per pair, the one-to-one matching of maximum total IoU
    among candidates with IoU >= threshold (lower ones are never matched).

    Where no box has two qualifying candidates, the qualifying candidates are the matching;
    the Hungarian algorithm runs only for the pairs where some box has (crowds)."""
    candidate = np.flatnonzero(iou >= threshold)
    p, i, j = pair[candidate], left[candidate], right[candidate]
    matched = np.zeros(len(pair), bool)
    if not len(candidate):
        return matched
    left_twice = (p[1:] == p[:-1]) & (i[1:] == i[:-1])  # sorted by (p, i): twins are adjacent
    right_key = np.sort(p * (int(right.max()) + 1) + j)
    right_twice = right_key[1:] == right_key[:-1]
    conflicted = np.union1d(p[1:][left_twice], right_key[1:][right_twice] // (int(right.max()) + 1))
    easy = ~np.isin(p, conflicted)
    matched[candidate[easy]] = True
    bounds = np.searchsorted(p, np.stack([conflicted, conflicted + 1]))
    for begin, end in bounds.T:
        rows, row = np.unique(i[begin:end], return_inverse=True)
        cols, col = np.unique(j[begin:end], return_inverse=True)
        weights = np.zeros((len(rows), len(cols)))
        weights[row, col] = iou[candidate[begin:end]]
        best_row, best_col = linear_sum_assignment(weights, maximize=True)
        chosen = np.zeros_like(weights, bool)
        chosen[best_row, best_col] = weights[best_row, best_col] >= threshold
        matched[candidate[begin:end][chosen[row, col]]] = True
    return matched


@dataclass(frozen=True)
class _Matches:
    """Matched box pairs between answer pairs: pair index, left and right box rows, IoU."""

    pair: np.ndarray
    left: np.ndarray
    right: np.ndarray
    iou: np.ndarray


def _match_answers(
    a: EncodedBoxes, left: np.ndarray, b: EncodedBoxes, right: np.ndarray,
    threshold: float, match_labels: bool,
) -> _Matches:  # fmt: skip
    """One-to-one matching between answer ``left[p]`` of ``a`` and ``right[p]`` of ``b``."""
    pair, i, j = _cross(a.start[left], a.count[left], b.start[right], b.count[right])
    iou = _iou(a.coords[i], b.coords[j])
    if match_labels:  # a and b share label codes
        iou[a.label[i] != b.label[j]] = 0.0
    matched = _one_to_one(pair, i, j, iou, threshold)
    return _Matches(pair[matched], i[matched], j[matched], iou[matched])


def match_boxes(
    a: np.ndarray | Sequence[Sequence[float]], b: np.ndarray | Sequence[Sequence[float]],
    threshold: float = DEFAULT_THRESHOLD, labels_a: Sequence[Any] | None = None,
    labels_b: Sequence[Any] | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Match two annotators' boxes on one image one-to-one, maximising the total IoU over
    pairs with IoU >= threshold; with labels, only boxes of the same label match.
    Columns: index_a, index_b (positions in ``a`` and ``b``), iou; sorted by index_a."""
    threshold = _check_threshold(threshold)
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    iou = box_iou(a, b)
    if labels_a is not None and labels_b is not None:
        iou[np.asarray(labels_a)[:, None] != np.asarray(labels_b)[None, :]] = 0.0
    i, j = np.divmod(np.arange(iou.size), max(len(b), 1))
    matched = _one_to_one(np.zeros(iou.size, np.int64), i, j, iou.ravel(), threshold)
    return pd.DataFrame({"index_a": i[matched], "index_b": j[matched],
                         "iou": iou.ravel()[matched]})  # fmt: skip


def _answer_pairs(answer_item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (k, l), k < l, of answers on the same item (answers sorted by item)."""
    n = len(answer_item)
    per_item = np.bincount(answer_item)
    first = np.cumsum(per_item) - per_item
    later = first[answer_item] + per_item[answer_item] - 1 - np.arange(n)
    left = np.repeat(np.arange(n), later)
    offset = np.arange(len(left)) - np.repeat(np.cumsum(later) - later, later)
    return left, left + 1 + offset


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(numerator, float) / denominator


# --- agreement ------------------------------------------------------------------------------


class BoxAgreement:
    """Inter-annotator agreement on boxes, per label and over all labels (``OVERALL``).

    For every image and every pair of annotators who both answered it, boxes are matched
    one-to-one (``match_boxes``); per label only boxes of that label take part. The
    ``OVERALL`` row pools the labels: with ``match_labels`` (default) it sums the per-label
    matchings, without it boxes match whatever their labels (localisation agreement).

    Learned: ``summary_`` (one row per label, then ``OVERALL``: n_pairs, n_boxes, n_matched,
    f1, mean_iou, iou_agreement), ``pairs_`` (one row per label and ordered annotator pair:
    precision of annotator_a with annotator_b as reference, recall, f1, mean_iou,
    iou_agreement), ``items_`` (per image over all labels: n_answers, n_pairs, f1,
    iou_agreement). Definitions in docs/boxes.md.
    """

    summary_: pd.DataFrame
    pairs_: pd.DataFrame
    items_: pd.DataFrame

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, match_labels: bool = True) -> None:
        self.threshold = _check_threshold(threshold)
        self.match_labels = match_labels

    def fit(self, data: pd.DataFrame) -> Self:
        enc = encode_boxes(data)
        left, right = _answer_pairs(enc.answer_item)
        n_labels, n_pairs = len(enc.labels), len(left)
        by_label = _match_answers(enc, left, enc, right, self.threshold, match_labels=True)
        # Per (answer pair, label) counts; the last "label" column is OVERALL.
        width = n_labels + 1

        def per_label(rows: np.ndarray, label: np.ndarray, n_rows: int,
                      weights: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
            flat = np.bincount(rows * width + label, weights, minlength=n_rows * width)
            return flat.reshape(n_rows, width).astype(float)

        boxes = per_label(enc.answer, enc.label, enc.n_answers)
        boxes[:, -1] = enc.count
        label_of_match = enc.label[by_label.left]
        matched = per_label(by_label.pair, label_of_match, n_pairs)
        iou_sum = per_label(by_label.pair, label_of_match, n_pairs, by_label.iou)
        overall = by_label if self.match_labels else _match_answers(
            enc, left, enc, right, self.threshold, match_labels=False)  # fmt: skip
        matched[:, -1] = np.bincount(overall.pair, minlength=n_pairs)
        iou_sum[:, -1] = np.bincount(overall.pair, weights=overall.iou, minlength=n_pairs)
        n_a, n_b = boxes[left], boxes[right]
        agrees = (matched == n_a) & (matched == n_b)
        label_names = [*enc.labels, OVERALL]

        self.summary_ = pd.DataFrame({
            LABEL: label_names, "n_pairs": n_pairs,
            "n_boxes": boxes.sum(axis=0).astype(np.int64),
            "n_matched": matched.sum(axis=0).astype(np.int64),
            "f1": _ratio(2 * matched.sum(axis=0), (n_a + n_b).sum(axis=0)),
            "mean_iou": _ratio(iou_sum.sum(axis=0), matched.sum(axis=0)),
            "iou_agreement": agrees.mean(axis=0) if n_pairs else np.nan,
        })  # fmt: skip
        self.pairs_ = self._pairs(enc, left, right, n_a, n_b, matched, iou_sum, agrees,
                                  label_names)  # fmt: skip
        item = enc.answer_item[left]
        n_items = len(enc.items)
        per_item_pairs = np.bincount(item, minlength=n_items)
        self.items_ = pd.DataFrame({
            "n_answers": np.bincount(enc.answer_item, minlength=n_items),
            "n_pairs": per_item_pairs,
            "f1": _ratio(2 * np.bincount(item, matched[:, -1], n_items),
                         np.bincount(item, n_a[:, -1] + n_b[:, -1], n_items)),
            "iou_agreement": _ratio(np.bincount(item, agrees[:, -1], n_items), per_item_pairs),
        }, index=enc.items)  # fmt: skip
        return self

    @staticmethod
    def _pairs(enc: EncodedBoxes, left: np.ndarray, right: np.ndarray, n_a: np.ndarray,
               n_b: np.ndarray, matched: np.ndarray, iou_sum: np.ndarray, agrees: np.ndarray,
               label_names: list[Any]) -> pd.DataFrame:  # fmt: skip
        """Sum the per-image counts over each ordered annotator pair, for every label."""
        n_annotators, n_columns = len(enc.annotators), len(label_names)
        first, second = enc.answer_annotator[left], enc.answer_annotator[right]
        # Both directions: a's precision against b is b's recall against a.
        a = np.concatenate([first, second])
        b = np.concatenate([second, first])
        codes, group = np.unique(a * n_annotators + b, return_inverse=True)
        summing = sparse.csr_matrix((np.ones(len(group)), (group, np.arange(len(group)))),
                                    shape=(len(codes), len(group)))  # fmt: skip

        def total(values: np.ndarray) -> np.ndarray:
            return np.asarray(summing @ values)

        boxes_a, boxes_b = total(np.concatenate([n_a, n_b])), total(np.concatenate([n_b, n_a]))
        both = total(np.concatenate([matched, matched]))
        iou = total(np.concatenate([iou_sum, iou_sum]))
        agreeing = total(np.concatenate([agrees, agrees]).astype(float))
        n_items = np.bincount(group, minlength=len(codes))
        code_a, code_b = np.divmod(codes, n_annotators)
        return pd.DataFrame({
            LABEL: np.repeat(np.array(label_names, dtype=object), len(codes)),
            "annotator_a": np.tile(enc.annotators.take(code_a), n_columns),
            "annotator_b": np.tile(enc.annotators.take(code_b), n_columns),
            "n_items": np.tile(n_items, n_columns),
            "n_boxes_a": boxes_a.T.ravel().astype(np.int64),
            "n_boxes_b": boxes_b.T.ravel().astype(np.int64),
            "n_matched": both.T.ravel().astype(np.int64),
            "precision": _ratio(both, boxes_a).T.ravel(),
            "recall": _ratio(both, boxes_b).T.ravel(),
            "f1": _ratio(2 * both, boxes_a + boxes_b).T.ravel(),
            "mean_iou": _ratio(iou, both).T.ravel(),
            "iou_agreement": _ratio(agreeing, n_items[:, None]).T.ravel(),
        })  # fmt: skip

    def matrix(self, metric: str = "f1", label: Any = OVERALL) -> pd.DataFrame:
        """annotator x annotator matrix of one ``pairs_`` column for one label (NaN for
        pairs that share no image), e.g. for a heatmap."""
        rows = self.pairs_[self.pairs_[LABEL] == label]
        return rows.pivot(index="annotator_a", columns="annotator_b", values=metric)


# --- gold -----------------------------------------------------------------------------------


def box_gold_scores(
    boxes: pd.DataFrame, gold: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD,
    match_labels: bool = True,
) -> pd.DataFrame:  # fmt: skip
    """Per annotator, over the gold items they answered: boxes matched to gold (IoU >=
    threshold, same label with ``match_labels``), missed gold boxes, false boxes, micro
    precision / recall / F1 and the mean IoU of matched pairs.

    ``gold`` is a box frame without annotator_id (a "no object" row for an image whose gold
    has no boxes). Every annotator gets a row; F1 is NaN where neither side drew a box.
    """
    threshold = _check_threshold(threshold)
    enc = encode_boxes(boxes)
    check_columns(gold, tuple(c for c in BOX_COLUMNS if c != ANNOTATOR), "gold")
    gold_labels = gold[LABEL].dropna()
    labels = enc.labels.append(pd.Index(pd.unique(gold_labels))).unique()
    truth = encode_boxes(gold, "gold", with_annotator=False, items=enc.items, labels=labels)
    gold_answer = np.full(len(enc.items), -1)
    gold_answer[truth.answer_item] = np.arange(truth.n_answers)
    answered = np.flatnonzero(gold_answer[enc.answer_item] >= 0)
    partner = gold_answer[enc.answer_item[answered]]
    enc = EncodedBoxes(**{**enc.__dict__, "labels": labels})  # labels only name the codes
    found = _match_answers(enc, answered, truth, partner, threshold, match_labels)

    n = len(enc.annotators)
    who = enc.answer_annotator[answered]
    n_gold = np.bincount(who, weights=truth.count[partner], minlength=n)
    n_boxes = np.bincount(who, weights=enc.count[answered], minlength=n)
    n_matched = np.bincount(who[found.pair], minlength=n)
    iou = np.bincount(who[found.pair], weights=found.iou, minlength=n)
    return pd.DataFrame({
        ANNOTATOR: enc.annotators,
        "n_items": np.bincount(who, minlength=n),
        "n_gold_boxes": n_gold.astype(np.int64), "n_boxes": n_boxes.astype(np.int64),
        "n_matched": n_matched, "n_missed": (n_gold - n_matched).astype(np.int64),
        "n_false": (n_boxes - n_matched).astype(np.int64),
        "precision": _ratio(n_matched, n_boxes), "recall": _ratio(n_matched, n_gold),
        "f1": _ratio(2 * n_matched, n_gold + n_boxes), "mean_iou": _ratio(iou, n_matched),
    })  # fmt: skip


# --- consensus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clusters:
    """Boxes grouped into candidate objects: ``cluster[r]`` for box row ``r`` of ``enc``;
    at most one box per annotator per cluster, clusters numbered by item."""

    enc: EncodedBoxes
    cluster: np.ndarray  # (n_boxes,)
    item: np.ndarray  # (n_clusters,) item code

    @property
    def n_clusters(self) -> int:
        return len(self.item)

    def evidence(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cluster, annotator, drew) for every cluster and every annotator who answered
        its image: drew is 1 if that annotator has a box in the cluster, else 0 (which
        includes answering "no object")."""
        enc = self.enc
        per_item = np.bincount(enc.answer_item, minlength=len(enc.items))
        first = np.cumsum(per_item) - per_item
        cluster = np.repeat(np.arange(self.n_clusters), per_item[self.item])
        offset = np.arange(len(cluster)) - np.repeat(
            np.cumsum(per_item[self.item]) - per_item[self.item], per_item[self.item])  # fmt: skip
        annotator = enc.answer_annotator[first[self.item][cluster] + offset]
        n_annotators = len(enc.annotators)
        drawn = np.unique(self.cluster * n_annotators + enc.box_annotator)
        key = cluster * n_annotators + annotator
        drew = np.isin(key, drawn).astype(float)
        return cluster, annotator, drew


def cluster_boxes(enc: EncodedBoxes, threshold: float = DEFAULT_THRESHOLD,
                  merge_iou: float | None = DEFAULT_MERGE_IOU) -> Clusters:  # fmt: skip
    """Single-linkage clustering of an image's boxes by IoU >= threshold, in descending IoU
    order, never putting two boxes of one annotator together. Labels are ignored: a box
    two annotators labelled differently is still one object (its label is voted later).

    Connected components of the IoU graph are the answer wherever no annotator occurs twice
    in one (almost everywhere); the rest are merged edge by edge (Kruskal with cannot-links).
    Then clusters that no annotator drew both of are merged when their mean boxes overlap
    at IoU >= ``merge_iou`` (``None``: never): each annotator draws an object once, so two
    such clusters are one object that some drew tight and others loose, not two objects.
    """
    left, right = _answer_pairs(enc.answer_item)
    _, i, j = _cross(enc.start[left], enc.count[left], enc.start[right], enc.count[right])
    iou = _iou(enc.coords[i], enc.coords[j])
    edge = iou >= threshold
    i, j, iou = i[edge], j[edge], iou[edge]
    n_boxes = len(enc.answer)
    graph = sparse.coo_matrix((np.ones(len(i)), (i, j)), shape=(n_boxes, n_boxes))
    _, component = connected_components(graph, directed=False)
    annotator = enc.box_annotator
    n_annotators = len(enc.annotators)
    per_annotator = np.unique(component * n_annotators + annotator, return_counts=True)
    crowded = np.unique(per_annotator[0][per_annotator[1] > 1] // n_annotators)
    cluster = component.copy()
    if len(crowded):
        in_crowd = np.isin(component[i], crowded)
        rows = np.flatnonzero(np.isin(component, crowded))
        roots = _link({int(r): {int(annotator[r])} for r in rows}, i[in_crowd], j[in_crowd],
                      iou[in_crowd])  # fmt: skip
        for r, root in roots.items():
            cluster[r] = root + len(cluster)  # ids above every component id: no collisions
    clusters = _numbered(enc, cluster)
    return clusters if merge_iou is None else _merge_split(clusters, _check_threshold(merge_iou))


def _numbered(enc: EncodedBoxes, cluster: np.ndarray) -> Clusters:
    """Clusters renumbered by (item, first box row), so cluster ids follow the items."""
    item = enc.box_item
    _, first_row = np.unique(cluster, return_index=True)
    order = np.lexsort((first_row, item[first_row]))
    renumber = np.empty(len(first_row), np.int64)
    renumber[order] = np.arange(len(order))
    codes = np.searchsorted(np.unique(cluster), cluster)
    return Clusters(enc=enc, cluster=renumber[codes], item=item[first_row[order]])


def _merge_split(clusters: Clusters, merge_iou: float) -> Clusters:
    """Merge clusters of one image whose mean boxes overlap at IoU >= merge_iou, in
    descending IoU order, while no annotator would occur twice in the merged cluster."""
    enc, n = clusters.enc, clusters.n_clusters
    left, right = _answer_pairs(clusters.item)  # every pair of clusters of one image
    if not len(left):
        return clusters
    mean, _ = _fuse(clusters, np.ones(len(clusters.cluster)))
    iou = _iou(mean[left], mean[right])
    near = iou >= merge_iou
    left, right, iou = left[near], right[near], iou[near]
    incidence = (np.ones(len(clusters.cluster)), (clusters.cluster, enc.box_annotator))
    drawn = sparse.csr_matrix(incidence, shape=(n, len(enc.annotators)))
    disjoint = np.asarray(drawn[left].multiply(drawn[right]).sum(axis=1)).ravel() == 0
    left, right, iou = left[disjoint], right[disjoint], iou[disjoint]
    if not len(left):
        return clusters
    involved = np.union1d(left, right)
    start, indices = drawn.indptr, drawn.indices
    roots = _link({int(c): set(indices[start[c]:start[c + 1]].tolist()) for c in involved},
                  left, right, iou)  # fmt: skip
    merged = np.arange(n)
    merged[involved] = [roots[int(c)] for c in involved]
    return _numbered(enc, merged[clusters.cluster])


def _link(members: dict[int, set[int]], i: np.ndarray, j: np.ndarray, iou: np.ndarray
          ) -> dict[int, int]:  # fmt: skip
    """Kruskal over the edges (i, j) in descending IoU, skipping any merge that would put
    one annotator twice in a group (``members``: each node's annotators); each node's root."""
    parent = {node: node for node in members}

    def root(r: int) -> int:
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    for k in np.argsort(-iou, kind="stable"):
        a, b = root(int(i[k])), root(int(j[k]))
        if a != b and not members[a] & members[b]:
            parent[b] = a
            members[a] |= members.pop(b)
    return {node: root(node) for node in parent}


class _BoxAggregator:
    """What every box consensus learns: the clusters (the same clustering for every rule)
    with a posterior of being a real object and a support, kept where the support (or, for
    ``BoxConsensus(keep_by="posterior")``, the posterior) is above one half, and the kept
    ones as a box frame."""

    clusters_: pd.DataFrame  # one row per cluster, kept or not
    boxes_: pd.DataFrame  # consensus box frame: item_id, x, y, w, h, label, confidence

    def __init__(self, threshold: float = DEFAULT_THRESHOLD,
                 merge_iou: float | None = DEFAULT_MERGE_IOU) -> None:  # fmt: skip
        self.threshold = _check_threshold(threshold)
        self.merge_iou = None if merge_iou is None else _check_threshold(merge_iou)

    def _clusters(self, data: pd.DataFrame) -> Clusters:
        return cluster_boxes(encode_boxes(data), self.threshold, self.merge_iou)

    def fit(self, data: pd.DataFrame) -> Self:
        raise NotImplementedError

    def fit_predict(self, data: pd.DataFrame) -> pd.DataFrame:
        """Fit on the box frame and return the consensus box frame."""
        return self.fit(data).boxes_

    def _store(self, clusters: Clusters, posterior: np.ndarray, support: np.ndarray,
               weight: np.ndarray, median: bool = False, by_posterior: bool = False
               ) -> None:  # fmt: skip
        """Fuse and label every cluster with per-box ``weight`` (weighted median edges with
        ``median``); keep where the support (or the posterior) is above one half, which is
        the kept box's confidence. An image with no kept cluster gets a "no object" row
        whose confidence is the product of (1 - that score) over its clusters."""
        enc = clusters.enc
        score = posterior if by_posterior else support
        keep = score > 0.5
        coords, label = _fuse(clusters, weight, median)
        n_votes = np.bincount(clusters.cluster, minlength=clusters.n_clusters)
        item_ids = enc.items.take(clusters.item)
        self.clusters_ = pd.DataFrame({
            ITEM: item_ids, X: coords[:, 0], Y: coords[:, 1], W: coords[:, 2], H: coords[:, 3],
            LABEL: enc.labels.take(label), "n_votes": n_votes,
            "n_answers": np.bincount(enc.answer_item, minlength=len(enc.items))[clusters.item],
            "posterior": posterior, "support": support, "kept": keep,
        })  # fmt: skip
        kept = self.clusters_.loc[keep, list(CONSENSUS_COLUMNS[:-1])].assign(
            confidence=score[keep])
        log_none = np.bincount(clusters.item, weights=np.log1p(-np.minimum(score, 1 - 1e-12)),
                               minlength=len(enc.items))  # fmt: skip
        empty = np.setdiff1d(np.arange(len(enc.items)), clusters.item[keep])
        no_object = pd.DataFrame({ITEM: enc.items.take(empty), "confidence": np.exp(log_none[empty])})
        frame = pd.concat([kept, no_object], ignore_index=True)[list(CONSENSUS_COLUMNS)]
        order = np.lexsort((frame[X].fillna(-1).to_numpy(), enc.items.get_indexer(frame[ITEM])))
        self.boxes_ = frame.iloc[order].reset_index(drop=True)


def _fuse(clusters: Clusters, weight: np.ndarray, median: bool = False
          ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Weighted mean (weighted box fusion) or weighted median of each cluster's box edges,
    and the weighted label vote; ties go to the first label in sorted order."""
    enc, n = clusters.enc, clusters.n_clusters
    edges = np.column_stack([enc.coords[:, :2], enc.coords[:, :2] + enc.coords[:, 2:]])
    if median:
        fused = np.column_stack([_weighted_median(edges[:, k], weight, clusters.cluster, n)
                                 for k in range(4)])  # fmt: skip
    else:
        total = np.bincount(clusters.cluster, weights=weight, minlength=n)
        fused = np.column_stack([
            np.bincount(clusters.cluster, weights=weight * edges[:, k], minlength=n)
            for k in range(4)
        ]) / total[:, None]  # fmt: skip
    coords = np.column_stack([fused[:, :2], fused[:, 2:] - fused[:, :2]])
    n_labels = len(enc.labels)
    votes = np.bincount(clusters.cluster * n_labels + enc.label, weights=weight,
                        minlength=n * n_labels).reshape(n, n_labels)  # fmt: skip
    return coords, votes.argmax(axis=1) if n_labels else np.zeros(n, np.int64)


def _weighted_median(values: np.ndarray, weight: np.ndarray, group: np.ndarray, n_groups: int
                     ) -> np.ndarray:  # fmt: skip
    """Per group, the value at half the group's total (positive) weight; where the half
    falls exactly between two values, their mean (the ordinary median with equal weights)."""
    order = np.lexsort((values, group))
    value, share, group = values[order], weight[order], group[order]
    total = np.bincount(group, weights=share, minlength=n_groups)
    cumulative = np.cumsum(share)
    count = np.bincount(group, minlength=n_groups)
    before = (cumulative - share)[np.cumsum(count) - count]  # weight of earlier groups
    # group + the share of its weight up to each value: increasing over the sorted values.
    position = group + (cumulative - before[group]) / total[group]
    groups = np.arange(n_groups)
    at = np.searchsorted(position, groups + 0.5 - 1e-9)
    tie = (position[at] <= groups + 0.5 + 1e-9) & (at + 1 < len(value))
    after = np.minimum(at + 1, len(value) - 1)
    tie &= group[after] == groups
    return np.where(tie, (value[at] + value[after]) / 2, value[at])


class MajorityBoxes(_BoxAggregator):
    """The simple rule: keep a cluster that more than half of the image's annotators drew,
    with the mean box and the most frequent label; confidence is the share who drew it."""

    def fit(self, data: pd.DataFrame) -> Self:
        clusters = self._clusters(data)
        cluster, _, drew = clusters.evidence()
        votes = np.bincount(cluster, weights=drew, minlength=clusters.n_clusters)
        share = votes / np.bincount(cluster, minlength=clusters.n_clusters)
        self._store(clusters, share, share, np.ones(len(clusters.cluster)))
        return self


class BoxConsensus(_BoxAggregator):
    """Consensus boxes from a model of each annotator's reliability, learned by EM.

    Every cluster is a real object of one of ``difficulty_levels`` kinds (easy to see
    first, harder after) or not real. An annotator who answered the image draws a box in
    the cluster with a probability of their own per kind: their recall on each kind of real
    object, their false-box rate on clusters that are not real; answering "no object" is not
    drawing. A single recall would make four good annotators who skipped a small, half
    hidden pedestrian overwhelming evidence against it; difficulty levels let the model
    learn that some real objects are missed by most annotators but drawn by the careful
    ones. Clusters exist only when somebody drew them, so every likelihood is conditioned
    on "at least one annotator drew" (zero-truncated Bernoulli): a lone box is then likely
    false unless its author rarely draws false boxes, and the model learns how rarely two
    annotators draw the same false box. The M-step counts the unseen clusters that nobody
    drew by their expected number (EM for truncated data).

    ``smoothing`` pseudo-clusters at the pooled rates keep an annotator seen on a few
    images near the crowd.

    The decision is not P(real) > 0.5 (``keep_by="posterior"``, right for crowds whose
    errors are independent): conditional independence makes a box that two or three of
    seven drew look certain (P(real) 0.8-0.999) where real crowds show such boxes are real
    about half the time or less (docs/boxes.md). By default each annotator's vote
    weighs their F1 (expected precision and recall under the posteriors), and a cluster is
    kept when the annotators who drew it hold more than half of the weight of those who
    answered the image; that support is the box's confidence. Its box is the weighted
    median of each edge, weighted by the annotator's inverse localisation error (learned
    from the kept clusters), so one loose box does not widen it; its label the vote with
    the same weights.

    Learned: ``clusters_`` (with the model's ``posterior`` and the weighted ``support``),
    ``boxes_``, ``annotators_`` (recall over real objects, false_rate, precision, vote
    weight, localisation weight, n_items, n_boxes per annotator), ``rates_`` (annotator x kind:
    P(draws | kind), kinds ``real_1`` easiest ... and ``false``), ``priors_`` (Series,
    P(kind) among observed clusters), ``n_iter_``, ``log_likelihood_``.
    """

    annotators_: pd.DataFrame
    rates_: pd.DataFrame
    priors_: pd.Series
    n_iter_: int
    log_likelihood_: float

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, difficulty_levels: int = 2,
                 n_iter: int = 100, tol: float = 1e-5, smoothing: float = 2.0,
                 merge_iou: float | None = DEFAULT_MERGE_IOU, keep_by: str = "support"
                 ) -> None:  # fmt: skip
        super().__init__(threshold, merge_iou)
        if difficulty_levels < 1 or n_iter < 1 or tol < 0 or smoothing <= 0:
            raise ValueError("BoxConsensus needs difficulty_levels >= 1, n_iter >= 1, "
                             "tol >= 0 and smoothing > 0")  # fmt: skip
        if keep_by not in ("support", "posterior"):
            raise ValueError(f"BoxConsensus keep_by={keep_by!r}; expected 'support' (the "
                             "reliability-weighted vote) or 'posterior' (the model's P(real))")
        self.keep_by = keep_by
        self.difficulty_levels = difficulty_levels
        self.n_iter, self.tol, self.smoothing = n_iter, tol, smoothing

    def fit(self, data: pd.DataFrame) -> Self:
        clusters = self._clusters(data)
        enc = clusters.enc
        cluster, annotator, drew = clusters.evidence()
        n_clusters, n_annotators = clusters.n_clusters, len(enc.annotators)
        n_kinds = self.difficulty_levels + 1
        share = np.bincount(cluster, weights=drew, minlength=n_clusters) / np.bincount(
            cluster, minlength=n_clusters)  # fmt: skip
        # Start: kind k (0 = easiest, last = not real) with the binomial probability of
        # n_kinds - 1 - k "successes" at the vote share, so 2 kinds start at the share.
        successes = np.arange(n_kinds - 1, -1, -1)
        posterior = binom.pmf(successes[None, :], n_kinds - 1, share[:, None])
        rates = np.full((n_annotators, n_kinds), 0.5)
        previous = -np.inf
        for iteration in range(1, self.n_iter + 1):
            rates = self._m_step(posterior, cluster, annotator, drew, rates)
            priors = (posterior.sum(axis=0) + 1) / (n_clusters + n_kinds)
            log_joint = np.log(priors) + np.column_stack([
                _truncated_log_likelihood(rates[:, k], cluster, annotator, drew, n_clusters)
                for k in range(n_kinds)
            ])  # fmt: skip
            evidence = logsumexp(log_joint, axis=1)
            posterior = np.exp(log_joint - evidence[:, None])
            log_likelihood = float(evidence.mean()) if n_clusters else 0.0
            if log_likelihood - previous < self.tol:
                break
            previous = log_likelihood

        real = np.clip(posterior[:, :-1].sum(axis=1), 0.0, 1.0)  # rounding
        precision, recall = self._reliability(real, cluster, annotator, drew, n_annotators)
        vote = 2 * precision * recall / (precision + recall)
        voters = vote[annotator]
        support = np.bincount(cluster, weights=voters * drew, minlength=n_clusters) / np.bincount(
            cluster, weights=voters, minlength=n_clusters)  # fmt: skip
        by_posterior = self.keep_by == "posterior"
        weight = _localisation_weights(clusters, (real if by_posterior else support) > 0.5,
                                       self.smoothing)  # fmt: skip
        self._store(clusters, real, support, weight[enc.box_annotator], median=True,
                    by_posterior=by_posterior)  # fmt: skip
        kinds = [*(f"real_{k + 1}" for k in range(n_kinds - 1)), "false"]
        self.rates_ = pd.DataFrame(rates, index=enc.annotators, columns=kinds)
        real_share = priors[:-1] / priors[:-1].sum()
        self.annotators_ = pd.DataFrame({
            "recall": rates[:, :-1] @ real_share, "false_rate": rates[:, -1],
            "precision": precision, "vote": vote, "weight": weight,
            "n_items": np.bincount(enc.answer_annotator, minlength=n_annotators),
            "n_boxes": np.bincount(enc.box_annotator, minlength=n_annotators),
        }, index=enc.annotators)  # fmt: skip
        self.priors_ = pd.Series(priors, index=kinds, name="prior")
        self.n_iter_, self.log_likelihood_ = iteration, log_likelihood
        return self

    def _reliability(self, real: np.ndarray, cluster: np.ndarray, annotator: np.ndarray,
                     drew: np.ndarray, n_annotators: int) -> tuple[np.ndarray, np.ndarray]:
        """Each annotator's expected precision (share of their boxes in real clusters) and
        recall (share of the real clusters on their images that they drew) under the
        posteriors, with ``smoothing`` pseudo-counts at the pooled values."""
        hits = np.bincount(annotator, weights=drew * real[cluster], minlength=n_annotators)
        boxes = np.bincount(annotator, weights=drew, minlength=n_annotators)
        objects = np.bincount(annotator, weights=real[cluster], minlength=n_annotators)

        def smoothed(denominator: np.ndarray) -> np.ndarray:
            pooled = hits.sum() / max(denominator.sum(), 1e-12)
            return np.clip((hits + self.smoothing * pooled) / (denominator + self.smoothing),
                           1e-6, 1.0)  # fmt: skip

        return smoothed(boxes), smoothed(objects)

    def _m_step(self, posterior: np.ndarray, cluster: np.ndarray, annotator: np.ndarray,
                drew: np.ndarray, rates: np.ndarray) -> np.ndarray:  # fmt: skip
        """P(draws | kind) per annotator from the posteriors; each observed cluster also
        stands for its expected number of unseen twins that nobody drew, p0 / (1 - p0)."""
        n_clusters, n_annotators = posterior.shape[0], rates.shape[0]
        updated = np.empty_like(rates)
        for k in range(rates.shape[1]):
            log_p0 = np.bincount(cluster, weights=np.log1p(-rates[:, k])[annotator],
                                 minlength=n_clusters)  # fmt: skip
            scaled = posterior[:, k] / -np.expm1(np.minimum(log_p0, -1e-12))  # q / (1 - p0)
            drawn = np.bincount(annotator, weights=posterior[cluster, k] * drew,
                                minlength=n_annotators)  # fmt: skip
            seen = np.bincount(annotator, weights=scaled[cluster], minlength=n_annotators)
            pooled = min(max(drawn.sum() / max(seen.sum(), 1e-12), 1e-6), 1 - 1e-6)
            updated[:, k] = (drawn + self.smoothing * pooled) / (seen + self.smoothing)
        return np.clip(updated, 1e-6, 1 - 1e-6)


def _truncated_log_likelihood(rate: np.ndarray, cluster: np.ndarray, annotator: np.ndarray,
                              drew: np.ndarray, n_clusters: int) -> np.ndarray:  # fmt: skip
    """log P(who drew | class, somebody drew) per cluster, with P(draw) = rate[annotator]. The logs
    are taken per annotator and gathered: log(1 - p) for every answerer, plus the log-odds where
    they drew (the same sum as log p or log(1 - p) per row, at a fraction of the cost)."""
    rate = np.clip(rate, 1e-9, 1 - 1e-9)
    log_miss = np.log1p(-rate)
    log_p0 = np.bincount(cluster, weights=log_miss[annotator], minlength=n_clusters)
    drawn = np.bincount(cluster, weights=(np.log(rate) - log_miss)[annotator] * drew, minlength=n_clusters)
    return log_p0 + drawn - np.log(-np.expm1(log_p0))


def _localisation_weights(clusters: Clusters, keep: np.ndarray, smoothing: float,
                          n_rounds: int = 3) -> np.ndarray:  # fmt: skip
    """Per annotator 1 / (mean squared edge error): the error of each box edge relative to
    the fused box, in units of the fused box's size, so small and large boxes count alike.
    Fused boxes and weights are refined together a few rounds, starting from equal weights;
    ``smoothing`` pseudo-boxes at the pooled error keep rare annotators near the crowd."""
    enc = clusters.enc
    n_annotators = len(enc.annotators)
    weight = np.ones(n_annotators)
    in_kept = keep[clusters.cluster] & (np.bincount(clusters.cluster)[clusters.cluster] > 1)
    if not in_kept.any():
        return weight
    annotator = enc.box_annotator[in_kept]
    edges = np.column_stack([enc.coords[:, :2], enc.coords[:, :2] + enc.coords[:, 2:]])[in_kept]
    for _ in range(n_rounds):
        fused, _ = _fuse(clusters, weight[enc.box_annotator])
        ref = fused[clusters.cluster[in_kept]]
        ref_edges = np.column_stack([ref[:, :2], ref[:, :2] + ref[:, 2:]])
        size = np.sqrt(np.maximum(ref[:, 2] * ref[:, 3], 1e-9))
        squared = (((edges - ref_edges) / size[:, None]) ** 2).mean(axis=1)
        total = np.bincount(annotator, weights=squared, minlength=n_annotators)
        count = np.bincount(annotator, minlength=n_annotators)
        pooled = total.sum() / count.sum()
        weight = (count + smoothing) / (total + smoothing * pooled)
        weight /= weight.mean()
    return weight


# --- Label Studio rectangles ----------------------------------------------------------------


def _percent(value: Any, where: str, field: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: value.{field}={value!r}; expected a number (percent)") from None
    if not 0 <= number <= 100:
        raise InputError(f"{where}: value.{field}={number:g} is outside 0-100 % of the image")
    return number


def from_label_studio(annotations: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Box frame from Label Studio rectangle results.

    Each element is ``{"item_id", "annotator_id", "result": [...]}`` with the annotation's
    result list; results of type ``rectanglelabels`` become pixel rows (percent of
    ``original_width`` / ``original_height``), other result types are ignored, and an
    annotation without rectangles becomes one "no object" row. Rotated boxes, w or h <= 0
    and coordinates outside 0-100 % are refused.
    """
    rows: list[dict[str, Any]] = []
    for n, annotation in enumerate(annotations):
        item_id, annotator_id = annotation[ITEM], annotation[ANNOTATOR]
        found = False
        for k, result in enumerate(annotation.get("result") or []):
            if result.get("type") != "rectanglelabels":
                continue
            where = (f"annotation {n} (item_id={item_id!r}, annotator_id={annotator_id!r}) "
                     f"result {k} (id={result.get('id')!r})")  # fmt: skip
            value = result.get("value") or {}
            rotation = float(value.get("rotation") or 0)
            if rotation != 0:
                raise InputError(f"{where}: rotation={rotation:g}; only unrotated boxes "
                                 "(rotation 0) are supported")  # fmt: skip
            x, y, w, h = (_percent(value.get(f), where, f) for f in ("x", "y", "width", "height"))
            if w <= 0 or h <= 0:
                raise InputError(f"{where}: width={w:g}, height={h:g}; expected both > 0")
            if x + w > 100 + 1e-6 or y + h > 100 + 1e-6:
                raise InputError(f"{where}: the box ends at x+width={x + w:g} %, "
                                 f"y+height={y + h:g} %; expected at most 100 %")  # fmt: skip
            labels = value.get("rectanglelabels") or []
            if len(labels) != 1:
                raise InputError(f"{where}: rectanglelabels={labels!r}; expected one label")
            try:
                width, height = float(result["original_width"]), float(result["original_height"])
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{where}: needs original_width and original_height (pixels)"
                                 ) from None  # fmt: skip
            rows.append({ITEM: item_id, ANNOTATOR: annotator_id, X: x * width / 100,
                         Y: y * height / 100, W: w * width / 100, H: h * height / 100,
                         LABEL: labels[0]})  # fmt: skip
            found = True
        if not found:
            rows.append({ITEM: item_id, ANNOTATOR: annotator_id, X: np.nan, Y: np.nan,
                         W: np.nan, H: np.nan, LABEL: None})  # fmt: skip
    return pd.DataFrame(rows, columns=list(BOX_COLUMNS))


def to_label_studio(
    boxes: pd.DataFrame, width: float, height: float, from_name: str = "label",
    to_name: str = "image",
) -> list[dict[str, Any]]:  # fmt: skip
    """Label Studio rectangle results (percent coordinates) for one image's rows of a box
    frame, e.g. consensus boxes as a prediction; a ``confidence`` column becomes ``score``.
    "No object" rows give no result."""
    results = []
    for row in boxes.itertuples(index=False):
        record = row._asdict()
        if pd.isna(record[X]):
            continue
        result: dict[str, Any] = {
            "type": "rectanglelabels", "from_name": from_name, "to_name": to_name,
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": 100 * record[X] / width, "y": 100 * record[Y] / height,
                      "width": 100 * record[W] / width, "height": 100 * record[H] / height,
                      "rotation": 0, "rectanglelabels": [record[LABEL]]},
        }  # fmt: skip
        if "confidence" in record and pd.notna(record["confidence"]):
            result["score"] = float(record["confidence"])
        results.append(result)
    return results
