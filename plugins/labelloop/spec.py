"""The annotation project spec: one YAML file per project, loaded into one typed model.

Every stage reads this model; nobody re-parses YAML. A wrong spec raises ``SpecError``
naming the file, the field and what would be accepted, so the DAG processor shows a
message a person can act on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from xml.etree import ElementTree

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from labelloop import settings

SLUG = r"^[a-z][a-z0-9_]{1,62}$"
ENTRY_POINT = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
#: A class by its import path: ``package.module.Class`` or ``package.module:Class``.
CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*[.:][A-Za-z_]\w*")
#: Keyword argument names that would carry a secret; secrets belong in an Airflow connection.
_SECRET_NAME = re.compile(r"password|passwd|secret|token|api_?key|private_?key", re.IGNORECASE)
_ENV_REF = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?::-(?P<default>[^}]*))?\}")


class SpecError(ValueError):
    """A project spec is wrong; the message names the file, the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


FieldType = Literal["string", "integer", "number", "boolean"]
ImageFormat = Literal["png", "jpeg", "webp", "gif", "bmp", "tiff"]
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp", "gif", "bmp", "tiff")
#: Pillow refuses to open larger images as decompression bombs (2 x its MAX_IMAGE_PIXELS).
IMAGE_PIXELS_CEILING = 178_956_970


class DataField(_Strict):
    """One field of a Label Studio task's data, and the record field it comes from."""

    source: str | None = Field(None, description="record field name; defaults to the task field name")
    type: FieldType = "string"
    required: bool = True
    max_length: Annotated[int, Field(gt=0)] | None = None


class Source(_Strict):
    """Where raw records land and how they map onto task data."""

    uri: str = Field(description="folder of raw objects: file:///..., s3://bucket/prefix/, ...")
    conn_id: str | None = Field(None, description="Airflow connection for the store (s3: aws_default)")
    formats: list[Literal["jsonl", "json", "csv", "image"]] = Field(
        ["jsonl", "json", "csv"], description="objects read, by suffix; image: each image object is one task")
    id_field: str | None = Field(None, description="record field holding the external item id")
    label_field: str | None = Field(None, description="record field holding a known label, if any")
    fields: dict[str, DataField]
    max_record_bytes: Annotated[int, Field(gt=0)] = 64 * 1024
    image_formats: list[ImageFormat] = Field(
        list(IMAGE_FORMATS), min_length=1, description="image formats accepted, judged by content, not by name")
    max_image_pixels: Annotated[int, Field(gt=0, le=IMAGE_PIXELS_CEILING)] = Field(
        50_000_000, description="larger images (width x height) are quarantined")
    max_image_bytes: Annotated[int, Field(gt=0)] = Field(
        50 * 1024 * 1024, description="larger image files are quarantined")

    @field_validator("uri")
    @classmethod
    def _folder(cls, uri: str) -> str:
        if "://" not in uri:
            raise ValueError(f"{uri!r} has no scheme; write file:///abs/path/ or s3://bucket/prefix/")
        return uri.rstrip("/") + "/"


class Annotation(_Strict):
    annotators_per_task: Annotated[int, Field(ge=1, le=50)] = 1
    gold_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    random_share: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1, description="share of tasks ordered at random rather than by the model's uncertainty")
    stratify_by: str | None = Field(
        None, description="task data field whose values random ordering keeps in proportion (e.g. a source)")
    reorder_on_promotion: Annotated[int, Field(ge=0)] = Field(
        1000, description="after a promotion, the new champion's most uncertain tasks put at the head of the "
                          "queue (one Label Studio call each)")
    show_skip_button: bool = True


class Notify(_Strict):
    """Who hears about a failed quality gate: an Airflow notifier class (the SMTP or Slack
    provider's, or your own) built with ``params``; it finds the message in its templates as
    ``{{ quality_gate_message }}``. Only the shape is checked here: the class is imported when a
    gate fails, never at DAG parse (``labelloop.audit.gate.gate_notifier``)."""

    notifier: str = Field(description="import path of a BaseNotifier subclass: package.module.Class or "
                                      "package.module:Class")
    params: dict[str, Any] = Field(default_factory=dict, description="its keyword arguments; connection ids "
                                   "(smtp_conn_id, slack_conn_id), never credentials")
    report_url: str | None = Field(None, description="link to the report people can open, {audit} standing "
                                   "for the audit run; default: the report's storage URI")

    @field_validator("notifier")
    @classmethod
    def _class_path(cls, notifier: str) -> str:
        if not CLASS_PATH.fullmatch(notifier):
            raise ValueError(f"{notifier!r} is not an import path; write package.module.Class (e.g. "
                             f"airflow.providers.smtp.notifications.smtp.SmtpNotifier)")
        return notifier

    @field_validator("params")
    @classmethod
    def _no_secrets(cls, params: dict[str, Any]) -> dict[str, Any]:
        secret = sorted(name for name in params if _SECRET_NAME.search(name))
        if secret:
            raise ValueError(f"{secret} would put a secret in the spec; store it in an Airflow connection and "
                             f"give its id (smtp_conn_id, slack_conn_id, ...)")
        return params


