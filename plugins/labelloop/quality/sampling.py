"""Choosing the items a person should look at: spot checks, disagreements, low confidence."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import pandas as pd

from .agreement import ITEM, encode


def spot_check_sample(labels: pd.DataFrame, fraction: float = 0.05, seed: int = 0,
                      among: Collection[Any] | None = None) -> pd.Index:
    """Item ids for a spot check, stratified by (annotator, label).

    Each stratum gives ``ceil(fraction * size)`` of its labels, so every annotator's use of
    every label is checked at least once when ``fraction > 0``. An item drawn by several
    strata appears once. Each item gets one random key shared by all strata, so strata
    tend to pick the same items and the review stays small. The draw depends only on the
    labels and the seed, not on row order. Ids come back sorted.

    ``among`` limits the draw to those items (e.g. the ones answered since the last spot
    check, so nobody checks an unchanged item twice); the strata are then made of their labels
    only. None draws from every item.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    if among is not None:
        labels = labels[labels[ITEM].isin(list(among))]
        if labels.empty:
            return pd.Index([], name=ITEM)
    enc = encode(labels)
    stratum = enc.annotator * enc.n_labels + enc.label
    key = np.random.default_rng(seed).random(enc.n_items)[enc.item]
    order = np.lexsort((enc.item, key, stratum))  # by stratum, then key; item breaks ties
    size = np.bincount(stratum)
    start = np.cumsum(size) - size
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - start[stratum[order]]
    take = rank < np.ceil(fraction * size[stratum])
    return enc.items.take(np.unique(enc.item[take]))


def disagreements(labels: pd.DataFrame) -> pd.Index:
    """Item ids where the annotators did not all give the same label."""
    enc = encode(labels)
    n_distinct = (enc.label_counts() > 0).sum(axis=1)
    return enc.items[n_distinct > 1]


def low_confidence(consensus: pd.DataFrame, threshold: float) -> pd.Index:
    """Item ids whose consensus confidence is below ``threshold`` (consensus frame columns
    item_id, label, confidence), most doubtful first."""
    doubtful = consensus[consensus["confidence"] < threshold].sort_values(
        "confidence", kind="stable"
    )
    return pd.Index(doubtful[ITEM], name=ITEM)
