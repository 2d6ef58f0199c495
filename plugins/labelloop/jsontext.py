"""A check every parser of outside JSON runs first: how deeply the text nests.

Python's json module recurses per level, so one hostile line of 10,000 brackets (20 KB)
raises RecursionError and takes down whatever parses it. Ingest readers and the audit CLI
refuse such a line by name instead; this module has no heavy imports so both can use it.
"""

from __future__ import annotations

import re
from itertools import accumulate

#: Deepest nesting of JSON objects and arrays a record may have (the record itself is level 1).
#: Records and Label Studio answers are a few levels deep, so 64 is plenty.
MAX_NESTING = 64

# A whole JSON string (escapes included), or a stray escape outside one: linear, no backtracking.
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|\\.', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def nested_too_deep(text: str, limit: int = MAX_NESTING) -> bool:
    """Whether JSON ``text`` opens more than ``limit`` objects/arrays inside each other.

    Cheap enough for every line: a text with at most ``limit`` brackets is not scanned, else
    strings (whose brackets do not count) are cut out and the rest is summed in C (8 ms for
    64 KB of brackets). Call it before ``json.loads`` on text from outside.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit
