"""Stream records out of raw objects (JSONL, JSON arrays, CSV) without loading them whole.

Every physical record comes out once, either parsed or with the reason it could not be:
the caller quarantines the failures, so nothing is dropped silently. Text must be UTF-8
(a BOM is accepted); a line in another encoding is reported with the encoding it looks like.
Gzip-compressed objects (``.jsonl.gz``, ``.json.gz``, ``.csv.gz``) are decompressed as they
stream. JSON nested deeper than ``MAX_NESTING`` is refused before it is parsed.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import ijson
from charset_normalizer import from_bytes

from labelloop.jsontext import MAX_NESTING, nested_too_deep

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
GZIP_MAGIC = b"\x1f\x8b"

TOO_DEEP = (f"JSON nested deeper than {MAX_NESTING} levels of objects/arrays "
            f"(labelloop.jsontext.MAX_NESTING); flatten the record")


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as read: ``fields`` when it parsed, else ``error`` (and ``raw`` for the quarantine)."""

    line: int
    fields: dict[str, Any] | None
    raw: str
    error: str | None = None


def format_of(name: str) -> str | None:
    """The reader format for an object name (``.gz`` is compression, not format), or None."""
    lowered = name.lower().removesuffix(".gz")
    return next((fmt for suffix, fmt in FORMATS.items() if lowered.endswith(suffix)), None)


def read_records(stream: IO[bytes], fmt: str, max_record_bytes: int) -> Iterator[RawRecord]:
    readers = {"jsonl": _jsonl, "json": _json_array, "csv": _csv}
    # fsspec's readline on remote files re-reads a whole block per line (36 s for a 13 MiB S3
    # object); a local 1 MiB buffer makes line iteration linear (0.8 s).
    body = io.BufferedReader(_Raw(stream), buffer_size=1 << 20)
    # Gzip is recognised by its magic bytes, so a name only has to say the format.
    if not body.peek(len(GZIP_MAGIC)).startswith(GZIP_MAGIC):
        yield from readers[fmt](body, max_record_bytes)
        return
    last = 0
    try:
        for record in readers[fmt](gzip.GzipFile(fileobj=body, mode="rb"), max_record_bytes):
            last = record.line
            yield record
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        yield RawRecord(last + 1, None, "", f"corrupt gzip data after record {last} ({error}); "
                                            f"the rest of the object was not read: compress it again")


class _Raw(io.RawIOBase):
    """Any binary stream with ``read`` as a raw stream, so io.BufferedReader can buffer it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _encoding_problem(raw: bytes, error: UnicodeDecodeError) -> str:
    guess = from_bytes(raw).best()
    looks_like = f" (looks like {guess.encoding})" if guess and guess.encoding != "utf_8" else ""
    return (f"not UTF-8: byte 0x{raw[error.start]:02x} at column {error.start + 1}{looks_like}; "
            f"re-encode the object as UTF-8")


def _preview(raw: bytes | str, limit: int = 2000) -> str:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Physical lines (1-based numbers) with the UTF-8 BOM of the first line removed."""
    for number, line in enumerate(stream, start=1):
        if number == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8):]
        yield number, line


def _jsonl(stream: IO[bytes], max_record_bytes: int) -> Iterator[RawRecord]:
    for number, line in _lines(stream):
        if not line.strip():
            continue
        if len(line) > max_record_bytes:
            yield RawRecord(number, None, _preview(line),
                            f"record is {len(line):,} bytes; the limit is {max_record_bytes:,} "
                            f"(source.max_record_bytes)")
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            yield RawRecord(number, None, _preview(line), _encoding_problem(line, error))
            continue
        if nested_too_deep(text):
            yield RawRecord(number, None, _preview(text), TOO_DEEP)
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            yield RawRecord(number, None, _preview(text), _malformed(error))
            continue
        if not isinstance(value, dict):
            yield RawRecord(number, None, _preview(text), f"expected a JSON object, got {type(value).__name__}")
            continue
        yield RawRecord(number, value, text)


def _malformed(error: json.JSONDecodeError) -> str:
    # Some messages end in "at" ("Invalid control character at"): the column completes them.
    return f"malformed JSON: {error.msg.removesuffix(' at')} at column {error.colno}"