class Quality(_Strict):
    """Thresholds of the audit's quality gate; each kind of audited control is held to its own
    (docs/spec.md lists which): choices to the first three, multichoice and spans to theirs,
    rectangles to min_box_f1 and min_box_pair_f1, every kind to min_consensus_confidence; ``notify``
    says who hears of a failure."""

    min_gold_accuracy: Annotated[float, Field(ge=0, le=1)] = 0.8
    min_kappa: Annotated[float, Field(ge=-1, le=1)] = 0.6
    min_alpha: Annotated[float, Field(ge=-1, le=1)] = 0.6
    min_gold_hamming_accuracy: Annotated[float, Field(ge=0, le=1)] = Field(
        0.9, description="multichoice: annotators' per-label accuracy on gold, pooled")
    min_label_alpha: Annotated[float, Field(ge=-1, le=1)] = Field(
        0.6, description="multichoice: Krippendorff's alpha of each label, averaged over labels")
    min_gold_f1: Annotated[float, Field(ge=0, le=1)] = Field(
        0.7, description="spans: annotators' exact-span F1 on gold, pooled over their spans")
    min_span_f1: Annotated[float, Field(ge=0, le=1)] = Field(
        0.6, description="spans: exact-span F1 between annotators, pooled over pairs of answers")
    min_box_f1: Annotated[float, Field(ge=0, le=1)] = Field(
        0.7, description="rectangles: annotators' box F1 at IoU >= 0.5 on gold, pooled over their boxes")
    min_box_pair_f1: Annotated[float, Field(ge=0, le=1)] = Field(
        0.6, description="rectangles: box F1 at IoU >= 0.5 between annotators, pooled over pairs of answers")
    min_consensus_confidence: Annotated[float, Field(ge=0, le=1)] = 0.7
    spot_check_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    consensus: Literal["majority", "dawid_skene"] = "dawid_skene"
    comment_agreement: bool = Field(
        False, description="also score agreement of the comment (TextArea) controls, by normalized edit distance; "
                           "reported, not gated")
    notify: Notify | None = Field(None, exclude=True, description="the notifier a failed gate goes through; "
                                  "none: the task log (not a threshold: left out of model_dump)")


class Model(_Strict):
    """The pre-label model in the MLflow registry."""

    name: str
    estimator: str | None = Field(
        None, description="dotted path of a scikit-learn classifier with predict_proba placed after the "
                          "TF-IDF features (one per label for a multiple choice); default: calibrated linear "
                          "SVM. Spans train spaCy's beam_ner: no estimator")
    trainer: str | None = Field(
        None, description="rectangles: the detector's trainer, `module:function` (docs/model.md#bring-your-own-"
                          "detector); imported when retraining runs, never at DAG parse")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for `estimator` (for "
                                   "rectangles: for `trainer`); for spans: epochs, dropout, batch_size, "
                                   "beam_width, seed")
    require_approval: bool = Field(False, description="promotion waits for a person in Airflow's Required Actions")
    metric: Literal["accuracy", "macro_f1", "micro_f1", "exact_match", "span_f1", "box_f1"] | None = Field(
        None, description="what promotion compares on gold; default per kind: macro_f1 (choices, multiple "
                          "choices), span_f1 (micro exact-span F1, spans), box_f1 (micro F1 at IoU >= 0.5, "
                          "rectangles)")
    promotion_margin: Annotated[float, Field(ge=0, le=1)] = 0.005
    min_score: Annotated[float, Field(ge=0, le=1)] = 0.8

    @field_validator("trainer")
    @classmethod
    def _entry_point(cls, trainer: str | None) -> str | None:
        """The shape only: the module is imported by the retrain task, not at DAG parse."""
        if trainer is not None and not ENTRY_POINT.fullmatch(trainer):
            raise ValueError(f"{trainer!r} is not an entry point; write module.path:function "
                             f"(e.g. mypkg.detect:train)")
        return trainer


