"""The task types labelloop audits, one module each, and the one place that reads a
labeling config into them.

To add a kind of annotation: write ``tasktypes/<kind>.py`` with a ``TaskType`` subclass and
add it to ``TASK_TYPES`` below. Nothing else needs to know it exists.
"""

from __future__ import annotations

from xml.etree import ElementTree

from labelloop.errors import InputError

from .base import Control, ControlAudit, TaskType
from .choices import SingleChoice
from .comments import Comment
from .multichoice import MultipleChoice
from .rectangles import Rectangles
from .spans import Spans

#: Every task type, in the order the "supported" message lists them.
TASK_TYPES: tuple[type[TaskType], ...] = (SingleChoice, MultipleChoice, Spans, Rectangles, Comment)


def supported(kinds: tuple[str, ...] | None = None) -> str:
    return "; ".join(t.description for t in TASK_TYPES if kinds is None or t.kind in kinds)


def read_controls(xml: str, where: str = "labeling config", kinds: tuple[str, ...] | None = None) -> list[TaskType]:
    """Every control of a labeling config as its task type; anything else is refused.

    A control is a tag that labels another (it has ``toName``). A control no task type accepts
    (of ``kinds``, when given) is refused naming the tag and what is supported, so nothing
    reaches a stage that would drop or flatten it."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as error:
        raise InputError(f"{where} is not well-formed XML: {error}") from None
    objects = {tag.get("name"): tag for tag in root.iter()
               if tag.get("toName") is None and tag.get("value", "").startswith("$")}
    found: list[TaskType] = []
    for tag in (tag for tag in root.iter() if tag.get("toName") is not None):
        name, to_name = tag.get("name") or "", (tag.get("toName") or "").split(",")[0]
        described = f"<{tag.tag} name={name!r}>"
        if not name:
            raise InputError(f"{where}: a <{tag.tag}> has no name; give every control a unique name")
        if any(existing.control.name == name for existing in found):
            raise InputError(f"{where}: more than one control is named {name!r}; names must be unique")
        target = objects.get(to_name)
        if target is None:
            raise InputError(f"{where}: {described} has toName={to_name!r}, which names no object tag; "
                             f"objects here: {sorted(str(key) for key in objects)}")
        task_type = next((kind for kind in TASK_TYPES if kind.accepts(tag, target.tag)), None)
        if task_type is None or (kinds is not None and task_type.kind not in kinds):
            raise InputError(f"{where}: {described} on <{target.tag}> is not supported; supported: "
                             f"{supported(kinds)}")
        labels = tuple(child.get("value", "") for child in tag if child.tag in {"Choice", "Label"})
        if task_type.needs_labels and len(labels) < task_type.min_labels:
            least = {1: "one", 2: "two"}.get(task_type.min_labels, str(task_type.min_labels))
            raise InputError(f"{where}: {described} offers {len(labels)} value(s); give it at least {least}")
        found.append(task_type(Control(
            tag=tag.tag, name=name, to_name=to_name, labels=labels, attributes=dict(tag.attrib),
            object_tag=target.tag, object_field=target.get("value", "")[1:], kind=task_type.kind)))
    if not found:
        raise InputError(f"{where} has no control tag (a tag with toName); supported: {supported(kinds)}")
    return found


__all__ = ["TASK_TYPES", "Control", "ControlAudit", "TaskType", "read_controls", "supported"]
