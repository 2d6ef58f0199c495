"""The "Label Studio project" button on a labelloop task: a link to the project it worked on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: The XCom key under which a task records its project's URL (by ``persist``, during execute).
XCOM_KEY = "labelstudio_project_url"


class LabelStudioProjectLink(BaseOperatorLink):
    """Cheap by construction: the URL is recorded while the task runs, never looked up for the UI."""

    name = "Label Studio project"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=XCOM_KEY, ti_key=ti_key) or ""

    @staticmethod
    def persist(context: Any, url: str) -> None:
        context["ti"].xcom_push(key=XCOM_KEY, value=url)
