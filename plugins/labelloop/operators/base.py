"""What labelloop's operators share: a project spec, the Label Studio connection, the hook."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from labelloop import settings

if TYPE_CHECKING:
    from labelloop.hooks.labelstudio import LabelStudioHook
    from labelloop.spec import ProjectSpec


class SpecOperator(BaseOperator):
    """An operator that works on the project a spec describes (include/projects/*.yaml, docs/spec.md).

    Nothing is read in ``__init__`` (DAG parsing stays free of files, network and connections):
    the spec is loaded, and the hook built, when the task runs.
    """

    template_fields: tuple[str, ...] = ("spec_path", "labelstudio_conn_id")

    def __init__(self, *, spec_path: str | Path,
                 labelstudio_conn_id: str = settings.LABELSTUDIO_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec_path = str(spec_path)
        self.labelstudio_conn_id = labelstudio_conn_id

    @cached_property
    def hook(self) -> LabelStudioHook:
        from labelloop.hooks.labelstudio import LabelStudioHook

        return LabelStudioHook(labelstudio_conn_id=self.labelstudio_conn_id)

    def load_spec(self) -> ProjectSpec:
        """The spec, read when the task runs; a broken one fails the task without retries."""
        from airflow.sdk.exceptions import AirflowFailException

        from labelloop.spec import SpecError, load_spec

        try:
            return load_spec(Path(self.spec_path))
        except SpecError as error:
            raise AirflowFailException(f"{self.task_id}: {error}") from None
