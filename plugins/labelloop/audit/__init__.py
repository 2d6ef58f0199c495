"""Audit in Airflow: the quality library run on the latest collect snapshot.

``prepare`` turns snapshot tables into the library's inputs (pure), ``gate`` compares the
metrics with the spec's thresholds and notifies, ``routing`` sends doubtful items to the
review project, ``run`` is the glue the audit DAG calls (storage, MLflow). See
docs/collect-audit.md.
"""
