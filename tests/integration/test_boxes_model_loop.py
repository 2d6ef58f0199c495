"""Boxes on images through the whole loop with the project's own detector, on real servers: ingest
-> several Label Studio users draw boxes (simulated) -> collect -> audit (gold box F1, consensus
with a confidence per box, review routing with each annotator's boxes) -> retrain with the tests'
own trainer (registered, promoted only if better) -> rectangle pre-labels on the unlabeled tasks,
and the pre-label backend, started before any model, serving the champion.

The images are rendered here with known truth (bright rectangles on a dark background,
``tests/support/box_detector.py``) under ``source.uri``, and the ingest DAG takes them from a JSONL
manifest (each record: the image's path relative to ``source.uri``, its id and its known boxes):
image ingest reads and hashes each image and writes its Label Studio local-files URL and its size
into the task data. The project is made with ``project.ensure_project``, the setup DAG's first
step, not the setup DAG itself: the session's Label Studio does not serve local files, so the
setup DAG's local-files import storage is refused there (image ingest's tests cover it).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from labelloop.dev import simulate
from labelloop.audit.routing import review_title
from labelloop.model.prelabel import CHAMPION
from labelloop.project import ensure_project
from labelloop.quality.boxes import box_gold_scores, from_label_studio
from labelloop.spec import load_spec

from tests.integration.test_backend import served_version, wait_until
from tests.integration.test_loop import BACKEND_TOKEN, backend  # noqa: F401 (a fixture)
from tests.integration.test_spans_model_loop import prediction_of, run_stages, unlabeled_tasks
from tests.support import box_detector

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CONFIG = """<View>
  <Header value="Draw a box around every bright rectangle: wide (wider than tall) or tall."/>
  <Image name="image" value="$image"/>
  <RectangleLabels name="boxes" toName="image">
    <Label value="wide" background="#ff9c9c"/>
    <Label value="tall" background="#9cc3ff"/>
  </RectangleLabels>
