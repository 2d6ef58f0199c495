"""Boxes on images through the loop, on tables made from hand-written Label Studio tasks (as collect
makes them): known boxes, consensus with a confidence per box, gold F1 against an independent
computation, review picks and predictions, the gate, simulated annotators, the spec's trainer, and
the bring-your-own detector (the tests' own, trained on images rendered here)."""

from __future__ import annotations

import json
import random
import re
from itertools import permutations
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from labelloop.audit.gate import evaluate_gate
from labelloop.audit.prepare import answered_at, control_answers, gold_answers, task_data
from labelloop.audit.routing import review_tasks, select_for_review
from labelloop.audit.run import consensus_table
from labelloop.collect.export import annotation_rows, task_rows
from labelloop.collect.table import ANNOTATIONS_SCHEMA, TASKS_SCHEMA, to_frame, to_table
from labelloop.errors import InputError
from labelloop.model import detector
from labelloop.model.retrain import consensus_rows
from labelloop.spec import Model, Quality, SpecError, load_spec
from labelloop.tasktypes import read_controls
from labelloop.tasktypes.rectangles import BoxSkill, Rectangles

from tests.support import box_detector

CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="boxes" toName="image">'
          '<Label value="wide"/><Label value="tall"/></RectangleLabels></View>')
W, H = 200, 100
WHO = ("a@x", "b@x", "c@x")


def frame(rows: list[dict], schema: pa.Schema) -> pd.DataFrame:
    return to_frame(to_table(rows, schema))


def box(x: float, y: float, w: float, h: float, label: str = "wide") -> dict:
    """A Label Studio rectangle result from pixels (the task data gives the size)."""
    return {"from_name": "boxes", "to_name": "image", "type": "rectanglelabels",
            "value": {"x": 100 * x / W, "y": 100 * y / H, "width": 100 * w / W, "height": 100 * h / H,
                      "rotation": 0, "rectanglelabels": [label]}}


def ls_task(task_id: int, answers: dict[str, list[dict]], gold: list | None = None, source: int | None = None) -> dict:
    data = {"image": f"/data/local-files/?d=img{task_id}.png", "labelloop_width": W, "labelloop_height": H,
            "labelloop_hash": f"h{task_id}"}
    if source is not None:
        data["labelloop_task_id"] = source
    known = None if gold is None else json.dumps(gold)
    return {"id": task_id, "data": data, "meta": {"label": known, "gold": gold is not None},
            "annotations": [{"id": task_id * 10 + n, "completed_by": {"id": n, "email": who}, "result": result,
                             "was_cancelled": False, "created_at": "2026-12-01T10:00:00Z",
                             "updated_at": f"2026-12-01T10:00:0{n}Z"}
                            for n, (who, result) in enumerate(answers.items())]}


A, B = (10, 10, 60, 20), (120, 40, 20, 50)


def box_tasks() -> list[dict]:
    return [
        # gold: a and b draw both boxes; c misses B and draws a false box
        ls_task(1, {"a@x": [box(*A), box(*B, "tall")], "b@x": [box(11, 11, 59, 20), box(*B, "tall")],
                    "c@x": [box(*A), box(150, 5, 20, 20)]},
                gold=[[*A, "wide"], [*B, "tall"]]),
        # everyone agrees on one box
        ls_task(2, {who: [box(*A)] for who in WHO}),
        # "no object" from all three: a real answer
        ls_task(3, {who: [] for who in WHO}),
        # only c sees a box: a count disagreement, and a doubtful box
        ls_task(4, {"a@x": [], "b@x": [], "c@x": [box(*B, "tall")]}),
    ]


@pytest.fixture
def boxes() -> Rectangles:
    [task_type] = read_controls(CONFIG)
    return task_type


def tables(tasks: list[dict], task_type: Rectangles) -> tuple[pd.DataFrame, pd.DataFrame]:
    return frame(annotation_rows(tasks, [task_type.control.name]), ANNOTATIONS_SCHEMA), frame(task_rows(tasks),
                                                                                              TASKS_SCHEMA)


