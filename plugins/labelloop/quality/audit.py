"""One audit of a batch of labels: consensus, agreement, gold accuracy and review picks.

The CLI and the Airflow audit DAG both call ``run_audit``, so they cannot disagree on what
an audit computes. It returns data only; ``report.write_audit`` writes the files.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from .agreement import (
    DEFAULT_MIN_SHARED,
    ITEM,
    LABEL,
    InputError,
    check_columns,
    encode,
    fleiss_kappa,
    gold_accuracy,
    krippendorff_alpha,
    pairwise_kappa,
    show,
)
from .consensus import SOURCES, DawidSkene, MajorityVote, apply_overrides
from .sampling import disagreements, low_confidence, spot_check_sample

Method = Literal["dawid-skene", "majority"]
METHODS: dict[str, type[DawidSkene] | type[MajorityVote]] = {
    "dawid-skene": DawidSkene,
    "majority": MajorityVote,
}
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class AuditResult:
    """``consensus``: item_id, label, confidence, source (gold/adjudicated/consensus).
    ``metrics``: JSON-ready dict, schema in docs/quality.md."""

    consensus: pd.DataFrame
    metrics: dict[str, Any]


def gold_series(gold: pd.DataFrame, labels: pd.DataFrame) -> pd.Series:
    """Check a gold frame (item_id, label) against the labels and return it as a Series.

    Repeated identical rows are fine; an item with two different gold labels, a gold label
    no annotator used (usually a spelling mismatch) or no shared items at all are errors.
    """
    check_columns(gold, (ITEM, LABEL), "gold")
    if gold.empty:
        raise InputError("gold: no rows; expected one row per gold item with item_id,label")
    gold = gold[[ITEM, LABEL]].dropna().drop_duplicates()
    conflicting = gold[ITEM].duplicated()
    if conflicting.any():
        item = gold.loc[conflicting, ITEM].iloc[0]
        raise InputError(
            f"gold: item_id {show(item)} has more than one gold label; keep one per item"
        )
    used = pd.Index(labels[LABEL].unique())
    unknown = ~gold[LABEL].isin(used)
    if unknown.any():
        row = gold[unknown].iloc[0]
        raise InputError(
            f"gold: label {show(row[LABEL])} (item_id {show(row[ITEM])}) is not among the "
            f"annotators' labels ({', '.join(map(str, used.sort_values()))}); "
            "fix the spelling in one of the files"
        )
    if not gold[ITEM].isin(labels[ITEM]).any():
        raise InputError(
            f"gold: none of its {len(gold)} item_ids occur in the labels (e.g. "
            f"{show(gold[ITEM].iloc[0])}); both files must use the same item ids"
        )
    return gold.set_index(ITEM)[LABEL]


def run_audit(
    labels: pd.DataFrame,
    gold: pd.DataFrame | None = None,
    method: Method = "dawid-skene",
    *,
    adjudicated: pd.Series | None = None,
    seed: int = 0,
    spot_check_fraction: float = 0.05,
    spot_check_among: Collection[Any] | None = None,
    min_shared: int = DEFAULT_MIN_SHARED,
    low_confidence_threshold: float = 0.7,
    run_id: str | None = None,
) -> AuditResult:
    """Audit one batch of labels (tidy frame item_id, annotator_id, label).

    ``gold`` (item_id, label) scores annotators and the consensus, then overrides it;
    ``adjudicated`` (Series by item_id) overrides the consensus where gold does not.
    ``seed`` drives the spot-check draw, ``spot_check_among`` limits it to those items (None:
    all); ``run_id`` is stored for the history plot.
    Raises ``InputError`` for input a person must fix.
    """
    if method not in METHODS:
        raise InputError(f"method {method!r} is unknown; use one of {', '.join(METHODS)}")
    enc = encode(labels)
    if enc.n_annotators < 2:
        raise InputError(
            f"labels: only one annotator ({show(enc.annotators[0])}); agreement needs at "
            "least two, so add another annotator's labels"
        )
    gold_labels = None if gold is None else gold_series(gold, labels)
    model = METHODS[method]().fit(labels)
    raw = model.to_frame()
    consensus = apply_overrides(raw, gold_labels, adjudicated)

    pairs = pairwise_kappa(labels, min_shared)
    raters = np.bincount(enc.item)
    # Fleiss' kappa is only defined for a fixed number of raters per item.
    fixed_design = raters.min() == raters.max() > 1
    fleiss = fleiss_kappa(labels) if fixed_design else math.nan
    sources = consensus["source"].value_counts()
    empty_gold = pd.Series(dtype=object)
    annotators = gold_accuracy(labels, empty_gold if gold_labels is None else gold_labels)
    metrics: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "method": method,
        "parameters": {
            "seed": seed, "spot_check_fraction": spot_check_fraction,
            "min_shared": min_shared, "low_confidence_threshold": low_confidence_threshold,
        },
        "counts": {
            "annotations": len(labels), "items": enc.n_items, "annotators": enc.n_annotators,
            "labels": _plain(list(enc.labels)),
            "raters_per_item": {"min": int(raters.min()), "max": int(raters.max())},
        },
        "agreement": {
            "krippendorff_alpha_nominal": json_number(krippendorff_alpha(labels, "nominal")),
            "fleiss_kappa": json_number(fleiss),
            "pairwise_kappa_mean": json_number(pairs["kappa"].mean()),
            "pairwise_kappa_median": json_number(pairs["kappa"].median()),
            "n_pairs": len(pairs),
        },
        "consensus": {
            "mean_confidence": json_number(raw["confidence"].mean()),
            "n_iter": getattr(model, "n_iter_", None),
            "sources": {source: int(sources.get(source, 0)) for source in SOURCES},
        },
        "gold": None if gold_labels is None else _gold_metrics(raw, gold_labels, enc.labels),
        "annotators": json_records(annotators),
        "pairwise_kappa": json_records(pairs),
        "review": {
            "spot_check": _plain(list(
                spot_check_sample(labels, spot_check_fraction, seed, among=spot_check_among))),
            "low_confidence": _plain(list(low_confidence(raw, low_confidence_threshold))),
            "n_disagreements": len(disagreements(labels)),
        },
    }  # fmt: skip
    return AuditResult(consensus=consensus, metrics=metrics)


def _gold_metrics(raw: pd.DataFrame, gold: pd.Series, label_order: pd.Index) -> dict[str, Any]:
    """Consensus (before overrides) against gold: accuracy and the confusion matrix."""
    scored = raw.assign(gold=raw[ITEM].map(gold)).dropna(subset=["gold"])
    confusion = pd.crosstab(scored["gold"], scored[LABEL]).reindex(
        index=label_order, columns=label_order, fill_value=0
    )
    return {
        "n_items": len(scored),
        "consensus_accuracy": json_number((scored["gold"] == scored[LABEL]).mean()),
        "confusion": {"labels": _plain(list(label_order)),
                      "matrix": confusion.to_numpy().tolist()},  # rows gold, columns consensus
    }  # fmt: skip


def json_number(value: float) -> float | None:
    """JSON has no NaN: an undefined metric is null."""
    return None if math.isnan(value) else float(value)


def _plain(values: list[Any]) -> list[Any]:
    """numpy scalars to Python ones, so json.dumps takes them."""
    return [value.item() if isinstance(value, np.generic) else value for value in values]


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    columns = {column: _plain(frame[column].tolist()) for column in frame.columns}
    rows = zip(*columns.values())
    return [
        {key: None if isinstance(v, float) and math.isnan(v) else v for key, v in zip(columns, row)}
        for row in rows
    ]
