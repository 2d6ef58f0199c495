"""The model behind ``models:/<name>@champion``, kept current by polling the registry.

Promotion happens elsewhere (the retrain DAG, or a person in the MLflow UI), so the backend
cannot be told; it asks. One cheap call (``get_registered_model``, whose aliases say where
``champion`` points) per poll, and a download only when the alias points at another version.
Requests never wait for the registry: they read the last loaded model, swapped in with one
attribute assignment.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import warnings
from dataclasses import dataclass
from typing import Any

from labelloop.model.prelabel import CHAMPION, RegistryError, champion_number, load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """A loaded model and the version it came from."""

    model: Any
    version: str  # registry version number, e.g. "3"
    model_version: str  # what predictions report: "<name>:<version>", as ingest's pre-labels do


class Champion:
    """Holds the champion of one registered model; ``refresh`` checks the alias once."""

    def __init__(self, name: str, tracking_uri: str, poll_seconds: float = 10.0, flavor: str = "sklearn") -> None:
        self.name = name
        self.flavor = flavor  # the MLflow flavor the spec's learner logs (Learner.flavor)
        self.tracking_uri = tracking_uri
        self.poll_seconds = poll_seconds
        self.current: Loaded | None = None
        self.problem: str | None = "the registry has not been checked yet"
        #: Why the last check failed (the registry down, a broken download), while the last model serves on.
        self.trouble: str | None = None
        self.checked = threading.Event()  # set after the first check, whatever its outcome
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{CHAMPION}"

    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def refresh(self) -> bool:
        """Look at the alias; load and swap in the model when it moved. True when it swapped.

        No alias (or no model) means nothing to serve, so a removed alias stops serving.
        A registry or download failure keeps the model being served and retries next poll.
        """
        try:
            version = champion_number(self.client(), self.name)
        except RegistryError as error:
            return self._trouble(str(error))
        except Exception as error:  # the poller must survive anything the network throws
            return self._trouble(f"the registry at {self.tracking_uri} is unreachable: {error}")
        self.trouble = None
        if version is None:  # the registry's own answer: no such model, or no such alias
            if self.current is not None:
                log.warning("%s is gone: no longer serving %s", self.uri, self.current.model_version)
            self.current = None
            self.problem = (f"no champion yet: {self.uri} does not exist in the registry at "
                            f"{self.tracking_uri}; the retrain DAG sets it when a model clears the floor")
            return False
        if self.current is not None and self.current.version == version:
            self.problem = self.trouble = None
            return False
        try:
            model = self._load(version)
        except Exception as error:  # a broken artifact must not take down the backend
            log.exception("cannot load %s version %s", self.name, version)
            return self._trouble(f"cannot load {self.name} version {version}: {error}")
        previous = self.current.model_version if self.current else "nothing"
        self.current = Loaded(model, version, f"{self.name}:{version}")
        self.problem = self.trouble = None
        log.info("now serving %s (was %s)", self.current.model_version, previous)
        return True

    def _trouble(self, message: str) -> bool:
        log.warning("%s; still serving %s", message,
                    self.current.model_version if self.current else "nothing")
        self.trouble = message
        if self.current is None:
            self.problem = message
        return False

    def _load(self, version: str) -> Any:
        """Download to a temporary folder (no global tracking URI) and deserialize.

        MLflow 3 saves scikit-learn models with skops (safe loading) by default; skops probes
        every imported module, which with Airflow loaded logs ~1,000 DeprecatedImportWarnings.
        """
        import mlflow

        with tempfile.TemporaryDirectory(prefix="labelloop-champion-") as folder, warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"skops\.")
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.name}/{version}", dst_path=folder,
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            return load_model(self.flavor, path)

    # Background polling -----------------------------------------------------------------------

    def start(self) -> None:
        """Check now and then every ``poll_seconds`` in a daemon thread (0 = check once)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"champion-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            self.refresh()
            self.checked.set()
            if self.poll_seconds <= 0 or self._stop.wait(self.poll_seconds):
                return
