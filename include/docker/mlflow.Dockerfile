# MLflow tracking server for the labelloop stack.
#
# The official image (ghcr.io/mlflow/mlflow) is python:3.11-slim plus `pip install mlflow`:
# it lacks the Postgres driver for --backend-store-uri postgresql://... and boto3 for the
# s3:// artifact destination (MinIO). The version must match the mlflow pin in requirements.txt
# (tests/unit/test_compose.py checks it); boto3 is pinned like requirements.txt pins it.
FROM ghcr.io/mlflow/mlflow:v3.17.2

RUN pip install --no-cache-dir "psycopg2-binary==2.9.13" "boto3==1.43.117"

# Run unprivileged: with artifacts proxied to S3 and metadata in Postgres the server writes
# nothing but temporary files.
RUN useradd --create-home --uid 1000 mlflow
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
