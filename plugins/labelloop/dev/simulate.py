"""Simulated annotators: real Label Studio users whose answers are drawn with a known skill.

Used by the demo, the tests and the retrain loop, and by people for dry runs of a project
(``python -m labelloop simulate``): the audit must see the same data shape people produce (one
annotation per user per task, created through the API on their behalf), and with known true
labels its estimates can be checked against the truth. ``simulate_labels`` is pure and
reproducible; ``ensure_annotators`` and ``submit`` talk to Label Studio and are idempotent, so a
re-run adds nothing twice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelloop.collect.export import annotator_of, choice_result
from labelloop.spec import ProjectSpec

if TYPE_CHECKING:  # importing Airflow creates its home folder: the CLI sets AIRFLOW_HOME first
    from labelloop.hooks.labelstudio import LabelStudioHook
    from labelloop.tasktypes import TaskType

#: (task id, Label Studio user id, label of a single choice or the Label Studio results)
Answer = tuple[int, int, str | list[dict[str, Any]]]
#: An annotator's skill as a person writes it: an accuracy (for a single choice, the chance of the
#: right answer; a wrong one is any other label, uniformly), a confusion matrix
#: ``{true label: {answer: probability}}`` whose rows sum to 1, or a skill object of another kind
#: (``LabelSetSkill.of``, ``SpanSkill.of``).
Skill = float | Mapping[str, Any]
#: (start, end, label): a span in character offsets, end exclusive
Span = tuple[int, int, str]
EMAIL_DOMAIN = "annotators.labelloop.local"


def ensure_annotators(hook: LabelStudioHook, n: int, prefix: str = "sim") -> list[Any]:
    """``n`` users ``<prefix>-01@annotators.labelloop.local`` ..., created unless they exist."""
    return [hook.ensure_user(email=f"{prefix}-{i:02d}@{EMAIL_DOMAIN}", username=f"{prefix}-{i:02d}",
                             first_name="Simulated", last_name=f"{prefix} {i:02d}")
            for i in range(1, n + 1)]


def check_skill(skill: Skill, labels: Sequence[str]) -> None:
    """Refuse a skill that cannot be drawn from, naming what is wrong."""
    if isinstance(skill, (int, float)):
        if not 0 <= skill <= 1:
            raise ValueError(f"an accuracy must be between 0 and 1, got {skill}")
        return
    for right, row in skill.items():
        if not isinstance(row, Mapping):
            raise ValueError(f"confusion matrix row {right!r} must map answers to probabilities, got {row!r}")
        unknown = sorted(set(row) - set(labels) | ({right} - set(labels)))
        if unknown:
            raise ValueError(f"confusion matrix row {right!r} names labels {unknown} that are not in {list(labels)}")
        numbers = all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in row.values())
        if not numbers or any(p < 0 for p in row.values()) or abs(sum(row.values()) - 1) > 1e-6:
            raise ValueError(f"confusion matrix row {right!r} must hold probabilities that sum to 1, got {dict(row)}")


def draw_answer(rng: random.Random, skill: Skill, right: str, labels: Sequence[str]) -> str:
    """One answer to a task whose true label is ``right``."""
    if isinstance(skill, (int, float)):
        wrong = [label for label in labels if label != right]
        return right if rng.random() < skill or not wrong else rng.choice(wrong)
    if right not in skill:
        raise ValueError(f"the confusion matrix has no row for true label {right!r}")
    row, point, total = skill[right], rng.random(), 0.0
    answerable = [label for label in labels if row.get(label, 0) > 0]
    for label in answerable:
        total += row[label]
        if point < total:
            return label
    return answerable[-1]  # rounding: the row summed to a hair under 1


def simulate_labels(truth: dict[int, str], annotators: Sequence[tuple[int, Skill]], per_task: int,
                    labels: Sequence[str], seed: int = 0) -> list[Answer]:
    """``per_task`` distinct annotators answer each single-choice task, each with their skill.

    The same inputs and seed give the same answers, whatever the order of ``truth``'s keys.
    """
    check_per_task(per_task, annotators)
    unknown = {label for label in truth.values() if label not in labels}
    if unknown:
        raise ValueError(f"truth uses labels {sorted(unknown)} that are not in labels {list(labels)}")
    for _, skill in annotators:
        check_skill(skill, labels)
    rng = random.Random(seed)
    return [(task_id, user_id, draw_answer(rng, skill, truth[task_id], labels))
            for task_id, user_id, skill in assignments(truth, annotators, per_task, rng)]


def simulate_results(task_type: TaskType, truth: Mapping[int, list[dict[str, Any]]],
                     data: Mapping[int, dict[str, Any]], annotators: Sequence[tuple[int, Skill]], per_task: int,
                     seed: int = 0) -> list[Answer]:
    """``per_task`` distinct annotators answer each task of any kind: their Label Studio results,
    drawn by the task type from the true answer (tidy rows, as ``TaskType.known_answer`` gives
    them) and the task ``data``. For a single choice, the same draws as ``simulate_labels``."""
    check_per_task(per_task, annotators)
    skills = {user_id: task_type.simulation_skill(skill) for user_id, skill in annotators}
    rng = random.Random(seed)
    return [(task_id, user_id, task_type.simulate(truth[task_id], skills[user_id], rng, data[task_id]))
            for task_id, user_id, _ in assignments(truth, annotators, per_task, rng)]


def check_per_task(per_task: int, annotators: Sequence[tuple[int, Skill]]) -> None:
    if not 1 <= per_task <= len(annotators):
        raise ValueError(f"per_task must be between 1 and the number of annotators ({len(annotators)}), "
                         f"got {per_task}")


def assignments(task_ids: Collection[int], annotators: Sequence[tuple[int, Skill]], per_task: int,
                rng: random.Random) -> Iterator[tuple[int, int, Skill]]:
    """(task id, user id, skill): which annotators answer each task, drawn task by task in id order
    (interleaved with the answers' own draws, which is what keeps recorded figures reproducible)."""
    for task_id in sorted(task_ids):
        for user_id, skill in rng.sample(list(annotators), per_task):
            yield task_id, user_id, skill


def _rate(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{what} must be a probability between 0 and 1, got {value!r}")
    return float(value)


def _skill_fields(skill: Mapping[str, Any], accepted: Sequence[str], kind: str) -> None:
    unknown = sorted(set(skill) - set(accepted))
    if unknown:
        raise ValueError(f"a {kind} skill takes {list(accepted)} (each 0-1, default 0); got unknown {unknown}")


@dataclass(frozen=True)
class LabelSetSkill:
    """A multiple-choice annotator: per label, P(not ticked | it applies) and P(ticked | it does not)."""

    miss: Mapping[str, float]
    false_positive: Mapping[str, float]

    @classmethod
    def of(cls, skill: Skill, labels: Sequence[str]) -> LabelSetSkill:
        """From an accuracy ``a`` (every label missed and falsely ticked with 1 - a), or
        ``{"miss": rate or {label: rate}, "false_positive": rate or {label: rate}}``."""
        if isinstance(skill, int | float) and not isinstance(skill, bool):
            error = 1 - _rate(skill, "an accuracy")
            return cls(dict.fromkeys(labels, error), dict.fromkeys(labels, error))
        if not isinstance(skill, Mapping):
            raise ValueError(f"a multiple-choice skill is an accuracy or {{\"miss\": ..., \"false_positive\": ...}}, "
                             f"got {skill!r}")
        _skill_fields(skill, ("miss", "false_positive"), "multiple-choice")
        return cls(*(cls._per_label(skill.get(key, 0.0), key, labels) for key in ("miss", "false_positive")))

    @staticmethod
    def _per_label(value: Any, key: str, labels: Sequence[str]) -> dict[str, float]:
        if not isinstance(value, Mapping):
            return dict.fromkeys(labels, _rate(value, key))
        unknown = sorted(set(value) - set(labels))
        if unknown:
            raise ValueError(f"{key} names labels {unknown} that are not in {list(labels)}")
        return {label: _rate(value.get(label, 0.0), f"{key}[{label!r}]") for label in labels}


def draw_label_set(rng: random.Random, skill: LabelSetSkill, truth: Collection[str],
                   labels: Sequence[str]) -> list[str]:
    """One answer (labels in the config's order) to an item whose true set is ``truth``."""
    return [label for label in labels
            if (rng.random() >= skill.miss[label] if label in truth else rng.random() < skill.false_positive[label])]


@dataclass(frozen=True)
class SpanSkill:
    """A spans annotator. ``miss``: P(a true span is left out); ``false_span``: P(an item gets one
    span on a word no true span covers); ``boundary_shift``: P(a kept span has one edge moved by a
    word); ``confusion``: P(a kept span gets another label, uniformly)."""

    miss: float = 0.0
    false_span: float = 0.0
    boundary_shift: float = 0.0
    confusion: float = 0.0

    @classmethod
    def of(cls, skill: Skill) -> SpanSkill:
        """From an accuracy ``a`` (miss and false span 1 - a, shift and confusion (1 - a) / 2), or
        ``{"miss": ..., "false_span": ..., "boundary_shift": ..., "confusion": ...}``."""
        return cls(**error_rates(skill, ("miss", "false_span", "boundary_shift", "confusion"), "spans"))


def error_rates(skill: Skill, names: Sequence[str], kind: str) -> dict[str, float]:
    """A region annotator's rates by name: from an accuracy ``a`` (the first two 1 - a, the rest
    (1 - a) / 2), or from an object of them (each 0-1, default 0); spans and boxes read theirs so."""
    if isinstance(skill, int | float) and not isinstance(skill, bool):
        error = 1 - _rate(skill, "an accuracy")
        return dict(zip(names, (error, error, *[error / 2] * (len(names) - 2))))
    if not isinstance(skill, Mapping):
        raise ValueError(f"a {kind} skill is an accuracy or an object with {list(names)}, got {skill!r}")
    _skill_fields(skill, names, kind)
    return {name: _rate(skill.get(name, 0.0), name) for name in names}


def words(text: str) -> list[tuple[int, int]]:
    """(start, end) of each run of non-space characters: where a span edge can move to."""
    return [match.span() for match in re.finditer(r"\S+", text)]


def draw_spans(rng: random.Random, skill: SpanSkill, truth: Sequence[Span], text: str,
               labels: Sequence[str]) -> list[Span]:
    """One annotator's spans on ``text`` whose true spans are ``truth`` (sorted)."""
    tokens = words(text)
    drawn = []
    for start, end, label in truth:
        if rng.random() < skill.miss:
            continue
        if rng.random() < skill.boundary_shift:
            start, end = shift_edge(rng, start, end, tokens)
        if rng.random() < skill.confusion:
            others = [other for other in labels if other != label]
            label = rng.choice(others) if others else label
        drawn.append((start, end, label))
    if rng.random() < skill.false_span:
        free = [(s, e) for s, e in tokens if not any(s < end and start < e for start, end, _ in truth)]
        if free:
            start, end = rng.choice(free)
            drawn.append((start, end, rng.choice(list(labels))))
    return sorted(drawn)


def shift_edge(rng: random.Random, start: int, end: int, tokens: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The span with one edge moved by one word, out (taking in a neighbour) or in (letting one go),
    chosen uniformly among the moves the text allows; unchanged when it allows none."""
    inside = [(s, e) for s, e in tokens if start <= s and e <= end]
    before = [(s, e) for s, e in tokens if e <= start]
    after = [(s, e) for s, e in tokens if s >= end]
    moves = []
    if before:
        moves.append((before[-1][0], end))
    if after:
        moves.append((start, after[0][1]))
    if len(inside) >= 2:
        moves += [(inside[1][0], end), (start, inside[-2][1])]
    return rng.choice(moves) if moves else (start, end)


def lead_time(task_id: int, user_id: int) -> float:
    """A plausible, reproducible time spent (seconds), so the lead_time column is not empty."""
    return round(random.Random(task_id * 1_000_003 + user_id).lognormvariate(2.0, 0.5), 2)


def answered_pairs(hook: LabelStudioHook, project_id: int) -> set[tuple[int, int]]:
    """(task id, user id) of every annotation already in the project, from one export snapshot."""
    pairs = set()
    for task in hook.export_snapshot(project_id, "labelloop simulate"):
        for annotation in task.get("annotations") or []:
            pairs.add((task["id"], annotator_of(annotation)[0]))
    return pairs


def submit(hook: LabelStudioHook, project_id: int, answers: Sequence[Answer], spec: ProjectSpec,
           threads: int = 4) -> int:
    """Create each answer as an annotation by its user, skipping pairs already answered; returns how many.

    One POST costs 0.1-0.25 s on SQLite, so a few threads share the wait, one task each: Label
    Studio recounts a task's annotations inside each POST's transaction, so on Postgres two answers
    to one task at once both count the other as missing and leave ``total_annotations`` (and maybe
    ``is_labeled``) one short for good.
    """
    done = answered_pairs(hook, project_id)
    todo: dict[int, list[Answer]] = {}
    for answer in answers:
        if (answer[0], answer[1]) not in done:
            todo.setdefault(answer[0], []).append(answer)
    to_name = spec.object_name

    def create(task_answers: list[Answer]) -> None:
        for task_id, user_id, answered in task_answers:
            results = answered if isinstance(answered, list) else choice_result(spec.control_name, to_name, answered)
            hook.create_annotation(task_id, results, completed_by=user_id, lead_time=lead_time(task_id, user_id))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(create, todo.values()))
    return sum(map(len, todo.values()))


def label_queue(hook: LabelStudioHook, spec: ProjectSpec, project_id: int, count: int,
                skills: Sequence[Skill], per_task: int = 3, seed: int = 0, prefix: str = "sim") -> int:
    """The annotators work the queue as people would: the ``count`` unlabeled tasks with the
    highest priority (the project's "most uncertain first" view), truth from ``meta.label``
    (the spec's ``source.label_field``, read by the task type); tasks without a known answer
    are left to people."""
    from labelloop.taskdata import PRIORITY_FIELD

    task_type = spec.task_type
    users = ensure_annotators(hook, len(skills), prefix=prefix)
    queue = [task for task in hook.iter_tasks(project_id, fields="all")
             if not task.annotations and (task.meta or {}).get("label")]
    queue.sort(key=lambda task: -float(task.data.get(PRIORITY_FIELD, 0)))
    chosen = queue[:count]
    truth = {task.id: task_type.known_answer(task.meta["label"], task.data, f"task {task.id}: meta.label")
             for task in chosen}
    answers = simulate_results(task_type, truth, {task.id: task.data for task in chosen},
                               list(zip([user.id for user in users], skills)), per_task, seed)
    return submit(hook, project_id, answers, spec)


def parse_skill(text: str) -> Skill:
    """``0.9`` is an accuracy; anything else is the path of a JSON confusion matrix."""
    try:
        return float(text)
    except ValueError:
        pass
    path = Path(text)
    try:
        matrix = json.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"{text}: neither an accuracy nor a readable file ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{text}: not JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(matrix, dict):
        raise ValueError(f'{text}: expected a confusion matrix like {{"spam": {{"spam": 0.6, "ham": 0.4}}, ...}} '
                         f'(single choice) or a skill object like {{"miss": 0.1, "false_positive": 0.05}} '
                         f'(multiple choice; spans: miss, false_span, boundary_shift, confusion)')
    return matrix


def main(argv: list[str]) -> int:
    """``python -m labelloop simulate``: simulated annotators label a project's queue (a dry run)."""
    from labelloop import settings
    from labelloop.spec import SpecError, spec_named

    parser = argparse.ArgumentParser(
        prog="python -m labelloop simulate",
        description="Simulated annotators (real Label Studio users) answer the most uncertain unlabeled tasks "
                    "of a project, using the true labels ingest kept from source.label_field. Uses the "
                    f"AIRFLOW_CONN_{settings.LABELSTUDIO_CONN_ID.upper()} connection, else the embedded stack's.")
    parser.add_argument("--project", default="sms_spam", help="spec name under include/projects/")
    parser.add_argument("--count", type=int, default=100, help="how many tasks to label")
    parser.add_argument("--skills", nargs="+", default=["0.95", "0.85", "0.75"],
                        help="one per annotator: an accuracy (0.9), or a JSON file: a confusion matrix (single "
                             "choice) or a skill object (multiple choice: miss, false_positive; spans: miss, "
                             "false_span, boundary_shift, confusion)")
    parser.add_argument("--per-task", type=int, help="answers per task (default: the spec's annotators_per_task)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="sim", help="annotators are <prefix>-01@annotators.labelloop.local ...")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        spec = spec_named(args.project)
        if args.count < 1 or (args.per_task is not None and args.per_task < 1):
            raise ValueError("--count and --per-task must be at least 1")
        skills = [parse_skill(text) for text in args.skills]
        for skill in skills:
            spec.task_type.simulation_skill(skill)
    except (ValueError, SpecError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    conn_var = f"AIRFLOW_CONN_{settings.LABELSTUDIO_CONN_ID.upper()}"
    if conn_var not in os.environ:
        from labelloop.dev.stack import StackConfig

        config = StackConfig()
        os.environ[conn_var] = json.dumps(config.connections()[settings.LABELSTUDIO_CONN_ID])
        os.environ.setdefault("AIRFLOW_HOME", str(config.state_dir / "airflow"))  # not ~/airflow
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    from labelloop.hooks.labelstudio import LabelStudioError, LabelStudioHook

    hook = LabelStudioHook()
    try:
        project = hook.find_project(spec.title)
        if project is None:
            print(f"error: Label Studio has no project titled {spec.title!r}; run the project's setup and "
                  f"ingest DAGs first", file=sys.stderr)
            return 1
        per_task = args.per_task or spec.annotation.annotators_per_task
        answered = label_queue(hook, spec, project.id, args.count, skills, per_task, args.seed, args.prefix)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (httpx.HTTPError, ApiError, LabelStudioError) as error:
        host = hook.get_connection(hook.labelstudio_conn_id).host
        print(f"error: Label Studio at {host}: {error}; is it up (`make stack-status`)?", file=sys.stderr)
        return 1
    print(f"{len(skills)} simulated annotators answered {answered} times in project {project.id} ({spec.title})")
    return 0
