"""Image tasks from object storage, against a real Label Studio, moto's S3 server and the local store.

Images are rendered here with Pillow at the sizes of tests/data/pedestrian-boxes-dev (their
gold boxes drawn in, so each has its own bytes). Each image becomes one task whose data keeps
a URI Label Studio resolves itself (``s3://`` through the bucket the setup DAG connected, never
a presigned URL; a local file through Label Studio's local-files serving), and Label Studio
answers that URL with the image's bytes. Bad objects are quarantined with their reasons, the
same picture under another name is a duplicate, and the counts add up.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image, ImageDraw

from labelloop import settings
from labelloop.ingest.pipeline import Ingest
from labelloop.layout import storage_path
from labelloop.spec import load_spec
from labelloop.taskdata import HASH_FIELD, HEIGHT_FIELD, WIDTH_FIELD
from tests.conftest import TOKEN

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PEDESTRIANS = [json.loads(line) for line in (REPO / "tests" / "data" / "pedestrian-boxes-dev" / "images.jsonl")
               .read_text().splitlines()[:4]]


def render(row: dict[str, Any], fmt: str = "PNG") -> bytes:
    """A street-grey image of the row's size with its gold pedestrians as boxes."""
    image = Image.new("RGB", (row["width"], row["height"]), (128, 128, 120))
    draw = ImageDraw.Draw(image)
    for x, y, w, h in row["gold"]:
        draw.rectangle([x, y, x + w, y + h], fill=(220, 60, 60))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def image_spec(tmp_path: Path, source_uri: str, storage_uri: str, **source: Any) -> Path:
    """The shipped pedestrians spec with a unique name, title, source and storage."""
    raw = yaml.safe_load((REPO / "include" / "projects" / "pedestrians.yaml").read_text())
    name = f"t_{uuid.uuid4().hex[:10]}"
    raw.update(name=name, title=f"test {name}", storage_uri=storage_uri,
               labeling_config=str(REPO / "include" / raw["labeling_config"]),
               guidelines=str(REPO / "include" / raw["guidelines"]))
    raw["source"] = {**raw["source"], "uri": source_uri, **source}
    folder = tmp_path / "projects"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def shown_by_labelstudio(server_url: str, task_id: int) -> tuple[str, httpx.Response]:
    """The image URL Label Studio gives the labeling page for a task, and what fetching it answers
    (a logged-in client, following Label Studio's redirect to the presigned URL)."""
    auth = {"Authorization": f"Token {TOKEN}"}
    with httpx.Client(base_url=server_url, headers=auth, follow_redirects=True, timeout=30) as client:
        task = client.get(f"/api/tasks/{task_id}/")
        task.raise_for_status()
        url = task.json()["data"]["image"]
        return url, client.get(url)


def stored_data(server_url: str, task_id: int) -> dict[str, Any]:
    """A task's data as Label Studio keeps it (its API resolves storage URIs unless told not to)."""
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Token {TOKEN}"}, timeout=30) as client:
        answer = client.get(f"/api/tasks/{task_id}/", params={"resolve_uri": "false"})
        answer.raise_for_status()
        return answer.json()["data"]


def quarantined(spec: Any, run: str) -> list[dict[str, Any]]:
    folder = storage_path(spec.storage_uri, spec.source.conn_id) / "ingest" / "quarantine" / run
    return [json.loads(line) for path in folder.iterdir() for line in path.read_text().splitlines()]


