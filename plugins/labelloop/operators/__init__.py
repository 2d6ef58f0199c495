"""labelloop's operators, for plugging Label Studio into DAGs of your own (docs/provider.md); the
labelloop DAGs themselves are built from them (``labelloop.factory``).

Each imports only Airflow at module level; the work (SDKs, pandas) is imported when it runs.
"""

from labelloop.operators.audit import AuditOperator, QualityGateOperator, RouteReviewOperator
from labelloop.operators.ingest import (
    FinishIngestOperator,
    IngestGroupOperator,
    LabelStudioImportOperator,
    PlanIngestOperator,
)
from labelloop.operators.labelstudio import (
    LabelStudioExportOperator,
    LabelStudioProjectOperator,
    WaitForAnnotationsOperator,
)
from labelloop.operators.model import (
    PromoteCandidateOperator,
    RefreshPrelabelsOperator,
    RollbackChampionOperator,
    TrainCandidateOperator,
)

__all__ = ["AuditOperator", "FinishIngestOperator", "IngestGroupOperator", "LabelStudioExportOperator",
           "LabelStudioImportOperator", "LabelStudioProjectOperator", "PlanIngestOperator", "PromoteCandidateOperator",
           "QualityGateOperator", "RefreshPrelabelsOperator", "RollbackChampionOperator", "RouteReviewOperator",
           "TrainCandidateOperator", "WaitForAnnotationsOperator"]
