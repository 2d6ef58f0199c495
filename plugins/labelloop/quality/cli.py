"""``python -m labelloop audit LABELS.csv [--gold GOLD.csv] [--method M] [--seed N] --out DIR``

Reads the CSVs, runs ``run_audit`` and writes consensus.csv, metrics.json and report.html.
Input a person must fix ends with one line on stderr (what, where, how to fix), exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .agreement import COLUMNS, InputError
from .audit import METHODS, run_audit
from .report import write_audit


def read_csv(path: Path, header: tuple[str, ...]) -> pd.DataFrame:
    """All columns as strings (ids like 007 stay intact); only an empty cell is missing,
    so a label such as "NA" stays a label. A BOM from spreadsheet exports is dropped."""
    expected = f"expected a CSV with header {','.join(header)}"
    if not path.is_file():
        raise InputError(f"{path}: no such file; check the path")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""],
                           encoding="utf-8-sig")  # fmt: skip
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: file is empty; {expected}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        reason = str(error).strip().splitlines()[-1]
        raise InputError(f"{path}: not a readable UTF-8 CSV ({reason}); {expected}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labelloop audit",
        description="Consensus labels, agreement metrics and an HTML report for a label CSV.",
    )
    parser.add_argument("labels", type=Path, help="CSV with columns item_id,annotator_id,label")
    parser.add_argument("--gold", type=Path, help="CSV with columns item_id,label")
    parser.add_argument("--method", choices=list(METHODS), default="dawid-skene")
    parser.add_argument("--seed", type=int, default=0, help="seed of the spot-check sample")
    parser.add_argument("--out", type=Path, required=True, help="directory for the outputs")
    return parser


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed usage and the error (or --help)
        return int(exit_.code or 0)
    files = {"labels": args.labels, "gold": args.gold}
    try:
        labels = read_csv(args.labels, COLUMNS)
        gold = None if args.gold is None else read_csv(args.gold, ("item_id", "label"))
        result = run_audit(labels, gold, args.method, seed=args.seed)
    except InputError as error:
        message = str(error)
        # Library messages start with "labels:" or "gold:"; name the file instead.
        what, _, rest = message.partition(": ")
        if files.get(what) is not None:
            message = f"{files[what]}: {rest}"
        print(f"error: {message}", file=sys.stderr)
        return 2
    try:
        paths = write_audit(result, args.out)
    except OSError as error:
        print(f"error: cannot write to {args.out} ({error.strerror}); choose another --out",
              file=sys.stderr)  # fmt: skip
        return 2
    alpha = result.metrics["agreement"]["krippendorff_alpha_nominal"]
    print(f"audited {result.metrics['counts']['items']} items, Krippendorff's alpha "
          f"{'n/a' if alpha is None else f'{alpha:.3f}'}; wrote {', '.join(map(str, paths))}")  # fmt: skip
    return 0
