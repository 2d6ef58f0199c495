"""Readers and the record validator: every physical record comes out once, good or with a reason."""

import gzip
import io
import json
from pathlib import Path

import pytest

from labelloop.ingest.readers import TOO_DEEP, format_of, read_records
from labelloop.jsontext import MAX_NESTING, nested_too_deep
from labelloop.ingest.validate import InvalidRecord, RecordValidator, content_hash
from labelloop.spec import load_spec


def read(payload: bytes, fmt: str, limit: int = 1000):
    return list(read_records(io.BytesIO(payload), fmt, limit))


def test_format_by_suffix() -> None:
    assert [format_of(n) for n in ["a.jsonl", "b.NDJSON", "c.json", "d.csv", "e.txt"]] == [
        "jsonl", "jsonl", "json", "csv", None]
    assert [format_of(n) for n in ["a.jsonl.gz", "b.json.gz", "c.CSV.GZ", "d.txt.gz", "e.gz"]] == [
        "jsonl", "json", "csv", None, None]


def test_jsonl_good_bad_and_blank_lines() -> None:
    payload = b'{"id": 1, "text": "a"}\n\n{"id": 2, "text": \n[1, 2]\n{"id": 3, "text": "c"}\n'
    records = read(payload, "jsonl")
    assert [(r.line, r.error is None) for r in records] == [(1, True), (3, False), (4, False), (5, True)]
    assert "malformed JSON" in records[1].error
    assert "expected a JSON object, got list" in records[2].error


def test_malformed_json_reason_reads_once_at() -> None:
    records = read(b'{"text": "line\tbreak"}\n{"text": "cut', "jsonl")
    assert [r.error for r in records] == ["malformed JSON: Invalid control character at column 15",
                                          "malformed JSON: Unterminated string starting at column 10"]


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


def test_gzip_objects_stream_like_plain_ones() -> None:
    plain = {"jsonl": b'{"text": "a"}\n{"text": \n{"text": "b"}\n',
             "json": b'[{"text": "a"}, 3, {"text": "b"}]',
             "csv": b"text,id\na,1\nb,2\n"}
    for fmt, payload in plain.items():
        assert read(gzip.compress(payload), fmt) == read(payload, fmt), fmt


def test_truncated_gzip_keeps_what_was_read_and_reports_the_rest() -> None:
    lines = b"".join(json.dumps({"text": f"message {i}"}).encode() + b"\n" for i in range(2000))
    compressed = gzip.compress(lines)
    records = read(compressed[: len(compressed) // 2], "jsonl")
    assert all(r.error is None for r in records[:-1]) and len(records) > 100
    assert records[-1].line == len(records)
    assert records[-1].error.startswith(f"corrupt gzip data after record {len(records) - 1} (")
    assert "the rest of the object was not read" in records[-1].error


DEEP = "[" * 10_000 + "]" * 10_000  # 20 KB: json.loads raises RecursionError on it


def nested(levels: int) -> dict:
    """A record nested ``levels`` deep, counting the record object itself."""
    value: list = []
    for _ in range(levels - 2):
        value = [value]
    return {"text": "t", "tags": value}


def test_jsonl_line_nested_too_deep_is_refused_and_the_rest_read() -> None:
    lines = [json.dumps({"text": "before"}), '{"text": "deep", "tags": ' + DEEP + "}",
             json.dumps(nested(MAX_NESTING)), json.dumps(nested(MAX_NESTING + 1)),
             json.dumps({"text": "[" * 5000 + '\\"{' * 100}), json.dumps({"text": "after"})]
    records = read("\n".join(lines).encode(), "jsonl", limit=100_000)
    assert [r.error for r in records] == [None, TOO_DEEP, None, TOO_DEEP, None, None]
    assert TOO_DEEP.startswith(f"JSON nested deeper than {MAX_NESTING} levels")
    assert records[0].fields == {"text": "before"} and records[-1].fields == {"text": "after"}
    assert records[1].raw.startswith('{"text": "deep", "tags": [[[')  # kept for the quarantine
    assert records[4].fields["text"].startswith("[[[")  # brackets inside a string do not nest


def test_nesting_check_ignores_brackets_and_escaped_quotes_in_strings() -> None:
    assert not nested_too_deep('{"a": "' + "[" * 100 + '\\"' + "{" * 100 + '"}')
    assert nested_too_deep('{"a": "\\\\", "b": ' + "[" * 65 + "]" * 65 + "}")  # "\\\\" ends the string
    assert not nested_too_deep("[" * 64 + "]" * 64) and nested_too_deep("[" * 65 + "]" * 65)


def test_json_array_item_nested_too_deep_is_skipped_and_the_rest_read() -> None:
    payload = '[{"text": "before"}, {"text": "deep", "tags": ' + DEEP + '}, {"text": "after"}]'
    records = read(payload.encode(), "json", limit=100_000)
    assert [(r.line, r.fields, r.error) for r in records] == [
        (1, {"text": "before"}, None), (2, None, TOO_DEEP), (3, {"text": "after"}, None)]
    assert read(json.dumps([nested(MAX_NESTING)]).encode(), "json")[0].error is None


def test_json_object_that_is_not_an_array_is_refused() -> None:
    [record] = read(b'{"text": "one object"}', "json")
    assert record.error.startswith("expected a top-level JSON array of objects, got an object")


def test_csv_cell_of_brackets_is_plain_text() -> None:
    # CSV cells are never parsed as JSON, so a cell of brackets is text like any other.
    [record] = read(f'text,id\n"{DEEP}",1\n'.encode(), "csv", limit=100_000)
    assert record.fields == {"text": DEEP, "id": "1"}


def test_audit_cli_refuses_deep_json_and_keeps_bracketed_labels(tmp_path, capsys) -> None:
    from labelloop.quality.cli import main

    labels = tmp_path / "labels.csv"
    labels.write_text(f'item_id,annotator_id,label\n1,a,"{DEEP}"\n1,b,"{DEEP}"\n2,a,ham\n2,b,ham\n')
    assert main([str(labels), "--method", "majority", "--out", str(tmp_path / "out")]) == 0
    assert DEEP in (tmp_path / "out" / "consensus.csv").read_text()  # a CSV label is text

    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"item_id": "1", "annotator_id": "a", "data": {}, "result": []})
                       + "\n" + '{"item_id": "2", "result": ' + DEEP + "}\n")
    config = Path(__file__).resolve().parents[2] / "include" / "labeling" / "sms_spam.xml"
    assert main([str(answers), "--config", str(config), "--out", str(tmp_path / "out2")]) == 2
    assert f"{answers} line 2: JSON nested deeper than" in capsys.readouterr().err


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
        ({"text": "a\x00b"}, "field 'text' contains a NUL character (\\u0000) at character 2; "
                             "Label Studio's database cannot store it"),
        ({"text": "ok", "id": "x\x00"}, "field 'id' contains a NUL character (\\u0000) at character 2"),
        ({"text": "a\ud800"}, "field 'text' contains an unpaired surrogate (\\ud800) at character 2"),
    ],
)
def test_validator_reasons(validator, record, reason) -> None:
    with pytest.raises(InvalidRecord) as error:
        validator.validate(record)
    assert reason in str(error.value)
