"""``python -m labelloop audit``: outputs on good input, one actionable line on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labelloop.quality.cli import main

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def files(tmp_path, rte_labels, rte_gold) -> dict[str, Path]:
    labels, gold = tmp_path / "labels.csv", tmp_path / "gold.csv"
    rte_labels.to_csv(labels, index=False)
    rte_gold.iloc[:60].reset_index().to_csv(gold, index=False)
    return {"labels": labels, "gold": gold, "out": tmp_path / "out"}


def test_cli_writes_the_three_files(files, capsys) -> None:
    argv = [str(files["labels"]), "--gold", str(files["gold"]), "--method", "majority",
            "--seed", "4", "--out", str(files["out"])]  # fmt: skip
    assert main(argv) == 0
    assert sorted(path.name for path in files["out"].iterdir()) == [
        "consensus.csv", "metrics.json", "report.html",
    ]  # fmt: skip
    assert "audited 404 items, Krippendorff's alpha 0.243" in capsys.readouterr().out


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


BAD_INPUT = {
    "ragged row": (lambda d: (write(d / "r.csv", "item_id,annotator_id,label\n1,a,b,c,d\n2,x,y\n"), None),
                   "r.csv: a row has more cells than the header"),
    "missing file": (lambda d: (d / "nope.csv", None), "nope.csv: no such file; check the path"),
    "empty file": (lambda d: (write(d / "e.csv", ""), None),
                   "e.csv: file is empty; expected a CSV with header item_id,annotator_id,label"),
    "header only": (lambda d: (write(d / "h.csv", "item_id,annotator_id,label\n"), None),
                    "h.csv: no rows"),
    "missing column": (lambda d: (write(d / "m.csv", "item_id,worker_id,label\n1,a,x\n"), None),
                       "m.csv: missing column 'annotator_id' (found: item_id, worker_id, label); "
                       "rename column 'worker_id' to 'annotator_id'"),
    "one annotator": (lambda d: (write(d / "o.csv", "item_id,annotator_id,label\n1,a,x\n2,a,y\n"),
                                 None), "o.csv: only one annotator ('a')"),
    "duplicates": (lambda d: (write(d / "d.csv", "item_id,annotator_id,label\n1,a,x\n1,b,x\n"
                                    "1,a,y\n"), None),
                   "d.csv: 1 (item_id, annotator_id) pairs occur more than once, e.g. "
                   "item_id='1' annotator_id='a'; keep one label per annotator per item"),
    "empty label": (lambda d: (write(d / "l.csv", "item_id,annotator_id,label\n1,a,\n1,b,x\n"),
                               None), "l.csv: 1 rows have an empty label"),
    "gold label unknown": (lambda d: (None, write(d / "g.csv", "item_id,label\n25,yes\n")),
                           "g.csv: label 'yes' (item_id '25') is not among the annotators' labels"),
    "gold missing column": (lambda d: (None, write(d / "g.csv", "id,label\n25,yes\n")),
                            "g.csv: missing column 'item_id' (found: id, label)"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUT)
def test_cli_bad_input_is_one_line_and_exit_2(case: str, files, tmp_path, capsys) -> None:
    make, expected = BAD_INPUT[case]
    labels, gold = make(tmp_path)
    argv = [str(labels or files["labels"]), "--out", str(files["out"])]
    argv += ["--gold", str(gold)] if gold else []
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert expected in err
    assert not files["out"].exists()


def test_cli_usage_errors_exit_2(capsys) -> None:
    assert main(["labels.csv"]) == 2  # --out missing
    assert "the following arguments are required: --out" in capsys.readouterr().err
    assert main(["x.csv", "--out", "o", "--method", "vote"]) == 2


def test_module_entry_point_reports_bad_input_without_traceback(tmp_path) -> None:
    bad = write(tmp_path / "m.csv", "task,annotator_id,label\n1,a,x\n")
    done = subprocess.run(
        [sys.executable, "-m", "labelloop", "audit", str(bad), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO / "plugins")},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        f"error: {bad}: missing column 'item_id' (found: task, annotator_id, label); "
        "rename column 'task' to 'item_id'\n"
    )