def iou(a, b) -> float:
    """By hand: intersection over union of two [x, y, w, h] boxes."""
    width = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def brute_f1(said: list, truth: list) -> float:
    """Micro F1 at IoU >= 0.5 with the best one-to-one matching, by enumerating every assignment."""
    small, large = (said, truth) if len(said) <= len(truth) else (truth, said)
    best = max((sum(iou(s, t) >= 0.5 and s[4] == t[4] for s, t in zip(small, chosen))
                for chosen in permutations(large, len(small))), default=0)
    return 2 * best / (len(said) + len(truth))


def test_known_boxes_are_pixels_checked_against_the_image(boxes) -> None:
    data = {"labelloop_width": W, "labelloop_height": H}
    rows = boxes.known_answer(json.dumps([[*A, "wide"]]), data, "record 1")
    assert [(r["x"], r["y"], r["w"], r["h"], r["label"], r["original_width"]) for r in rows] == [(*A, "wide", W)]
    assert json.loads(boxes.known_text(rows)) == [[*A, "wide"]]
    assert boxes.known_answer([], {"width": 10, "height": 10}, "r")[0]["original_width"] == 10  # a record's own size
    assert boxes.known_text(boxes.known_answer([], data, "r")) == "[]"  # "no object" is kept as such
    for known, reason in [([[0, 0, 10, 10]], "a known box is [x, y, w, h, label]"),
                          ([[190, 0, 20, 10, "wide"]], "expected at most 100 %"),
                          ([[0, 0, 10, 10, "car"]], "label 'car' is not offered"),
                          ("nope", "is not JSON")]:
        with pytest.raises(InputError, match=re.escape(reason)):
            boxes.known_answer(known, data, "record 1")
    with pytest.raises(InputError, match="need the image size"):
        boxes.known_answer([[*A, "wide"]], {}, "record 1")


def test_box_audit_from_the_snapshot_tables(boxes) -> None:
    annotations, table = tables(box_tasks(), boxes)
    data = task_data(table)
    answers = control_answers(annotations, boxes, data)
    assert set(answers["original_width"]) == {W}  # sizes from the task data
    gold = gold_answers(table, boxes, data, answers["item_id"])
    review = frame(annotation_rows([ls_task(40, {"r@x": []}, source=4)], ["boxes"]), ANNOTATIONS_SCHEMA)
    adjudicated = control_answers(review, boxes, data, key="source_task_id", one_per_item=True)
    result = boxes.loop_audit(answers, gold, adjudicated, seed=1, spot_check_fraction=1.0, spot_check_among=None,
                              low_confidence_threshold=0.7, run_id="r1", data=data)
    metrics = result.metrics

    # annotators[].f1: micro F1 at IoU >= 0.5 on gold, checked against brute-force matching by hand.
    truth = [[*A, "wide"], [*B, "tall"]]
    drawn = {"a@x": [[*A, "wide"], [*B, "tall"]], "b@x": [[11, 11, 59, 20, "wide"], [*B, "tall"]],
             "c@x": [[*A, "wide"], [150, 5, 20, 20, "wide"]]}
    scores = {row["annotator_id"]: row["f1"] for row in metrics["annotators"]}
    assert scores == pytest.approx({who: brute_f1(said, truth) for who, said in drawn.items()})
    assert scores["c@x"] == pytest.approx(0.5)
    assert metrics["review"]["n_disagreements"] == 1  # item 4: c drew one box, a and b none
    assert metrics["consensus"]["sources"] == {"gold": 1, "adjudicated": 1, "consensus": 2}

    # The consensus keeps a confidence per box; it survives into consensus.parquet as each box's score.
    assert "confidence" in result.consensus.columns
    out = consensus_table(boxes, result, table).to_pandas().set_index("task_id")
    final = {task: [(round(r["value"]["x"] * W / 100), r["value"]["rectanglelabels"][0], r["score"])
                    for r in json.loads(text)] for task, text in out["result"].items()}
    assert [(x, label) for x, label, _ in final[1]] == [(10, "wide"), (120, "tall")]  # gold wins
    assert {score for _, _, score in final[1]} == {1.0}
    assert final[3] == [] and final[4] == []  # no object; the reviewer said none on 4
    [(x, label, score)] = final[2]
    assert (x, label) == (10, "wide") and 0.5 < score <= 1
    assert out.loc[2, "confidence"] == pytest.approx(score)  # an image is as sure as its least sure box
    assert out["label"].isna().all()

    # What retraining reads back: the boxes in pixels with their confidence.
    consensus = out.reset_index().assign(text=lambda f: f["task_id"].map(lambda t: data[t]["image"]),
                                         data=table.set_index("task_id").loc[out.index, "data"].to_numpy(),
                                         item_id=out.index)
    spec_like = type("Spec", (), {"task_type": boxes})()
    rows = consensus_rows(spec_like, consensus)  # type: ignore[arg-type]
    assert list(rows.columns) == ["item_id", "text", "x", "y", "w", "h", "label", "original_width",
                                  "original_height", "confidence"]
    assert rows[rows["item_id"] == 2][["x", "label", "confidence"]].values.tolist() == [
        [pytest.approx(10.0), "wide", pytest.approx(score)]]
    assert rows[rows["item_id"] == 3]["x"].isna().all()


