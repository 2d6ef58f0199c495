"""Readers and the record validator: every physical record comes out once, good or with a reason."""

import io
import json

import pytest

from labelloop.ingest.readers import format_of, read_records
from labelloop.ingest.validate import InvalidRecord, RecordValidator, content_hash
from labelloop.spec import load_spec


def read(payload: bytes, fmt: str, limit: int = 1000):
    return list(read_records(io.BytesIO(payload), fmt, limit))


def test_format_by_suffix() -> None:
    assert [format_of(n) for n in ["a.jsonl", "b.NDJSON", "c.json", "d.csv", "e.txt"]] == [
        "jsonl", "jsonl", "json", "csv", None]


def test_jsonl_good_bad_and_blank_lines() -> None:
    payload = b'{"id": 1, "text": "a"}\n\n{"id": 2, "text": \n[1, 2]\n{"id": 3, "text": "c"}\n'
    records = read(payload, "jsonl")
    assert [(r.line, r.error is None) for r in records] == [(1, True), (3, False), (4, False), (5, True)]
    assert "malformed JSON" in records[1].error
    assert "expected a JSON object, got list" in records[2].error


def test_utf8_bom_is_accepted() -> None:
    records = read('\ufeff{"text": "héllo"}\n'.encode("utf-8"), "jsonl")
    assert records[0].fields == {"text": "héllo"}
    csv_records = read("\ufefftext,id\nhéllo,1\n".encode("utf-8"), "csv")
    assert csv_records[0].fields == {"text": "héllo", "id": "1"}


def test_latin1_line_is_refused_with_the_encoding_named() -> None:
    payload = '{"text": "ok"}\n'.encode() + '{"text": "café crème à la française, très bien"}\n'.encode("latin-1")
    records = read(payload, "jsonl")
    assert records[0].error is None
    assert records[1].error.startswith("not UTF-8: byte 0xe9")
    assert "re-encode the object as UTF-8" in records[1].error


def test_oversized_record() -> None:
    records = read(json.dumps({"text": "x" * 5000}).encode() + b"\n", "jsonl", limit=1000)
    assert "the limit is 1,000 (source.max_record_bytes)" in records[0].error


def test_json_array_streams_items_and_reports_a_broken_tail() -> None:
    records = read(b'[{"text": "a"}, 3, {"text": "b"}, {"text": ', "json")
    assert [r.fields for r in records[:3]] == [{"text": "a"}, None, {"text": "b"}]
    assert "expected a JSON object, got int" in records[1].error
    assert "the rest of the object was not read" in records[3].error


def test_csv_quoted_newlines_short_rows_and_bad_bytes() -> None:
    payload = b'id,text\n1,"two\nlines"\n2\n3,"caf\xe9"\n4,fine\n'
    records = read(payload, "csv")
    assert records[0].fields == {"id": "1", "text": "two\nlines"}
    assert records[1].line == 4 and "has 1 cells but the header names 2" in records[1].error
    assert records[2].line == 5 and records[2].error.startswith("not UTF-8")
    assert records[3].fields == {"id": "4", "text": "fine"}


@pytest.fixture
def validator(make_spec):
    return RecordValidator(load_spec(make_spec()))


def test_validator_maps_fields_and_hashes_content(validator) -> None:
    record = validator.validate({"id": "sms-1", "text": "hello", "label": "spam", "other": 1})
    assert record.data == {"text": "hello"}
    assert record.item_id == "sms-1" and record.label == "spam"
    # Same content under another id is the same task.
    assert validator.validate({"id": "sms-2", "text": "hello"}).content_hash == record.content_hash
    assert record.content_hash == content_hash({"text": "hello"})


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"id": 1}, "required field 'text' is missing or empty (fields present: id)"),
        ({"text": "  "}, "required field 'text' is missing or empty"),
        ({"text": 42}, "field 'text' must be a string, got int"),
        ({"text": "x" * 5001}, "field 'text' has 5,001 characters; the limit is 5,000"),
        ({"text": "hi", "label": "eggs"}, "unknown label 'eggs' in field 'label'; allowed: ham, spam"),
    ],
)
def test_validator_reasons(validator, record, reason) -> None:
    with pytest.raises(InvalidRecord) as error:
        validator.validate(record)
    assert reason in str(error.value)
