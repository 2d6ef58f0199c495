"""Hostile text in the quality report, per task type: annotator ids, labels, comments and item
ids with HTML and script in them come out escaped, and text matplotlib would read as math
("$\\foo$") neither breaks the plots nor the page.

The audit CLI (``python -m labelloop audit``) writes the report from real answer files, one
per task type: choices (the CSV form and the JSON-lines form), multiple choices, spans and a
TextArea comment control, all on one labeling config.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path


from labelloop.quality.cli import main

SCRIPT = '<script>alert("x")</script>'
IMG = '"><img src=x onerror=alert(1)>'
MATH = "$\\foo$"  # matplotlib's mathtext raises on an unknown symbol
HOSTILE = [SCRIPT, IMG, MATH, "</td></table><b>bold</b>"]
ANNOTATORS = [f"{text}@example.com" for text in HOSTILE]
LABEL = SCRIPT  # a label (a choice value of the config) with script in it

CONFIG = f"""<View>
  <Text name="text" value="$text"/>
  <Choices name="kind" toName="text">
    <Choice value="{html.escape(LABEL)}"/><Choice value="ham"/>
  </Choices>
  <Choices name="topics" toName="text" choice="multiple">
    <Choice value="{html.escape(IMG)}"/><Choice value="money"/>
  </Choices>
  <Labels name="ents" toName="text"><Label value="{html.escape(MATH)}"/><Label value="ORG"/></Labels>
  <TextArea name="note" toName="text"/>
</View>"""


def answers(item: int, annotator: int) -> dict:
    choice = [LABEL, "ham"][(item + (annotator == 0)) % 2]
    return {"item_id": f"<script>item {item}</script>", "annotator_id": ANNOTATORS[annotator],
            "data": {"text": "ACME pays Bob " + SCRIPT},
            "result": [
                {"from_name": "kind", "to_name": "text", "type": "choices", "value": {"choices": [choice]}},
                {"from_name": "topics", "to_name": "text", "type": "choices",
                 "value": {"choices": [IMG] if item % 2 else [IMG, "money"]}},
                {"from_name": "ents", "to_name": "text", "type": "labels",
                 "value": {"start": 0, "end": 4, "labels": [MATH if annotator else "ORG"]}},
                {"from_name": "note", "to_name": "text", "type": "textarea",
                 "value": {"text": [f"comment {HOSTILE[annotator]}"]}},
            ]}


def assert_escaped(page: str) -> None:
    """No hostile markup is live on the page; it is there, escaped."""
    for text in HOSTILE[:2] + HOSTILE[3:]:
        assert text not in page
    assert 'alert("x")</script>' not in page and "<img src=x" not in page and "<b>bold</b>" not in page


def test_csv_audit_report_escapes_ids_labels_and_survives_math_text(tmp_path: Path) -> None:
    with (tmp_path / "labels.csv").open("w", newline="") as labels, (tmp_path / "gold.csv").open("w", newline="") as gold:
        label_rows, gold_rows = csv.writer(labels), csv.writer(gold)
        label_rows.writerow(["item_id", "annotator_id", "label"])
        gold_rows.writerow(["item_id", "label"])
        for item in range(12):
            for annotator, who in enumerate(ANNOTATORS):
                label_rows.writerow([f"<script>{item}</script>", who, [LABEL, MATH][(item + (annotator == 0)) % 2]])
            gold_rows.writerow([f"<script>{item}</script>", [LABEL, MATH][item % 2]])
    code = main([str(tmp_path / "labels.csv"), "--gold", str(tmp_path / "gold.csv"), "--out", str(tmp_path / "out")])
    assert code == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert_escaped(page)
    assert html.escape(ANNOTATORS[0]) in page  # the annotator table names them, escaped
    assert page.count("data:image/png;base64,") >= 3  # accuracy, confusion and kappa plots drawn


def test_jsonl_audit_reports_escape_every_task_type(tmp_path: Path) -> None:
    config = tmp_path / "config.xml"
    config.write_text(CONFIG)
    lines = [json.dumps(answers(item, annotator)) for item in range(10) for annotator in range(len(ANNOTATORS))]
    (tmp_path / "answers.jsonl").write_text("\n".join(lines) + "\n")
    code = main([str(tmp_path / "answers.jsonl"), "--config", str(config), "--out", str(tmp_path / "out")])
    assert code == 0
    pages = sorted((tmp_path / "out").rglob("*.html"))
    assert pages, "no report written"
    text = "\n".join(page.read_text() for page in pages)
    assert_escaped(text)
    for control in ("kind", "topics", "ents", "note"):
        assert control in text, f"control {control} is missing from the reports"
    assert html.escape(f"comment {IMG}") in text  # the comment control lists what annotators wrote, escaped
    assert html.escape(ANNOTATORS[0]) in text and html.escape("<script>item 3</script>") in text