def test_review_shows_each_annotators_boxes_and_routes_doubt(boxes) -> None:
    annotations, table = tables(box_tasks(), boxes)
    answers = control_answers(annotations, boxes, task_data(table))
    consensus = pd.DataFrame({"item_id": [1, 2, 3, 4], "label": [None] * 4, "result": ["[]"] * 4,
                              "confidence": [1.0, 0.99, 0.95, 0.4], "source": ["gold"] + ["consensus"] * 3})
    selected = select_for_review(answers, consensus, [], [4], boxes.disagreements(answers))
    assert selected == {4: ["low_confidence", "disagreement"]}
    [made] = review_tasks(type("Spec", (), {"task_type": boxes})(), selected, answers, consensus, table, "r1")
    shown = {p["model_version"]: p["result"] for p in made["predictions"]}
    assert shown["a@x"] == [] and shown["b@x"] == []
    [result] = shown["c@x"]
    assert (result["original_width"], result["original_height"]) == (W, H)
    assert result["value"]["x"] == pytest.approx(60.0) and result["value"]["rectanglelabels"] == ["tall"]
    assert sorted(answered_at(annotations, boxes).index) == [1, 2, 3, 4]  # "no object" is an answer


def test_box_gate_checks(boxes) -> None:
    annotations, table = tables(box_tasks(), boxes)
    data = task_data(table)
    answers = control_answers(annotations, boxes, data)
    audit = boxes.loop_audit(answers, gold_answers(table, boxes, data, answers["item_id"]), None, seed=0,
                             spot_check_fraction=0.1, spot_check_among=None, low_confidence_threshold=0.7,
                             run_id="r", data=data)
    pooled = 2 * (2 + 2 + 1) / (6 + 6)
    gate = evaluate_gate(audit.metrics, Quality(min_box_f1=0.9, min_box_pair_f1=0.1,
                                                min_consensus_confidence=0.0), boxes)
    assert [check.threshold_name for check in gate.failed] == ["min_box_f1"]
    assert f"box F1 on gold (IoU >= 0.5) {pooled:.3f} < min_box_f1 0.900" in gate.summary("p")
    assert "annotators below it: c@x 0.50 (n=1)" in gate.summary("p")
    no_gold = boxes.loop_audit(answers, None, None, seed=0, spot_check_fraction=0.1, spot_check_among=None,
                               low_confidence_threshold=0.7, run_id="r", data=data)
    checks = {c.threshold_name: c for c in evaluate_gate(no_gold.metrics, Quality(), boxes).checks}
    assert checks["min_box_f1"].status == "not measured"
    assert checks["min_box_pair_f1"].value == pytest.approx(audit.metrics["agreement"]["f1"])


