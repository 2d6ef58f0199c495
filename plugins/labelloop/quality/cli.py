"""``python -m labelloop audit LABELS.csv [--gold GOLD.csv] [--method M] [--seed N] --out DIR``
and ``python -m labelloop audit ANSWERS.jsonl --config CONFIG.xml [--gold GOLD.jsonl] --out DIR``.

The CSV form audits single-label classification (consensus.csv out); the JSON-lines form
takes Label Studio results for every task type the config's controls name (consensus.jsonl
out, in the same result format). Input a person must fix ends with one line on stderr
(what, where, how to fix), exit 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
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
        # A row with more cells than the header must not silently shift into an index.
        with warnings.catch_warnings(action="error", category=pd.errors.ParserWarning):
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""],
                               encoding="utf-8-sig", index_col=False)  # fmt: skip
    except pd.errors.ParserWarning:
        raise InputError(f"{path}: a row has more cells than the header; {expected}") from None
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
    parser.add_argument("labels", type=Path, help="CSV with columns item_id,annotator_id,label, or "
                        "JSON lines of Label Studio results {item_id, annotator_id, data, result}")
    parser.add_argument("--gold", type=Path, help="CSV with columns item_id,label (JSON lines "
                        "{item_id, data, result} with a .jsonl answers file)")
    parser.add_argument("--config", type=Path, help="Label Studio labeling config (XML); needed "
                        "with JSON lines, it says each control's task type")
    parser.add_argument("--method", choices=list(METHODS), default="dawid-skene")
    parser.add_argument("--seed", type=int, default=0, help="seed of the spot-check sample")
    parser.add_argument("--comment-agreement", action="store_true", help="also score agreement of the "
                        "comment (TextArea) controls, by normalized edit distance (JSON lines)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the outputs")
    return parser


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed usage and the error (or --help)
        return int(exit_.code or 0)
    if args.labels.suffix == ".jsonl":
        return _audit_results(args)
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


def _audit_results(args: argparse.Namespace) -> int:
    """The JSON-lines form: every control of ``--config`` audited by its task type."""
    from labelloop.tasktypes import read_controls
    from labelloop.tasktypes.answers import audit_answers, write_outputs

    try:
        if args.config is None:
            raise InputError(f"{args.labels}: JSON lines need --config LABELING_CONFIG.xml, the config the "
                             "answers were given in")
        try:
            xml = args.config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"{args.config}: cannot read the labeling config ({error}); check the path") from None
        controls = read_controls(xml, str(args.config))
        audits = audit_answers(args.labels, controls, args.gold, seed=args.seed,
                               comment_agreement=args.comment_agreement)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        paths = write_outputs(audits, controls, args.out)
    except OSError as error:
        print(f"error: cannot write to {args.out} ({error.strerror}); choose another --out", file=sys.stderr)
        return 2
    items = len({item for audit in audits for item in audit.confidence.index})
    print(f"audited {items} items over {len(audits)} control(s); wrote {', '.join(map(str, paths))}")
    return 0
