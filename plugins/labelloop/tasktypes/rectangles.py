"""Boxes on images: ``<RectangleLabels>`` on ``<Image>``; the audit works in pixels.

Through the whole loop: known boxes and gold in pixels, consensus boxes with a confidence each
(``quality.boxes.BoxConsensus``), review of doubtful boxes and of images whose annotators drew
different numbers of boxes, gate checks on box F1, simulated annotators, and pre-labels from
the project's own detector (``labelloop.model.detector``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from labelloop.errors import InputError
from labelloop.taskdata import HEIGHT_FIELD, WIDTH_FIELD

from .base import ControlAudit, TaskType, number

if TYPE_CHECKING:
    import random

    import pandas as pd

#: Task-data fields that give an image's size in pixels when a result lacks original_width/height,
#: first pair present wins: what image ingest writes, then a record's own fields.
SIZE_FIELDS = ((WIDTH_FIELD, HEIGHT_FIELD), ("width", "height"))
SIZE_COLUMNS = ("original_width", "original_height")
BOX = ("x", "y", "w", "h")


def image_size(data: Mapping[str, Any]) -> tuple[float, float] | None:
    """(width, height) in pixels from task data, or None when it has no size fields."""
    for width, height in SIZE_FIELDS:
        if isinstance(data.get(width), int | float) and isinstance(data.get(height), int | float):
            return float(data[width]), float(data[height])
    return None


class Rectangles(TaskType):
    kind = "rectangles"
    min_labels = 1  # boxes of one kind ("pedestrian"): drawing none is the other answer
    description = "<RectangleLabels> on <Image> (unrotated boxes; drawing none is an answer)"
    #: pixels, plus the image size each answer was drawn on (to write results back)
    columns = (*BOX, "label", *SIZE_COLUMNS)
    learner_class = "labelloop.model.detector:DetectorLearner"
    needs_trainer = True

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
                    image_size(data) or (None, None))
        rows = frame.drop(columns=["item_id", "annotator_id"]).to_dict("records")
        for row in rows:
            if isinstance(row["label"], str):
                self._check_label(row["label"], where)
            row["original_width"], row["original_height"] = size
        return rows

    def results(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        """Rectangle results; a ``confidence`` column (consensus, predictions) becomes each box's ``score``."""
        from labelloop.quality.boxes import to_label_studio

        boxes = rows.dropna(subset=["x"])
        if boxes.empty:
            return []
        first = boxes.iloc[0]
        return to_label_studio(boxes.drop(columns=[c for c in (*SIZE_COLUMNS, "text") if c in boxes.columns]),
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

    # -- the Airflow loop ---------------------------------------------------------------------
    def known_answer(self, value: Any, data: dict[str, Any], where: str) -> list[dict[str, Any]]:
        """``[[x, y, w, h, label], ...]`` in pixels (``[]``: no object) or Label Studio rectangle
        results, or their JSON text; checked against the image size in the task data."""
        from .loop import decoded

        boxes = decoded(value, where)
        if not isinstance(boxes, list):
            raise InputError(f"{where}: known boxes are a list of [x, y, w, h, label] in pixels (or Label Studio "
                             f"rectanglelabels results), got {boxes!r:.80}")
        size = image_size(data)
        results = []
        for box in boxes:
            if isinstance(box, dict):
                results.append({"type": "rectanglelabels", **box})
            elif isinstance(box, list) and len(box) == 5:
                if size is None:
                    raise InputError(f"{where}: boxes in pixels need the image size; the task data has none of "
                                     f"{[list(pair) for pair in SIZE_FIELDS]}")
                x, y, w, h = (number(v, name, where) for v, name in zip(box[:4], BOX))
                results.append({"type": "rectanglelabels", "original_width": size[0], "original_height": size[1],
                                "value": {"x": 100 * x / size[0], "y": 100 * y / size[1], "width": 100 * w / size[0],
                                          "height": 100 * h / size[1], "rectanglelabels": [box[4]]}})
            else:
                raise InputError(f"{where}: a known box is [x, y, w, h, label] (pixels), got {box!r:.80}")
        return self.answer_rows(results, data, where)

    def known_text(self, rows: list[dict[str, Any]]) -> str:
        """``[[x, y, w, h, label], ...]`` in pixels (the size stays in the task data)."""
        boxes = [[*(round(float(row[c]), 3) for c in BOX), row["label"]] for row in rows
                 if isinstance(row.get("label"), str)]
        return json.dumps(boxes, ensure_ascii=False)

    def consensus_rows(self, result: str | None, label: str | None, data: dict[str, Any],
                       where: str) -> list[dict[str, Any]]:
        """The consensus boxes with their ``confidence`` (each result's score, the posterior that
        the box is a real object; 1 for gold and reviewed boxes)."""
        results = json.loads(result) if result else []
        rows = self.answer_rows(results, data, where)
        scores = [r.get("score") for r in results if r.get("type") == "rectanglelabels"]
        for row, score in zip(rows, scores):
            row["confidence"] = score
        return rows

    def disagreements(self, answers: pd.DataFrame) -> list[Any]:
        """Images whose annotators drew different numbers of boxes (no object counts as none).
        Where they agree on the count but not the place, the box's low confidence routes it."""
        from .loop import plain

        counts = answers["x"].notna().groupby([answers["item_id"], answers["annotator_id"]]).sum()
        distinct = counts.groupby(level="item_id").nunique()
        return plain(distinct.index[distinct > 1])

    def gate_checks(self, metrics: dict[str, Any], quality: Any) -> list[dict[str, Any]]:
        from .loop import check, pooled_gold_f1

        pair_f1 = metrics["agreement"].get("f1")
        pair_note = "" if pair_f1 is not None else "no two annotators drew boxes on a shared image"
        return [
            pooled_gold_f1(metrics, "annotators' box F1 on gold (IoU >= 0.5)", "min_box_f1", quality.min_box_f1,
                           "n_matched", ("n_boxes", "n_gold_boxes")),
            check("pairwise box F1 (IoU >= 0.5)", "min_box_pair_f1", pair_f1, quality.min_box_pair_f1, pair_note),
            check("mean consensus confidence", "min_consensus_confidence", metrics["consensus"]["mean_confidence"],
                  quality.min_consensus_confidence),
        ]

    # -- simulated annotators -------------------------------------------------------------------
    def simulation_skill(self, skill: Any) -> BoxSkill:
        """An accuracy, or miss, false-box, jitter and confusion rates (``BoxSkill``)."""
        return BoxSkill.of(skill)

    def simulate(self, truth: list[dict[str, Any]], skill: Any, rng: Any, data: dict[str, Any]) -> list[dict[str, Any]]:
        import pandas as pd

        size = image_size(data) or next(((row["original_width"], row["original_height"]) for row in truth
                                         if row.get("original_width")), None)
        if size is None:
            raise ValueError(f"{self.control.describe()}: the task data has no image size "
                             f"({[list(pair) for pair in SIZE_FIELDS]}) to draw boxes on")
        boxes = [(*(float(row[c]) for c in BOX), row["label"]) for row in truth if isinstance(row["label"], str)]
        drawn = draw_boxes(rng, skill, boxes, size, self.control.labels)
        frame = pd.DataFrame(drawn, columns=[*BOX, "label"]).assign(original_width=size[0], original_height=size[1])
        return self.results(frame)


@dataclass(frozen=True)
class BoxSkill:
    """A box annotator. ``miss``: P(a true box is left out); ``false_box``: P(an image gets one box
    where there is no object); ``jitter``: the spread of each edge, as a share of the box's side
    (normal, standard deviation); ``confusion``: P(a kept box gets another label, uniformly)."""

    miss: float = 0.0
    false_box: float = 0.0
    jitter: float = 0.0
    confusion: float = 0.0

    @classmethod
    def of(cls, skill: Any) -> BoxSkill:
        """From an accuracy ``a`` (miss and false box 1 - a, jitter and confusion (1 - a) / 2), or
        ``{"miss": ..., "false_box": ..., "jitter": ..., "confusion": ...}`` (each 0-1, default 0)."""
        from labelloop.dev.simulate import error_rates

        return cls(**error_rates(skill, ("miss", "false_box", "jitter", "confusion"), "rectangles"))


Box = tuple[float, float, float, float, str]


def draw_boxes(rng: random.Random, skill: BoxSkill, truth: list[Box], size: tuple[float, float],
               labels: tuple[str, ...]) -> list[Box]:
    """One annotator's boxes (pixels, inside the image) on an image whose true boxes are ``truth``."""
    width, height = size
    drawn = []
    for x, y, w, h, label in truth:
        if rng.random() < skill.miss:
            continue
        left, right = x + rng.gauss(0, skill.jitter) * w, x + w + rng.gauss(0, skill.jitter) * w
        top, bottom = y + rng.gauss(0, skill.jitter) * h, y + h + rng.gauss(0, skill.jitter) * h
        if rng.random() < skill.confusion:
            others = [other for other in labels if other != label]
            label = rng.choice(others) if others else label
        drawn.append(_clipped(left, top, right, bottom, label, width, height))
    if rng.random() < skill.false_box:
        w, h = rng.uniform(0.05, 0.3) * width, rng.uniform(0.05, 0.3) * height
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        drawn.append(_clipped(x, y, x + w, y + h, rng.choice(list(labels)), width, height))
    return drawn


def _clipped(left: float, top: float, right: float, bottom: float, label: str, width: float,
             height: float) -> Box:
    """The box inside the image, at least one pixel on each side."""
    left, right = sorted((min(max(left, 0.0), width - 1), min(max(right, 1.0), width)))
    top, bottom = sorted((min(max(top, 0.0), height - 1), min(max(bottom, 1.0), height)))
    return left, top, max(right - left, 1.0), max(bottom - top, 1.0), label


def _with_size(result: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The result with original_width/height, taken from the task data if it lacks them."""
    size = image_size(data)
    if "original_width" in result or size is None:
        return result
    return {**result, "original_width": size[0], "original_height": size[1]}
