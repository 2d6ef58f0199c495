"""Label quality without Airflow: agreement metrics, consensus, review sampling, audit report.

Everything takes the tidy frame ``item_id, annotator_id, label`` and returns pandas
objects, so a notebook needs neither Airflow nor an adapter. See docs/quality.md.
"""

from .agreement import (
    COLUMNS,
    InputError,
    fleiss_kappa,
    gold_accuracy,
    kappa_matrix,
    krippendorff_alpha,
    pairwise_kappa,
    wilson_interval,
)
from .audit import AuditResult, run_audit
from .consensus import DawidSkene, MajorityVote, apply_overrides
from .report import metrics_json, render_html, write_audit
from .sampling import disagreements, low_confidence, spot_check_sample

__all__ = [
    "COLUMNS", "AuditResult", "DawidSkene", "InputError", "MajorityVote", "apply_overrides",
    "disagreements", "fleiss_kappa", "gold_accuracy", "kappa_matrix", "krippendorff_alpha",
    "low_confidence", "metrics_json", "pairwise_kappa", "render_html", "run_audit",
    "spot_check_sample", "wilson_interval", "write_audit",
]  # fmt: skip
