"""Stream records out of raw objects (JSONL, JSON arrays, CSV) without loading them whole.

Every physical record comes out once, either parsed or with the reason it could not be:
the caller quarantines the failures, so nothing is dropped silently. Text must be UTF-8
(a BOM is accepted); a line in another encoding is reported with the encoding it looks like.
Gzip-compressed objects (``.jsonl.gz``, ``.json.gz``, ``.csv.gz``) are decompressed as they
stream; other compressions are recognised by their magic bytes and refused by name. JSON nested
deeper than ``MAX_NESTING``, with a repeated key or with NaN/Infinity is refused before it is used.
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
#: Objects that are one image each (format ``image``): read by ``labelloop.ingest.images``, not here.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
GZIP_MAGIC = b"\x1f\x8b"
#: Compressions labelloop does not read: their magic bytes (bzip2's with its block or end-of-stream
#: marker, so a CSV header such as "BZh9,text" stays text) and file suffix. Refused by name.
OTHER_COMPRESSIONS = {"bzip2": (re.compile(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)"), ".bz2"),
                      "xz": (re.compile(rb"\xfd7zXZ\x00"), ".xz"), "zip": (re.compile(rb"PK\x03\x04"), ".zip"),
                      "zstd": (re.compile(rb"\x28\xb5\x2f\xfd"), ".zst")}

TOO_DEEP = (f"JSON nested deeper than {MAX_NESTING} levels of objects/arrays "
            f"(labelloop.jsontext.MAX_NESTING); flatten the record")
#: A BOM after the first line: usually two files joined together, whose second header would be a record.
MID_BOM = ("a UTF-8 byte-order mark (BOM) starts this line, not the object: two files were joined "
           "together? remove the BOM (and a repeated CSV header)")


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as read: ``fields`` when it parsed, else ``error`` (and ``raw`` for the quarantine)."""

    line: int
    fields: dict[str, Any] | None
    raw: str
    error: str | None = None


def format_of(name: str) -> str | None:
    """The reader format for an object name, or None. A compression suffix (``.gz``, ``.bz2``, ...)
    is not format: the content's magic bytes decide, so ``read_records`` refuses a bzip2 object by name."""
    lowered = name.lower()
    if lowered.endswith(IMAGE_SUFFIXES):
        return "image"
    for suffix in (".gz", *(suffix for _, suffix in OTHER_COMPRESSIONS.values())):
        lowered = lowered.removesuffix(suffix)
    return next((fmt for suffix, fmt in FORMATS.items() if lowered.endswith(suffix)), None)


def read_records(stream: IO[bytes], fmt: str, max_record_bytes: int) -> Iterator[RawRecord]:
    readers = {"jsonl": _jsonl, "json": _json_array, "csv": _csv}
    # fsspec's readline on remote files re-reads a whole block per line (36 s for a 13 MiB S3
    # object); a local 1 MiB buffer makes line iteration linear (0.8 s).
    body = io.BufferedReader(_Raw(stream), buffer_size=1 << 20)
    head = body.peek(16)
    other = next((kind for kind, (magic, _) in OTHER_COMPRESSIONS.items() if magic.match(head)), None)
    if other:  # its bytes would be refused line by line as "not UTF-8": one record says why instead
        yield RawRecord(1, None, "", f"the object is {other}-compressed; only gzip is read: recompress it "
                                     f"with gzip (.gz) (the object was not read)")
        return
    # Gzip is recognised by its magic bytes, so a name only has to say the format.
    if not head.startswith(GZIP_MAGIC):
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
    """Physical lines (1-based numbers) with the UTF-8 BOM of the first line removed (a BOM on a
    later line is kept, for the reader to refuse with ``MID_BOM``)."""
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
        if line.startswith(codecs.BOM_UTF8):
            yield RawRecord(number, None, _preview(line), MID_BOM)
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
            value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        except json.JSONDecodeError as error:
            yield RawRecord(number, None, _preview(text), _malformed(error))
            continue
        except _NotJson as error:
            yield RawRecord(number, None, _preview(text), str(error))
            continue
        if not isinstance(value, dict):
            yield RawRecord(number, None, _preview(text), f"expected a JSON object, got {type(value).__name__}")
            continue
        yield RawRecord(number, value, text)


class _NotJson(ValueError):
    """Text json.loads would take but that is no single JSON value: a repeated key, NaN, Infinity."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, unless a key repeats: which of its values is meant is not known (json keeps the last)."""
    value = dict(pairs)
    if len(value) < len(pairs):
        repeated = next(key for index, (key, _) in enumerate(pairs) if key in dict(pairs[:index]))
        raise _NotJson(_repeated(repeated))
    return value


