"""Bad input, kind by kind: each ends as records or as ONE clear reason, and nothing raises.

The tables below are the "Bad input" rows of docs/reliability.md. Records go through the
real readers and validator exactly as ingest runs them (``read_records`` then
``RecordValidator.validate``); every record read is either accepted or quarantined with a
reason, so ``read = accepted + quarantined`` holds per object (ingest then splits the
accepted into imported and duplicate: tests/integration/test_bad_input_ingest.py runs this
same table through a real ingest against Label Studio and an S3 server). Specs are fuzzed
with Hypothesis: a spec loads or fails with a ``SpecError`` naming the file, never another
exception.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labelloop.ingest.readers import GZIP_MAGIC, MID_BOM, OTHER_COMPRESSIONS, TOO_DEEP, format_of, read_records
from labelloop.ingest.validate import InvalidRecord, RecordValidator
from labelloop.layout import run_key
from labelloop.spec import ProjectSpec, SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]
LIMIT = 65_536  # source.max_record_bytes of the shipped specs
DEEP = "[" * 10_000 + "]" * 10_000
TEN_MB = "x" * 10_000_000
OK = None  # an accepted record


def jsonl(*records: Any) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def zipped(payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("records.jsonl", payload)
    return buffer.getvalue()


def zstd_frame() -> bytes:
    """A zstd frame header (magic 28 b5 2f fd): the standard library has no zstd compressor."""
    return b"\x28\xb5\x2f\xfd\x24\x0e\x71\x00\x00" + b'{"text": "x"}\n'


GOOD = {"id": "g1", "text": "a good message"}


@dataclass(frozen=True)
class Kind:
    """One kind of bad input: an object's name and bytes, and what each record read must become
    (``OK``, or a fragment of its one quarantine reason), in order."""

    kind: str
    name: str
    payload: bytes
    outcomes: tuple[str | None, ...]
    spec: str = "sms_spam"  # the shipped spec the records are validated against


RECORDS = [
    Kind("NUL as a JSON escape", "nul.jsonl", jsonl({"text": "a\u0000b"}, GOOD),
         ("contains a NUL character (\\u0000) at character 2", OK)),
    Kind("NUL as a raw byte in a JSON string", "nul_raw.jsonl", b'{"text": "a\x00b"}\n' + jsonl(GOOD),
         ("malformed JSON: Invalid control character at column 12", OK)),
    Kind("NUL in a CSV cell", "nul.csv", b"id,text\n1,a\x00b\n2,fine\n", ("contains a NUL character", OK)),
    Kind("lone surrogate as a JSON escape", "surrogate.jsonl", b'{"text": "lone \\ud800 here"}\n' + jsonl(GOOD),
         ("contains an unpaired surrogate (\\ud800) at character 6", OK)),
    Kind("lone surrogate as bytes (CESU-8)", "surrogate_bytes.jsonl", b'{"text": "\xed\xa0\x80"}\n' + jsonl(GOOD),
         ("not UTF-8: byte 0xed at column 11", OK)),
    Kind("10 MB JSON line", "huge.jsonl", jsonl({"text": TEN_MB}, GOOD),
         ("record is 10,000,013 bytes; the limit is 65,536 (source.max_record_bytes)", OK)),
    Kind("10 MB CSV cell", "huge.csv", f"id,text\n1,{TEN_MB}\n2,after\n".encode(),
         ("record is over 65,536 bytes, the limit (source.max_record_bytes)", OK)),
    Kind("10 MB item of a JSON array", "huge.json", json.dumps([{"text": TEN_MB}, GOOD]).encode(),
         ("record is 10,000,012 bytes; the limit is 65,536", OK)),
    Kind("deeply nested JSON line", "deep.jsonl", b'{"text": "t", "x": ' + DEEP.encode() + b"}\n" + jsonl(GOOD),
         (TOO_DEEP, OK)),
    Kind("deeply nested JSON array item", "deep.json", b'[{"text": "t", "x": ' + DEEP.encode() + b"}, "
         + json.dumps(GOOD).encode() + b"]", (TOO_DEEP, OK)),
    Kind("BOM at the start (accepted)", "bom.jsonl", b"\xef\xbb\xbf" + jsonl(GOOD), (OK,)),
    Kind("BOM in the middle of a JSONL file", "bom_mid.jsonl", jsonl(GOOD) + b"\xef\xbb\xbf" + jsonl(GOOD),
         (OK, MID_BOM)),
    Kind("BOM in the middle of a CSV file (two files joined)", "joined.csv",
         b"\xef\xbb\xbfid,text\n1,first\n\xef\xbb\xbfid,text\n2,second\n", (OK, MID_BOM, OK)),
    Kind("CSV with mixed CRLF and LF line endings", "mixed.csv", b"id,text\r\n1,a\n2,b\r\n3,c\n", (OK, OK, OK)),
    Kind("CSV with a bare CR line ending", "cr.csv", b"id,text\n1,a\n2,b\r3,c\n4,d\n",
         (OK, "a carriage return (\\r) without a line feed inside an unquoted cell", OK)),
    Kind("ragged CSV rows", "ragged.csv", b"id,text\n1,a,extra\n2\n3,fine\n",
         ("CSV row has 3 cells but the header names 2 columns (id, text)", "CSV row has 1 cells", OK)),
    Kind("CSV header repeating a column", "repeated.csv", b"id,text,text\n1,a,b\n",
         ("the CSV header repeats column(s) 'text'",)),
    Kind("JSON array that ends early", "cut.json", b'[{"text": "a"}, {"text": "b"}, {"te',
         (OK, OK, "malformed JSON array after item 2: parse error: premature EOF (the rest of the object was not read)")),
    Kind("data after the JSON array", "two_arrays.json", b'[{"text": "a"}][{"text": "b"}]',
         (OK, "data after the end of the top-level JSON array (after item 1)")),
    Kind("JSON object instead of an array", "object.json", b'{"text": "a"}',
         ("expected a top-level JSON array of objects, got an object",)),
    Kind("gzip-compressed JSONL (read)", "records.jsonl.gz", gzip.compress(jsonl(GOOD, {"text": "b"})), (OK, OK)),
    Kind("truncated gzip object", "cut.jsonl.gz", gzip.compress(jsonl(*[{"text": f"m {i}"} for i in range(3000)]))[:2000],
         None),  # checked below: what was read, then one reason for the rest
    Kind("bzip2-compressed object", "records.jsonl.bz2", bz2.compress(jsonl(GOOD)),
         ("the object is bzip2-compressed; only gzip is read",)),
    Kind("xz-compressed object", "records.jsonl.xz", lzma.compress(jsonl(GOOD)),
         ("the object is xz-compressed; only gzip is read",)),
    Kind("zip archive", "records.jsonl.zip", zipped(jsonl(GOOD)), ("the object is zip-compressed; only gzip is read",)),
    Kind("zstd-compressed object", "records.jsonl.zst", zstd_frame(), ("the object is zstd-compressed",)),
    Kind("zero-byte JSONL object", "empty.jsonl", b"", ()),
    Kind("zero-byte JSON object", "empty.json", b"", ()),
    Kind("zero-byte CSV object", "empty.csv", b"", ()),
    Kind("Latin-1 line (invalid UTF-8)", "latin1.jsonl", '{"text": "café crème à la française"}\n'.encode("latin-1")
         + jsonl(GOOD), ("not UTF-8: byte 0xe9 at column 14", OK)),
    Kind("Latin-1 JSON array", "latin1.json", '[{"text": "café"}]'.encode("latin-1"),
         ("not UTF-8; re-encode the object as UTF-8 (the rest of the object was not read)",)),
    Kind("label not in the config", "label.jsonl", jsonl({"text": "hi", "label": "eggs"}, {"text": "ho", "label": "spam"}),
         ("unknown label 'eggs' in field 'label'; allowed: ham, spam", OK)),
    Kind("text field of the wrong type", "types.jsonl", jsonl({"text": 42}, {"text": ["a"]}, {"text": {"a": 1}}),
         ("field 'text' must be a string, got int", "got list", "got dict")),
    Kind("required field missing", "missing.csv", b"id,body\n1,hello\n", ("required field 'text' is missing",)),
    Kind("text over max_length", "long.jsonl", jsonl({"text": "x" * 5001}), ("has 5,001 characters; the limit is 5,000",)),
    Kind("NaN and Infinity in JSON", "nan.jsonl", b'{"text": "a", "score": NaN}\n{"text": "b", "score": -Infinity}\n'
         + jsonl(GOOD), ("NaN is not a JSON number", "-Infinity is not a JSON number", OK)),
    Kind("NaN in a JSON array", "nan.json", b'[{"text": "a"}, {"text": "b", "score": NaN}]',
         (OK, "malformed JSON array after item 1: lexical error: invalid char in json text")),
    Kind("duplicate keys in a JSON line", "dupkeys.jsonl", b'{"text": "spam?", "text": "ham!"}\n' + jsonl(GOOD),
         ("key 'text' appears more than once in one JSON object", OK)),
    Kind("duplicate keys in a JSON array item", "dupkeys.json", b'[{"text": "a", "id": 1, "id": 2}, {"text": "b"}]',
         ("key 'id' appears more than once", OK)),
    Kind("a JSON line that is not an object", "scalars.jsonl", b'"text"\n[1, 2]\n' + jsonl(GOOD),
         ("expected a JSON object, got str", "expected a JSON object, got list", OK)),
    Kind("known span outside the text", "spans.jsonl", jsonl(
        {"text": "Bob went home", "entities": [[0, 50, "PER"]]}, {"text": "Bob went home", "entities": [[3, 2, "PER"]]},
        {"text": "Bob went home", "entities": [[0, 3, "XXX"]]}, {"text": "Bob went home", "entities": [[0, 3, "PER"]]}),
         ("span 0-50 ends past the text, which has 13 characters", "span start 3 is not before its end 2",
          "label 'XXX' is not offered by <Labels name='entities'>", OK), spec="conll_ner"),
]

# Numbers as CSV cells write them, against a spec with a number field (Python's float() takes more).
NUMBERS = [("nan", "finite number"), ("inf", "finite number"), ("-Infinity", "finite number"),
           ("1e999", "finite number"), ("1_000", "finite number"), ("١٢", "finite number"), ("12abc", "finite number"),
           ("0.5", OK), (".5", OK), ("-3e2", OK), (" 7 ", OK)]


def shipped(name: str) -> ProjectSpec:
    return load_spec(REPO / "include" / "projects" / f"{name}.yaml")


VALIDATORS = {name: RecordValidator(shipped(name)) for name in ("sms_spam", "conll_ner")}


def outcomes(payload: bytes, fmt: str, validator: RecordValidator) -> list[str | None]:
    """What ingest makes of each record read: None (accepted) or its one quarantine reason."""
    ended: list[str | None] = []
    for record in read_records(io.BytesIO(payload), fmt, LIMIT):
        if record.error is not None:
            assert record.fields is None
            ended.append(record.error)
            continue
        try:
            validator.validate(record.fields)
            ended.append(OK)
        except InvalidRecord as error:
            ended.append(str(error))
    return ended


@pytest.mark.parametrize("case", [k for k in RECORDS if k.outcomes is not None], ids=lambda k: k.kind)
def test_each_record_ends_accepted_or_with_one_clear_reason(case: Kind) -> None:
    fmt = format_of(case.name)
    assert fmt is not None, f"{case.name} is a name ingest reads"
    got = outcomes(case.payload, fmt, VALIDATORS[case.spec])
    assert len(got) == len(case.outcomes), got
    for reason, expected in zip(got, case.outcomes):
        if expected is OK:
            assert reason is OK
        else:
            assert reason is not None and expected in reason, (reason, expected)
            assert "\n" not in reason and "(right here)" not in reason  # one line a person can read


def test_a_truncated_gzip_keeps_what_was_read_and_names_the_rest() -> None:
    [case] = [k for k in RECORDS if k.outcomes is None]
    got = outcomes(case.payload, "jsonl", VALIDATORS["sms_spam"])
    assert len(got) > 10 and all(reason is OK for reason in got[:-1])
    assert got[-1].startswith(f"corrupt gzip data after record {len(got) - 1} (")


@pytest.mark.parametrize(("cell", "expected"), NUMBERS)
def test_numbers_in_csv_cells_are_json_numbers_or_refused(make_spec, cell: str, expected: str | None) -> None:
    spec = load_spec(make_spec(source={"fields": {"text": {"type": "string"}, "score": {"type": "number"}}}))
    got = outcomes(f"text,score\nhello,{cell}\n".encode(), "csv", RecordValidator(spec))
    assert got == [OK] if expected is OK else (len(got) == 1 and f"field 'score' must be a {expected}" in got[0])


def test_compressed_names_are_read_by_content() -> None:
    """A compression suffix does not hide the format: the object is read and a compression other
    than gzip is refused by name (above), rather than skipped as an unknown format."""
    assert [format_of(n) for n in ["a.jsonl.bz2", "b.csv.xz", "c.json.zip", "d.jsonl.zst", "e.txt.bz2"]] == [
        "jsonl", "csv", "json", "jsonl", None]


# Specs ------------------------------------------------------------------------------------------

SMS = yaml.safe_load((REPO / "include" / "projects" / "sms_spam.yaml").read_text())


def spec_file(tmp_path: Path, text: str) -> Path:
    """A spec in a folder laid out like include/ (labeling/ and guidelines/ beside projects/)."""
    for folder in ("labeling", "guidelines"):
        target = tmp_path / folder
        if not target.exists():
            target.symlink_to(REPO / "include" / folder)
    (tmp_path / "projects").mkdir(exist_ok=True)
    path = tmp_path / "projects" / "fuzzed.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def with_(**changes: Any) -> str:
    raw = {**SMS, **changes}
    return yaml.safe_dump(raw, sort_keys=False)


SPECS = [
    ("unknown key", with_(colour="red"), "field colour: unknown field; check the spelling"),
    ("unknown nested key", with_(quality={**SMS["quality"], "min_kapa": 0.3}),
     "field quality.min_kapa: unknown field"),
    ("wrong type: labels a string", with_(labels="ham, spam"), "field labels: Input should be a valid list"),
    ("wrong type: batch size a word", with_(import_batch_size="many"), "field import_batch_size: Input should be a valid integer"),
    ("wrong type: annotators a list", with_(annotation={"annotators_per_task": [3]}),
     "field annotation.annotators_per_task: Input should be a valid integer"),
    ("a key given twice", yaml.safe_dump(SMS, sort_keys=False) + "labels: [a, b]\n", "found the key 'labels' twice"),
    ("recursive YAML alias", "name: &loop [*loop]\n", "a YAML alias (*name) refers to the mapping or list"),
    ("integer of 5,000 digits", with_(import_batch_size=0).replace("import_batch_size: 0", "import_batch_size: " + "9" * 5000),
     "not readable YAML: Exceeds the limit (4300 digits)"),
    ("NUL in a path", with_(labeling_config="labeling/a\x00b.xml"),
     "labeling_config: cannot read"),
    ("not a mapping", "- just\n- a list\n", "expected a mapping of spec fields at the top level"),
    ("broken YAML", "name: [unclosed\n", "not readable YAML"),
    ("python object tag", "name: !!python/object/apply:os.system [echo pwned]\n", "not readable YAML"),
]


@pytest.mark.parametrize(("kind", "text", "expected"), SPECS, ids=[s[0] for s in SPECS])
def test_bad_spec_is_one_spec_error_naming_file_and_field(tmp_path: Path, kind: str, text: str, expected: str) -> None:
    path = spec_file(tmp_path, text)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(error.value).startswith(f"{path}: ")
    assert expected in str(error.value)


LABELING = [
    ("unsupported tag <Polygon>", '<Image name="image" value="$text"/><Polygon name="label" toName="image"/>',
     "<Polygon name='label'> on <Image> is not supported; supported: <Choices>"),
    ("unsupported tag <KeyPointLabels>", '<Image name="image" value="$text"/><KeyPointLabels name="label" '
     'toName="image"><Label value="a"/></KeyPointLabels>', "<KeyPointLabels name='label'> on <Image> is not supported"),
    ("broken XML", '<Text name="text" value="$text"/><Choices name="label" toName="text">', "is not well-formed XML"),
    ("XML with an entity bomb", None, "is not well-formed XML: limit on input amplification factor"),
    ("a control with no labels", '<Text name="text" value="$text"/><Choices name="label" toName="text"/>',
     "offers 0 value(s); give it at least two"),
    ("toName pointing nowhere", '<Text name="text" value="$text"/><Choices name="label" toName="body">'
     '<Choice value="ham"/><Choice value="spam"/></Choices>', "has toName='body', which names no object tag"),
]
BOMB = ('<?xml version="1.0"?><!DOCTYPE v [<!ENTITY a "aaaaaaaaaa">' + "".join(
    f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8)) + ']><View><Text name="text" '
    'value="$text"/><Choices name="label" toName="text"><Choice value="&i;"/><Choice value="spam"/></Choices></View>')


@pytest.mark.parametrize(("kind", "body", "expected"), LABELING, ids=[c[0] for c in LABELING])
def test_bad_labeling_config_names_the_tag_and_what_is_supported(tmp_path: Path, kind: str, body: str | None,
                                                                 expected: str) -> None:
    config = tmp_path / "config.xml"
    config.write_text(BOMB if body is None else f"<View>{body}</View>")
    path = spec_file(tmp_path, with_(labeling_config=str(config)))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(error.value).startswith(f"{path}: ") and str(config) in str(error.value)
    assert expected in str(error.value)


# Any value YAML can hold, including what safe_dump writes for odd floats and keys.
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(["${UNSET_VAR_FOR_FUZZ}", "${X:-file:///tmp}", "../../etc/passwd", "s3://", "<View/>"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8)
PATHS = [(key,) for key in SMS] + [(section, key) for section, value in SMS.items() if isinstance(value, dict)
                                    for key in value]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(PATHS), value=yaml_values, drop=st.booleans())
def test_fuzzed_spec_values_load_or_name_the_field(tmp_path: Path, where: tuple[str, ...], value: Any, drop: bool) -> None:
    """Any value at any field of a good spec: it loads, or one SpecError names the file and the field."""
    raw = json.loads(json.dumps(SMS))
    holder = raw if len(where) == 1 else raw[where[0]]
    if drop:
        holder.pop(where[-1])
    else:
        holder[where[-1]] = value
    path = spec_file(tmp_path, yaml.safe_dump(raw))
    try:
        load_spec(path)
    except SpecError as error:
        message = str(error)
        assert message.startswith(f"{path}: ")
        assert "Traceback" not in message
        if message.count("field ") and not drop:  # a per-field problem names a field of the spec
            assert any(part in message for part in where) or "labeling_config" in message, message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200) | st.lists(st.sampled_from(
    ["name: x\n", "labels: &a [*a]\n", "? [a]\n: b\n", "!!binary x\n", "a: !!set {b}\n", "&x a: *x\n", "{", "- ",
     "title: 1e999\n", "source: {uri: 3}\n", "\t", "%YAML 1.1\n---\n", "--- !!map\n", "x: !!timestamp bad\n"]),
    max_size=6).map("".join))
def test_fuzzed_yaml_documents_never_raise_anything_but_spec_error(tmp_path: Path, text: str) -> None:
    path = spec_file(tmp_path, text)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(error.value).startswith(f"{path}: ")


# Storage paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("run_id", ["..", ".", "../../etc", "manual__../../x", "a/b", "manual__2026-01-01T00:00:00+00:00"])
def test_a_run_id_is_one_safe_path_segment(run_id: str) -> None:
    """Run ids name folders of the storage root; Airflow accepts ``..`` as a manual run id."""
    key = run_key(run_id)
    assert "/" not in key and key not in (".", "..") and key


# Arbitrary mixes of the hostile lines above: one outcome per physical record, nothing raises.
hostile_line = st.sampled_from([
    json.dumps(GOOD).encode(), b"\xef\xbb\xbf" + json.dumps(GOOD).encode(), b'{"text": "a", "text": "b"}',
    b'{"text": "a", "score": NaN}', b'{"text": "a\\u0000"}', b'{"text": "\\ud800"}', b'{"text": "caf\xe9"}',
    b"[" * 100 + b"]" * 100, b'{"text": ' + b'"x' * 40_000 + b'"}', b"", b"   "]) | st.binary(max_size=80)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(hostile_line, max_size=10), ending=st.sampled_from([b"\n", b"\r\n"]))
def test_any_mix_of_hostile_jsonl_lines_ends_once_each(lines: list[bytes], ending: bytes) -> None:
    payload = ending.join(line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines)
    expected = [number for number, line in enumerate(payload.split(b"\n"), start=1) if line.strip()]
    records = list(read_records(io.BytesIO(payload), "jsonl", LIMIT))
    if payload.startswith(GZIP_MAGIC) or any(magic.match(payload) for magic, _ in OTHER_COMPRESSIONS.values()):
        # an object that starts like gzip (read as gzip: corrupt, one record says so) or another compression
        expected = [1]
    assert [record.line for record in records] == expected
    for reason in outcomes(payload, "jsonl", VALIDATORS["sms_spam"]):
        assert reason is OK or (reason and "\n" not in reason)


csv_cell = st.text(max_size=12) | st.sampled_from(["\ufeffid", "a\rb", '"q"', "x,y", "\x00", "nan"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.lists(csv_cell, min_size=1, max_size=4), max_size=8),
       ending=st.sampled_from(["\n", "\r\n"]), bom=st.booleans())
def test_any_csv_rows_never_raise_and_every_reason_is_one_line(rows: list[list[str]], ending: str, bom: bool) -> None:
    text = ("\ufeff" if bom else "") + "id,text" + ending + ending.join(",".join(row) for row in rows)
    for reason in outcomes(text.encode("utf-8", "surrogatepass"), "csv", VALIDATORS["sms_spam"]):
        assert reason is OK or (reason and "\n" not in reason)