def test_simulated_box_annotators(boxes) -> None:
    truth = boxes.known_answer([[*A, "wide"], [*B, "tall"]], {"width": W, "height": H}, "t")
    data = {"width": W, "height": H}
    perfect = boxes.simulate(truth, boxes.simulation_skill(1.0), random.Random(0), data)
    assert [(round(r["value"]["x"] * W / 100), r["value"]["rectanglelabels"]) for r in perfect] == [
        (10, ["wide"]), (120, ["tall"])]
    assert boxes.simulate(truth, boxes.simulation_skill({"miss": 1.0}), random.Random(0), data) == []
    confused = boxes.simulate(truth, boxes.simulation_skill({"confusion": 1.0}), random.Random(0), data)
    assert [r["value"]["rectanglelabels"] for r in confused] == [["tall"], ["wide"]]
    # Jitter moves edges by a share of the box's side: IoU stays high for small jitter, and every
    # box is a valid Label Studio rectangle (inside the image, positive size).
    rng = random.Random(1)
    ious = []
    for _ in range(100):
        [drawn] = boxes.simulate(truth[:1], BoxSkill(jitter=0.05), rng, data)
        rows = boxes.answer_rows([drawn], data, "sim")
        ious.append(iou(A, [rows[0][c] for c in ("x", "y", "w", "h")]))
    assert 0.75 < np.mean(ious) < 0.98
    false = [len(boxes.simulate([], BoxSkill(false_box=0.5), rng, data)) for _ in range(200)]
    assert 0.38 < np.mean(false) < 0.62
    assert BoxSkill.of(0.9) == BoxSkill(pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.05),
                                        pytest.approx(0.05))
    for bad in (1.5, {"blur": 0.1}, "x", {"miss": -1}):
        with pytest.raises(ValueError):
            boxes.simulation_skill(bad)


def box_spec(tmp_path: Path, **model: object) -> Path:
    (tmp_path / "labeling").mkdir(exist_ok=True)
    (tmp_path / "labeling" / "boxes.xml").write_text(CONFIG)
    raw = {"name": "boxes_t", "title": "boxes", "labeling_config": "labeling/boxes.xml", "control_name": "boxes",
           "labels": ["wide", "tall"], "storage_uri": f"file://{tmp_path}/store",
           "source": {"uri": f"file://{tmp_path}/raw/", "label_field": "boxes",
                      "fields": {"image": {"type": "string"}, "width": {"type": "integer"},
                                 "height": {"type": "integer"}}},
           "model": {"name": "boxes_t", **model}}
    (tmp_path / "projects").mkdir(exist_ok=True)
    path = tmp_path / "projects" / "boxes_t.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_spec_names_the_detectors_trainer(tmp_path: Path) -> None:
    # Checked in shape at parse time, imported only when retraining runs.
    spec = load_spec(box_spec(tmp_path, trainer="not_installed.anywhere:train"))
    assert spec.task_type.kind == "rectangles" and spec.model.trainer == "not_installed.anywhere:train"
    with pytest.raises(ValueError, match="model.trainer 'not_installed.anywhere:train' cannot be imported"):
        spec.task_type.learner().fit(spec.model, pd.DataFrame({"item_id": [1], "text": ["/x.png"]}))
    for model, reason in [({}, "name its trainer as model.trainer: module.path:function"),
                          ({"trainer": "mypkg.detect"}, "is not an entry point; write module.path:function"),
                          ({"trainer": "a:b", "metric": "span_f1"}, None)]:
        if reason is None:
            spec = load_spec(box_spec(tmp_path, **model))
            with pytest.raises(ValueError, match=r"use one of \['box_f1'\]"):
                from labelloop.model.learner import promotion_metric
                promotion_metric(spec.task_type.learner(), spec.model)
            continue
        with pytest.raises(SpecError, match=reason):
            load_spec(box_spec(tmp_path, **model))


