"""What Airflow learns about labelloop as a provider (the ``apache_airflow_provider`` entry point).

Airflow registers connection types only from installed providers: this is how the ``labelstudio``
connection type reaches the UI's connection form. Airflow calls ``get_provider_info`` in every
component at start-up, so this module imports nothing but the package version (no Airflow, no
SDKs); the classes it names are imported by Airflow only when they are used.
"""

from __future__ import annotations

from typing import Any

from labelloop import __version__

INTEGRATION = "Label Studio"
PACKAGE = "labelloop"
HOOK_CLASS = "labelloop.hooks.labelstudio.LabelStudioHook"

#: The ``labelstudio`` connection form: which fields it hides, relabels and fills with examples.
#: Declared here (Airflow >= 3.2 reads it without importing the hook); the hook's
#: ``get_ui_field_behaviour`` returns the same, for older Airflow and for code that asks the hook.
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    # Extra stays: it holds imports_in_flight (LabelStudioHook.imports_in_flight).
    "hidden-fields": ["schema", "port", "login"],
    "relabeling": {"host": "Label Studio URL", "password": "API token"},
    "placeholders": {
        "host": "http://label-studio:8080",
        "password": "personal access token (JWT) or legacy token",
    },
}


def ui_field_behaviour() -> dict[str, Any]:
    """``UI_FIELD_BEHAVIOUR`` with the snake_case keys hooks return from ``get_ui_field_behaviour``."""
    return {key.replace("-", "_"): value for key, value in UI_FIELD_BEHAVIOUR.items()}


def _modules(*names: str) -> list[dict[str, Any]]:
    return [{"integration-name": INTEGRATION, "python-modules": [f"labelloop.{name}" for name in names]}]


def get_provider_info() -> dict[str, Any]:
    """The provider's metadata, valid against Airflow's ``provider_info.schema.json``."""
    return {
        "package-name": PACKAGE,
        "name": "labelloop",
        "description": "Human-in-the-loop annotation on `Label Studio <https://labelstud.io/>`__: "
                       "the ``labelstudio`` connection type, its hook, operators to import tasks, "
                       "export (deferrable) and audit annotations, a deferrable wait for annotations, "
                       "a trigger that watches a project for new annotations, and a quality-gate notifier.",
        "versions": [__version__],
        "integrations": [{"integration-name": INTEGRATION, "external-doc-url": "https://labelstud.io/guide/",
                          "tags": ["service"]}],
        "hooks": _modules("hooks.labelstudio"),
        "operators": _modules("operators.ingest", "operators.labelstudio", "operators.audit", "operators.model"),
        "triggers": _modules("triggers.labelstudio"),
        "notifications": ["labelloop.notifications.quality.QualityGateNotifier"],
        "extra-links": ["labelloop.operators.links.LabelStudioProjectLink", "labelloop.operators.links.MLflowRunLink"],
        "connection-types": [{
            "connection-type": "labelstudio",
            "hook-class-name": HOOK_CLASS,
            "hook-name": "Label Studio",
            "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
        }],
    }
