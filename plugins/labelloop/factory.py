"""The DAG factory: each project spec becomes its DAGs.

Parse time reads only the spec files (YAML + the labeling config XML): no network, no
database, no connections, no heavy imports. Tasks import what they need when they run.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, task

from labelloop.spec import ProjectSpec, load_specs

START = pendulum.datetime(2026, 1, 1, tz="UTC")
DEFAULT_ARGS = {"owner": "labelloop", "retries": 3, "retry_delay": timedelta(seconds=30),
                "retry_exponential_backoff": True}


def tasks_asset(spec: ProjectSpec) -> Asset:
    """Updated whenever ingest adds tasks to the project; collect listens to it."""
    return Asset(name=f"labelloop__{spec.name}__tasks", uri=f"{spec.storage_uri}/ingest/manifest.json",
                 group="labelloop")


def _load(spec_path: str) -> ProjectSpec:
    from labelloop.spec import load_spec

    return load_spec(Path(spec_path))


def setup_dag(spec: ProjectSpec) -> DAG:
    with DAG(
        dag_id=f"{spec.dag_prefix}__setup",
        description=f"Create or update the Label Studio project '{spec.title}' from its spec",
        schedule=None,
        start_date=START,
        catchup=False,
        default_args=DEFAULT_ARGS,
        tags=["labelloop", spec.name, "setup"],
        doc_md=f"Brings the Label Studio project **{spec.title}** in line with `{spec.spec_path}`: "
               "title, labeling config, instructions, annotators per task. Safe to run any time.",
    ) as dag:

        @task
        def ensure_project(spec_path: str) -> dict[str, Any]:
            from labelloop.hooks.labelstudio import LabelStudioHook
            from labelloop.project import ensure_project as ensure

            project_id, created = ensure(LabelStudioHook(), _load(spec_path))
            return {"project_id": project_id, "created": created}

        ensure_project(str(spec.spec_path))
    return dag


def ingest_dag(spec: ProjectSpec) -> DAG:
    with DAG(
        dag_id=f"{spec.dag_prefix}__ingest",
        description=f"Raw objects under {spec.source.uri} become tasks of '{spec.title}'",
        schedule=spec.schedules.ingest,
        start_date=START,
        catchup=False,
        max_active_runs=1,  # runs share the project's manifest and hash index
        default_args=DEFAULT_ARGS,
        tags=["labelloop", spec.name, "ingest"],
        doc_md="Lists new objects, validates and de-duplicates their records, pre-labels them with "
               "the champion model when there is one, and imports them in batches. Every record "
               "ends imported, duplicate or quarantined; see the run summary in the task's XCom.",
    ) as dag:

        @task(outlets=[tasks_asset(spec)])
        def ingest(spec_path: str, **context: Any) -> dict[str, Any]:
            from labelloop.hooks.labelstudio import LabelStudioHook
            from labelloop.ingest.pipeline import Ingest, ingest_counts_line
            from labelloop.model.prelabel import load_predictor
            from labelloop.project import ensure_project

            spec = _load(spec_path)
            hook = LabelStudioHook()
            project_id, _ = ensure_project(hook, spec)
            run = context["dag_run"]
            # Scheduled runs take objects modified before their interval's end; a person who
            # triggers by hand wants what is there now.
            cutoff = run.run_after if run.run_type == "manual" else context.get("data_interval_end") or run.run_after
            summary = Ingest(spec, hook, context["run_id"], predictor=load_predictor(spec)).run(project_id, cutoff)
            print(f"ingest {summary['run']}: {summary['objects']} objects; {ingest_counts_line(summary)}")
            for skipped in summary["skipped_objects"]:
                print(f"skipped object {skipped['object']}: {skipped['reason']}")
            if not summary["balanced"]:
                raise RuntimeError(f"counts do not add up: {ingest_counts_line(summary)}")
            return {key: value for key, value in summary.items() if key != "per_object"}

        ingest(str(spec.spec_path))
    return dag


def build_dags(folder: Path | None = None) -> dict[str, DAG]:
    dags: dict[str, DAG] = {}
    for spec in load_specs(folder):
        for dag in (setup_dag(spec), ingest_dag(spec)):
            dags[dag.dag_id] = dag
    return dags
