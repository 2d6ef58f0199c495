"""Turn a parsed record into Label Studio task data, or say exactly why it cannot be one.

The content hash is computed over the task data the spec defines (not the record's id),
so the same message arriving twice, under two ids or in two files, is one task; for an image
task it is the SHA-256 of the image's bytes (``images``), whatever its name.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from labelloop.errors import InputError
from labelloop.ingest.images import ImageChecker, InvalidImage
from labelloop.spec import DataField, ProjectSpec


#: A number as CSV cells write it: JSON's grammar, ASCII digits only (Python's own parsers also
#: take "nan", "inf", "1_000" and other scripts' digits, which would change the value silently).
_NUMBER = {"integer": re.compile(r"[+-]?\d+", re.ASCII),
           "number": re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)}


class InvalidRecord(ValueError):
    """The record breaks the spec; the message names the field and what is accepted."""


@dataclass(frozen=True, slots=True)
class ValidRecord:
    data: dict[str, Any]
    content_hash: str
    item_id: str | None
    label: str | None  # the known answer as the audited control's task type writes it (JSON for spans)


def content_hash(data: dict[str, Any]) -> str:
    """A 128-bit hash of the canonical JSON of the spec's data fields."""
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def _storable(name: str, value: str) -> str:
    """Refuse text Postgres (Label Studio's production database) cannot store in ``jsonb``.

    A NUL (``\\u0000``) or an unpaired surrogate (``\\ud800``) is refused rather than stripped:
    changing the text silently would change its content hash and what annotators see.
    """
    nul = value.find("\x00")
    if nul >= 0:
        raise InvalidRecord(f"field {name!r} contains a NUL character (\\u0000) at character "
                            f"{nul + 1}; Label Studio's database cannot store it: remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(value[error.start])
        raise InvalidRecord(f"field {name!r} contains an unpaired surrogate (\\u{code:04x}) at "
                            f"character {error.start + 1}; it is not text: fix the escape") from None
    return value


def _coerce(name: str, rule: DataField, value: Any) -> Any:
    """Accept the spec's type; CSV cells arrive as strings, so numbers and booleans are parsed."""
    if rule.type == "string":
        if not isinstance(value, str):
            raise InvalidRecord(f"field {name!r} must be a string, got {type(value).__name__} {value!r:.80}")
        if rule.max_length is not None and len(value) > rule.max_length:
            raise InvalidRecord(f"field {name!r} has {len(value):,} characters; the limit is {rule.max_length:,}")
        return _storable(name, value)
    if rule.type == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0"}:
            return value.strip().lower() in {"true", "1"}
        raise InvalidRecord(f"field {name!r} must be true or false, got {value!r:.80}")
    number_type = int if rule.type == "integer" else float
    expected = f"field {name!r} must be {'an integer' if number_type is int else 'a finite number'}"
    if isinstance(value, bool) or (isinstance(value, str) and not _NUMBER[rule.type].fullmatch(value.strip())):
        raise InvalidRecord(f"{expected}, got {value!r:.80}")
    try:
        number = number_type(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRecord(f"{expected}, got {value!r:.80}") from None
    if isinstance(number, float) and not math.isfinite(number):  # NaN, Infinity: not JSON, Label Studio refuses them
        raise InvalidRecord(f"{expected}, got {value!r:.80}")
    if number_type is int and isinstance(value, float) and not value.is_integer():
        raise InvalidRecord(f"field {name!r} must be an integer, got {value!r}")
    return number


class RecordValidator:
    """Checks records against one spec: required fields, types, sizes, known labels."""

    def __init__(self, spec: ProjectSpec) -> None:
        self.fields = spec.source.fields
        self.id_field = spec.source.id_field
        self.label_field = spec.source.label_field
        self.task_type = spec.task_type
        self.images = ImageChecker(spec) if spec.image_field else None

    def validate(self, record: dict[str, Any]) -> ValidRecord:
        data: dict[str, Any] = {}
        for name, rule in self.fields.items():
            source = rule.source or name
            value = record.get(source)
            if value is None or (isinstance(value, str) and not value.strip()):
                if rule.required:
                    present = ", ".join(sorted(record)) or "none"
                    raise InvalidRecord(f"required field {source!r} is missing or empty (fields present: {present})")
                continue
            data[name] = _coerce(source, rule, value)
        key = content_hash(data)
        if self.images is not None:
            try:
                data, key = self.images.check(data)
            except InvalidImage as error:
                raise InvalidRecord(f"image {data[self.images.field]!r}: {error}") from None
        label = self._label(record, data)
        item_id = record.get(self.id_field) if self.id_field else None
        if item_id is not None:
            item_id = _storable(self.id_field, str(item_id))  # it is stored in the task data too
        return ValidRecord(data, key, item_id, label)

    def _label(self, record: dict[str, Any], data: dict[str, Any]) -> str | None:
        """The known answer, checked by the audited control's task type (a label of the config;
        for spans, offsets inside the task's text), as the text the task meta keeps."""
        if not self.label_field:
            return None
        label = record.get(self.label_field)
        if label is None or label == "":
            return None
        try:
            rows = self.task_type.known_answer(label, data, f"field {self.label_field!r}")
        except InputError as error:
            raise InvalidRecord(str(error)) from None
        return self.task_type.known_text(rows)
