"""What labelloop's operators share: a project spec, the Label Studio connection, the hook, and
how a task reports a broken state file, a templated flag and its asset events."""

from __future__ import annotations

import functools
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseOperator

from labelloop import settings

if TYPE_CHECKING:
    from labelloop.hooks.labelstudio import LabelStudioHook
    from labelloop.spec import ProjectSpec

_Task = TypeVar("_Task", bound=Callable[..., Any])


def fails_without_retry(func: _Task) -> _Task:
    """A broken state file (``labelloop.state.StateError``) reads the same on every try: fail the task
    at once with the error's advice instead of retrying. (The state module stays free of Airflow;
    this is the one place that knows what a failure means to a task.)"""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from labelloop.state import StateError

        try:
            return func(*args, **kwargs)
        except StateError as error:
            raise AirflowFailException(str(error)) from error

    return run  # type: ignore[return-value]


def as_flag(value: bool | str, name: str) -> bool:
    """A flag that may come from a template (``"{{ params.force }}"`` renders ``"True"``): only a
    bool or the words true/false are accepted, since ``bool("False")`` would be True."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in {"true", "false"}:
        return word == "true"
    raise ValueError(f"{name} is {value!r}: give true or false")


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

    def actor(self, context: Any) -> str:
        """Who did it, for the registry's history: this task of this DAG."""
        return f"{context['ti'].dag_id}.{self.task_id}"

    def describe_outlets(self, context: Any, extra: dict[str, Any]) -> None:
        """Attach ``extra`` to the asset events of this task's outlets (what a listening DAG reads
        from ``triggering_asset_events``); a task without outlets has nothing to describe."""
        from airflow.sdk import Asset

        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = extra
