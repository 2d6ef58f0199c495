"""JSON state in object storage: the one reader and writer of every stage's small state files.

Two promises. A read returns what was written, the caller's default when the file does not
exist, or raises ``StateError`` naming the object's URI and what to do: a broken file is never
taken for an empty one, and never surfaces as a bare decode error. A write leaves either the
old content or the new, never part of it.

No Airflow import at run time: ``StateError`` is a plain exception, and the DAG factory turns
it into a task failure without retries (retrying does not mend a file).
"""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from typing import TYPE_CHECKING, Any

from fsspec.implementations.local import LocalFileSystem

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

#: What to do about a broken state file when its owner has no better advice.
RESTORE = ("restore it from a backup or an earlier object version (or delete it if the stage that "
           "writes it can start over without it), then clear the failed task")


class StateError(Exception):
    """A state file exists but cannot be used as it is: a person, or the stage that owns it, must
    fix it, since retrying reads the same bytes again."""

    def __init__(self, path: ObjectStoragePath, problem: str, remedy: str = RESTORE) -> None:
        self.uri = uri_of(path)
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"state file {self.uri} {problem}: {remedy}")


def uri_of(path: ObjectStoragePath) -> str:
    """The object's full URI without the connection id (``s3://bucket/key``, ``file:///dir/file``)."""
    return f"{path.protocol}://{path.path}"


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(value if isinstance(value, type) else type(value), "number")


def decode_json(path: ObjectStoragePath, raw: bytes, remedy: str = RESTORE) -> Any:
    """The JSON value in ``raw`` (gunzipped for ``*.gz``), or a StateError saying what is wrong with it."""
    try:
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        if not raw.strip():
            raise StateError(path, "is empty", remedy)
        return json.loads(raw.decode("utf-8"))
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise StateError(path, f"is not a complete gzip file ({error})", remedy) from error
    except UnicodeDecodeError as error:
        raise StateError(path, f"is not UTF-8 text (byte {error.start}: {error.reason})", remedy) from error
    except json.JSONDecodeError as error:
        raise StateError(path, f"is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})",
                         remedy) from error


def read_json(path: ObjectStoragePath, default: Any, *, expect: type | None = None, remedy: str = RESTORE) -> Any:
    """The file's value, or ``default`` when there is no such file.

    ``expect`` (``dict`` or ``list``) is the JSON type the file must hold; ``remedy`` is what
    the error tells a person to do when the file is broken.
    """
    try:
        raw = path.read_bytes()  # one request; a missing object is FileNotFoundError on every store
    except FileNotFoundError:
        return default
    value = decode_json(path, raw, remedy)
    if expect is not None and not isinstance(value, expect):
        raise StateError(path, f"holds a JSON {_kind(value)} where a JSON {_kind(expect)} belongs", remedy)
    return value


def write_json(path: ObjectStoragePath, value: Any) -> None:
    """Serialize first (a value that is not JSON never touches the file), then write atomically."""
    gz = path.name.endswith(".gz")
    raw = json.dumps(value, sort_keys=True, indent=None if gz else 1).encode()
    write_atomically(path, gzip.compress(raw, mtime=0) if gz else raw)


def is_local(path: ObjectStoragePath) -> bool:
    return isinstance(path.fs, LocalFileSystem)


def write_atomically(path: ObjectStoragePath, data: bytes) -> None:
    """Write ``data`` so that readers see the old content or the new, never part of it.

    An object store (S3, GCS, Azure) makes an object visible only once its upload completes, so
    one plain write is atomic there and costs one request; a copy would double that for no gain.
    A local file is written in place, block by block: there the bytes go to a hidden temporary
    file beside it, which is then renamed over the target (a rename is atomic on POSIX).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(path):
        path.write_bytes(data)
        return
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        temporary.write_bytes(data)
        path.fs.mv(temporary.path, path.path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def json_files(folder: ObjectStoragePath) -> list[ObjectStoragePath]:
    """The JSON state files in ``folder`` by name (not the ``.tmp`` file a write killed before
    its rename may have left)."""
    if not folder.exists():
        return []
    return sorted((path for path in folder.iterdir() if path.name.endswith(".json")), key=lambda path: path.name)
