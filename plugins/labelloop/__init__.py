"""labelloop: Airflow pipelines for human-in-the-loop annotation on Label Studio."""

__version__ = "0.1.0"
