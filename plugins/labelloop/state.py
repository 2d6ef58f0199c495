"""JSON state in object storage: the one reader and writer of every stage's small state files.

Two promises. A read returns what was written, the caller's default when the file does not
exist, or raises ``StateError`` naming the object's URI and what to do: a broken file is never
taken for an empty one, and never surfaces as a bare decode error. A write leaves either the
old content or the new, never part of it.

No Airflow import at run time: ``StateError`` is a plain exception, and the DAG factory turns
it into a task failure without retries (retrying does not mend a file).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import logging
import os
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fsspec.implementations.local import LocalFileSystem

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

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
    return parse_json(path, raw, default, expect=expect, remedy=remedy)


def parse_json(path: ObjectStoragePath, raw: bytes | None, default: Any, *, expect: type | None = None,
               remedy: str = RESTORE) -> Any:
    """What ``read_json`` returns for bytes already read (None: the file does not exist)."""
    if raw is None:
        return default
    value = decode_json(path, raw, remedy)
    if expect is not None and not isinstance(value, expect):
        raise StateError(path, f"holds a JSON {_kind(value)} where a JSON {_kind(expect)} belongs", remedy)
    return value


def encode_json(path: ObjectStoragePath, value: Any) -> bytes:
    """The bytes ``write_json`` writes (gzipped for ``*.gz``)."""
    gz = path.name.endswith(".gz")
    raw = json.dumps(value, sort_keys=True, indent=None if gz else 1).encode()
    return gzip.compress(raw, mtime=0) if gz else raw


def write_json(path: ObjectStoragePath, value: Any) -> None:
    """Serialize first (a value that is not JSON never touches the file), then write atomically."""
    write_atomically(path, encode_json(path, value))


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


# Compare-and-swap: a file two writers may move at once (collect's latest.json) ----------------------

def _is_s3(path: ObjectStoragePath) -> bool:
    return hasattr(path.fs, "_call_s3")  # s3fs: S3, MinIO and the other S3 APIs


async def _get_object(fs: Any, bucket: str, key: str) -> tuple[bytes, str]:
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    try:
        return await response["Body"].read(), response["ETag"]
    finally:
        response["Body"].close()


def read_versioned(path: ObjectStoragePath) -> tuple[bytes | None, str | None]:
    """The file's bytes and a tag of exactly that version for ``write_if``; (None, None) when there is
    no such file. On S3 one GET gives both (the tag is the ETag); elsewhere the tag is the bytes' hash."""
    try:
        if _is_s3(path):
            from fsspec.asyn import sync

            bucket, key, _ = path.fs.split_path(path.path)
            return sync(path.fs.loop, _get_object, path.fs, bucket, key)
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    return raw, f"sha256:{hashlib.sha256(raw).hexdigest()}"


def write_if(path: ObjectStoragePath, data: bytes, tag: str | None) -> bool:
    """Write ``data`` only if the file is still the version ``tag`` (None: only if there is none);
    False when another writer moved it first (read it again and decide again).

    S3 decides on its side (PutObject with ``If-Match``/``If-None-Match``; AWS since 2024, MinIO,
    moto). A local file is compared and replaced under an exclusive ``flock`` on a ``.<name>.lock``
    file beside it (writers on one host, or a file system with working flock). Any other store is
    compared, then written: not atomic against a concurrent writer, which a warning says."""
    if _is_s3(path):
        return _put_if(path, data, tag)
    with _locked(path):
        if read_versioned(path)[1] != tag:
            return False
        write_atomically(path, data)
        return True


def _put_if(path: ObjectStoragePath, data: bytes, tag: str | None) -> bool:
    bucket, key, _ = path.fs.split_path(path.path)
    condition = {"IfMatch": tag} if tag else {"IfNoneMatch": "*"}
    try:
        path.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except (FileExistsError, FileNotFoundError):  # created, or deleted, by another writer meanwhile
        return False
    except OSError as error:
        code = getattr(error.__cause__, "response", {}).get("Error", {}).get("Code")
        if code in ("PreconditionFailed", "ConditionalRequestConflict"):  # 412, or 409 while another write runs
            return False
        raise
    finally:
        path.fs.invalidate_cache(path.path)
    return True


@contextmanager
def _locked(path: ObjectStoragePath) -> Iterator[None]:
    if not is_local(path):
        log.warning("%s: %s offers labelloop no conditional write, so this compare-then-write is not atomic "
                    "against a concurrent writer (safe while one run at a time writes it)", uri_of(path),
                    path.protocol)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.path.join(path.parent.path, f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def json_files(folder: ObjectStoragePath) -> list[ObjectStoragePath]:
    """The JSON state files in ``folder`` by name (not the ``.tmp`` file a write killed before
    its rename may have left)."""
    if not folder.exists():
        return []
    return sorted((path for path in folder.iterdir() if path.name.endswith(".json")), key=lambda path: path.name)
