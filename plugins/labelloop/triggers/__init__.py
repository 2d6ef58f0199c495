"""Triggers (run by Airflow's triggerer) for deferrable labelloop operators."""
