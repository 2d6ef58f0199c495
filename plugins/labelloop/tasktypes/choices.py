"""Single-label classification: one ``<Choices>`` answer per item (today's loop)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from labelloop.errors import InputError

from .base import ControlAudit, TaskType

if TYPE_CHECKING:
    import pandas as pd

    from .loop import LoopAudit

SINGLE = {"single", "single-radio"}


class SingleChoice(TaskType):
    kind = "choices"
    description = '<Choices> with one choice per item (choice="single" or "single-radio")'
    columns = ("label",)
    learner_class = "labelloop.model.train:ChoiceLearner"

    @classmethod
    def accepts(cls, tag: ElementTree.Element, object_tag: str) -> bool:
        return tag.tag == "Choices" and tag.get("choice", "single") in SINGLE

    def answer_rows(self, results: list[dict[str, Any]], data: dict[str, Any], where: str) -> list[dict[str, Any]]:
        # No result for this control means the annotator did not answer it: no row.
        chosen = [label for result in results for label in choices_of(result, where)]
        if len(chosen) > 1:
            raise InputError(f"{where}: {self.control.describe()} takes one choice, got {chosen}")
        return [{"label": self._check_label(label, where)} for label in chosen]

    def results(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        return [self._result("choices", {"choices": [label]}) for label in rows["label"].dropna()]

    def audit(self, answers: pd.DataFrame, gold: pd.DataFrame | None, *, seed: int = 0,
              data: Mapping[str, dict[str, Any]] | None = None) -> ControlAudit:
        from labelloop.quality.audit import run_audit

        result = run_audit(answers, gold, seed=seed)
        confidence = result.consensus.set_index("item_id")["confidence"]
        return ControlAudit(self.control, result.consensus, confidence, result.metrics)

    def report_sections(self, metrics: dict[str, Any]) -> list[str]:
        from labelloop.quality.report import choice_sections

        return choice_sections(metrics)

    # -- the Airflow loop: quality.run_audit, as before task types --------------------------
    def known_answer(self, value: Any, data: dict[str, Any], where: str) -> list[dict[str, Any]]:
        if not isinstance(value, str) or value not in self.control.labels:
            raise InputError(f"unknown label {value!r} in {where}; allowed: {', '.join(self.control.labels)}")
        return [{"label": value}]

    def known_text(self, rows: list[dict[str, Any]]) -> str:
        return str(rows[0]["label"])  # the plain label, as the task meta always kept it

    def consensus_rows(self, result: str | None, label: str | None, data: dict[str, Any],
                       where: str) -> list[dict[str, Any]]:
        """The ``label`` column, as retraining always read it (no label: the item has no answer)."""
        return [{"label": label}] if isinstance(label, str) else []

    def simulation_skill(self, skill: Any) -> Any:
        """An accuracy or a confusion matrix ``{true label: {answer: probability}}``."""
        from labelloop.dev.simulate import check_skill

        check_skill(skill, self.control.labels)
        return skill

    def simulate(self, truth: list[dict[str, Any]], skill: Any, rng: Any, data: dict[str, Any]) -> list[dict[str, Any]]:
        from labelloop.dev.simulate import draw_answer

        return [self._result("choices", {"choices": [draw_answer(rng, skill, truth[0]["label"], self.control.labels)]})]

    def loop_audit(self, answers: pd.DataFrame, gold: pd.DataFrame | None, adjudicated: pd.DataFrame | None,
                   *, method: str = "dawid-skene", seed: int = 0, spot_check_fraction: float = 0.05,
                   spot_check_among: Collection[Any] | None = None, low_confidence_threshold: float = 0.7,
                   run_id: str | None = None, data: Mapping[Any, dict[str, Any]] | None = None) -> LoopAudit:
        import logging

        from labelloop.quality.audit import run_audit

        from .loop import LoopAudit

        if gold is not None:
            # The labels come from the same spec, so a gold label nobody used yet means a small
            # sample, not a spelling mismatch run_audit should refuse.
            unused = ~gold["label"].isin(answers["label"].unique())
            if unused.any():
                logging.getLogger(__name__).warning("dropping %d gold items whose label no annotator used yet: %s",
                                                    int(unused.sum()), sorted(gold.loc[unused, "label"].unique()))
            gold = gold[~unused] if len(gold[~unused]) else None
        reviewed = (None if adjudicated is None or adjudicated.empty
                    else adjudicated.set_index("item_id")["label"].astype(str))
        result = run_audit(answers, gold, method, adjudicated=reviewed, seed=seed,  # type: ignore[arg-type]
                           spot_check_fraction=spot_check_fraction, spot_check_among=spot_check_among,
                           low_confidence_threshold=low_confidence_threshold, run_id=run_id)
        consensus = result.consensus
        return LoopAudit(consensus[["item_id", "label"]], consensus[["item_id", "confidence", "source"]],
                         result.metrics)

    def disagreements(self, answers: pd.DataFrame) -> list[Any]:
        from labelloop.quality.sampling import disagreements

        from .loop import plain

        return plain(disagreements(answers))

    def gate_checks(self, metrics: dict[str, Any], quality: Any) -> list[dict[str, Any]]:
        from .loop import below, check, pooled_gold_accuracy

        agreement = metrics["agreement"]
        gold_note = ("no labelled gold items" if metrics["gold"] is None
                     else below(metrics["annotators"], "accuracy", quality.min_gold_accuracy, "n_gold"))
        kappa, kappa_name = agreement["pairwise_kappa_mean"], "mean pairwise Cohen's kappa"
        if kappa is None and agreement["fleiss_kappa"] is not None:
            kappa, kappa_name = agreement["fleiss_kappa"], "Fleiss' kappa"
        kappa_note = "" if kappa is not None else (
            f"no annotator pair shares {metrics['parameters']['min_shared']} items")
        return [
            check("gold accuracy", "min_gold_accuracy", pooled_gold_accuracy(metrics["annotators"]),
                  quality.min_gold_accuracy, gold_note),
            check(kappa_name, "min_kappa", kappa, quality.min_kappa, kappa_note),
            check("Krippendorff's alpha", "min_alpha", agreement["krippendorff_alpha_nominal"], quality.min_alpha),
            check("mean consensus confidence", "min_consensus_confidence", metrics["consensus"]["mean_confidence"],
                  quality.min_consensus_confidence),
        ]

    def scalars(self, metrics: dict[str, Any]) -> dict[str, float | None]:
        from .loop import pooled_gold_accuracy

        agreement, gold = metrics["agreement"], metrics["gold"] or {}
        return {
            "krippendorff_alpha": agreement["krippendorff_alpha_nominal"],
            "fleiss_kappa": agreement["fleiss_kappa"],
            "pairwise_kappa_mean": agreement["pairwise_kappa_mean"],
            "pairwise_kappa_median": agreement["pairwise_kappa_median"],
            "consensus_mean_confidence": metrics["consensus"]["mean_confidence"],
            "consensus_accuracy_on_gold": gold.get("consensus_accuracy"),
            "annotator_gold_accuracy": pooled_gold_accuracy(metrics["annotators"]),
            "annotations": metrics["counts"]["annotations"],
            "items": metrics["counts"]["items"],
            "annotators": metrics["counts"]["annotators"],
        }

    def loop_report_sections(self, metrics: dict[str, Any], history: Sequence[dict[str, Any]] = ()) -> list[str]:
        from labelloop.quality.report import choice_sections

        return choice_sections(metrics, history)


def choices_of(result: dict[str, Any], where: str) -> list[Any]:
    """The labels of one choices result, refusing a result without a list of them."""
    choices = (result.get("value") or {}).get("choices")
    if not isinstance(choices, list):
        raise InputError(f"{where}: a choices result needs value.choices, a list of labels; got {result.get('value')!r}")
    return choices
