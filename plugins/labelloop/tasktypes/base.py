"""What every task type is: the seam between Label Studio's result format and the quality library.

A *control* is one tag of a labeling config that answers something about an object tag
(``<Choices toName="text">``). Each kind of control has one ``TaskType`` that owns its
results format and its audit; adding a kind means one new module and one registry line.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from xml.etree import ElementTree

from labelloop.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from .loop import LoopAudit


@dataclass(frozen=True)
class Control:
    """One control tag of a labeling config, as the task types read it."""

    tag: str
    name: str
    to_name: str
    labels: tuple[str, ...]
    attributes: dict[str, str] = field(default_factory=dict)
    object_tag: str = ""  # the tag it labels: Text, Image, ...
    object_field: str = ""  # the task-data key of that object ($text -> text)
    kind: str = ""  # its task type's kind

    def describe(self) -> str:
        return f"<{self.tag} name={self.name!r}>"


@dataclass(frozen=True)
class ControlAudit:
    """One control's audit. ``consensus``: tidy rows (``item_id`` and the task type's columns;
    gold items keep their gold answer); ``confidence``: one value per item_id;
    ``metrics``: JSON-ready, with per-annotator rows under ``annotators``."""

    control: Control
    consensus: pd.DataFrame
    confidence: pd.Series
    metrics: dict[str, Any]


class TaskType:
    """Base of the task types: one per control kind (single choice, multiple choice, spans, boxes)."""

    kind: ClassVar[str]
    #: what the type accepts, for "supported: ..." messages
    description: ClassVar[str]
    #: the tidy columns of one answer (besides item_id and annotator_id); NA in all of them
    #: marks an answer with nothing in it, which is a real answer
    columns: ClassVar[tuple[str, ...]]
    #: whether the control must offer at least two values (TextArea offers none)
    needs_labels: ClassVar[bool] = True
    #: how many values it must offer then (one kind of box is a whole label set: "pedestrian")
    min_labels: ClassVar[int] = 2
    #: "module:Class" of this type's pre-label learner (``labelloop.model.learner.Learner``);
    #: None when the loop trains no model for it. Imported only by the model stages.
    learner_class: ClassVar[str | None] = None
    #: whether that learner trains the spec's own ``model.trainer`` (bring your own model)
    #: rather than one labelloop builds; the spec requires the one and refuses the other
    needs_trainer: ClassVar[bool] = False

    @classmethod
    def accepts(cls, tag: ElementTree.Element, object_tag: str) -> bool:
        raise NotImplementedError

    def __init__(self, control: Control) -> None:
        self.control = control

    def answer_rows(self, results: list[dict[str, Any]], data: dict[str, Any], where: str) -> list[dict[str, Any]]:
        """This control's part of one annotation's results as tidy rows (without ids).

        ``results`` are the results of this control only; ``[]`` is the answer "nothing".
        Raises ``InputError`` naming ``where`` for a value the config does not allow."""
        raise NotImplementedError

    def results(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        """One item's consensus rows back as Label Studio result objects."""
        raise NotImplementedError

    def audit(self, answers: pd.DataFrame, gold: pd.DataFrame | None, *, seed: int = 0,
              data: Mapping[str, dict[str, Any]] | None = None) -> ControlAudit:
        """Agreement, consensus and gold scores of this control's answers (tidy frame);
        ``data`` is the task data per item_id, for types that need the text or image size."""
        raise NotImplementedError

    def learner(self) -> Any:
        """This control's pre-label learner (train, evaluate, predict, uncertainty): the model
        stages call it and never branch on the kind."""
        if self.learner_class is None:
            raise InputError(f"{self.control.describe()} ({self.kind}): labelloop trains no pre-label model "
                             f"for this kind of control; remove the spec's model: section")
        import importlib

        module, _, name = self.learner_class.partition(":")
        return getattr(importlib.import_module(module), name)(self)

    def report_sections(self, metrics: dict[str, Any]) -> list[str]:
        """This control's part of report.html: tables of its metrics unless the type draws more."""
        from labelloop.quality.report import table_sections

        return table_sections(metrics)

    # -- the Airflow loop (generic versions in tasktypes/loop.py) -------------------------
    def known_answer(self, value: Any, data: dict[str, Any], where: str) -> list[dict[str, Any]]:
        """A known answer (``source.label_field``; JSON text as the task meta keeps it) as tidy
        rows, checked against the config and the task ``data``; ``InputError`` naming ``where``."""
        raise InputError(f"{where}: known answers are not supported for {self.control.describe()}")

    def known_text(self, rows: list[dict[str, Any]]) -> str:
        """Tidy rows of a known answer as the text the task meta keeps (``known_answer`` reads it)."""
        from .loop import known_text

        return known_text(self, rows)

    def loop_audit(self, answers: pd.DataFrame, gold: pd.DataFrame | None, adjudicated: pd.DataFrame | None,
                   *, method: str = "dawid-skene", seed: int = 0, spot_check_fraction: float = 0.05,
                   spot_check_among: Collection[Any] | None = None, low_confidence_threshold: float = 0.7,
                   run_id: str | None = None, data: Mapping[Any, dict[str, Any]] | None = None) -> LoopAudit:
        """``audit``, then gold and reviewers' answers (tidy, ``adjudicated``) override the
        consensus, and the review picks. ``method`` is the single-choice consensus method."""
        from .loop import loop_audit

        return loop_audit(self, answers, gold, adjudicated, seed=seed, spot_check_fraction=spot_check_fraction,
                          spot_check_among=spot_check_among, low_confidence_threshold=low_confidence_threshold,
                          run_id=run_id, data=data)

    def consensus_rows(self, result: str | None, label: str | None, data: dict[str, Any],
                       where: str) -> list[dict[str, Any]]:
        """One item's final answer as the audit writes it (``consensus.parquet``: the Label Studio
        results as JSON text, and ``label`` for a choices control) back as tidy rows; what retraining
        learns from. ``where`` names the item in errors."""
        import json

        return self.answer_rows(json.loads(result) if result else [], data, where)

    def spot_check(self, answers: pd.DataFrame, fraction: float, seed: int,
                   among: Collection[Any] | None = None) -> list[Any]:
        """Items for a spot check, stratified by (annotator, label)."""
        from .loop import spot_check

        return spot_check(answers, fraction, seed, among)

    def disagreements(self, answers: pd.DataFrame) -> list[Any]:
        """Items whose annotators did not all give the same answer."""
        from .loop import disagreements

        return disagreements(self, answers)

    def review_predictions(self, answers: pd.DataFrame, data: dict[str, Any]) -> list[dict[str, Any]]:
        """One item's answers as Label Studio predictions, one per annotator (model_version = annotator)."""
        from .loop import review_predictions

        return review_predictions(self, answers)

    def gate_checks(self, metrics: dict[str, Any], quality: Any) -> list[dict[str, Any]]:
        """The quality gate's checks of this kind's metrics against the spec's ``quality``
        (``loop.check`` dicts; a value of None is "not measured")."""
        raise NotImplementedError(f"{self.control.describe()} has no quality gate")

    def scalars(self, metrics: dict[str, Any]) -> dict[str, float | None]:
        """The numbers of an audit worth a chart in MLflow."""
        from .loop import scalars

        return scalars(metrics)

    def loop_report_sections(self, metrics: dict[str, Any], history: Sequence[dict[str, Any]] = ()) -> list[str]:
        """The report's sections of this control; ``history`` (earlier audits) where the type plots it."""
        return self.report_sections(metrics)

    # -- simulated annotators (labelloop.dev.simulate) -------------------------------------------
    def simulation_skill(self, skill: Any) -> Any:
        """A simulated annotator's skill for this kind, as a person wrote it (an accuracy, or a JSON
        object of the kind), checked and ready for ``simulate``; ``ValueError`` says what is accepted."""
        raise ValueError(f"{self.control.describe()} ({self.kind}): labelloop has no simulated annotators for "
                         f"this kind of control")

    def simulate(self, truth: list[dict[str, Any]], skill: Any, rng: Any, data: dict[str, Any]) -> list[dict[str, Any]]:
        """One simulated annotator's Label Studio results for an item whose true answer is ``truth``
        (tidy rows, as ``known_answer`` gives them; ``data``: the task data), drawn with ``rng``
        (a ``random.Random``) and a skill from ``simulation_skill``."""
        raise NotImplementedError(f"{self.control.describe()} has no simulated annotators")

    # -- shared helpers -------------------------------------------------------------------
    def _result(self, result_type: str, value: dict[str, Any]) -> dict[str, Any]:
        return {"from_name": self.control.name, "to_name": self.control.to_name, "type": result_type,
                "value": value}

    def _check_label(self, label: Any, where: str) -> str:
        if not isinstance(label, str) or label not in self.control.labels:
            raise InputError(f"{where}: label {label!r} is not offered by {self.control.describe()}; "
                             f"it offers {list(self.control.labels)}")
        return label

    def _empty_row(self) -> dict[str, Any]:
        return dict.fromkeys(self.columns)


def number(value: Any, what: str, where: str) -> float:
    """A JSON number (not a bool, not a string), else an error naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{where}: {what} must be a number, got {value!r}")
    return float(value)
