"""Images as Label Studio tasks: each checked with Pillow, hashed by its bytes, and addressed the
way Label Studio serves it (``s3://`` through the connected bucket, local files under its document root).

An image reaches ingest as an image object under ``source.uri`` (one object, one record) or as a
URI in a JSONL/CSV manifest. Either way the task's content hash is the SHA-256 of the image's
bytes, so the same picture under two names is one task. Task data keeps a URI Label Studio
resolves when the task is opened, never a short-lived presigned URL.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from labelloop import settings
from labelloop.ingest.readers import RawRecord
from labelloop.spec import ProjectSpec
from labelloop.taskdata import HEIGHT_FIELD, WIDTH_FIELD

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from labelloop.hooks.labelstudio import LabelStudioHook

#: Pillow's format names -> the names of ``source.image_formats`` (MPO is a multi-picture JPEG).
PILLOW_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
                  "TIFF": "tiff"}
CHUNK_BYTES = 1 << 20
#: Image bytes kept in memory while Pillow checks them; larger files spill to a temporary file.
SPOOL_BYTES = 16 << 20
LOCAL_FILES_URL = "/data/local-files/?d="
SUPPORTED = "s3:// in the source bucket, file:// under source.uri, or a path relative to source.uri"


class InvalidImage(ValueError):
    """The image cannot become a task; the message says why and what is accepted."""


@dataclass(frozen=True, slots=True)
class ImageFacts:
    sha256: str
    width: int
    height: int
    format: str  # one of spec.IMAGE_FORMATS
    size: int  # bytes


def inspect_image(stream: IO[bytes], allowed: Collection[str], max_pixels: int, max_bytes: int) -> ImageFacts:
    """Hash the image as it streams (in chunks, into a spooled copy), then let Pillow check that
    copy: its format by content, its size in pixels, and that it decodes whole."""
    digest, size = hashlib.sha256(), 0
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as copy:
        while block := stream.read(CHUNK_BYTES):
            size += len(block)
            if size > max_bytes:
                raise InvalidImage(f"image is larger than {max_bytes:,} bytes (source.max_image_bytes)")
            digest.update(block)
            copy.write(block)
        if size == 0:
            raise InvalidImage("empty object (0 bytes): not an image")
        copy.seek(0)
        width, height, fmt = _decode(copy, allowed, max_pixels)
    return ImageFacts(digest.hexdigest(), width, height, fmt, size)


def _decode(file: IO[bytes], allowed: Collection[str], max_pixels: int) -> tuple[int, int, str]:
    from PIL import Image, UnidentifiedImageError

    fmt = ""  # known once Pillow has read the header
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            with Image.open(file) as image:
                fmt = PILLOW_FORMATS.get(image.format or "", (image.format or "unknown").lower())
                if fmt not in allowed:
                    raise InvalidImage(f"image format is {fmt} (read from its content, whatever its name says); "
                                       f"source.image_formats allows {', '.join(allowed)}")
                width, height = image.size
                if width * height > max_pixels:
                    raise InvalidImage(f"image is {width} x {height} = {width * height:,} pixels; the limit is "
                                       f"{max_pixels:,} (source.max_image_pixels)")
                image.verify()  # structure and checksums; the image cannot be used after it
            file.seek(0)
            with Image.open(file) as image:
                image.load()  # decodes every pixel: a truncated file fails here
    except InvalidImage:
        raise
    except Image.DecompressionBombError as error:
        raise InvalidImage(f"image is too large to open: {error} (source.max_image_pixels)") from None
    except UnidentifiedImageError:
        raise InvalidImage(f"not an image Pillow can read; supported formats: {', '.join(allowed)}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
        raise InvalidImage(f"unreadable or truncated {fmt} image: {error}".replace("  ", " ")) from None
    return width, height, fmt


class ImageChecker:
    """Turns the image field of one spec's records into a checked image: its URI as Label Studio
    shows it, its size, and the hash of its bytes."""

    def __init__(self, spec: ProjectSpec) -> None:
        if spec.image_field is None:
            raise ValueError(f"{spec.name}: the labeling config shows no <Image>")
        self.spec = spec
        self.field = spec.image_field
        self.source = spec.source.uri  # ends in "/"
        self.scheme = self.source.split("://", 1)[0]

    def check(self, data: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """(task data with the displayable URI and the size, content hash) for validated task data."""
        uri = self.absolute(str(data[self.field]))
        shown_as = self.display_uri(uri)  # before reading it: an image Label Studio cannot show fails fast
        source = self.spec.source
        try:
            with self.path_of(uri).open("rb") as stream:
                facts = inspect_image(stream, source.image_formats, source.max_image_pixels,
                                      source.max_image_bytes)
        except FileNotFoundError:
            raise InvalidImage(f"{uri} does not exist") from None
        except PermissionError as error:  # other read failures (the store is down) fail the task: retried
            raise InvalidImage(f"{uri} cannot be read with source.conn_id's credentials: {error}") from None
        shown = {**data, self.field: shown_as, WIDTH_FIELD: facts.width, HEIGHT_FIELD: facts.height}
        return shown, facts.sha256

    def absolute(self, reference: str) -> str:
        """The image's full URI; it must lie where the storage connected to Label Studio reaches."""
        if "://" not in reference:
            parts = PurePosixPath(reference).parts
            if not parts or ".." in parts or reference.startswith("/"):
                raise InvalidImage(f"a relative path may not leave source.uri; give {SUPPORTED}")
            return self.source + reference
        scheme = reference.split("://", 1)[0]
        if scheme != self.scheme:
            raise InvalidImage(f"its scheme is {scheme}, but Label Studio is connected to {self.source} only; "
                               f"give {SUPPORTED}")
        if scheme == "s3":
            if _bucket(reference) != _bucket(self.source):
                raise InvalidImage(f"not in bucket {_bucket(self.source)}, the one connected to Label Studio; "
                                   f"give {SUPPORTED}")
            return reference
        path = posixpath.normpath(reference.removeprefix("file://"))
        if not (path + "/").startswith(self.source.removeprefix("file://")):
            raise InvalidImage(f"outside {self.source}, the folder Label Studio serves for this project; "
                               f"give {SUPPORTED}")
        return f"file://{path}"

    def display_uri(self, uri: str) -> str:
        """What the task data keeps: the ``s3://`` URI itself (Label Studio presigns it when the task
        is opened), or a local file as Label Studio's local-files URL."""
        if uri.startswith("s3://"):
            return uri
        return LOCAL_FILES_URL + quote(local_files_path(uri.removeprefix("file://")), safe="/")

    def path_of(self, uri: str) -> ObjectStoragePath:
        from labelloop.layout import storage_path

        return storage_path(uri, self.spec.source.conn_id)