class Collect(_Strict):
    """How collect reads Label Studio: incrementally (tasks changed since the last snapshot), with a
    full export every ``full_every`` runs that must equal the incremental table row for row."""

    full_every: Annotated[int, Field(ge=1, description="runs between full reconciliation exports (1: every "
                                     "run exports the whole project)")] = 24
    watch_seconds: Annotated[float | None, Field(gt=0, description="poll Label Studio this often for new or "
                                                 "changed annotations and collect when there are (null: "
                                                 "only after ingest and on the cron)")] = 60.0


class Schedules(_Strict):
    """Cron expressions or presets (``@hourly``); ``null`` means manual trigger only."""

    ingest: str | None = "@hourly"
    collect: str | None = "@daily"


class IngestOptions(_Strict):
    """How a run with many new objects fans out over workers (one mapped task per group)."""

    group_bytes: Annotated[int, Field(ge=1)] = Field(
        64 * 1024 * 1024, description="bytes of source objects per parallel group; a smaller run stays one group")
    max_groups: Annotated[int, Field(ge=1, le=1024)] = Field(
        16, description="at most this many parallel groups per run (groups grow beyond group_bytes to fit)")


class ProjectSpec(_Strict):
    name: Annotated[str, Field(pattern=SLUG, description="slug used in DAG ids and storage paths")]
    title: str
    description: str = ""
    labeling_config: Path = Field(description="XML file, relative to the spec's include/ folder")
    guidelines: Path | None = Field(None, description="Markdown file shown as the project's instructions")
    control_name: str = Field(description="name of the audited control (from_name): a Choices, Labels or "
                              "RectangleLabels tag")
    labels: list[str] = Field(min_length=1, description="at least two, except for boxes (one kind is enough)")
    source: Source
    storage_uri: str = Field(description="where manifests, quarantine, summaries and snapshots go")
    import_batch_size: Annotated[int, Field(ge=1, le=10_000)] = 1000
    ingest: IngestOptions = IngestOptions()
    annotation: Annotation = Annotation()
    quality: Quality = Quality()
    model: Model | None = None
    schedules: Schedules = Schedules()
    collect: Collect = Collect()
    spec_path: Path | None = Field(None, exclude=True)

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels repeat a value: {labels}")
        return labels

    @field_validator("storage_uri")
    @classmethod
    def _storage_scheme(cls, uri: str) -> str:
        if "://" not in uri:
            raise ValueError(f"{uri!r} has no scheme; write file:///abs/path or s3://bucket/prefix")
        return uri.rstrip("/")

    @model_validator(mode="after")
    def _config_agrees(self) -> ProjectSpec:
        """The labeling config must offer exactly the spec's labels and read the spec's fields."""
        _ = self.guidelines_html  # read now: a missing file is a spec error, not a task failure
        config = LabelingConfig.parse(self.labeling_config_xml, self.control_name, str(self.labeling_config))
        if sorted(config.labels) != sorted(self.labels):
            raise ValueError(
                f"labeling_config {self.labeling_config}: control {self.control_name!r} offers "
                f"{config.labels}, but labels is {self.labels}; make them the same"
            )
        missing = config.variables - set(self.source.fields)
        if missing:
            raise ValueError(
                f"labeling_config {self.labeling_config} reads ${', $'.join(sorted(missing))}, "
                f"which source.fields does not define; add them to source.fields"
            )
        if self.model is not None and self.task_type.learner_class is None:
            raise ValueError(
                f"model: control {self.control_name!r} of {self.labeling_config} is a {config.kind} control "
                f"({config.describe}); labelloop trains no pre-label model for it, so remove the model section"
            )
        if self.model is not None and self.task_type.needs_trainer != (self.model.trainer is not None):
            raise ValueError(
                f"model.trainer: control {self.control_name!r} is a {config.kind} control ({config.describe}); "
                + ("its model is your own detector: name its trainer as model.trainer: module.path:function "
                   "(docs/model.md#bring-your-own-detector)" if self.task_type.needs_trainer else
                   "labelloop trains its model itself, so remove trainer (model.estimator and model.params tune it)")
            )
        self._images_agree()
        stratum = self.annotation.stratify_by
        if stratum is not None and stratum not in self.source.fields:
            raise ValueError(f"annotation.stratify_by names {stratum!r}, which is not one of source.fields "
                             f"{sorted(self.source.fields)}; add it there or pick one of those")
        return self

    def _images_agree(self) -> None:
        """Image objects carry nothing but the image: every other field must be optional."""
        if len(set(self.source.image_formats)) != len(self.source.image_formats):
            raise ValueError(f"source.image_formats repeats a value: {self.source.image_formats}")
        scheme = self.source.uri.split("://", 1)[0]
        if self.image_field is not None and scheme not in ("s3", "file"):
            raise ValueError(f"source.uri {self.source.uri}: image tasks are served by Label Studio from s3:// "
                             f"(a connected bucket) or file:// (its local files), not {scheme}://")
        if "image" not in self.source.formats:
            return
        if self.image_field is None:
            raise ValueError(f"source.formats has image, but labeling_config {self.labeling_config} has no "
                             f"<Image value=\"$field\"> tag to show it in; add one or remove image")
        if self.source.fields[self.image_field].type != "string":
            raise ValueError(f"source.fields.{self.image_field} holds the image's URI: its type must be string")
        required = sorted(name for name, rule in self.source.fields.items()
                          if rule.required and name != self.image_field)
        if required:
            raise ValueError(f"source.formats has image, and an image object carries only the image, but "
                             f"source.fields {required} are required; set required: false (a manifest "
                             f"may still give them)")

    @cached_property
    def image_field(self) -> str | None:
        """The task field holding the image (the ``$variable`` of the config's ``<Image>``), if any."""
        root = ElementTree.fromstring(self.labeling_config_xml)
        value = next((tag.get("value", "") for tag in root.iter("Image")), "")
        return value[1:] if value.startswith("$") else None

    @property
    def base_dir(self) -> Path:
        return self.spec_path.parent.parent if self.spec_path else settings.INCLUDE_DIR

    @cached_property
    def labeling_config_xml(self) -> str:
        return _read_relative(self.base_dir, self.labeling_config, "labeling_config")

    @cached_property
    def guidelines_html(self) -> str:
        """Markdown guidelines, shown as-is inside <pre> (Label Studio renders HTML)."""
        if self.guidelines is None:
            return ""
        import html

        text = _read_relative(self.base_dir, self.guidelines, "guidelines")
        return f'<pre style="white-space: pre-wrap">{html.escape(text)}</pre>'

    @cached_property
    def task_type(self) -> Any:
        """The audited control (``control_name``) as its ``tasktypes.TaskType``."""
        from labelloop.tasktypes import read_controls

        controls = read_controls(self.labeling_config_xml, str(self.labeling_config), kinds=LOOP_KINDS)
        return next(t for t in controls if t.control.name == self.control_name)

    @cached_property
    def audited_types(self) -> list[Any]:
        """Every control the audit scores, as task types: ``control_name`` first (the one the
        pre-label model learns and routing reviews), then the others in config order (each
        audited and gated on its own); comments are listed, not audited."""
        from labelloop.tasktypes import read_controls

        others = [t for t in read_controls(self.labeling_config_xml, str(self.labeling_config), kinds=LOOP_KINDS)
                  if t.kind != "comment" and t.control.name != self.control_name]
        return [self.task_type, *others]

    @property
    def object_name(self) -> str:
        """The object tag the control labels (to_name in results)."""
        return LabelingConfig.parse(self.labeling_config_xml, self.control_name).to_name

    @property
    def object_field(self) -> str:
        """The task data field that object shows (its ``value="$field"``): what models read."""
        return self.task_type.control.object_field

    @cached_property
    def control_names(self) -> list[str]:
        """Every control of the labeling config (collect keeps each one's results verbatim)."""
        from labelloop.tasktypes import read_controls

        return [t.control.name for t in read_controls(self.labeling_config_xml, str(self.labeling_config))]

    @cached_property
    def comment_controls(self) -> list[str]:
        """The TextArea controls annotators use to flag unclear items (listed in the report)."""
        from labelloop.tasktypes import read_controls

        return [t.control.name for t in read_controls(self.labeling_config_xml, str(self.labeling_config))
                if t.kind == "comment"]

    @property
    def dag_prefix(self) -> str:
        return f"labelloop__{self.name}"


