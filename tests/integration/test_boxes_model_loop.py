"""Boxes on images through the whole loop, run by the factory's Airflow DAGs on real servers: the
shipped spec ``include/projects/pedestrians.yaml`` pointed at a moto S3 bucket -> setup DAG (the
project and its S3 import storage) -> ingest DAG (image objects and a manifest listing images) ->
several Label Studio users draw boxes (simulated) -> collect DAG -> audit DAG (gold box F1,
consensus with a confidence per box, review routing with each annotator's boxes) -> retrain DAG
with the tests' own trainer (registered, promoted only if better) and its refresh: rectangle
pre-labels on the unlabeled tasks; the pre-label backend, started before any model, serves the champion.

The images are rendered here with known truth (bright rectangles on a dark background,
``tests/support/box_detector.py``), all labelled ``pedestrian``. The ones people will label sit
under ``library/`` (outside ``source.uri``) and are listed by ``raw/manifest.jsonl`` with their
known boxes (``source.label_field``, a share of them gold); the rest land as bare image objects
under ``raw/``, one of them twice under two names, and stay unlabeled for the pre-labels.
Ingest from the local default store is covered by ``test_image_ingest.py``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from labelloop.audit.routing import review_title
from labelloop.dev import simulate
from labelloop.layout import Layout
from labelloop.model.prelabel import CHAMPION
from labelloop.quality.boxes import box_gold_scores, from_label_studio
from labelloop.spec import load_spec

from tests.integration.test_backend import served_version, wait_until
from tests.integration.test_image_ingest import image_spec, shown_by_labelstudio, stored_data
from tests.integration.test_loop import BACKEND_TOKEN, backend  # noqa: F401 (a fixture)
from tests.integration.test_spans_model_loop import prediction_of, run_stages, unlabeled_tasks
from tests.support import box_detector

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
#: Three careful annotators and a sloppy one; three of them per image.
SKILLS: list[Any] = [0.97, 0.93, 0.9, {"miss": 0.3, "false_box": 0.4, "jitter": 0.08}]
LISTED, UNLISTED = 60, 20  # images in the manifest (labeled by the crowd), bare image objects (left unlabeled)


def pedestrians_spec(tmp_path: Path, bucket: str, model_name: str) -> Path:
    """The shipped spec with only what must differ: the test's bucket (source and storage), the
    manifest's known boxes as labels with a quarter of them gold (the audit and the retrain score
    on gold), and a ``model:`` naming the tests' trainer."""
    path = image_spec(tmp_path, f"s3://{bucket}/raw/", f"s3://{bucket}/labelloop", label_field="boxes")
    raw = yaml.safe_load(path.read_text())
    raw["annotation"]["gold_fraction"] = 0.25
    raw["model"] = {"name": model_name, "trainer": "tests.support.box_detector:train", "min_score": 0.8}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def land_images(bucket: str, records: list[dict[str, Any]]) -> dict[str, str]:
    """Upload the rendered images as the module docstring says; returns each image's s3:// URI by record id."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    s3 = S3Hook(aws_conn_id="aws_default")
    uris, manifest = {}, []
    for index, record in enumerate(records):
        name = Path(record["image"]).name
        key = f"library/{name}" if index < LISTED else f"raw/{name}"
        s3.load_file(record["image"], key=key, bucket_name=bucket)
        uris[record["id"]] = f"s3://{bucket}/{key}"
        if index < LISTED:
            manifest.append({"image": uris[record["id"]], "image_id": record["id"], "camera": "north",
                             "boxes": record["boxes"]})
    # The same picture again, under a name listed after its first: ingest keeps the first.
    s3.load_file(records[-1]["image"], key=f"raw/same-as-{Path(records[-1]['image']).name}", bucket_name=bucket)
    s3.load_string("".join(json.dumps(row) + "\n" for row in manifest), key="raw/manifest.jsonl", bucket_name=bucket)
    return uris


def boxes_of(results: list[dict[str, Any]], item: Any) -> pd.DataFrame:
    frame = from_label_studio([{"item_id": item, "annotator_id": "x", "result": results}])
    return frame.drop(columns="annotator_id")


def test_boxes_loop_through_the_dags(run_dag, labelstudio, labelstudio_hook, s3_bucket, mlflow_server, tmp_path,
                                     backend, monkeypatch) -> None:  # noqa: F811
    started = time.perf_counter()
    hook = labelstudio_hook
    # The backend process unpickles the tests' detector: it must be able to import tests.support.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    records = box_detector.render_set(tmp_path / "images", LISTED + UNLISTED, seed=11)
    for record in records:
        record["boxes"] = [[*box[:4], "pedestrian"] for box in record["boxes"]]
    uris = land_images(s3_bucket, records)
    model_name = f"boxes_{uuid.uuid4().hex[:8]}"
    path = pedestrians_spec(tmp_path, s3_bucket, model_name)
    spec = load_spec(path)
    task_type = spec.task_type
    server = backend(path)  # serving from the start: no model yet, then the champion
    assert served_version(server.url) is None

    run_stages(run_dag, path, "setup")
    project = hook.find_project(spec.title)
    storages = hook.client.import_storage.s3.list(project=project.id)
    assert [(s.bucket, s.prefix, s.presign, s.synchronizable) for s in storages] == [(s3_bucket, "raw/", True, False)]

    run_stages(run_dag, path, "ingest")
    tasks = list(hook.iter_tasks(project.id, fields="all"))
    assert len(tasks) == len(records)  # one task per unique image: the copy is a duplicate
    stored = {task.id: stored_data(labelstudio.url, task.id) for task in tasks}
    assert sorted(data["image"] for data in stored.values()) == sorted(uris.values())
    assert {(data["labelloop_width"], data["labelloop_height"]) for data in stored.values()} == {(160, 120)}
    bare = next(task for task in tasks if not (task.meta or {}).get("label"))
    url, answer = shown_by_labelstudio(labelstudio.url, bare.id)  # Label Studio resolves the s3:// URI itself
    assert f"/tasks/{bare.id}/resolve/?fileuri=" in url and answer.status_code == 200
    assert answer.content == (tmp_path / "images" / Path(stored[bare.id]["image"]).name).read_bytes()
    listed = [task for task in tasks if (task.meta or {}).get("label")]
    gold = [task for task in listed if task.meta["gold"]]
    assert len(listed) == LISTED and len(gold) >= 10 and len(listed) - len(gold) >= 35

    # Four real Label Studio users draw boxes, three per listed image: three careful ones and a sloppy one.
    prefix = f"box-{spec.name[-6:]}"
    assert simulate.label_queue(hook, spec, project.id, LISTED, SKILLS, per_task=3, seed=5,
                                prefix=prefix) == 3 * LISTED
    users = simulate.ensure_annotators(hook, len(SKILLS), prefix)
    print(f"boxes: {3 * LISTED} simulated answers, {time.perf_counter() - started:.0f} s")

    run_stages(run_dag, path, "collect", "audit")
    layout = Layout.of(spec)
    latest = json.loads((layout.audit / "latest.json").read_text())
    gate = json.loads((layout.audit_run(latest["audit"]) / "gate.json").read_text())
    assert gate["passed"], gate["summary"]
    metrics = json.loads((layout.audit_run(latest["audit"]) / "metrics.json").read_text())
    f1 = {row["annotator_id"].split("@")[0]: row["f1"] for row in metrics["annotators"]}
    print(f"boxes: annotators' gold box F1 {f1}; pairwise F1 {metrics['agreement']['f1']:.3f}; "
          f"consensus F1 on gold {metrics['gold']['f1']:.3f}")
    sloppy = users[-1].username
    assert f1[sloppy] == min(f1.values()) and max(f1.values()) >= 0.9
    assert metrics["gold"]["f1"] >= 0.9  # the consensus beats the sloppy annotator on gold
    with (layout.audit_run(latest["audit"]) / "consensus.parquet").open("rb") as file:
        consensus = pd.read_parquet(file)
    scores = [r["score"] for text in consensus["result"] for r in json.loads(text)]
    assert scores and all(0 <= score <= 1 for score in scores)  # each box carries its confidence

    # Doubtful images went to the review project, each annotator's boxes shown as a prediction,
    # and Label Studio shows reviewers the image there too.
    review = hook.find_project(review_title(spec))
    routed = list(hook.iter_tasks(review.id, fields="all"))
    assert routed and metrics["review"]["n_disagreements"] >= 1
    image = stored_data(labelstudio.url, routed[0].id)["image"]
    assert image in uris.values()
    shown = hook.client.tasks.get(routed[0].id).data["image"]  # resolved only through a connected storage
    assert "/resolve/?fileuri=" in shown, f"the review project shows {shown}: no storage connected to resolve it"
    url, answer = shown_by_labelstudio(labelstudio.url, routed[0].id)
    assert answer.status_code == 200, (url, answer.status_code)
    assert answer.content == (tmp_path / "images" / Path(image).name).read_bytes()
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

    # The refresh put the champion's rectangles on every unlabeled task, and they find the rendered boxes;
    # the task data still names the image by its s3:// URI.
    wanted = f"{model_name}:1"
    unlabeled = unlabeled_tasks(hook, spec)
    assert sorted(task.id for task in unlabeled) == sorted(task.id for task in tasks if task not in listed)
    assert all(stored_data(labelstudio.url, task.id)["image"] == stored[task.id]["image"] for task in unlabeled)
    known = {uris[record["id"]]: record["boxes"] for record in records}
    predicted, expected = [], []
    for task in unlabeled:
        prediction = prediction_of(task, wanted)
        assert 0 < prediction["score"] <= 1
        for result in prediction["result"]:
            assert result["type"] == "rectanglelabels" and result["from_name"] == "boxes"
            assert (result["original_width"], result["original_height"]) == (160, 120)
            assert result["value"]["rectanglelabels"] == ["pedestrian"] and 0.5 <= result["score"] <= 1
        predicted.append(boxes_of(prediction["result"], task.id))
        expected.append(task_type.known_answer(known[stored[task.id]["image"]], stored[task.id], "truth"))
    truth_frame = pd.DataFrame([{"item_id": task.id, **row} for task, rows in zip(unlabeled, expected) for row in rows])
    [found] = box_gold_scores(pd.concat(predicted).assign(annotator_id="model"),
                              truth_frame[["item_id", "x", "y", "w", "h", "label"]]).to_dict("records")
    print(f"boxes: pre-labels on {len(unlabeled)} unlabeled images: box F1 {found['f1']:.3f} against the truth")
    assert found["n_gold_boxes"] >= 15 and found["f1"] >= 0.9

    # The backend that started before any model serves the champion's boxes, without a restart.
    wait_until(lambda: served_version(server.url) == wanted, 60, f"the backend to serve {wanted}")
    task = max(unlabeled, key=lambda t: len(prediction_of(t, wanted)["result"]))
    answer = httpx.post(f"{server.url}/predict", auth=httpx.BasicAuth("labelloop", BACKEND_TOKEN), timeout=60,
                        json={"tasks": [{"id": task.id, "data": stored[task.id]}]}).json()["results"][0]
    assert answer["model_version"] == wanted
    served = boxes_of(answer["result"], task.id).round(3)
    kept = boxes_of(prediction_of(task, wanted)["result"], task.id).round(3)
    assert len(served) and served.equals(kept)
    print(f"boxes loop: {time.perf_counter() - started:.0f} s")