</View>"""
SKILLS: list[Any] = [0.97, 0.93, 0.9, {"miss": 0.3, "false_box": 0.4, "jitter": 0.08, "confusion": 0.15}]


def box_spec(tmp_path: Path, model_name: str, **params: Any) -> Path:
    (tmp_path / "boxes.xml").write_text(CONFIG)
    name = f"t_{uuid.uuid4().hex[:10]}"
    raw = {
        "name": name, "title": f"test {name}", "labeling_config": str(tmp_path / "boxes.xml"),
        "control_name": "boxes", "labels": ["wide", "tall"], "storage_uri": f"file://{tmp_path / 'store'}",
        "source": {"uri": f"file://{tmp_path / 'raw'}/", "formats": ["jsonl"], "id_field": "id", "label_field": "boxes",
                   "fields": {"image": {"type": "string", "max_length": 500}}},
        "annotation": {"annotators_per_task": 3, "gold_fraction": 0.25},
        "quality": {"min_box_f1": 0.6, "min_box_pair_f1": 0.5, "min_consensus_confidence": 0.6},
        "model": {"name": model_name, "trainer": "tests.support.box_detector:train", "min_score": 0.8,
                  "promotion_margin": 0.005, "params": params},
    }
    folder = tmp_path / "projects"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def boxes_of(results: list[dict[str, Any]], item: Any) -> pd.DataFrame:
    frame = from_label_studio([{"item_id": item, "annotator_id": "x", "result": results}])
    return frame.drop(columns="annotator_id")


def test_boxes_loop_trains_promotes_and_prelabels(run_dag, labelstudio_hook, mlflow_server, tmp_path, backend,
                                                  monkeypatch) -> None:  # noqa: F811
    started = time.perf_counter()
    hook = labelstudio_hook
    monkeypatch.setenv("LABELLOOP_LOCAL_FILES_ROOT", str(tmp_path))
    # The backend process unpickles the tests' detector: it must be able to import tests.support.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    records = box_detector.render_set(tmp_path / "raw" / "images", 80, seed=11)
    box_detector.write_records(tmp_path / "raw" / "images.jsonl", records,
                               image=lambda path: str(Path(path).relative_to(tmp_path / "raw")))
    model_name = f"boxes_{uuid.uuid4().hex[:8]}"
    path = box_spec(tmp_path, model_name)
    spec = load_spec(path)
    task_type = spec.task_type
    server = backend(path)  # serving from the start: no model yet, then the champion
    assert served_version(server.url) is None

    ensure_project(hook, spec)
    run_stages(run_dag, path, "ingest")
    project = hook.find_project(spec.title)
    tasks = list(hook.iter_tasks(project.id, fields="all"))
    assert len(tasks) == len(records)
    assert {(task.data["labelloop_width"], task.data["labelloop_height"]) for task in tasks} == {(160, 120)}
    assert all(task.data["image"].startswith("/data/local-files/?d=raw/images/img_") for task in tasks)
    gold = [task for task in tasks if task.meta["gold"]]
    plain = [task for task in tasks if not task.meta["gold"]]
    answered = plain[:40] + gold[:12]
    assert len(gold) >= 15 and len(plain) >= 50

    # Four real Label Studio users draw boxes, three per image: three careful ones and a sloppy one.
    users = simulate.ensure_annotators(hook, len(SKILLS), f"box-{spec.name[-6:]}")
    truth = {task.id: task_type.known_answer(task.meta["label"], task.data, f"task {task.id}") for task in answered}
    drawn = simulate.simulate_results(task_type, truth, {task.id: task.data for task in answered},
                                      [(user.id, skill) for user, skill in zip(users, SKILLS)], per_task=3, seed=5)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda a: hook.create_annotation(a[0], a[2], completed_by=a[1], lead_time=5.0), drawn))
    print(f"boxes: {len(drawn)} simulated answers, {time.perf_counter() - started:.0f} s")

    run_stages(run_dag, path, "collect", "audit")
    [audit] = list((tmp_path / "store" / "audit").glob("*/gate.json"))
    gate = json.loads(audit.read_text())
    assert gate["passed"], gate["summary"]
    metrics = json.loads((audit.parent / "metrics.json").read_text())
    f1 = {row["annotator_id"].split("@")[0]: row["f1"] for row in metrics["annotators"]}
    print(f"boxes: annotators' gold box F1 {f1}; pairwise F1 {metrics['agreement']['f1']:.3f}; "
          f"consensus F1 on gold {metrics['gold']['f1']:.3f}")
    sloppy = users[-1].username
    assert f1[sloppy] == min(f1.values()) and max(f1.values()) >= 0.9
    assert metrics["gold"]["f1"] >= 0.9  # the consensus beats the sloppy annotator on gold
    consensus = pd.read_parquet(audit.parent / "consensus.parquet")
    scores = [r["score"] for text in consensus["result"] for r in json.loads(text)]
    assert scores and all(0 <= score <= 1 for score in scores)  # each box carries its confidence

    # Doubtful images went to the review project, each annotator's boxes shown as a prediction.
    review = hook.find_project(review_title(spec))
    routed = list(hook.iter_tasks(review.id, fields="all"))
    assert routed and metrics["review"]["n_disagreements"] >= 1
    for task in routed:
        shown = [p if isinstance(p, dict) else p.model_dump() for p in task.predictions]
        assert len(shown) == 3 and all("@" in p["model_version"] for p in shown)
        for result in (r for p in shown for r in p["result"]):
            assert result["type"] == "rectanglelabels" and result["original_width"] == 160

    run_stages(run_dag, path, "retrain")
    client = MlflowClient(tracking_uri=mlflow_server.url)
    champion = client.get_model_version_by_alias(model_name, CHAMPION)
    score = float(champion.tags["candidate_score"])
    print(f"boxes: version 1 box F1 {score:.3f} on gold, {time.perf_counter() - started:.0f} s")
    assert champion.version == "1" and champion.tags["validation_status"] == "approved" and score >= 0.9
    run = client.get_run(champion.run_id)
    assert run.data.tags["lineage.audit"] == metrics["run_id"] and run.data.params["estimator"].startswith("detector")

    # A worse detector (it learned too large a smallest object) is registered, measured, not promoted.
    raw = yaml.safe_load(path.read_text())
    raw["model"]["params"] = {"min_area_scale": 2.5}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert run_dag(path, "retrain", run_conf={"force": True}).state == "success"
    second = client.get_model_version(model_name, "2")
    print(f"boxes: worse version 2 box F1 {float(second.tags['candidate_score']):.3f}: "
          f"{second.tags['validation_status']}")
    assert second.tags["validation_status"] == "rejected" and float(second.tags["candidate_score"]) < score
    assert client.get_model_version_by_alias(model_name, CHAMPION).version == "1"

    # Every unlabeled task carries the champion's rectangles, and they find the rendered boxes.
    wanted = f"{model_name}:1"
    unlabeled = unlabeled_tasks(hook, spec)
    assert len(unlabeled) == len(tasks) - len(answered)
    known = {record["id"]: record["boxes"] for record in records}
    predicted, expected = [], []
    for task in unlabeled:
        prediction = prediction_of(task, wanted)
        assert 0 < prediction["score"] <= 1
        for result in prediction["result"]:
            assert result["type"] == "rectanglelabels" and result["from_name"] == "boxes"
            assert (result["original_width"], result["original_height"]) == (160, 120)
            assert 0.5 <= result["score"] <= 1
        predicted.append(boxes_of(prediction["result"], task.id))
        expected.append(task_type.known_answer(known[task.data["labelloop_id"]], task.data, "truth"))
    truth_frame = pd.DataFrame([{"item_id": task.id, **row} for task, rows in zip(unlabeled, expected) for row in rows])
    [found] = box_gold_scores(pd.concat(predicted).assign(annotator_id="model"),
                              truth_frame[["item_id", "x", "y", "w", "h", "label"]]).to_dict("records")
    print(f"boxes: pre-labels on {len(unlabeled)} unlabeled images: box F1 {found['f1']:.3f} against the truth")
    assert found["f1"] >= 0.9

    # The backend that started before any model serves the champion's boxes, without a restart.
    wait_until(lambda: served_version(server.url) == wanted, 60, f"the backend to serve {wanted}")
    task = max(unlabeled, key=lambda t: len(prediction_of(t, wanted)["result"]))
    answer = httpx.post(f"{server.url}/predict", auth=httpx.BasicAuth("labelloop", BACKEND_TOKEN), timeout=60,
                        json={"tasks": [{"id": task.id, "data": task.data}]}).json()["results"][0]
    assert answer["model_version"] == wanted
    served = boxes_of(answer["result"], task.id).round(3)
    stored = boxes_of(prediction_of(task, wanted)["result"], task.id).round(3)
    assert len(served) and served.equals(stored)
    print(f"boxes loop: {time.perf_counter() - started:.0f} s")
