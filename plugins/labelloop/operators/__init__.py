"""labelloop's operators, for plugging Label Studio into DAGs of your own (docs/provider.md).

Each imports only Airflow at module level; the work (SDKs, pandas) is imported when it runs.
"""

from labelloop.operators.audit import AuditOperator, RouteReviewOperator
from labelloop.operators.labelstudio import (
    LabelStudioExportOperator,
    LabelStudioImportOperator,
    WaitForAnnotationsOperator,
)
from labelloop.operators.model import PromoteCandidateOperator, RefreshPrelabelsOperator, TrainCandidateOperator

__all__ = ["AuditOperator", "LabelStudioExportOperator", "LabelStudioImportOperator", "PromoteCandidateOperator",
           "RefreshPrelabelsOperator", "RouteReviewOperator", "TrainCandidateOperator", "WaitForAnnotationsOperator"]