def test_s3_images_become_tasks_label_studio_shows(run_dag, labelstudio, labelstudio_hook, s3_bucket,
                                                   tmp_path) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    s3 = S3Hook(aws_conn_id="aws_default")
    first, second, third, fourth = PEDESTRIANS
    good = {"raw/101260.png": render(first), "raw/street/101261.jpg": render(second, "JPEG"),
            "raw/101262.webp": render(third, "WEBP")}
    truncated = render(fourth, "JPEG")
    objects = {
        **good,
        "raw/copy-of-101260.png": good["raw/101260.png"],           # the same picture, another name
        "raw/101263.jpg": truncated[: len(truncated) // 2],          # cut off mid-way
        "raw/notes.png": b"camera 3 was down on Tuesday\n",          # a text file named .png
        "raw/huge.png": render({"width": 1400, "height": 900, "gold": []}),  # over max_image_pixels
        "raw/street/renamed-101261.PNG": render(second, "JPEG"),     # a JPEG named .PNG: fine, a duplicate
        "library/extra-1.png": render({**first, "gold": first["gold"][:1]}),
        "raw/manifest.jsonl": "\n".join(json.dumps(row) for row in [
            {"image": f"s3://{s3_bucket}/library/extra-1.png", "image_id": "x1", "camera": "north"},
            {"image": "s3://another-bucket/a.png", "image_id": "x2"},
            {"image": "library/missing.png", "image_id": "x3"},
        ]).encode() + b"\n",
    }
    for key, body in objects.items():
        s3.load_bytes(body, key=key, bucket_name=s3_bucket)
    path = image_spec(tmp_path, f"s3://{s3_bucket}/raw/", f"s3://{s3_bucket}/labelloop",
                      max_image_pixels=1_000_000)
    spec = load_spec(path)

    setup = run_dag(path, "setup")
    assert setup.state == "success"
    project = labelstudio_hook.find_project(spec.title)
    storages = labelstudio_hook.client.import_storage.s3.list(project=project.id)
    assert [(s.bucket, s.prefix, s.presign, s.synchronizable) for s in storages] == [(s3_bucket, "raw/", True, False)]
    assert run_dag(path, "setup").state == "success"  # idempotent: still one storage
    assert len(labelstudio_hook.client.import_storage.s3.list(project=project.id)) == 1

    summary = Ingest(spec, labelstudio_hook, "manual__images").run(project.id)

    # 8 image objects + 3 manifest lines: 4 imported, 2 duplicates, 5 quarantined
    assert {k: summary[k] for k in ("read", "imported", "duplicate", "quarantined")} == \
           {"read": 11, "imported": 4, "duplicate": 2, "quarantined": 5}
    assert summary["balanced"]
    reasons = {f"{Path(row['source']).name}#{row['line']}": row["reason"] for row in quarantined(spec, "manual__images")}
    assert sorted(reasons) == ["101263.jpg#1", "huge.png#1", "manifest.jsonl#2", "manifest.jsonl#3", "notes.png#1"]
    assert "unreadable or truncated jpeg image" in reasons["101263.jpg#1"]
    assert "not an image Pillow can read" in reasons["notes.png#1"]
    assert "1400 x 900 = 1,260,000 pixels; the limit is 1,000,000 (source.max_image_pixels)" in reasons["huge.png#1"]
    assert "not in bucket " + s3_bucket in reasons["manifest.jsonl#2"]
    assert f"s3://{s3_bucket}/raw/library/missing.png does not exist" in reasons["manifest.jsonl#3"]

    stored = {task.id: stored_data(labelstudio.url, task.id) for task in labelstudio_hook.iter_tasks(project.id)}
    tasks = {data["image"]: labelstudio_hook.client.tasks.get(task_id) for task_id, data in stored.items()}
    assert sorted(tasks) == sorted([f"s3://{s3_bucket}/{key}" for key in good] +
                                   [f"s3://{s3_bucket}/library/extra-1.png"])
    assert all((t.data[WIDTH_FIELD], t.data[HEIGHT_FIELD]) == (1280, 720) for t in tasks.values())
    assert len({t.data[HASH_FIELD] for t in tasks.values()}) == 4
    assert not any("X-Amz" in json.dumps(data) for data in stored.values()), "a presigned URL was frozen in"
    manifest_task = tasks[f"s3://{s3_bucket}/library/extra-1.png"]
    assert (manifest_task.data["camera"], manifest_task.data["labelloop_id"]) == ("north", "x1")
    assert labelstudio_hook.task_count(project.id) == 4  # the storage was never synced

    # Label Studio itself resolves the s3:// URI: its URL answers 200 with the image's bytes.
    task = tasks[f"s3://{s3_bucket}/raw/street/101261.jpg"]
    url, answer = shown_by_labelstudio(labelstudio.url, task.id)
    assert f"/tasks/{task.id}/resolve/?fileuri=" in url
    assert answer.status_code == 200
    assert answer.content == good["raw/street/101261.jpg"]

    again = Ingest(spec, labelstudio_hook, "manual__images_2").run(project.id)
    assert (again["read"], again["imported"]) == (0, 0)


def test_local_images_are_served_by_label_studio(labelstudio, labelstudio_hook, tmp_path) -> None:
    from labelloop.ingest.images import connect_image_storage
    from labelloop.project import ensure_project

    root = settings.local_files_root()  # Label Studio's document root in the test session
    name = uuid.uuid4().hex[:10]
    raw = root / "raw" / f"pedestrians-{name}"
    (raw / "day 1").mkdir(parents=True)
    first, second = PEDESTRIANS[:2]
    (raw / "day 1" / "101260.png").write_bytes(render(first))
    (raw / "101261.gif").write_bytes(render(second, "GIF"))
    (raw / "renamed-101261.gif").write_bytes((raw / "101261.gif").read_bytes())
    (raw / "broken.bmp").write_bytes(render(first, "BMP")[:5000])
    spec = load_spec(image_spec(tmp_path, f"file://{raw}/", f"file://{root / 'labelloop' / name}"))
    project_id, _ = ensure_project(labelstudio_hook, spec)
    storage_id = connect_image_storage(labelstudio_hook, spec, project_id)
    assert connect_image_storage(labelstudio_hook, spec, project_id) == storage_id  # connected once

    summary = Ingest(spec, labelstudio_hook, "manual__local").run(project_id)

    assert {k: summary[k] for k in ("read", "imported", "duplicate", "quarantined")} == \
           {"read": 4, "imported": 2, "duplicate": 1, "quarantined": 1}
    assert "unreadable or truncated bmp image" in quarantined(spec, "manual__local")[0]["reason"]
    tasks = {stored_data(labelstudio.url, task.id)["image"]: task for task in labelstudio_hook.iter_tasks(project_id)}
    relative = raw.relative_to(root)
    assert sorted(tasks) == [f"/data/local-files/?d={relative}/101261.gif",
                             f"/data/local-files/?d={relative}/day%201/101260.png"]
    assert Counter(task.data["labelloop_id"] for task in tasks.values()) == {"day 1/101260.png": 1, "101261.gif": 1}

    for shown, expected in ((f"{relative}/day%201/101260.png", raw / "day 1" / "101260.png"),
                            (f"{relative}/101261.gif", raw / "101261.gif")):
        task = tasks[f"/data/local-files/?d={shown}"]
        url, answer = shown_by_labelstudio(labelstudio.url, task.id)
        assert url.endswith(f"/data/local-files/?d={shown}")
        assert answer.status_code == 200
        assert answer.content == expected.read_bytes()
        assert (task.data[WIDTH_FIELD], task.data[HEIGHT_FIELD]) == (1280, 720)
