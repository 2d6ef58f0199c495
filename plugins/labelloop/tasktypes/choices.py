"""Single-label classification: one ``<Choices>`` answer per item (today's loop)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from labelloop.errors import InputError

from .base import ControlAudit, TaskType

if TYPE_CHECKING:
    import pandas as pd

SINGLE = {"single", "single-radio"}


class SingleChoice(TaskType):
    kind = "choices"
    description = '<Choices> with one choice per item (choice="single" or "single-radio")'
    columns = ("label",)

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


def choices_of(result: dict[str, Any], where: str) -> list[Any]:
    """The labels of one choices result, refusing a result without a list of them."""
    choices = (result.get("value") or {}).get("choices")
    if not isinstance(choices, list):
        raise InputError(f"{where}: a choices result needs value.choices, a list of labels; got {result.get('value')!r}")
    return choices
