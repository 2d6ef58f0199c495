"""Named-entity spans: ``<Labels>`` on ``<Text>``, character offsets as Label Studio stores them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from labelloop.errors import InputError

from .base import ControlAudit, TaskType, number

if TYPE_CHECKING:
    import pandas as pd


class Spans(TaskType):
    kind = "spans"
    description = "<Labels> on <Text> (named-entity spans; marking nothing is an answer)"
    columns = ("start", "end", "label")
    learner_class = "labelloop.model.ner:SpanLearner"

    @classmethod
    def accepts(cls, tag: ElementTree.Element, object_tag: str) -> bool:
        return tag.tag == "Labels" and object_tag == "Text"

    def answer_rows(self, results: list[dict[str, Any]], data: dict[str, Any], where: str) -> list[dict[str, Any]]:
        text = data.get(self.control.object_field)
        rows = [self._span(result, text if isinstance(text, str) else None, where) for result in results]
        return rows or [self._empty_row()]

    def _span(self, result: dict[str, Any], text: str | None, where: str) -> dict[str, Any]:
        value = result.get("value")
        if not isinstance(value, dict):
            raise InputError(f"{where}: a span result needs a value object with start, end and labels")
        start, end = (number(value.get(key), f"value.{key}", where) for key in ("start", "end"))
        if start != int(start) or end != int(end) or start < 0:
            raise InputError(f"{where}: span offsets must be non-negative whole numbers, got start={start:g} "
                             f"end={end:g}")
        start, end = int(start), int(end)
        if start >= end:
            raise InputError(f"{where}: span start {start} is not before its end {end}")
        if text is not None:
            if end > len(text):
                raise InputError(f"{where}: span {start}-{end} ends past the text, which has {len(text)} "
                                 f"characters")
            marked = value.get("text")
            if marked is not None and marked != text[start:end]:
                raise InputError(f"{where}: span {start}-{end} says its text is {marked!r}, but the task's "
                                 f"text there is {text[start:end]!r}; the offsets are off")
        labels = value.get("labels")
        if not isinstance(labels, list) or len(labels) != 1:
            raise InputError(f"{where}: span {start}-{end} needs exactly one label in value.labels, got {labels!r}")
        return {"start": start, "end": end, "label": self._check_label(labels[0], where)}

    def results(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        spans = rows.dropna(subset=["label"])
        has_text = "text" in spans.columns
        return [self._result("labels", {"start": int(row.start), "end": int(row.end),
                                        **({"text": row.text} if has_text and isinstance(row.text, str) else {}),
                                        "labels": [row.label]})
                for row in spans.itertuples()]

    def audit(self, answers: pd.DataFrame, gold: pd.DataFrame | None, *, seed: int = 0,
              data: Mapping[str, dict[str, Any]] | None = None) -> ControlAudit:
        import pandas as pd

        from labelloop.quality import spans as sp
        from labelloop.quality.audit import json_number, json_records

        labels = list(self.control.labels)
        texts = _texts(data or {}, self.control.object_field)
        model = sp.SpanDawidSkene().fit(answers, texts if len(texts) else None)
        consensus = model.spans_[["item_id", "start", "end", "label", "confidence"]]
        confidence = model.item_confidence_.copy()
        pairs = sp.pairwise_span_f1(answers, labels=labels)
        metrics: dict[str, Any] = {
            "method": type(model).__name__,
            "counts": {"answers": int(answers.groupby(["item_id", "annotator_id"]).ngroups),
                       "spans": int(answers["label"].notna().sum()), "items": int(answers["item_id"].nunique()),
                       "annotators": int(answers["annotator_id"].nunique()), "labels": labels},
            "agreement": {key: json_number(float(value)) for key, value in sp.span_agreement(pairs).items()},
            "labels": json_records(sp.pairwise_span_f1(answers, labels=labels, by_label=True)
                               .groupby("label")[["exact_f1", "partial_f1"]].mean().reset_index()),
            "pairwise": json_records(pairs),
            "consensus": {"mean_confidence": json_number(confidence.mean())},
            "gold": None,
            "annotators": [],
        }
        if gold is not None:
            scored = sp.gold_span_scores(consensus.assign(annotator_id="consensus"), gold, labels=labels)
            metrics["gold"] = {key: _plain(value) for key, value in scored.iloc[0].items() if key != "annotator_id"}
            metrics["gold"]["labels"] = json_records(sp.gold_span_scores(
                consensus.assign(annotator_id="consensus"), gold, labels=labels, by_label=True)
                .drop(columns="annotator_id"))
            metrics["annotators"] = json_records(sp.gold_span_scores(answers, gold, labels=labels))
            metrics["annotator_labels"] = json_records(sp.gold_span_scores(answers, gold, labels=labels, by_label=True))
            # Answered gold items keep their gold spans.
            gold_items = pd.Index(gold["item_id"].unique()).intersection(confidence.index)
            consensus = pd.concat([consensus[~consensus["item_id"].isin(gold_items)],
                                   gold[gold["item_id"].isin(gold_items)].assign(confidence=1.0)])
            confidence[gold_items] = 1.0
        if len(texts):
            consensus = consensus.assign(text=[
                texts[row.item_id][int(row.start):int(row.end)] if row.item_id in texts.index and
                not pd.isna(row.start) else None for row in consensus.itertuples()])
        return ControlAudit(self.control, consensus, confidence, metrics)

    # -- the Airflow loop ---------------------------------------------------------------------
    def known_answer(self, value: Any, data: dict[str, Any], where: str) -> list[dict[str, Any]]:
        """``[[start, end, label], ...]`` (end exclusive; ``[]``: no entity) or Label Studio
        ``labels`` results, or their JSON text; checked against the task's text."""
        from .loop import decoded

        spans = decoded(value, where)
        if not isinstance(spans, list):
            raise InputError(f"{where}: known spans are a list of [start, end, label] (or Label Studio labels "
                             f"results), got {spans!r:.80}")
        results = []
        for span in spans:
            if isinstance(span, list) and len(span) == 3:
                results.append({"value": {"start": span[0], "end": span[1], "labels": [span[2]]}})
            elif isinstance(span, dict):
                results.append(span)
            else:
                raise InputError(f"{where}: a known span is [start, end, label], got {span!r:.80}")
        if not isinstance(data.get(self.control.object_field), str):
            raise InputError(f"{where}: the task has no text in {self.control.object_field!r} to check spans against")
        return self.answer_rows(results, data, where)

    def review_predictions(self, answers: pd.DataFrame, data: dict[str, Any]) -> list[dict[str, Any]]:
        """Each annotator's spans, with the text they cover (as Label Studio stores a span)."""
        import pandas as pd

        from .loop import review_predictions

        text = data.get(self.control.object_field)
        if isinstance(text, str):
            answers = answers.assign(text=[None if pd.isna(row.start) else text[int(row.start):int(row.end)]
                                           for row in answers.itertuples()])
        return review_predictions(self, answers)

    def simulation_skill(self, skill: Any) -> Any:
        """An accuracy, or miss, false-span, boundary-shift and confusion rates (``simulate.SpanSkill``)."""
        from labelloop.dev.simulate import SpanSkill

        return SpanSkill.of(skill)

    def simulate(self, truth: list[dict[str, Any]], skill: Any, rng: Any, data: dict[str, Any]) -> list[dict[str, Any]]:
        from labelloop.dev.simulate import draw_spans

        text = data[self.control.object_field]
        spans = sorted((int(row["start"]), int(row["end"]), row["label"]) for row in truth if row["label"] is not None)
        return [self._result("labels", {"start": start, "end": end, "text": text[start:end], "labels": [label]})
                for start, end, label in draw_spans(rng, skill, spans, text, self.control.labels)]

    def gate_checks(self, metrics: dict[str, Any], quality: Any) -> list[dict[str, Any]]:
        from .loop import check, pooled_gold_f1

        agreement = metrics["agreement"]
        pair_note = "" if agreement.get("exact_f1") is not None else "no two annotators marked spans on a shared item"
        return [
            pooled_gold_f1(metrics, "annotators' exact-span F1 on gold", "min_gold_f1", quality.min_gold_f1,
                           "exact_matches", ("n_spans", "n_gold_spans")),
            check("pairwise exact-span F1", "min_span_f1", agreement.get("exact_f1"), quality.min_span_f1, pair_note),
            check("mean consensus confidence", "min_consensus_confidence", metrics["consensus"]["mean_confidence"],
                  quality.min_consensus_confidence),
        ]


def _texts(data: Mapping[str, dict[str, Any]], field: str) -> pd.Series:
    import pandas as pd

    return pd.Series({item: fields[field] for item, fields in data.items() if isinstance(fields.get(field), str)},
                     dtype=object)


def _plain(value: Any) -> Any:
    """numpy scalars to JSON numbers; NaN to null."""
    import math

    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value
