"""What the Airflow loop asks of any task type beyond the audit itself: known answers,
overrides by gold and reviewers, review picks, review predictions and gate checks.

The ``TaskType`` methods of the same names call these; a type whose answers need something
else (single choice keeps ``quality.run_audit``) overrides the method. Pure pandas, imported
lazily, so reading a labeling config at DAG-parse time stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labelloop.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from .base import TaskType

#: The stand-in label of an answer with nothing in it, for the spot check's strata.
NOTHING = "(nothing)"


@dataclass(frozen=True)
class LoopAudit:
    """One control's audit as the loop keeps it.

    ``consensus``: tidy rows of each item's final answer (item_id and the type's columns, and
    ``confidence`` per row where the type's consensus has one; gold and adjudicated items carry
    those answers, confidence 1); ``items``: item_id, confidence, source (gold,
    adjudicated or consensus), one row per answered item; ``metrics``: JSON-ready, with the
    review picks under ``review`` (spot_check, low_confidence, n_disagreements)."""

    consensus: pd.DataFrame
    items: pd.DataFrame
    metrics: dict[str, Any]


def decoded(value: Any, where: str) -> Any:
    """A known answer as stored on a task (JSON text) or as a record gives it (JSON values)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise InputError(f"{where}: {value!r:.80} is not JSON ({error.msg}); give a JSON list") from None


def known_text(task_type: TaskType, rows: list[dict[str, Any]]) -> str:
    """Tidy rows of a known answer as compact JSON text (what the task meta keeps): a list of
    values for a one-column type, of ``[v1, v2, ...]`` rows otherwise; ``[]`` is "nothing"."""
    columns = task_type.columns
    kept = [[row[column] for column in columns] for row in rows
            if any(row.get(column) is not None for column in columns)]
    return json.dumps([row[0] for row in kept] if len(columns) == 1 else kept, ensure_ascii=False)


