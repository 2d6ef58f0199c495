"""The tests' own detector: bright rectangles on a dark background, rendered with known truth,
and a trainer (``train``, a ``model.trainer`` entry point) that learns from the consensus boxes.

Images: a dark noisy background (0-60), bright boxes (170-255) that are either ``wide``
(w >= 1.6 h) or ``tall``, and dim blobs (95-150) that are not objects. ``train`` learns what it
is told by the consensus table, nothing hard-coded: the brightness threshold (midway between the
boxes' pixels and the rest), the smallest object (half the smallest consensus box) and the
aspect ratio that separates the labels. Its model is an ``mlflow.pyfunc.PythonModel`` that finds
connected bright regions (scipy) and scores each by how far its brightness clears the threshold
and its size the smallest object.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

LABELS = ("wide", "tall")


def truth_boxes(rng: random.Random, width: int, height: int) -> list[list[Any]]:
    """0-3 separated boxes ``[x, y, w, h, label]`` in pixels."""
    boxes: list[list[Any]] = []
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
        for _attempt in range(50):
            long, short = rng.randint(22, 50), rng.randint(8, 13)
            label = rng.choice(LABELS)
            w, h = (long, short) if label == "wide" else (short, long)
            x, y = rng.randint(2, width - w - 2), rng.randint(2, height - h - 2)
            if all(x + w + 4 < bx or bx + bw + 4 < x or y + h + 4 < by or by + bh + 4 < y
                   for bx, by, bw, bh, _ in boxes):
                boxes.append([x, y, w, h, label])
                break
    return boxes


def render(path: Path, width: int, height: int, boxes: list[list[Any]], seed: int) -> None:
    """A grayscale PNG: noise, the boxes bright, and one or two dim blobs that are not objects."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 61, size=(height, width)).astype(np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        bx, by = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        if all(bx + 10 < x or x + w + 4 < bx or by + 10 < y or y + h + 4 < by for x, y, w, h, _ in boxes):
            pixels[by:by + 6, bx:bx + 6] = rng.integers(95, 151)
    for x, y, w, h, _ in boxes:
        pixels[y:y + h, x:x + w] = rng.integers(170, 256, size=(h, w))
    Image.fromarray(pixels, mode="L").save(path)


def render_set(folder: Path, n: int, seed: int, width: int = 160, height: int = 120) -> list[dict[str, Any]]:
    """``n`` images in ``folder`` and their records: id, image (file path), width, height, boxes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for index in range(n):
        boxes = truth_boxes(rng, width, height)
        path = folder / f"img_{seed}_{index:04d}.png"
        render(path, width, height, boxes, seed * 100_003 + index)
        records.append({"id": f"img-{seed}-{index:04d}", "image": str(path), "width": width, "height": height,
                        "boxes": boxes})
    return records


class BrightBoxes(mlflow.pyfunc.PythonModel):
    """Connected regions brighter than ``threshold`` of at least ``min_area`` pixels, labelled by aspect."""

    def __init__(self, threshold: float, min_area: float, spread: float, aspect_cut: float, labels: list[str]):
        self.threshold, self.min_area, self.spread = threshold, min_area, spread
        self.aspect_cut, self.labels = aspect_cut, labels  # labels: [the wider one, the taller one]

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from PIL import Image
        from scipy import ndimage

        rows = []
        for row, path in enumerate(model_input["path"]):
            pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
            regions, _ = ndimage.label(pixels > self.threshold)
            for index, found in enumerate(ndimage.find_objects(regions), start=1):
                ys, xs = found
                h, w = ys.stop - ys.start, xs.stop - xs.start
                inside = pixels[found][regions[found] == index]
                # Sure when it is well above the threshold and no smaller than the smallest object.
                clearance = (inside.mean() - self.threshold) / self.spread
                size = (inside.size - self.min_area) / (0.25 * self.min_area)
                score = 1 / (1 + math.exp(-2 * clearance)) / (1 + math.exp(-size))
                rows.append({"row": row, "x": xs.start, "y": ys.start, "w": w, "h": h,
                             "label": self.labels[0] if math.log(w / h) >= self.aspect_cut else self.labels[1],
                             "score": float(score)})
        return pd.DataFrame(rows, columns=["row", "x", "y", "w", "h", "label", "score"])


def train(table: pd.DataFrame, min_area_scale: float = 0.5, **unused: Any) -> BrightBoxes:
    """Learn the detector from the consensus table (``labelloop.model.detector.TRAIN_COLUMNS``).

    Brightness threshold: midway between the mean pixel inside the consensus boxes and the mean
    pixel outside them, boxes weighted by their confidence. Smallest object: ``min_area_scale``
    times the smallest box's area. Labels: the log aspect ratio midway between the labels' means.
    """
    from PIL import Image

    boxes = table.dropna(subset=["x"])
    if boxes.empty:
        raise ValueError("the consensus has no boxes to learn from")
    weights = boxes["confidence"].fillna(1.0).astype(float)
    inside, outside, weight_in, spread = [], [], [], []
    for path, own in boxes.groupby("path"):
        pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
        mask = np.zeros(pixels.shape, dtype=bool)
        for box, weight in zip(own.itertuples(), weights[own.index]):
            x, y, w, h = (int(round(v)) for v in (box.x, box.y, box.w, box.h))
            inside.append(pixels[y:y + h, x:x + w].mean())
            spread.append(pixels[y:y + h, x:x + w].std())
            weight_in.append(weight)
            mask[y:y + h, x:x + w] = True
        outside.append(pixels[~mask].mean())
    bright, dark = float(np.average(inside, weights=weight_in)), float(np.mean(outside))
    aspect = np.log(boxes["w"].astype(float) / boxes["h"].astype(float))
    means = {label: aspect[boxes["label"] == label].mean() for label in boxes["label"].unique()}
    wider, taller = max(means, key=means.get), min(means, key=means.get)
    return BrightBoxes(threshold=(bright + dark) / 2, min_area=min_area_scale * float((boxes["w"] * boxes["h"]).min()),
                       spread=max(float(np.mean(spread)), 1.0), aspect_cut=float((means[wider] + means[taller]) / 2),
                       labels=[wider, taller])


def write_records(path: Path, records: list[dict[str, Any]], image: Any = str) -> None:
    """The records as JSONL, each image value passed through ``image`` (e.g. to a file:// URI)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({**record, "image": image(record["image"])}) + "\n" for record in records))
