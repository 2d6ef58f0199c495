"""Annotator comments: a ``<TextArea>``, the field annotators use to flag an unclear item.

Its text is kept verbatim and listed per item and annotator for the project's leads; it is
not audited for agreement (free text has no consensus to vote on) unless the spec asks
(``quality.comment_agreement``): then by normalized edit distance, as Label Studio Enterprise
scores text areas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from labelloop.errors import InputError

from .base import ControlAudit, TaskType

if TYPE_CHECKING:
    import pandas as pd


class Comment(TaskType):
    kind = "comment"
    description = "<TextArea> (annotator comments, kept verbatim, not audited)"
    columns = ("text",)
    needs_labels = False

    @classmethod
    def accepts(cls, tag: ElementTree.Element, object_tag: str) -> bool:
        return tag.tag == "TextArea"

    def answer_rows(self, results: list[dict[str, Any]], data: dict[str, Any], where: str) -> list[dict[str, Any]]:
        lines = []
        for result in results:
            text = (result.get("value") or {}).get("text")
            if not isinstance(text, list) or not all(isinstance(line, str) for line in text):
                raise InputError(f"{where}: a {self.control.describe()} result needs value.text, a list of strings; "
                                 f"got {text!r:.80}")
            lines += text
        # No comment is no row: an empty text area says nothing.
        return [{"text": "\n".join(lines)}] if any(line.strip() for line in lines) else []

    def results(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        return []  # comments have no consensus

    def audit(self, answers: pd.DataFrame, gold: pd.DataFrame | None, *, seed: int = 0,
              data: Mapping[str, dict[str, Any]] | None = None) -> ControlAudit:
        import pandas as pd

        from labelloop.quality.audit import json_records

        listed = answers.sort_values(["item_id", "annotator_id"], kind="stable")
        metrics = {"counts": {"comments": len(listed), "items": int(listed["item_id"].nunique())},
                   "comments": json_records(listed[["item_id", "annotator_id", "text"]])}
        empty = pd.DataFrame(columns=["item_id", "text"])
        return ControlAudit(self.control, empty, pd.Series(dtype=float), metrics)

    def report_sections(self, metrics: dict[str, Any]) -> list[str]:
        from labelloop.quality.report import comment_section

        return [comment_section(metrics["comments"])]


def text_agreement(listed: list[dict[str, Any]]) -> dict[str, Any]:
    """Per comment control, the mean over items of the mean pairwise text similarity of the
    annotators who wrote a comment there: 1 - Levenshtein distance / length of the longer text
    (``rapidfuzz``'s normalized similarity; 1 = the same text). Items with one comment have no
    pair and do not count; ``n_items`` and ``n_pairs`` say how much the figure rests on."""
    from itertools import combinations

    from rapidfuzz.distance import Levenshtein

    texts: dict[str, dict[Any, list[str]]] = {}
    for entry in listed:
        texts.setdefault(entry["control"], {}).setdefault(entry["item_id"], []).append(entry["text"])
    agreement = {}
    for control, items in sorted(texts.items()):
        per_item = [[Levenshtein.normalized_similarity(a, b) for a, b in combinations(item_texts, 2)]
                    for item_texts in items.values() if len(item_texts) > 1]
        agreement[control] = {
            "method": "normalized Levenshtein similarity",
            "mean_similarity": sum(sum(pairs) / len(pairs) for pairs in per_item) / len(per_item) if per_item else None,
            "n_items": len(per_item), "n_pairs": sum(len(pairs) for pairs in per_item),
        }
    return agreement
