#!/usr/bin/env bash
# One role and one database per service of the labelloop stack (Airflow, MLflow, Label Studio).
#
# Mounted into /docker-entrypoint-initdb.d/ of the postgres container, so it runs ONCE, on the
# first start with an empty data volume. Changing a *_DB_PASSWORD later does not change the role's
# password: run `ALTER ROLE <name> PASSWORD '...'` yourself, or drop the volume (losing the data).
#
# Passwords go through psql variables (:'password' quotes them as SQL literals), never through
# string concatenation.
set -euo pipefail

create_database() {
    local name="$1" password="$2"
    echo "labelloop: creating role and database '${name}'"
    psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
        -v name="${name}" -v password="${password}" <<'EOSQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
EOSQL
}

create_database airflow "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD must be set}"
create_database mlflow "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD must be set}"
create_database labelstudio "${LABEL_STUDIO_DB_PASSWORD:?LABEL_STUDIO_DB_PASSWORD must be set}"