def overridden(task_type: TaskType, audit: Any, gold: pd.DataFrame | None,
               adjudicated: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(consensus rows, items) after gold and adjudication: gold wins over a reviewer (it is the
    reference the audit is measured against); an overridden item has confidence 1."""
    import pandas as pd

    items = pd.DataFrame({"item_id": audit.confidence.index, "confidence": audit.confidence.to_numpy(dtype=float),
                          "source": "consensus"})
    answered = set(items["item_id"])
    gold_items = answered & set(() if gold is None else gold["item_id"])
    reviewed = answered & set(() if adjudicated is None else adjudicated["item_id"]) - gold_items
    consensus = audit.consensus
    if reviewed:
        given = adjudicated[adjudicated["item_id"].isin(reviewed)].drop(columns="annotator_id", errors="ignore")
        if "confidence" in consensus.columns:  # a reviewer's answer is as sure as gold
            given = given.assign(confidence=1.0)
        consensus = pd.concat([consensus[~consensus["item_id"].isin(reviewed)], given], ignore_index=True)
    for source, hit in (("adjudicated", reviewed), ("gold", gold_items)):
        chosen = items["item_id"].isin(hit)
        items.loc[chosen, ["confidence", "source"]] = [1.0, source]
    # Besides the answer: the text a span covers, and the confidence of each row (a box's).
    extra = [column for column in ("text", "confidence") if column in consensus.columns]
    consensus = consensus[["item_id", *task_type.columns, *extra]]
    return consensus.reset_index(drop=True), items


def loop_audit(task_type: TaskType, answers: pd.DataFrame, gold: pd.DataFrame | None,
               adjudicated: pd.DataFrame | None, *, seed: int, spot_check_fraction: float,
               spot_check_among: Collection[Any] | None, low_confidence_threshold: float,
               run_id: str | None, data: Mapping[Any, dict[str, Any]] | None = None) -> LoopAudit:
    """The type's audit, then overrides and the review picks, each by the type's own rules."""
    audit = task_type.audit(answers, gold, seed=seed, data=data)
    consensus, items = overridden(task_type, audit, gold, adjudicated)
    doubtful = audit.confidence[audit.confidence < low_confidence_threshold].sort_values(kind="stable")
    metrics = {
        "run_id": run_id, **audit.metrics,
        "parameters": {"seed": seed, "spot_check_fraction": spot_check_fraction,
                       "low_confidence_threshold": low_confidence_threshold},
        "consensus": {**audit.metrics.get("consensus", {}),
                      "sources": {s: int((items["source"] == s).sum()) for s in ("gold", "adjudicated", "consensus")}},
        "review": {"spot_check": plain(task_type.spot_check(answers, spot_check_fraction, seed, spot_check_among)),
                   "low_confidence": plain(doubtful.index),
                   "n_disagreements": len(task_type.disagreements(answers))},
    }
    return LoopAudit(consensus, items, metrics)


def spot_check(answers: pd.DataFrame, fraction: float, seed: int, among: Collection[Any] | None) -> list[Any]:
    """``quality.spot_check_sample`` stratified by (annotator, label) over answers of several
    rows: each (annotator, label) pair becomes one stratum, an answer with nothing in it counts
    as the label "(nothing)", so every annotator's use of every label is checked."""
    from labelloop.quality.sampling import spot_check_sample

    label = answers["label"].astype(object).where(answers["label"].notna(), NOTHING)
    strata = answers[["item_id"]].assign(annotator_id=answers["annotator_id"].astype(str) + "\x1f" + label.astype(str),
                                         label="answered").drop_duplicates()
    if strata.empty:
        return []
    return plain(spot_check_sample(strata, fraction, seed, among=among))


def disagreements(task_type: TaskType, answers: pd.DataFrame) -> list[Any]:
    """Items where not every annotator gave the same answer (the same set of rows)."""
    columns = list(task_type.columns)
    cells = answers[columns].astype(object).where(answers[columns].notna(), None)
    keyed = answers[["item_id", "annotator_id"]].assign(answer=list(cells.itertuples(index=False, name=None)))
    per_answer = keyed.groupby(["item_id", "annotator_id"], sort=True)["answer"].agg(frozenset)
    distinct = per_answer.groupby(level="item_id").nunique()
    return plain(distinct.index[distinct > 1])


def review_predictions(task_type: TaskType, answers: pd.DataFrame) -> list[dict[str, Any]]:
    """One prediction per annotator (model_version = annotator) of one item's answers."""
    return [{"model_version": str(who), "result": task_type.results(rows)}
            for who, rows in answers.groupby("annotator_id", sort=True)]


def check(metric: str, threshold_name: str, value: float | None, threshold: float, note: str = "") -> dict[str, Any]:
    """One gate check as ``audit.gate.Check`` takes it (kept plain: task types know no Airflow)."""
    return {"metric": metric, "threshold_name": threshold_name, "value": value, "threshold": threshold, "note": note}


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def below(annotators: list[dict[str, Any]], score: str, threshold: float, count: str) -> str:
    """The gate note listing annotators under a threshold: ``a@x 0.61 (n=12)``."""
    low = [f"{row['annotator_id']} {row[score]:.2f} (n={row[count]})" for row in annotators
           if row.get(score) is not None and row[score] < threshold]
    return f"annotators below it: {', '.join(low)}" if low else ""


def pooled_gold_f1(metrics: dict[str, Any], what: str, threshold_name: str, threshold: float, matched: str,
                   drawn: tuple[str, str]) -> dict[str, Any]:
    """The gate check of the annotators' F1 on gold, pooled over what they and the gold marked
    (spans, boxes): 2 * Σ ``matched`` / Σ (``drawn[0]`` + ``drawn[1]``), naming who is below it."""
    annotators = metrics["annotators"]
    if metrics["gold"] is None:
        return check(what, threshold_name, None, threshold, "no labelled gold items")
    value = ratio(2 * sum(row[matched] or 0 for row in annotators),
                  sum((row[drawn[0]] or 0) + (row[drawn[1]] or 0) for row in annotators))
    return check(what, threshold_name, value, threshold, below(annotators, "f1", threshold, "n_items"))


def pooled_gold_accuracy(annotators: list[dict[str, Any]]) -> float | None:
    """Correct answers over all gold answers, across annotators (each answer weighs the same)."""
    seen = sum(row["n_gold"] or 0 for row in annotators)
    return sum(row["n_correct"] or 0 for row in annotators) / seen if seen else None


def scalars(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Numbers worth a chart: every number of agreement, gold (``gold_``) and counts, and the
    mean consensus confidence."""
    values: dict[str, float | None] = {}
    for section, prefix in (("agreement", ""), ("gold", "gold_"), ("counts", "")):
        for key, value in (metrics.get(section) or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                values[prefix + key] = value
    values["consensus_mean_confidence"] = (metrics.get("consensus") or {}).get("mean_confidence")
    return values


def plain(values: Any) -> list[Any]:
    """numpy scalars to Python ones, so json.dumps takes them."""
    return [value.item() if hasattr(value, "item") else value for value in values]
