"""``python -m labelloop audit ANSWERS.jsonl --config X.xml``: Label Studio's own result format
in and out, each control by its task type; bad lines refused with their line number."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from labelloop.quality.audit import run_audit
from labelloop.quality.cli import main

CONFIG = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
          '<Choice value="entailed"/><Choice value="not_entailed"/></Choices></View>')


def choice(label: str, name: str = "label") -> dict:
    return {"from_name": name, "to_name": "text", "type": "choices", "value": {"choices": [label]}}


def write_lines(path: Path, records: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def rte_files(tmp_path: Path, rte_labels: pd.DataFrame, rte_gold: pd.Series) -> dict[str, Path]:
    answers = [{"item_id": row.item_id, "annotator_id": row.annotator_id, "result": [choice(row.label)]}
               for row in rte_labels.itertuples()]
    gold = [{"item_id": item, "data": {"text": "t"}, "result": [choice(label)]}
            for item, label in rte_gold.iloc[:60].items()]
    return {"answers": write_lines(tmp_path / "answers.jsonl", answers),
            "gold": write_lines(tmp_path / "gold.jsonl", gold),
            "config": (tmp_path / "config.xml"), "out": tmp_path / "out"}


def test_choices_in_result_format_equal_the_csv_audit(rte_files, rte_labels, rte_gold, capsys) -> None:
    rte_files["config"].write_text(CONFIG)
    argv = [str(rte_files["answers"]), "--config", str(rte_files["config"]), "--gold", str(rte_files["gold"]),
            "--out", str(rte_files["out"])]
    assert main(argv) == 0, capsys.readouterr().err
    expected = run_audit(rte_labels, rte_gold.iloc[:60].reset_index()).consensus.set_index("item_id")
    lines = [json.loads(line) for line in (rte_files["out"] / "consensus.jsonl").read_text().splitlines()]
    assert len(lines) == 404
    for line in lines:
        assert line["result"] == [choice(expected.loc[line["item_id"], "label"])]
        assert line["confidence"] == pytest.approx(expected.loc[line["item_id"], "confidence"], abs=1e-6)
    metrics = json.loads((rte_files["out"] / "metrics.json").read_text())
    assert (metrics["controls"]["label"]["kind"], metrics["controls"]["label"]["tag"]) == ("choices", "Choices")
    assert metrics["annotators"] == metrics["controls"]["label"]["annotators"]
    assert "<h2>&lt;Choices name=&#x27;label&#x27;&gt;</h2>" in (rte_files["out"] / "report.html").read_text()


GOOD = {"item_id": "1", "annotator_id": "a", "result": [choice("entailed")]}
BAD_LINES = [
    ("{not json", "line 2: not JSON (Expecting property name enclosed in double quotes at column 2)"),
    ("[" * 5000 + "]" * 5000, "line 2: JSON nested deeper than 64 levels"),
    ({"item_id": "2", "annotator_id": "a", "result": [choice("maybe")]},
     "line 2: label 'maybe' is not offered by <Choices name='label'>; it offers ['entailed', 'not_entailed']"),
    ({"item_id": "2", "annotator_id": "a", "result": [choice("entailed", name="other")]},
     "line 2: a result for control 'other', which the config does not have; its controls: ['label']"),
    (GOOD, "line 2: item_id '1' annotator_id 'a' again (first at"),
    ({"item_id": "2", "result": []}, "line 2: annotator_id must be a non-empty string, got None"),
    ({"item_id": "2", "annotator_id": "a", "result": "entailed"}, "line 2: result must be a list"),
    ({"item_id": "2", "annotator_id": "a", "result": [choice("entailed"), choice("not_entailed")]},
     "line 2: <Choices name='label'> takes one choice"),
]


@pytest.mark.parametrize(("line", "expected"), BAD_LINES)
def test_bad_line_exits_2_naming_the_line(tmp_path: Path, capsys, line, expected) -> None:
    answers = write_lines(tmp_path / "answers.jsonl", [GOOD, line])
    (tmp_path / "config.xml").write_text(CONFIG)
    assert main([str(answers), "--config", str(tmp_path / "config.xml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(answers) in err and expected in err, err


@pytest.mark.parametrize(("config", "expected"), [
    ('<View><Image name="img" value="$image"/><Polygon name="p" toName="img"/></View>',
     "<Polygon name='p'> on <Image> is not supported; supported: <Choices> with one choice"),
    ('<View><Text name="text" value="$text"/><Choices name="label" toName="body"><Choice value="a"/>'
     '<Choice value="b"/></Choices></View>', "has toName='body', which names no object tag"),
    ("<View><Text", "is not well-formed XML"),
])
def test_bad_config_exits_2_naming_file_and_tag(tmp_path: Path, capsys, config, expected) -> None:
    answers = write_lines(tmp_path / "answers.jsonl", [GOOD])
    (tmp_path / "config.xml").write_text(config)
    assert main([str(answers), "--config", str(tmp_path / "config.xml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "config.xml") in err and expected in err, err


def test_json_lines_need_a_config(tmp_path: Path, capsys) -> None:
    answers = write_lines(tmp_path / "answers.jsonl", [GOOD])
    assert main([str(answers), "--out", str(tmp_path / "out")]) == 2
    assert "JSON lines need --config" in capsys.readouterr().err


CONLL = Path(__file__).resolve().parents[2] / "data" / "conll-mturk-dev"
TYPES = ("PER", "ORG", "LOC", "MISC")
MULTI_CONFIG = ('<View><Text name="text" value="$text"/><Choices name="types" toName="text" choice="multiple">'
                + "".join(f'<Choice value="{label}"/>' for label in TYPES) + "</Choices></View>")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def types_result(spans: list) -> list[dict]:
    chosen = [label for label in TYPES if label in {label for _, _, label in spans}]  # config order
    return [{"from_name": "types", "to_name": "text", "type": "choices", "value": {"choices": chosen}}] if chosen else []


def test_multiple_choice_on_real_crowd_sets(tmp_path: Path, capsys) -> None:
    """The entity types each CoNLL-2003 MTurk worker marked in a sentence, against the gold set."""
    crowd, items = read_jsonl(CONLL / "crowd_spans.jsonl"), read_jsonl(CONLL / "items.jsonl")
    answers = write_lines(tmp_path / "answers.jsonl", [
        {"item_id": a["item_id"], "annotator_id": a["annotator_id"], "result": types_result(a["spans"])}
        for a in crowd])
    gold = write_lines(tmp_path / "gold.jsonl", [
        {"item_id": it["id"], "data": {"text": it["text"]}, "result": types_result(it["gold"])} for it in items])
    (tmp_path / "config.xml").write_text(MULTI_CONFIG)
    argv = [str(answers), "--config", str(tmp_path / "config.xml"), "--gold", str(gold), "--out", str(tmp_path / "out")]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # Consensus before gold overrides, against gold: well above per-label majority vote (0.585 / 0.691).
    assert metrics["gold"]["n_items"] == 2743
    assert metrics["gold"]["exact_match"] > 0.67 and metrics["gold"]["macro_f1"] > 0.78
    # annotators[].accuracy is per-cell (Hamming) accuracy over items x labels, recomputed here.
    gold_sets = {it["id"]: {label for _, _, label in it["gold"]} for it in items}
    for row in metrics["annotators"][:10]:
        mine = [a for a in crowd if a["annotator_id"] == row["annotator_id"]]
        cells = [(label in {s[2] for s in a["spans"]}) == (label in gold_sets[a["item_id"]])
                 for a in mine for label in TYPES]
        assert row["accuracy"] == pytest.approx(sum(cells) / len(cells))
    # Gold items keep their gold set in the consensus; an empty set is an item without a result.
    lines = {line["item_id"]: line for line in read_jsonl(tmp_path / "out" / "consensus.jsonl")}
    for item in items[:200]:
        if item["id"] in lines:
            assert lines[item["id"]]["result"] == types_result(item["gold"])


SPAN_CONFIG = ('<View><Text name="text" value="$text"/><Labels name="ner" toName="text">'
               + "".join(f'<Label value="{label}"/>' for label in TYPES) + "</Labels></View>")


def span_results(spans: list, text: str) -> list[dict]:
    return [{"from_name": "ner", "to_name": "text", "type": "labels",
             "value": {"start": s, "end": e, "text": text[s:e], "labels": [label]}} for s, e, label in spans]


def exact_f1(predicted: set, gold: set) -> float:
    return 2 * len(predicted & gold) / (len(predicted) + len(gold))


def test_spans_on_real_crowd_answers(tmp_path: Path, capsys) -> None:
    """CoNLL-2003 MTurk spans in Label Studio's result format: consensus beats token majority
    vote (0.653 here), and every gold score is recomputed with plain sets."""
    crowd, items = read_jsonl(CONLL / "crowd_spans.jsonl"), read_jsonl(CONLL / "items.jsonl")
    texts = {it["id"]: it["text"] for it in items}
    answers = write_lines(tmp_path / "answers.jsonl", [
        {"item_id": a["item_id"], "annotator_id": a["annotator_id"], "data": {"text": texts[a["item_id"]]},
         "result": span_results(a["spans"], texts[a["item_id"]])} for a in crowd])
    gold = write_lines(tmp_path / "gold.jsonl", [
        {"item_id": it["id"], "data": {"text": it["text"]}, "result": span_results(it["gold"], it["text"])}
        for it in items])
    (tmp_path / "config.xml").write_text(SPAN_CONFIG)
    out = tmp_path / "out"
    assert main([str(answers), "--config", str(tmp_path / "config.xml"), "--gold", str(gold), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    gold_spans = {(it["id"], s, e, label) for it in items for s, e, label in it["gold"]}
    answered = {a["item_id"] for a in crowd}
    assert metrics["gold"]["f1"] > 0.76  # token-level majority vote: 0.653; votes alone: 0.719
    errors = sum(metrics["gold"][key] for key in ("label_errors", "boundary_errors", "label_and_boundary_errors",
                                                   "false_spans"))
    assert metrics["gold"]["n_spans"] == metrics["gold"]["exact_matches"] + errors
    for row in metrics["annotators"][:12]:
        mine = [a for a in crowd if a["annotator_id"] == row["annotator_id"]]
        predicted = {(a["item_id"], s, e, label) for a in mine for s, e, label in a["spans"]}
        reference = {span for span in gold_spans if span[0] in {a["item_id"] for a in mine}}
        assert row["f1"] == pytest.approx(exact_f1(predicted, reference))
    # The consensus file is Label Studio results: offsets and text agree; gold items keep gold.
    lines = read_jsonl(out / "consensus.jsonl")
    assert {line["item_id"] for line in lines} == answered
    for line in lines:
        for result in line["result"]:
            value = result["value"]
            assert value["text"] == texts[line["item_id"]][value["start"]:value["end"]]
        assert {(line["item_id"], r["value"]["start"], r["value"]["end"], r["value"]["labels"][0])
                for r in line["result"]} == {span for span in gold_spans if span[0] == line["item_id"]}


SPAN_GOOD = {"item_id": "s1", "annotator_id": "a", "data": {"text": "Anna lives in Paris"},
             "result": span_results([[0, 4, "PER"]], "Anna lives in Paris")}


def span_line(start: int, end: int, label: str = "LOC", text: str | None = None) -> dict:
    value = {"start": start, "end": end, "labels": [label], **({"text": text} if text is not None else {})}
    return {"item_id": "s1", "annotator_id": "b", "data": {"text": "Anna lives in Paris"},
            "result": [{"from_name": "ner", "to_name": "text", "type": "labels", "value": value}]}


@pytest.mark.parametrize(("line", "expected"), [
    (span_line(14, 12), "line 2: span start 14 is not before its end 12"),
    (span_line(14, 40), "line 2: span 14-40 ends past the text, which has 19 characters"),
    (span_line(-1, 3), "line 2: span offsets must be non-negative whole numbers"),
    (span_line(14, 19, text="Pari"), "line 2: span 14-19 says its text is 'Pari', but the task's text there is 'Paris'"),
    (span_line(14, 19, label="CITY"), "line 2: label 'CITY' is not offered by <Labels name='ner'>"),
    ({**span_line(14, 19), "result": [{"from_name": "ner", "to_name": "text", "type": "labels",
                                       "value": {"start": "14", "end": 19, "labels": ["LOC"]}}]},
     "line 2: value.start must be a number, got '14'"),
])
def test_bad_span_exits_2_naming_the_line(tmp_path: Path, capsys, line, expected) -> None:
    answers = write_lines(tmp_path / "answers.jsonl", [SPAN_GOOD, line])
    (tmp_path / "config.xml").write_text(SPAN_CONFIG)
    assert main([str(answers), "--config", str(tmp_path / "config.xml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert expected in err, err


BOXES = Path(__file__).resolve().parents[2] / "data" / "pedestrian-boxes-dev"
BOX_CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
              '<Label value="pedestrian"/><Label value="cyclist"/></RectangleLabels></View>')


def box_results(boxes: list, width: float, height: float, label: str = "pedestrian") -> list[dict]:
    return [{"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": width,
             "original_height": height, "value": {"x": 100 * x / width, "y": 100 * y / height, "width": 100 * w / width,
                                                  "height": 100 * h / height, "rotation": 0, "rectanglelabels": [label]}}
            for x, y, w, h in boxes]


def iou(a: list, b: list) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - ix * iy
    return ix * iy / union if union else 0.0


def matched(boxes: list, gold: list) -> int:
    """One-to-one matches at IoU >= 0.5 maximising total IoU (scipy's Hungarian solver)."""
    from scipy.optimize import linear_sum_assignment

    if not boxes or not gold:
        return 0
    scores = [[iou(a, b) if iou(a, b) >= 0.5 else 0.0 for b in gold] for a in boxes]
    rows, cols = linear_sum_assignment(scores, maximize=True)
    return sum(scores[r][c] > 0 for r, c in zip(rows, cols))


def test_boxes_on_real_crowd_answers(tmp_path: Path, capsys) -> None:
    """Pedestrian boxes by 7 MTurk workers per image in Label Studio's rectangle format:
    per-annotator F1 at IoU 0.5 against expert gold is recomputed here by hand."""
    images = {it["image_id"]: it for it in read_jsonl(BOXES / "images.jsonl")}
    # Zero-size boxes (accidental clicks in the source) are refused by the audit, so leave them out.
    crowd = [{**a, "boxes": [b for b in a["boxes"] if b[2] > 0 and b[3] > 0]}
             for a in read_jsonl(BOXES / "crowd_boxes.jsonl")]
    answers = write_lines(tmp_path / "answers.jsonl", [
        {"item_id": a["image_id"], "annotator_id": a["annotator_id"],
         "data": {"image": f"s3://b/{a['image_id']}.png", "width": images[a["image_id"]]["width"],
                  "height": images[a["image_id"]]["height"]},
         "result": box_results(a["boxes"], images[a["image_id"]]["width"], images[a["image_id"]]["height"])}
        for a in crowd])
    gold_images = {key: it for key, it in images.items() if it["gold"] is not None}
    gold = write_lines(tmp_path / "gold.jsonl", [
        {"item_id": key, "data": {"width": it["width"], "height": it["height"]},
         "result": box_results(it["gold"], it["width"], it["height"])} for key, it in gold_images.items()])
    (tmp_path / "config.xml").write_text(BOX_CONFIG)
    out = tmp_path / "out"
    assert main([str(answers), "--config", str(tmp_path / "config.xml"), "--gold", str(gold), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gold"]["n_items"] == 467 and metrics["gold"]["f1"] > 0.9
    for row in metrics["annotators"][:10]:
        mine = [a for a in crowd if a["annotator_id"] == row["annotator_id"] and a["image_id"] in gold_images]
        hits = sum(matched(a["boxes"], gold_images[a["image_id"]]["gold"]) for a in mine)
        drawn, truth = sum(len(a["boxes"]) for a in mine), sum(len(gold_images[a["image_id"]]["gold"]) for a in mine)
        assert row["f1"] == pytest.approx(2 * hits / (drawn + truth)), row["annotator_id"]
    lines = {line["item_id"]: line for line in read_jsonl(out / "consensus.jsonl")}
    assert len(lines) == 722 and all(0 <= line["confidence"] <= 1 for line in lines.values())
    some = next(key for key, it in gold_images.items() if it["gold"])
    assert [r["value"]["x"] for r in lines[some]["result"]] == pytest.approx(
        [r["value"]["x"] for r in box_results(gold_images[some]["gold"], 1, 1)] and
        [100 * x / gold_images[some]["width"] for x, *_ in gold_images[some]["gold"]])


BOX_GOOD = {"item_id": "i1", "annotator_id": "a", "result": box_results([[10, 10, 20, 20]], 100, 100)}


def box_line(**value) -> dict:
    base = {"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0, "rectanglelabels": ["pedestrian"]}
    return {"item_id": "i1", "annotator_id": "b",
            "result": [{"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": 100,
                        "original_height": 100, "value": {**base, **value}}]}


@pytest.mark.parametrize(("line", "expected"), [
    (box_line(width=-5), "line 2: value.width=-5 is outside 0-100 % of the image"),
    (box_line(height=0), "line 2: width=20, height=0; expected both > 0"),
    (box_line(x=95), "line 2: the box ends at x+width=115 %"),
    (box_line(x=-1), "line 2:"),
    (box_line(rotation=30), "line 2: rotation=30; only unrotated boxes"),
    (box_line(rectanglelabels=["car"]), "line 2: label 'car' is not offered by <RectangleLabels name='box'>"),
])
def test_bad_box_exits_2_naming_the_line(tmp_path: Path, capsys, line, expected) -> None:
    answers = write_lines(tmp_path / "answers.jsonl", [BOX_GOOD, line])
    (tmp_path / "config.xml").write_text(BOX_CONFIG)
    assert main([str(answers), "--config", str(tmp_path / "config.xml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
