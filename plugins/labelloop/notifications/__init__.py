"""Airflow notifiers for labelloop events (docs/provider.md)."""

from labelloop.notifications.quality import QualityGateNotifier, gate_message

__all__ = ["QualityGateNotifier", "gate_message"]