def _bucket(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0]


def local_files_path(path: str) -> str:
    """``path`` relative to Label Studio's local-files document root (``settings.local_files_root``)."""
    root = str(settings.local_files_root()).rstrip("/") + "/"
    if not path.startswith(root):
        raise InvalidImage(f"{path} is outside {root}, the folder Label Studio serves local files from "
                           f"({settings.LOCAL_FILES_ROOT_ENV}); put source.uri under it")
    return path[len(root):]


def image_object_record(name: str, spec: ProjectSpec) -> RawRecord:
    """An image object as its one record: the image field (and the id field, the object's path
    under source.uri); the validator reads the bytes."""
    assert spec.image_field is not None  # the spec requires an <Image> for the image format
    rule = spec.source.fields[spec.image_field]
    fields = {rule.source or spec.image_field: name}
    if spec.source.id_field:
        fields[spec.source.id_field] = name.removeprefix(spec.source.uri)
    return RawRecord(1, fields, name)


def connect_image_storage(hook: LabelStudioHook, spec: ProjectSpec, project_id: int) -> int | None:
    """Connect the spec's source to its Label Studio project so the image URIs in task data resolve:
    an S3 bucket with presigned URLs, or a local folder under the document root. Never synced.
    None for a spec without images."""
    if spec.image_field is None:
        return None
    source = spec.source.uri
    title = f"labelloop: {spec.name} images"
    if source.startswith("s3://"):
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(spec.source.conn_id or settings.AWS_CONN_ID)
        bucket, _, prefix = source.removeprefix("s3://").partition("/")
        return hook.ensure_s3_import_storage(
            project_id, bucket, prefix, title=title, access_key=conn.login, secret_key=conn.password,
            region=conn.extra_dejson.get("region_name"), endpoint=conn.extra_dejson.get("endpoint_url"))
    folder = source.removeprefix("file://").rstrip("/")
    local_files_path(folder + "/")  # refuses a folder Label Studio does not serve
    if str(settings.local_files_root()).rstrip("/") == folder:
        raise InvalidImage(f"source.uri {source} is Label Studio's local-files document root itself, which it "
                           f"refuses to serve; use a folder under it")
    os.makedirs(folder, exist_ok=True)  # Label Studio refuses a folder that does not exist
    return hook.ensure_local_import_storage(project_id, folder, title=title)
