"""Image checks of ingest: Pillow decides format, size and integrity from the bytes (never the
name), the hash is the SHA-256 of the bytes read in chunks, and the spec's image fields and
where images may live are validated with messages that say what is accepted."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import yaml
from PIL import Image

from labelloop.ingest.images import CHUNK_BYTES, ImageChecker, InvalidImage, image_object_record, inspect_image
from labelloop.ingest.readers import format_of
from labelloop.spec import IMAGE_FORMATS, SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]
ALL = IMAGE_FORMATS
PILLOW_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}


def render(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    image = Image.new("RGB", size, (200, 120, 40))
    image.paste((10, 10, 10), (5, 5, 20, 30))  # some structure, so compression has work
    out = io.BytesIO()
    image.save(out, format=PILLOW_NAMES[fmt])
    return out.getvalue()


def inspect(data: bytes, allowed=ALL, max_pixels: int = 10_000_000, max_bytes: int = 10_000_000):
    return inspect_image(io.BytesIO(data), allowed, max_pixels, max_bytes)


@pytest.mark.parametrize("fmt", ALL)
def test_each_supported_format_gives_its_size_format_and_sha256(fmt: str) -> None:
    data = render(fmt, (64, 48))
    facts = inspect(data)
    assert (facts.width, facts.height, facts.format, facts.size) == (64, 48, fmt, len(data))
    assert facts.sha256 == hashlib.sha256(data).hexdigest()


def test_the_format_is_read_from_the_content_not_the_name() -> None:
    png = render("png")
    assert inspect(png, allowed=["png"]).format == "png"  # whatever it would be called
    with pytest.raises(InvalidImage, match=r"image format is png \(read from its content.*allows jpeg"):
        inspect(png, allowed=["jpeg"])


def test_a_text_file_is_not_an_image() -> None:
    with pytest.raises(InvalidImage, match="not an image Pillow can read; supported formats: png, jpeg"):
        inspect(b"just some notes, named .png by mistake\n")


def test_an_empty_object_is_not_an_image() -> None:
    with pytest.raises(InvalidImage, match=r"empty object \(0 bytes\)"):
        inspect(b"")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "gif"])
def test_a_truncated_image_is_refused(fmt: str) -> None:
    data = render(fmt, (300, 200))
    with pytest.raises(InvalidImage, match=f"unreadable or truncated ({fmt} )?image: ."):  # webp: at open
        inspect(data[: len(data) * 2 // 3])


def test_too_many_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidImage, match=r"image is 400 x 300 = 120,000 pixels; the limit is 100,000 "
                                           r"\(source.max_image_pixels\)"):
        inspect(render("png", (400, 300)), max_pixels=100_000)
    assert inspect(render("png", (400, 250)), max_pixels=100_000).width == 400  # at the limit: fine


def test_too_many_bytes_is_refused_while_streaming() -> None:
    data = render("bmp", (400, 300))  # ~360 kB uncompressed
    with pytest.raises(InvalidImage, match=r"larger than 100,000 bytes \(source.max_image_bytes\)"):
        inspect(data, max_bytes=100_000)


def test_a_decompression_bomb_is_refused_without_decoding_it() -> None:
    # A PNG header that claims 30000 x 30000 pixels (900 MP, over Pillow's bomb limit).
    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, format="PNG")
    with pytest.raises(InvalidImage, match="too large to open.*source.max_image_pixels"):
        inspect(bomb.getvalue(), max_pixels=10**8, max_bytes=10**8)


class _CountingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.asked.append(-1 if size is None else size)
        return super().read(size)


def test_the_hash_reads_the_stream_in_chunks() -> None:
    data = render("bmp", (1200, 700))  # ~2.5 MB: several chunks
    stream = _CountingStream(data)
    facts = inspect_image(stream, ALL, 10**7, 10**8)
    assert facts.sha256 == hashlib.sha256(data).hexdigest()
    assert len(stream.asked) >= 3 and set(stream.asked) == {CHUNK_BYTES}


def test_image_suffixes_are_the_image_format() -> None:
    assert [format_of(name) for name in ("a.PNG", "b.jpg", "c.jpeg", "d.webp", "e.gif", "f.bmp", "g.tif",
                                         "h.tiff", "i.jsonl")] == ["image"] * 8 + ["jsonl"]


# The spec ---------------------------------------------------------------------------------------

def write_spec(tmp_path: Path, **source: object) -> Path:
    raw = yaml.safe_load((REPO / "include" / "projects" / "pedestrians.yaml").read_text())
    raw["labeling_config"] = str(REPO / "include" / raw["labeling_config"])
    raw["guidelines"] = str(REPO / "include" / raw["guidelines"])
    raw["storage_uri"] = f"file://{tmp_path / 'store'}"
    raw["source"] = {**raw["source"], "uri": f"file://{tmp_path / 'raw'}/", **source}
    path = tmp_path / "pedestrians.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_shipped_spec_reads_images_into_the_image_field(tmp_path: Path) -> None:
    spec = load_spec(REPO / "include" / "projects" / "pedestrians.yaml")
    assert (spec.image_field, spec.task_type.kind, spec.labels) == ("image", "rectangles", ["pedestrian"])
    assert "image" in spec.source.formats
    assert load_spec(write_spec(tmp_path)).source.image_formats == list(ALL)


@pytest.mark.parametrize(("source", "message"), [
    ({"max_image_pixels": 0}, "field source.max_image_pixels: Input should be greater than 0"),
    ({"max_image_pixels": 500_000_000}, "field source.max_image_pixels: Input should be less than or equal to "
                                        "178956970"),
    ({"max_image_bytes": -1}, "field source.max_image_bytes: Input should be greater than 0"),
    ({"image_formats": ["svg"]}, "field source.image_formats.0: Input should be 'png', 'jpeg', 'webp', 'gif', "
                                 "'bmp' or 'tiff' (got 'svg')"),
    ({"image_formats": []}, "field source.image_formats: List should have at least 1 item"),
    ({"image_formats": ["png", "png"]}, "source.image_formats repeats a value"),
    ({"fields": {"image": {"type": "string"}, "camera": {"type": "string"}}},
     "source.fields ['camera'] are required; set required: false"),
    ({"fields": {"image": {"type": "integer"}}}, "source.fields.image holds the image's URI: its type must be string"),
    ({"uri": "gs://bucket/raw/"}, "image tasks are served by Label Studio from s3:// (a connected bucket) or "
                                  "file:// (its local files), not gs://"),
])
def test_bad_image_settings_are_refused_with_the_field(tmp_path: Path, source: dict, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(tmp_path, **source))
    assert message in str(caught.value)


def test_image_objects_need_an_image_tag(tmp_path: Path, make_spec) -> None:
    with pytest.raises(SpecError, match=r"source.formats has image, but labeling_config .* has no <Image"):
        load_spec(make_spec(source={"uri": f"file://{tmp_path}/raw/", "formats": ["image"],
                                    "fields": {"text": {"type": "string"}}}))


# Where images may live, and how Label Studio is given them -----------------------------------------

def test_s3_images_keep_their_uri_and_must_be_in_the_connected_bucket(tmp_path: Path) -> None:
    checker = ImageChecker(load_spec(write_spec(tmp_path, uri="s3://photos/raw/")))
    assert checker.absolute("s3://photos/other/a.png") == "s3://photos/other/a.png"
    assert checker.absolute("street/a.png") == "s3://photos/raw/street/a.png"
    assert checker.display_uri("s3://photos/raw/a.png") == "s3://photos/raw/a.png"  # never a presigned URL
    with pytest.raises(InvalidImage, match="not in bucket photos, the one connected to Label Studio"):
        checker.absolute("s3://elsewhere/a.png")
    with pytest.raises(InvalidImage, match="its scheme is file, but Label Studio is connected to s3://photos"):
        checker.absolute("file:///tmp/a.png")
    with pytest.raises(InvalidImage, match="a relative path may not leave source.uri"):
        checker.absolute("../secrets/a.png")


def test_local_images_are_served_by_label_studio_relative_to_its_document_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELLOOP_LOCAL_FILES_ROOT", str(tmp_path))
    checker = ImageChecker(load_spec(write_spec(tmp_path)))
    uri = checker.absolute(f"file://{tmp_path}/raw/day 1/a#1.png")
    assert checker.display_uri(uri) == "/data/local-files/?d=raw/day%201/a%231.png"
    with pytest.raises(InvalidImage, match="outside file://.*/raw/, the folder Label Studio serves"):
        checker.absolute(f"file://{tmp_path}/raw/../private/a.png")
    monkeypatch.setenv("LABELLOOP_LOCAL_FILES_ROOT", "/somewhere/else")
    with pytest.raises(InvalidImage, match="outside /somewhere/else/, the folder Label Studio serves local files"):
        checker.display_uri(uri)


def test_an_image_object_is_one_record_with_its_path_as_id(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path))
    record = image_object_record(f"{spec.source.uri}street/a.png", spec)
    assert record.fields == {"image": f"{spec.source.uri}street/a.png", "image_id": "street/a.png"}
    assert (record.line, record.error) == (1, None)