def _repeated(key: str) -> str:
    return f"key {key!r} appears more than once in one JSON object; keep one of its values"


def _no_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number (Label Studio refuses it); write null or a number")


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
    nesting, deepest, builder, keys, repeated = 0, 0, ijson.ObjectBuilder(), [], None
    for _, event, value in events:
        if nesting == 0:
            if event == "end_array":
                for _ in events:  # ijson raises on anything but whitespace after the array
                    pass
                return  # the top-level array closed
            deepest, builder, keys, repeated = 0, ijson.ObjectBuilder(), [], None
        if event in ("start_map", "start_array"):
            nesting += 1
            deepest = max(deepest, nesting)
            keys.append(set())
        elif event in ("end_map", "end_array"):
            nesting -= 1
            keys.pop()
        elif event == "map_key":
            if value in keys[-1] and repeated is None:
                repeated = value
            keys[-1].add(value)
        if deepest <= MAX_NESTING:
            builder.event(event, value)
        if nesting == 0:
            if deepest > MAX_NESTING:
                yield _SKIPPED_TOO_DEEP
            elif repeated is not None:
                yield _NotJson(_repeated(repeated))
            else:
                yield builder.value


_SKIPPED_TOO_DEEP = object()


class _NotAnArray(ValueError):
    """A ``.json`` object whose top level is not an array; the message says what it is."""


def _json_array(stream: IO[bytes], max_record_bytes: int) -> Iterator[RawRecord]:
    """A top-level JSON array, streamed item by item; ``line`` is the item's 1-based index."""
    head = stream.read(3)
    body = io.BufferedReader(_Prefixed(b"" if head == codecs.BOM_UTF8 else head, stream))
    if not body.peek(1):
        return  # a zero-byte object holds no records, as in the other formats
    index = 0
    try:
        for index, value in enumerate(_array_items(body), start=1):
            if value is _SKIPPED_TOO_DEEP:
                yield RawRecord(index, None, "", TOO_DEEP)
                continue
            if isinstance(value, _NotJson):
                yield RawRecord(index, None, "", str(value))
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
        # yajl's messages span lines (the text, then "(right here) ---^"): the first line says it.
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, UnicodeDecodeError) or "invalid bytes in UTF8" in first:
            reason = "not UTF-8; re-encode the object as UTF-8"
        elif "trailing garbage" in first:
            reason = f"data after the end of the top-level JSON array (after item {index}); a .json object holds one array"
        else:
            reason = f"malformed JSON array after item {index}: {first.removeprefix('b').strip(chr(39))}"
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
    consumed: list[str] = []  # the physical lines of the row being read: kept for the quarantine

    def text_lines() -> Iterator[str]:
        for number, line in _lines(stream):
            try:
                text = line.decode("utf-8")
                if line.startswith(codecs.BOM_UTF8):
                    undecodable[number] = MID_BOM
            except UnicodeDecodeError as error:
                undecodable[number] = _encoding_problem(line, error)
                text = line.decode("utf-8", errors="surrogateescape")
            consumed.append(text)
            yield text

    # csv's own cap on a cell (128 KiB by default, process-wide) must not undercut the spec's
    # limit; it is only ever raised here, and a larger record is refused by the spec's limit.
    csv.field_size_limit(max(csv.field_size_limit(), max_record_bytes + 1))
    reader = csv.reader(text_lines(), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as error:
        yield RawRecord(1, None, "", f"unreadable CSV header: {error}")
        return
    columns = [name.strip() for name in header]
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    header_problem = (f"the CSV header repeats column(s) {', '.join(map(repr, repeated))}, so which cell is "
                      f"meant is not known; give each column its own name") if repeated else None
    while True:
        start = reader.line_num + 1
        consumed.clear()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            text = "".join(consumed)
            yield RawRecord(start, None, _preview(text), _csv_problem(error, text, max_record_bytes))
            continue
        raw = ",".join(row).encode("utf-8", errors="surrogateescape")
        problem = next((undecodable.pop(n) for n in range(start, reader.line_num + 1) if n in undecodable),
                       None) or (header_problem if any(cell.strip() for cell in row) else None)
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


def _csv_problem(error: csv.Error, text: str, max_record_bytes: int) -> str:
    """csv's message in the spec's terms: its own size cap, a line end inside a cell."""
    if "field larger than field limit" in str(error):
        return (f"record is over {max_record_bytes:,} bytes, the limit (source.max_record_bytes)")
    if "new-line character seen in unquoted field" in str(error):
        return ("malformed CSV: a carriage return (\\r) without a line feed inside an unquoted cell: the "
                "object mixes line endings; end lines with \\n or \\r\\n, or quote the cell")
    return f"malformed CSV: {error}"
