"""The pre-label ML backend: Label Studio's ML backend protocol in front of the registry's champion.

``backend`` is the FastAPI app and its command line; ``champion`` keeps the served model in
step with ``models:/<name>@champion`` by polling the registry.
"""
