"""The buttons on a labelloop task: the Label Studio project it worked on, the MLflow run it trained.

Cheap by construction: each URL is recorded (``persist``) while the task runs, under the link's
own XCom key, and only read back for the UI; no connection or server is asked when a page renders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class RecordedLink(BaseOperatorLink):
    """A link whose URL the task recorded under ``xcom_key``; empty until the task recorded one."""

    xcom_key: ClassVar[str]

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=self.xcom_key, ti_key=ti_key) or ""

    @classmethod
    def persist(cls, context: Any, url: str) -> None:
        context["ti"].xcom_push(key=cls.xcom_key, value=url)


class LabelStudioProjectLink(RecordedLink):
    name = "Label Studio project"
    xcom_key = "labelstudio_project_url"


class MLflowRunLink(RecordedLink):
    """The MLflow run that trained and evaluated the candidate (its metrics, model and lineage)."""

    name = "MLflow run"
    xcom_key = "mlflow_run_url"

