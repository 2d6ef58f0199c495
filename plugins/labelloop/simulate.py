"""Simulated annotators: real Label Studio users whose answers are drawn with a known accuracy.

Used by the demo, the tests and the retrain loop: the audit must see the same data shape
people produce (one annotation per user per task, created through the API on their behalf).
``simulate_labels`` is pure and reproducible; ``ensure_annotators`` and ``submit`` talk to
Label Studio and are idempotent, so a re-run adds nothing twice.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from labelloop.collect.export import annotator_of, choice_result
from labelloop.hooks.labelstudio import LabelStudioHook
from labelloop.spec import ProjectSpec

#: (task id, Label Studio user id, label)
Answer = tuple[int, int, str]
EMAIL_DOMAIN = "annotators.labelloop.local"


def ensure_annotators(hook: LabelStudioHook, n: int, prefix: str = "sim") -> list[Any]:
    """``n`` users ``<prefix>-01@annotators.labelloop.local`` ..., created unless they exist."""
    return [hook.ensure_user(email=f"{prefix}-{i:02d}@{EMAIL_DOMAIN}", username=f"{prefix}-{i:02d}",
                             first_name="Simulated", last_name=f"{prefix} {i:02d}")
            for i in range(1, n + 1)]


def simulate_labels(truth: dict[int, str], annotators: Sequence[tuple[int, float]], per_task: int,
                    labels: Sequence[str], seed: int = 0) -> list[Answer]:
    """``per_task`` distinct annotators answer each task; each is right with its accuracy.

    A wrong answer is drawn uniformly from the other labels. The same inputs and seed give the
    same answers, whatever the order of ``truth``'s keys.
    """
    if not 1 <= per_task <= len(annotators):
        raise ValueError(f"per_task must be between 1 and the number of annotators ({len(annotators)}), "
                         f"got {per_task}")
    unknown = {label for label in truth.values() if label not in labels}
    if unknown:
        raise ValueError(f"truth uses labels {sorted(unknown)} that are not in labels {list(labels)}")
    rng = random.Random(seed)
    answers = []
    for task_id in sorted(truth):
        right = truth[task_id]
        for user_id, accuracy in rng.sample(list(annotators), per_task):
            wrong = [label for label in labels if label != right]
            label = right if rng.random() < accuracy or not wrong else rng.choice(wrong)
            answers.append((task_id, user_id, label))
    return answers


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
                accuracies: Sequence[float], per_task: int = 3, seed: int = 0, prefix: str = "sim") -> int:
    """The annotators work the queue as people would: the ``count`` unlabeled tasks with the
    highest priority (the project's "most uncertain first" view), truth from ``meta.label``."""
    from labelloop.ingest.validate import PRIORITY_FIELD

    users = ensure_annotators(hook, len(accuracies), prefix=prefix)
    queue = [task for task in hook.iter_tasks(project_id, fields="all")
             if not task.annotations and (task.meta or {}).get("label")]
    queue.sort(key=lambda task: -float(task.data.get(PRIORITY_FIELD, 0)))
    truth = {task.id: task.meta["label"] for task in queue[:count]}
    answers = simulate_labels(truth, list(zip([user.id for user in users], accuracies)), per_task,
                              spec.labels, seed)
    return submit(hook, project_id, answers, spec)
