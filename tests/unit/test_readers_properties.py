"""Property tests (Hypothesis) of the readers and the validator: for arbitrary bytes, every
record comes out once, good or with a reason, and nothing raises."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labelloop.ingest.readers import read_records
from labelloop.ingest.validate import InvalidRecord, RecordValidator
from labelloop.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
SPEC = load_spec(REPO / "include" / "projects" / "sms_spam.yaml")
VALIDATOR = RecordValidator(SPEC)
LIMIT = 4096

# Lines that look like records, hostile text, and raw bytes, mixed.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
records = st.fixed_dictionaries({"text": st.text() | json_values}, optional={"label": st.sampled_from(
    ["ham", "spam", "eggs", ""]) | json_values, "id": json_values})
line = st.one_of(
    records.map(lambda r: json.dumps(r).encode()),
    records.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.binary(max_size=200).filter(lambda b: b"\n" not in b and b"\r" not in b),
    st.integers(1, 300).map(lambda depth: ("[" * depth + "]" * depth).encode()),
    st.just("\ufeff".encode()) .map(lambda bom: bom + b'{"text": "bom in the middle"}'),
    st.just(b'{"text": "nul \\u0000 here"}'),
    st.just(b'{"text": "lone \\ud800 surrogate"}'),
)


def outcome(record) -> str:
    """What ingest makes of one read record: quarantined, or valid (InvalidRecord is quarantined too)."""
    if record.error is not None:
        assert record.fields is None and isinstance(record.error, str) and record.error
        return "quarantined"
    try:
        VALIDATOR.validate(record.fields)
    except InvalidRecord as error:
        assert str(error)
        return "quarantined"
    return "valid"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(line, max_size=12), gzipped=st.booleans(), crlf=st.booleans())
def test_every_jsonl_line_ends_once_and_nothing_raises(lines: list[bytes], gzipped: bool, crlf: bool) -> None:
    payload = (b"\r\n" if crlf else b"\n").join(lines)
    body = gzip.compress(payload) if gzipped else payload
    read = list(read_records(io.BytesIO(body), "jsonl", LIMIT))
    expected = [number for number, raw in enumerate(payload.split(b"\n"), start=1) if raw.strip()]
    assert [record.line for record in read] == expected
    assert {outcome(record) for record in read} <= {"valid", "quarantined"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=600) | st.lists(line, max_size=8).map(lambda ls: b"\n".join(ls)),
       fmt=st.sampled_from(["json", "csv", "jsonl"]), gzipped=st.booleans(), cut=st.integers(0, 50))
def test_any_bytes_in_any_format_never_raise(payload: bytes, fmt: str, gzipped: bool, cut: int) -> None:
    """Arbitrary bytes, a JSON array that ends early, a truncated gzip: records or reasons, no exception."""
    body = gzip.compress(payload) if gzipped else payload
    body = body[: max(0, len(body) - cut)] if gzipped else body
    for record in read_records(io.BytesIO(body), fmt, LIMIT):
        assert outcome(record) in {"valid", "quarantined"}