#: The task types the loop carries (ingest, collect, audit, review); comments (a TextArea) are
#: collected verbatim and listed in the report, not audited.
LOOP_KINDS = ("choices", "multichoice", "spans", "rectangles", "comment")


@dataclass(frozen=True)
class LabelingConfig:
    """What the loop needs from a labeling config: the audited control, read by ``tasktypes``.

    Everything the loop cannot carry through every stage is refused here, at parse time,
    naming the tag and what is supported: a control the loop would silently drop or flatten
    must never reach ingest. Other loop controls beside it are audited too (``audited_types``).
    """

    labels: list[str]
    to_name: str
    variables: set[str]
    kind: str = "choices"
    describe: str = ""

    @classmethod
    def parse(cls, xml: str, control_name: str, where: str = "labeling config") -> LabelingConfig:
        from labelloop.tasktypes import read_controls

        controls = read_controls(xml, where, kinds=LOOP_KINDS)
        control = next((t.control for t in controls if t.control.name == control_name), None)
        if control is None:
            raise ValueError(f"{where} has no control named {control_name!r}; control_name must be one of "
                             f"{sorted(t.control.name for t in controls)}")
        if control.kind == "comment":
            raise ValueError(f"{where}: control_name {control_name!r} is a comment {control.describe()}, which is "
                             f"listed, not audited; name the choices or labels control instead")
        root = ElementTree.fromstring(xml)
        variables = {tag.get("value", "")[1:] for tag in root.iter() if tag.get("value", "").startswith("$")}
        return cls(list(control.labels), control.to_name, variables, control.kind, control.describe())


