"""Annotator comments (a <TextArea>): collected verbatim, listed per item and annotator in the
report (escaped), never audited, and allowed beside the loop's choice control."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import yaml

from labelloop.audit.prepare import comments
from labelloop.collect.export import annotation_rows
from labelloop.collect.table import ANNOTATIONS_SCHEMA, to_frame, to_table
from labelloop.quality.report import render_html
from labelloop.quality import run_audit
from labelloop.spec import load_spec
from labelloop.tasktypes import read_controls

DATA = Path(__file__).resolve().parents[1] / "data" / "labelstudio-export"
CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text"><Choice value="ham"/>'
          '<Choice value="spam"/></Choices><TextArea name="note" toName="text"/></View>')


def test_comments_are_listed_verbatim_per_item_and_annotator(make_spec, tmp_path: Path) -> None:
    config = tmp_path / "config.xml"
    config.write_text(CONFIG)
    path = make_spec()
    raw = yaml.safe_load(path.read_text())
    raw["labeling_config"] = str(config)
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path)  # a TextArea beside the choice control is accepted
    assert spec.control_names == ["label", "note"] and spec.comment_controls == ["note"]

    tasks = copy.deepcopy(json.loads((DATA / "project.json").read_text()))
    note = {"from_name": "note", "to_name": "text", "type": "textarea",
            "value": {"text": ["<script>alert(1)</script> is this", "spam?"]}}
    tasks[0]["annotations"][1]["result"].append(note)
    tasks[1]["annotations"][1]["result"] = [{**note, "value": {"text": ["   "]}}]  # blank: says nothing
    frame = to_frame(to_table(annotation_rows(tasks, spec.control_names), ANNOTATIONS_SCHEMA))
    types = [t for t in read_controls(CONFIG) if t.control.kind == "comment"]
    listed = comments(frame, types)
    assert listed == [{"item_id": 1, "annotator_id": "sim1@example.org", "control": "note",
                       "text": "<script>alert(1)</script> is this\nspam?"}]

    labels = pd.DataFrame({"item_id": [1, 1, 2, 2], "annotator_id": ["a", "b", "a", "b"],
                           "label": ["ham", "ham", "spam", "ham"]})
    metrics = run_audit(labels).metrics
    metrics["comments"] = listed
    page = render_html(metrics)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; is this\nspam?" in page and "<script>alert" not in page
    assert "sim1@example.org" in page


def levenshtein(a: str, b: str) -> int:
    """The textbook dynamic programme, independent of rapidfuzz."""
    row = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, char_b in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (char_a != char_b))
    return row[-1]


def test_comment_agreement_is_edit_distance_and_only_when_asked(make_spec, tmp_path: Path) -> None:
    from labelloop.tasktypes.answers import audit_answers
    from labelloop.tasktypes.comments import text_agreement

    texts = {1: ["unclear sarcasm", "unclear: sarcasm?", "sarcastic"], 2: ["typo in text"], 3: ["", "x"]}
    listed = [{"control": "note", "item_id": item, "annotator_id": f"a{n}", "text": text}
              for item, item_texts in texts.items() for n, text in enumerate(item_texts)]
    expected = []
    for item_texts in (texts[1], texts[3]):
        pairs = [(a, b) for i, a in enumerate(item_texts) for b in item_texts[i + 1:]]
        expected.append(sum(1 - levenshtein(a, b) / max(len(a), len(b), 1) for a, b in pairs) / len(pairs))
    agreement = text_agreement(listed)["note"]
    assert agreement["n_items"] == 2 and agreement["n_pairs"] == 4  # item 2 has one comment: no pair
    assert abs(agreement["mean_similarity"] - sum(expected) / 2) < 1e-12

    # The CLI path: listed always, scored only when asked.
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"item_id": str(item), "annotator_id": f"a{n}", "result": [
        {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["ham"]}},
        {"from_name": "note", "to_name": "text", "type": "textarea", "value": {"text": [text]}}]}) + "\n"
        for item, item_texts in texts.items() for n, text in enumerate(item_texts)))
    controls = read_controls(CONFIG)
    plain = {audit.control.name: audit.metrics for audit in audit_answers(answers, controls)}
    assert "agreement" not in plain["note"]
    scored = {audit.control.name: audit.metrics for audit in audit_answers(answers, controls, comment_agreement=True)}
    assert scored["note"]["agreement"]["n_pairs"] == 3  # the empty comment is no comment
