"""Reports broken project specs as this file's import error in Airflow (it defines no DAG).

labelloop_projects.py builds the DAGs of every valid spec and leaves broken ones out, so one
bad spec does not stop the other projects; this file makes the broken ones impossible to miss.
(The words "airflow" and "dag" in this file also let the DAG processor's safe mode read it.)
"""

from labelloop.factory import check_specs

check_specs()