def _array_items(stream: IO[bytes]) -> Iterator[Any]:
    """The items of a top-level JSON array, built from ijson's events; an item nested deeper
    than ``MAX_NESTING`` comes out as ``_SKIPPED_TOO_DEEP``: skipped, never built."""
    events = ijson.parse(stream, use_float=True)
    first = next(events, None)
    if first is None:
        return
    if first[:2] != ("", "start_array"):
        raise _NotAnArray("an object" if first[1] == "start_map" else f"a {first[1]}")
    nesting, deepest, builder = 0, 0, ijson.ObjectBuilder()
    for _, event, value in events:
        if nesting == 0:
            if event == "end_array":
                return  # the top-level array closed
            deepest, builder = 0, ijson.ObjectBuilder()
        if event in ("start_map", "start_array"):
            nesting += 1
            deepest = max(deepest, nesting)
        elif event in ("end_map", "end_array"):
            nesting -= 1
        if deepest <= MAX_NESTING:
            builder.event(event, value)
        if nesting == 0:
            yield builder.value if deepest <= MAX_NESTING else _SKIPPED_TOO_DEEP


_SKIPPED_TOO_DEEP = object()


class _NotAnArray(ValueError):
    """A ``.json`` object whose top level is not an array; the message says what it is."""


def _json_array(stream: IO[bytes], max_record_bytes: int) -> Iterator[RawRecord]:
    """A top-level JSON array, streamed item by item; ``line`` is the item's 1-based index."""
    head = stream.read(3)
    body = io.BufferedReader(_Prefixed(b"" if head == codecs.BOM_UTF8 else head, stream))
    index = 0
    try:
        for index, value in enumerate(_array_items(body), start=1):
            if value is _SKIPPED_TOO_DEEP:
                yield RawRecord(index, None, "", TOO_DEEP)
                continue
            raw = json.dumps(value, ensure_ascii=False)
            size = len(raw.encode("utf-8", errors="surrogatepass"))  # lone surrogates: the validator refuses them
            if size > max_record_bytes:
                yield RawRecord(index, None, _preview(raw),
                                f"record is {size:,} bytes; the limit is "
                                f"{max_record_bytes:,} (source.max_record_bytes)")
            elif not isinstance(value, dict):
                yield RawRecord(index, None, _preview(raw), f"expected a JSON object, got {type(value).__name__}")
            else:
                yield RawRecord(index, value, raw)
    except _NotAnArray as error:
        yield RawRecord(1, None, "", f"expected a top-level JSON array of objects, got {error} "
                                     f"(a .json object holds one array; use .jsonl for one object per line)")
    except (ijson.JSONError, UnicodeDecodeError) as error:
        # The rest of the array cannot be read: one record stands for it, with the reason.
        reason = ("not UTF-8; re-encode the object as UTF-8" if isinstance(error, UnicodeDecodeError)
                  else f"malformed JSON array after item {index}: {error}")
        yield RawRecord(index + 1, None, "", reason + " (the rest of the object was not read)")


class _Prefixed(_Raw):
    """A raw stream that yields ``prefix`` then the rest of ``stream``."""

    def __init__(self, prefix: bytes, stream: IO[bytes]) -> None:
        super().__init__(stream)
        self._prefix = prefix

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            size = min(len(buffer), len(self._prefix))
            buffer[:size], self._prefix = self._prefix[:size], self._prefix[size:]
            return size
        return super().readinto(buffer)


def _csv(stream: IO[bytes], max_record_bytes: int) -> Iterator[RawRecord]:
    """CSV with a header row. Lines are decoded one by one so one bad byte costs one record."""
    undecodable: dict[int, str] = {}

    def text_lines() -> Iterator[str]:
        for number, line in _lines(stream):
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError as error:
                undecodable[number] = _encoding_problem(line, error)
                yield line.decode("utf-8", errors="surrogateescape")

    reader = csv.reader(text_lines(), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as error:
        yield RawRecord(1, None, "", f"unreadable CSV header: {error}")
        return
    columns = [name.strip() for name in header]
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield RawRecord(start, None, "", f"malformed CSV: {error}")
            continue
        raw = ",".join(row).encode("utf-8", errors="surrogateescape")
        problem = next((undecodable.pop(n) for n in range(start, reader.line_num + 1) if n in undecodable), None)
        if problem:
            yield RawRecord(start, None, _preview(raw), problem)
        elif not any(cell.strip() for cell in row):
            continue
        elif len(raw) > max_record_bytes:
            yield RawRecord(start, None, _preview(raw),
                            f"record is {len(raw):,} bytes; the limit is {max_record_bytes:,} "
                            f"(source.max_record_bytes)")
        elif len(row) != len(columns):
            yield RawRecord(start, None, _preview(raw),
                            f"CSV row has {len(row)} cells but the header names {len(columns)} "
                            f"columns ({', '.join(columns)})")
        else:
            yield RawRecord(start, dict(zip(columns, row)), raw.decode("utf-8"))
