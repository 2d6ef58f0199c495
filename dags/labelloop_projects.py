"""Airflow DAGs: one set per project spec in include/projects/ (see plugins/labelloop/factory.py).

(The words "airflow" and "dag" in this file also let the DAG processor's safe mode find it.)
"""

from labelloop.factory import build_dags

globals().update(build_dags())
