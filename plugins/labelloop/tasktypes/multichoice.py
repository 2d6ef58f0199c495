"""Multi-label classification: ``<Choices choice="multiple">``, a set of labels per item."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from labelloop.errors import InputError

from .base import ControlAudit, TaskType
from .choices import choices_of

if TYPE_CHECKING:
    import pandas as pd


class MultipleChoice(TaskType):
    kind = "multichoice"
    description = '<Choices choice="multiple"> (a set of labels per item; choosing none is an answer)'
    columns = ("label",)
    learner_class = "labelloop.model.multilabel:MultiLabelLearner"

    @classmethod
    def accepts(cls, tag: ElementTree.Element, object_tag: str) -> bool:
        return tag.tag == "Choices" and tag.get("choice") == "multiple"

    def answer_rows(self, results: list[dict[str, Any]], data: dict[str, Any], where: str) -> list[dict[str, Any]]:
        chosen = [self._check_label(label, where) for result in results for label in choices_of(result, where)]
        if len(set(chosen)) != len(chosen):
            raise InputError(f"{where}: {self.control.describe()} got a label twice: {chosen}")
        return [{"label": label} for label in chosen] or [self._empty_row()]

    def results(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        labels = [label for label in self.control.labels if label in set(rows["label"].dropna())]
        return [self._result("choices", {"choices": labels})] if labels else []

    def audit(self, answers: pd.DataFrame, gold: pd.DataFrame | None, *, seed: int = 0,
              data: Mapping[str, dict[str, Any]] | None = None) -> ControlAudit:
        import pandas as pd

        from labelloop.quality import multilabel as ml
        from labelloop.quality.audit import json_number, json_records

        labels = list(self.control.labels)
        n_sets = 2 ** len(labels)
        model = (ml.JointDawidSkene(labels) if n_sets <= ml.MAX_JOINT_SETS else ml.MultiLabelDawidSkene(labels))
        model.fit(answers)
        consensus = model.to_frame()
        confidence = model.confidence_.copy()
        per_label = ml.label_agreement(answers, labels)
        per_item = ml.item_agreement(answers, labels)
        metrics: dict[str, Any] = {
            "method": type(model).__name__,
            "counts": {"answers": int(per_item["n_answers"].sum()), "items": len(per_item),
                       "annotators": int(answers["annotator_id"].nunique()), "labels": labels},
            "agreement": {"jaccard_mean": json_number(per_item["jaccard"].mean()),
                          "exact_match_rate": json_number(per_item["exact_match"].mean()),
                          "kappa_mean": json_number(per_label["kappa_mean"].mean()),
                          "krippendorff_alpha_mean": json_number(per_label["krippendorff_alpha"].mean())},
            "labels": json_records(per_label.rename_axis("label").reset_index()),
            "consensus": {"mean_confidence": json_number(confidence.mean())},
            "gold": None,
            "annotators": [],
        }
        if gold is not None:
            scores = ml.score_sets(consensus, gold, labels)
            metrics["gold"] = {"n_items": int(scores.pop("n_items")),
                               **{key: json_number(float(value)) for key, value in scores.items()}}
            metrics["annotators"] = json_records(ml.gold_scores(answers, gold, labels))
            metrics["annotator_labels"] = json_records(ml.label_scores(answers, gold, labels))
            # Answered gold items keep their gold set.
            gold_items = pd.Index(gold["item_id"].unique()).intersection(confidence.index)
            gold = gold[gold["item_id"].isin(gold_items)]
            consensus = pd.concat([consensus[~consensus["item_id"].isin(gold_items)],
                                   gold.assign(confidence=1.0)[["item_id", "label", "confidence"]]])
            confidence = confidence.drop(gold_items, errors="ignore")
            confidence = pd.concat([confidence, pd.Series(1.0, index=gold_items)])
        return ControlAudit(self.control, consensus, confidence, metrics)

    # -- the Airflow loop ---------------------------------------------------------------------
    def known_answer(self, value: Any, data: dict[str, Any], where: str) -> list[dict[str, Any]]:
        """A list of labels (``[]``: none applies), or its JSON text."""
        from .loop import decoded

        chosen = decoded(value, where)
        if not isinstance(chosen, list):
            raise InputError(f"{where}: a known answer of {self.control.describe()} is a list of labels "
                             f"(of {list(self.control.labels)}; [] for none), got {chosen!r:.80}")
        return self.answer_rows([{"value": {"choices": chosen}}], data, where)

    def simulation_skill(self, skill: Any) -> Any:
        """An accuracy, or per-label miss and false-positive rates (``simulate.LabelSetSkill``)."""
        from labelloop.dev.simulate import LabelSetSkill

        return LabelSetSkill.of(skill, self.control.labels)

    def simulate(self, truth: list[dict[str, Any]], skill: Any, rng: Any, data: dict[str, Any]) -> list[dict[str, Any]]:
        from labelloop.dev.simulate import draw_label_set

        chosen = draw_label_set(rng, skill, {row["label"] for row in truth if row["label"] is not None},
                                self.control.labels)
        return [self._result("choices", {"choices": chosen})] if chosen else []

    def gate_checks(self, metrics: dict[str, Any], quality: Any) -> list[dict[str, Any]]:
        from .loop import below, check, ratio

        annotators = metrics["annotators"]
        pooled = ratio(sum(row["n_correct"] or 0 for row in annotators), sum(row["n_cells"] or 0 for row in annotators))
        gold_note = ("no labelled gold items" if metrics["gold"] is None
                     else below(annotators, "accuracy", quality.min_gold_hamming_accuracy, "n_gold"))
        return [
            check("gold Hamming accuracy", "min_gold_hamming_accuracy", pooled, quality.min_gold_hamming_accuracy,
                  gold_note),
            check("mean per-label Krippendorff's alpha", "min_label_alpha",
                  metrics["agreement"]["krippendorff_alpha_mean"], quality.min_label_alpha),
            check("mean consensus confidence", "min_consensus_confidence", metrics["consensus"]["mean_confidence"],
                  quality.min_consensus_confidence),
        ]
