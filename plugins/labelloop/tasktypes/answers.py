"""Label Studio answers as JSON lines: read them into one tidy frame per control, audit each
control with its task type, and write the consensus back in the same result format.

``ANSWERS.jsonl``: ``{"item_id", "annotator_id", "data": {...}, "result": [...]}`` a line, one
annotation each; an empty ``result`` is the real answer "nothing here". ``GOLD.jsonl``: the
same without ``annotator_id``. Every refusal names the file and the line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from labelloop.errors import InputError
from labelloop.jsontext import MAX_NESTING, nested_too_deep
from labelloop.tasktypes.comments import text_agreement

from .base import ControlAudit, TaskType

GOLD = "gold"


@dataclass(frozen=True)
class Answers:
    """One tidy frame per control name, and the task data seen per item."""

    frames: dict[str, pd.DataFrame]
    data: dict[str, dict[str, Any]]


def json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``path line N``, object) for every non-blank line; anything else is refused by line."""
    if not path.is_file():
        raise InputError(f"{path}: no such file; check the path")
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            where = f"{path} line {number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise InputError(f"{where}: not UTF-8 (byte {error.start}); save the file as UTF-8") from None
            if not line.strip():
                continue
            if nested_too_deep(line):
                raise InputError(f"{where}: JSON nested deeper than {MAX_NESTING} levels; an answer is a few levels deep")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{where}: not JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


def read_answers(path: Path, controls: list[TaskType], *, gold: bool = False) -> Answers:
    """Every line's results, split by control and turned into tidy rows by its task type."""
    by_name = {task_type.control.name: task_type for task_type in controls}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in by_name}
    data: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[str, str], str] = {}
    for where, record in json_lines(path):
        item = _identifier(record, "item_id", where)
        annotator = GOLD if gold else _identifier(record, "annotator_id", where)
        if (item, annotator) in seen:
            raise InputError(f"{where}: item_id {item!r} " + ("" if gold else f"annotator_id {annotator!r} ")
                             + f"again (first at {seen[item, annotator]}); keep one answer each")
        seen[item, annotator] = where
        record_data = record.get("data") or {}
        if not isinstance(record_data, dict):
            raise InputError(f"{where}: data must be an object of task fields, got {type(record_data).__name__}")
        if record_data:
            data.setdefault(item, record_data)
        results = record.get("result")
        if not isinstance(results, list) or not all(isinstance(result, dict) for result in results):
            raise InputError(f"{where}: result must be a list of Label Studio result objects, got {results!r:.80}")
        for result in results:
            name = result.get("from_name")
            if name not in by_name:
                raise InputError(f"{where}: a result for control {name!r}, which the config does not have; "
                                 f"its controls: {sorted(by_name)}")
            control = by_name[name].control
            if result.get("to_name", control.to_name) != control.to_name:
                raise InputError(f"{where}: a result of {control.describe()} points at "
                                 f"{result.get('to_name')!r}; the config says toName={control.to_name!r}")
        for name, task_type in by_name.items():
            own = [result for result in results if result.get("from_name") == name]
            for row in task_type.answer_rows(own, data.get(item, record_data), where):
                rows[name].append({"item_id": item, "annotator_id": annotator, **row})
    frames = {name: pd.DataFrame(rows[name], columns=["item_id", "annotator_id", *by_name[name].columns])
              for name in by_name}
    return Answers(frames, data)


def _identifier(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise InputError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return str(value)


def audit_answers(answers_path: Path, controls: list[TaskType], gold_path: Path | None = None,
                  *, seed: int = 0, comment_agreement: bool = False) -> list[ControlAudit]:
    """Audit every control (from ``read_controls``) over the answers (and gold); comment
    controls are listed, and scored for agreement by edit distance only when asked."""
    answers = read_answers(answers_path, controls)
    gold = None if gold_path is None else read_answers(gold_path, controls, gold=True)
    audits = []
    for task_type in controls:
        name = task_type.control.name
        frame = answers.frames[name]
        if frame.empty and task_type.control.kind != "comment":
            raise InputError(f"{answers_path}: no answers for {task_type.control.describe()}")
        gold_frame = None if gold is None else gold.frames[name].drop(columns="annotator_id")
        data = {**(gold.data if gold else {}), **answers.data}
        audit = task_type.audit(frame, gold_frame, seed=seed, data=data)
        if comment_agreement and task_type.control.kind == "comment":
            audit.metrics["agreement"] = text_agreement(frame.assign(control=name).to_dict("records")).get(name)
        audits.append(audit)
    return audits


def consensus_lines(audits: list[ControlAudit], controls: list[TaskType]) -> list[dict[str, Any]]:
    """One ``{"item_id", "result", "confidence"}`` per item; the confidence of an item with
    several controls is the lowest of theirs (the weakest answer decides how sure it is)."""
    by_name = {task_type.control.name: task_type for task_type in controls}
    items = sorted({item for audit in audits for item in audit.confidence.index})
    lines = []
    grouped = {audit.control.name: dict(tuple(audit.consensus.groupby("item_id", sort=False)))
               for audit in audits}
    for item in items:
        result: list[dict[str, Any]] = []
        confidences = []
        for audit in audits:
            rows = grouped[audit.control.name].get(item)
            if rows is not None:
                result += by_name[audit.control.name].results(rows)
            if item in audit.confidence.index:
                confidences.append(float(audit.confidence[item]))
        confidence = min(confidences) if confidences else math.nan
        lines.append({"item_id": item, "result": result,
                      "confidence": None if math.isnan(confidence) else round(confidence, 6)})
    return lines


def write_consensus(path: Path, lines: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for line in lines:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


def metrics_document(audits: list[ControlAudit]) -> dict[str, Any]:
    """metrics.json: every control under ``controls``; with one audited control (comments are
    listed, not audited), its metrics also at the top level, so a single-control project reads
    ``annotators[].f1`` directly."""
    controls = {audit.control.name: {"kind": audit.control.kind, "tag": audit.control.tag, **audit.metrics}
                for audit in audits}
    document: dict[str, Any] = {"schema_version": 2, "controls": controls}
    audited = [audit for audit in audits if audit.control.kind != "comment"]
    if len(audited) == 1:
        document = {**audited[0].metrics, **document}
    return document


def write_outputs(audits: list[ControlAudit], controls: list[TaskType], out_dir: Path) -> list[Path]:
    """consensus.jsonl, metrics.json and report.html (one section per control)."""
    from labelloop.quality import report

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in ("consensus.jsonl", "metrics.json", "report.html")]
    write_consensus(paths[0], consensus_lines(audits, controls))
    paths[1].write_text(report.metrics_json(metrics_document(audits)), encoding="utf-8")
    by_name = {task_type.control.name: task_type for task_type in controls}
    body = "".join(f"<h2>{report.html.escape(audit.control.describe())}</h2>"
                   + "".join(by_name[audit.control.name].report_sections(audit.metrics)) for audit in audits)
    paths[2].write_text(report.page("Label audit", body), encoding="utf-8")
    return paths
