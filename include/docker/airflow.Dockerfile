# The labelloop Airflow image: the official Airflow image, the project's pinned requirements,
# and the project code baked in (dags/, plugins/, include/).
#
# Build context is the repository root (docker-compose.yaml sets it); the file
# airflow.Dockerfile.dockerignore beside this one keeps .venv/, .git/ and friends out of it.
#
# The tag below must match the apache-airflow pin in requirements.txt (and its Python version
# the `-p 3.11` the lock was compiled for): tests/unit/test_compose.py checks both.
FROM apache/airflow:3.3.2-python3.11

# The base image runs as the unprivileged `airflow` user (uid 50000, gid 0) and the Airflow docs
# tell you to install packages as that user. Repeating the apache-airflow pin guards against a
# requirements file that would silently up- or downgrade Airflow itself (pip fails instead).
# requirements.txt is a fully pinned lock (uv pip compile), so no constraints file is needed.
USER airflow
COPY --chown=airflow:0 requirements.txt /opt/airflow/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/airflow/requirements.txt

# Project code. plugins/ is on sys.path in every Airflow component, so `import labelloop` works;
# the DAG factory reads project specs from LABELLOOP_PROJECTS_DIR=/opt/airflow/include/projects.
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 include/ /opt/airflow/include/

# labelloop as an Airflow provider (registers the `labelstudio` connection type in the UI), the
# same way `make setup` installs it: after the lock, --no-deps (nothing re-resolved), built by the
# lock's setuptools. Editable from /opt/airflow, so the installed package IS /opt/airflow/plugins/
# labelloop: the copy on the plugins/ sys.path entry and the installed one cannot differ.
COPY --chown=airflow:0 pyproject.toml /opt/airflow/pyproject.toml
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e /opt/airflow

# Mount point of the `airflow-auth` volume (Simple auth manager password file). Created here so
# the named volume inherits the airflow user's ownership on first use.
RUN mkdir -p /opt/airflow/auth
