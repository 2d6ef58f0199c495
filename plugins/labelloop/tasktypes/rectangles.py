"""Boxes on images: ``<RectangleLabels>`` on ``<Image>``; the audit works in pixels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from labelloop.errors import InputError

from .base import ControlAudit, TaskType

if TYPE_CHECKING:
    import pandas as pd

#: Task-data fields that give an image's size when a result lacks original_width/height.
SIZE_FIELDS = ("width", "height")
SIZE_COLUMNS = ("original_width", "original_height")


class Rectangles(TaskType):
    kind = "rectangles"
    description = "<RectangleLabels> on <Image> (unrotated boxes; drawing none is an answer)"
    #: pixels, plus the image size each answer was drawn on (to write results back)
    columns = ("x", "y", "w", "h", "label", *SIZE_COLUMNS)

    @classmethod
    def accepts(cls, tag: ElementTree.Element, object_tag: str) -> bool:
        return tag.tag == "RectangleLabels" and object_tag == "Image"

    def answer_rows(self, results: list[dict[str, Any]], data: dict[str, Any], where: str) -> list[dict[str, Any]]:
        from labelloop.quality.boxes import from_label_studio

        sized = [_with_size(result, data) for result in results]
        try:
            frame = from_label_studio([{"item_id": "", "annotator_id": "", "result": sized}])
        except InputError as error:  # its message names "annotation 0 ... result k (id=...)"
            raise InputError(f"{where}: {str(error).split('): ', 1)[-1]}") from None
        size = next(((r["original_width"], r["original_height"]) for r in sized if "original_width" in r),
                    (data.get("width"), data.get("height")))
        rows = frame.drop(columns=["item_id", "annotator_id"]).to_dict("records")
        for row in rows:
            if isinstance(row["label"], str):
                self._check_label(row["label"], where)
            row["original_width"], row["original_height"] = size
        return rows

    def results(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        from labelloop.quality.boxes import to_label_studio

        boxes = rows.dropna(subset=["x"])
        if boxes.empty:
            return []
        first = boxes.iloc[0]
        return to_label_studio(boxes.drop(columns=list(SIZE_COLUMNS)),
                               float(first["original_width"]), float(first["original_height"]),
                               from_name=self.control.name, to_name=self.control.to_name)

    def audit(self, answers: pd.DataFrame, gold: pd.DataFrame | None, *, seed: int = 0,
              data: Mapping[str, dict[str, Any]] | None = None) -> ControlAudit:
        import pandas as pd

        from labelloop.quality import boxes as bx
        from labelloop.quality.audit import json_number, json_records

        sizes = answers.groupby("item_id")[list(SIZE_COLUMNS)].first()
        answers = answers.drop(columns=list(SIZE_COLUMNS))
        gold = None if gold is None else gold.drop(columns=list(SIZE_COLUMNS))
        model = bx.BoxConsensus().fit(answers)
        consensus = model.boxes_[["item_id", "x", "y", "w", "h", "label", "confidence"]]
        # An image is as sure as its least sure box (a "no object" row carries P(no object)).
        confidence = consensus.groupby("item_id")["confidence"].min()
        agreement = bx.BoxAgreement().fit(answers)
        summary = agreement.summary_.set_index("label")
        overall = summary.loc[bx.OVERALL]
        metrics: dict[str, Any] = {
            "method": type(model).__name__,
            "parameters": {"iou_threshold": bx.DEFAULT_THRESHOLD},
            "counts": {"answers": int(answers.groupby(["item_id", "annotator_id"]).ngroups),
                       "boxes": int(answers["x"].notna().sum()), "items": int(answers["item_id"].nunique()),
                       "annotators": int(answers["annotator_id"].nunique()), "labels": list(self.control.labels)},
            "agreement": {key: json_number(float(value)) for key, value in overall.items()},
            "labels": json_records(summary.drop(index=bx.OVERALL).reset_index()),
            "pairwise": json_records(agreement.pairs_),
            "consensus": {"mean_confidence": json_number(confidence.mean()),
                          "annotators": json_records(model.annotators_.reset_index())},
            "gold": None,
            "annotators": [],
        }
        if gold is not None:
            scored = bx.box_gold_scores(consensus.assign(annotator_id="consensus"), gold)
            metrics["gold"] = {key: json_number(float(value)) if not isinstance(value, str) else value
                               for key, value in scored.iloc[0].items() if key != "annotator_id"}
            metrics["annotators"] = json_records(bx.box_gold_scores(answers, gold))
            # Answered gold images keep their gold boxes.
            gold_items = pd.Index(gold["item_id"].unique()).intersection(confidence.index)
            consensus = pd.concat([consensus[~consensus["item_id"].isin(gold_items)],
                                   gold[gold["item_id"].isin(gold_items)].assign(confidence=1.0)])
            confidence[gold_items] = 1.0
        consensus = consensus.join(sizes, on="item_id")
        return ControlAudit(self.control, consensus, confidence, metrics)


def _with_size(result: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The result with original_width/height, taken from the task data if it lacks them."""
    if "original_width" in result or not all(field in data for field in SIZE_FIELDS):
        return result
    return {**result, "original_width": data["width"], "original_height": data["height"]}
