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
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelloop.collect.export import annotator_of, choice_result
from labelloop.spec import ProjectSpec

if TYPE_CHECKING:  # importing Airflow creates its home folder: the CLI sets AIRFLOW_HOME first
    from labelloop.hooks.labelstudio import LabelStudioHook

#: (task id, Label Studio user id, label)
Answer = tuple[int, int, str]
#: An annotator's skill: the chance of the right answer (a wrong one is any other label, uniformly),
#: or a confusion matrix ``{true label: {answer: probability}}`` whose rows sum to 1.
Skill = float | Mapping[str, Mapping[str, float]]
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
    """``per_task`` distinct annotators answer each task, each with their skill.

    The same inputs and seed give the same answers, whatever the order of ``truth``'s keys.
    """
    if not 1 <= per_task <= len(annotators):
        raise ValueError(f"per_task must be between 1 and the number of annotators ({len(annotators)}), "
                         f"got {per_task}")
    unknown = {label for label in truth.values() if label not in labels}
    if unknown:
        raise ValueError(f"truth uses labels {sorted(unknown)} that are not in labels {list(labels)}")
    for _, skill in annotators:
        check_skill(skill, labels)
    rng = random.Random(seed)
    return [(task_id, user_id, draw_answer(rng, skill, truth[task_id], labels))
            for task_id in sorted(truth)
            for user_id, skill in rng.sample(list(annotators), per_task)]


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

    One POST costs 0.1-0.25 s on SQLite, so a few threads share the wait.
    """
    done = answered_pairs(hook, project_id)
    todo = [(task_id, user_id, label) for task_id, user_id, label in answers if (task_id, user_id) not in done]
    to_name = spec.object_name

    def create(answer: Answer) -> None:
        task_id, user_id, label = answer
        hook.create_annotation(task_id, choice_result(spec.control_name, to_name, label),
                               completed_by=user_id, lead_time=lead_time(task_id, user_id))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(create, todo))
    return len(todo)


def label_queue(hook: LabelStudioHook, spec: ProjectSpec, project_id: int, count: int,
                skills: Sequence[Skill], per_task: int = 3, seed: int = 0, prefix: str = "sim") -> int:
    """The annotators work the queue as people would: the ``count`` unlabeled tasks with the
    highest priority (the project's "most uncertain first" view), truth from ``meta.label``
    (the spec's ``source.label_field``); tasks without a known label are left to people."""
    from labelloop.ingest.validate import PRIORITY_FIELD

    users = ensure_annotators(hook, len(skills), prefix=prefix)
    queue = [task for task in hook.iter_tasks(project_id, fields="all")
             if not task.annotations and (task.meta or {}).get("label")]
    queue.sort(key=lambda task: -float(task.data.get(PRIORITY_FIELD, 0)))
    truth = {task.id: task.meta["label"] for task in queue[:count]}
    answers = simulate_labels(truth, list(zip([user.id for user in users], skills)), per_task,
                              spec.labels, seed)
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
    if not isinstance(matrix, dict) or not all(isinstance(row, dict) for row in matrix.values()):
        raise ValueError(f'{text}: expected a confusion matrix like {{"spam": {{"spam": 0.6, "ham": 0.4}}, ...}}')
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
                        help="one per annotator: an accuracy (0.9) or a JSON confusion matrix file")
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
            check_skill(skill, spec.labels)
    except (ValueError, SpecError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    conn_var = f"AIRFLOW_CONN_{settings.LABELSTUDIO_CONN_ID.upper()}"
    if conn_var not in os.environ:
        from labelloop.stack import StackConfig

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