def _read_relative(base: Path, path: Path, field: str) -> str:
    full = path if path.is_absolute() else base / path
    try:
        return full.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"{field}: cannot read {full} ({error.strerror}); give a path relative to {base}")
    except ValueError as error:  # a NUL in the path, a file that is not UTF-8
        raise ValueError(f"{field}: cannot read {str(full)!r} ({error}); give the path of a UTF-8 text file "
                         f"relative to {base}") from None


def expand_env(value: Any, where: str = "") -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string, so one spec serves every stack."""
    if isinstance(value, dict):
        return {key: expand_env(item, f"{where}.{key}".lstrip(".")) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if name in os.environ:
            return os.environ[name]
        if name == "LABELLOOP_STORE":
            return f"file://{settings.state_dir() / 'store'}"
        if default is not None:
            return default
        raise SpecError(f"{where}: environment variable {name} is not set and has no default; "
                        f"set it or write ${{{name}:-default}}")

    return _ENV_REF.sub(substitute, value)


class _SpecLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: PyYAML
    keeps the last silently, so a second ``quality:`` section would replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                continue  # not a spec field: validation names it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found the key {key!r} twice: keep one",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_spec(path: Path) -> ProjectSpec:
    """Load and validate one spec; every failure names the file."""
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SpecLoader)  # noqa: S506 (a SafeLoader)
    except Exception as error:  # noqa: BLE001 - PyYAML's constructors raise more than YAMLError on bad
        # scalars (``!!timestamp bad``: AttributeError; an integer of over 4,300 digits: ValueError)
        raise SpecError(f"{path}: not readable YAML: {error}") from error
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of spec fields at the top level")
    try:
        return ProjectSpec.model_validate({**expand_env(raw), "spec_path": path})
    except SpecError as error:
        raise SpecError(f"{path}: {error}") from None
    except ValidationError as error:
        raise SpecError(f"{path}: {_describe(error)}") from None
    except RecursionError:
        raise SpecError(f"{path}: a YAML alias (*name) refers to the mapping or list that contains it; "
                        f"a spec is a tree: write the value out") from None


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check the spelling against docs/spec.md"
        elif item["type"] == "literal_error":
            message = f"{message} (got {item['input']!r})"
        problems.append(f"field {where}: {message}")
    return "; ".join(problems)


def load_specs(folder: Path | None = None, errors: list[SpecError] | None = None) -> list[ProjectSpec]:
    """Every spec in the folder. With ``errors``, a broken spec (or a name two specs share) is
    recorded there and left out instead of failing the whole folder: one team's typo must not
    stop every other project's DAGs."""
    folder = folder or settings.projects_dir()
    specs = []
    for path in sorted(folder.glob("*.y*ml")):
        try:
            specs.append(load_spec(path))
        except SpecError as error:
            if errors is None:
                raise
            errors.append(error)
    names = [spec.name for spec in specs]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        error = SpecError(f"{folder}: more than one spec is named {duplicated} "
                          f"({', '.join(str(s.spec_path) for s in specs if s.name in duplicated)}); "
                          f"names must be unique")
        if errors is None:
            raise error
        errors.append(error)
    return [spec for spec in specs if spec.name not in duplicated]


def spec_named(name: str, folder: Path | None = None) -> ProjectSpec:
    """The spec called ``name`` (for command lines that take ``--project``)."""
    specs = {spec.name: spec for spec in load_specs(folder)}
    if name not in specs:
        raise SpecError(f"no spec named {name!r} in {folder or settings.projects_dir()}; known: {sorted(specs)}")
    return specs[name]