def test_a_trainer_on_a_text_project_is_refused(make_spec) -> None:
    path = make_spec(model={"name": "m", "trainer": "mypkg.detect:train"})
    with pytest.raises(SpecError, match="labelloop trains its model itself, so remove trainer"):
        load_spec(path)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training rows (consensus-like, confidence 0.9) and gold rows of images rendered here."""
    [task_type] = read_controls(CONFIG)
    rows = []
    for record in box_detector.render_set(tmp_path_factory.mktemp("images"), 60, seed=7):
        rows += [{"item_id": record["id"], "text": record["image"], **row}
                 for row in task_type.known_answer(record["boxes"], record, "rendered")]
    table = pd.DataFrame(rows)
    held_out = table["item_id"] >= "img-7-0040"
    return table[~held_out].assign(confidence=0.9).reset_index(drop=True), table[held_out].reset_index(drop=True)


TRAINER = Model(name="boxes", trainer="tests.support.box_detector:train")


def test_the_trainer_learns_from_the_consensus_and_the_detector_finds_boxes(boxes, rendered) -> None:
    train, gold = rendered
    learner = boxes.learner()
    table = detector.training_table(train, {path: path for path in train["text"]})
    assert list(table.columns) == list(detector.TRAIN_COLUMNS) and set(table["width"]) == {160}
    fitted = learner.fit(TRAINER, train)
    # What it learned sits between the background (<= 60) and the boxes (>= 170), from the data.
    assert 80 < fitted.threshold < 160 and fitted.labels == ["wide", "tall"]
    metrics = learner.evaluate(fitted, gold)
    assert metrics["box_f1"] >= 0.95 and metrics["n_eval"] == 20
    # A detector that learned the wrong smallest object misses boxes: F1 measures it.
    worse = learner.evaluate(learner.fit(TRAINER.model_copy(update={"params": {"min_area_scale": 2.5}}), train), gold)
    assert worse["box_f1"] < metrics["box_f1"] - 0.2

    [prediction] = learner.predict(fitted, [gold["text"].iloc[0]])
    expected = gold[gold["item_id"] == gold["item_id"].iloc[0]].dropna(subset=["x"])
    assert len(prediction.result) == len(expected)
    for result in prediction.result:
        assert result["type"] == "rectanglelabels" and result["from_name"] == "boxes"
        assert (result["original_width"], result["original_height"]) == (160, 120)
        assert all(0 <= result["value"][k] <= 100 for k in ("x", "y", "width", "height"))
        assert 0.5 <= result["score"] <= 1
    assert 0 < prediction.score <= min([r["score"] for r in prediction.result], default=1.0)


class Fixed(mlflow.pyfunc.PythonModel):
    """A stand-in detector with fixed candidates: the adapter's handling of scores and bad output."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def predict(self, context, model_input, params=None):
        return pd.DataFrame(self.rows, columns=list(detector.BOX_OUTPUT))


def test_scores_become_the_predictions_probability(boxes, rendered) -> None:
    image = rendered[1]["text"].iloc[0]
    learner = boxes.learner()
    [prediction] = learner.predict(Fixed([{"row": 0, "x": 10, "y": 10, "w": 30, "h": 10, "label": "wide", "score": 0.9},
                                          {"row": 0, "x": 150, "y": 100, "w": 30, "h": 30, "label": "tall",
                                           "score": 0.2}]), [image])
    # kept: the 0.9 box (clipped boxes stay inside the image); left out: the 0.2 candidate
    assert [r["score"] for r in prediction.result] == [0.9]
    assert prediction.score == pytest.approx(0.9 * (1 - 0.2)) and prediction.uncertainty == pytest.approx(0.28)
    [nothing] = learner.predict(Fixed([]), [image])
    assert nothing.result == [] and nothing.score == 1.0
    for rows, reason in [([{"row": 0, "x": 1, "y": 1, "w": 5, "h": 5, "label": "car", "score": 0.9}],
                          r"returned labels \['car'\]"),
                         ([{"row": 3, "x": 1, "y": 1, "w": 5, "h": 5, "label": "wide", "score": 0.9}],
                          "a row outside 0-0"),
                         ([{"row": 0, "x": 1, "y": 1, "w": 5, "h": 5, "label": "wide", "score": 1.5}],
                          "a score outside 0-1")]:
        with pytest.raises(ValueError, match=reason):
            learner.predict(Fixed(rows), [image])
    with pytest.raises(TypeError, match="return an mlflow.pyfunc.PythonModel"):
        detector.as_pyfunc(object())


def test_images_are_read_where_the_task_data_points(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LABELLOOP_LOCAL_FILES_ROOT", str(tmp_path))
    assert detector.image_path("/data/local-files/?d=a%20b/c.png", tmp_path, 0) == str(tmp_path / "a b" / "c.png")
    assert detector.image_path("file:///srv/x.png", tmp_path, 0) == "/srv/x.png"
    with pytest.raises(InputError, match="is not a URI"):
        detector.image_path("x.png", tmp_path, 0)
