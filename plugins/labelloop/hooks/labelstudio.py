"""Label Studio through the official SDK: one hook, one connection type, no hand-written HTTP.

The connection holds the base URL (host, with scheme) and the API token (password). Both
token kinds work: a personal access token (a JWT refresh token, sent as ``Bearer`` after
the SDK exchanges it) and a legacy token (sent as ``Token``).

Every SDK call made through the hook (``hook.client.*`` included) goes through one httpx
transport, which turns a network failure into ``LabelStudioTransportError`` (a
``LabelStudioError``) naming the URL, the connection id and the call, and logs every retry at
WARNING. Retries are bounded by ``max_retries`` (default 6):

- a failed connect (nothing reached the server, so any call is safe to repeat), or a dropped
  connection on GET/HEAD/OPTIONS/PUT/DELETE, is retried after 1, 2, 4, 8, 16 and 30 s: a
  refused connection fails the call after ~61 s, and a connect that hangs waits at most
  ``CONNECT_TIMEOUT`` (10 s) per attempt, so a call gives up within ~2 minutes;
- 5xx, 408, 409 and 429 answers are retried by the SDK with exponential backoff (logged here
  too); imports are the exception (see ``import_batch``), because retrying a POST that did
  land would duplicate tasks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from airflow.sdk import BaseHook

from labelloop import settings
from labelloop.connections import url_of

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

#: A stdlib logger (not the hook's structlog one): it reaches task logs and pytest's caplog alike.
log = logging.getLogger(__name__)
_T = TypeVar("_T")
TRANSIENT_STATUS = {408, 409, 429, 500, 502, 503, 504}
#: Seconds to wait for a TCP connection; reading an answer waits the hook's ``timeout``.
CONNECT_TIMEOUT = 10.0
#: Methods whose request can be sent again after the connection dropped mid-way.
IDEMPOTENT_METHODS = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
#: A bound, so that a typo in a connection cannot flood Label Studio with concurrent imports.
MAX_IMPORTS_IN_FLIGHT = 8


class LabelStudioError(RuntimeError):
    """Label Studio refused or could not be reached; the message says which and what to check."""


class LabelStudioTransportError(LabelStudioError, httpx.TransportError):
    """Label Studio could not be reached, or the connection broke. Also an ``httpx.TransportError``,
    so code that catches httpx errors (and ``_transient``) keeps treating it as a network failure."""

    def __init__(self, message: str, request: httpx.Request) -> None:
        httpx.TransportError.__init__(self, message, request=request)


def retry_delay(retry: int) -> float:
    """Seconds before retry number ``retry`` (0-based): 1, 2, 4, 8, 16, then 30."""
    return min(2.0**retry, 30.0)


class NamedTransport(httpx.BaseTransport):
    """The hook's httpx transport: network failures name Label Studio, and retries are logged."""

    def __init__(self, base_url: str, conn_id: str, max_retries: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.base_url = base_url
        self.conn_id = conn_id
        self.max_retries = max_retries

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        operation = f"{request.method} {request.url.path}"
        started, retry = time.monotonic(), 0
        while True:
            try:
                response = self.inner.handle_request(request)
                break
            except httpx.TransportError as error:
                if retry == self.max_retries or not _safe_to_resend(request.method, error):
                    raise self.failure(request, operation, error, retry + 1, started) from error
                wait = retry_delay(retry)
                retry += 1
                log.warning("Label Studio at %s (connection %r): %s failed (%s: %s); retry %d of %d in %.0f s",
                            self.base_url, self.conn_id, operation, type(error).__name__, error,
                            retry, self.max_retries, wait)
                time.sleep(wait)
        if response.status_code in TRANSIENT_STATUS:
            log.warning("Label Studio at %s (connection %r) answered %d to %s",
                        self.base_url, self.conn_id, response.status_code, operation)
        response.stream = _NamedStream(response.stream, lambda error: self.failure(
            request, f"reading the answer to {operation}", error, retry + 1, started))
        return response

    def failure(self, request: httpx.Request, operation: str, error: Exception, attempts: int,
                started: float) -> LabelStudioTransportError:
        tries = f" after {attempts} attempts over {time.monotonic() - started:.0f} s" if attempts > 1 else ""
        return LabelStudioTransportError(
            f"Label Studio at {self.base_url} (connection {self.conn_id!r}): {operation} failed{tries}: "
            f"{type(error).__name__}: {error}. Check that Label Studio runs there and that the "
            f"connection's host is the URL it is reached at.", request)

    def close(self) -> None:
        self.inner.close()


class _NamedStream(httpx.SyncByteStream):
    """An answer's body, whose read errors (the server died mid-answer) name Label Studio too."""

    def __init__(self, stream: Any, failure: Any) -> None:
        self.stream = stream
        self.failure = failure

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.stream
        except httpx.TransportError as error:
            raise self.failure(error) from error

    def close(self) -> None:
        self.stream.close()


def _safe_to_resend(method: str, error: httpx.TransportError) -> bool:
    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True  # nothing reached the server
    return method in IDEMPOTENT_METHODS and isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError))


def data_filter(field: str, value: str) -> str:
    """A Data Manager query that selects tasks whose ``data[field]`` equals ``value``."""
    item = {"filter": f"filter:tasks:data.{field}", "operator": "equal", "type": "String", "value": value}
    return json.dumps({"filters": {"conjunction": "and", "items": [item]}})


def updated_after_filter(moment: str) -> dict[str, Any]:
    """Data Manager filters for tasks whose ``updated_at`` is after ``moment`` (``%Y-%m-%dT%H:%M:%S.%fZ``).
    Label Studio stamps a task's ``updated_at`` whenever one of its annotations is created, changed or
    deleted (``Annotation.save``/``delete`` save the task; the bulk delete action updates it too)."""
    item = {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": moment}
    return {"conjunction": "and", "items": [item]}


def id_ranges_filter(ranges: list[tuple[int, int]]) -> dict[str, Any]:
    """Data Manager filters for tasks whose id is in any of these inclusive ranges."""
    items = [{"filter": "filter:tasks:id", "operator": "in", "type": "Number", "value": {"min": low, "max": high}}
             for low, high in ranges]
    return {"conjunction": "or", "items": items}


def base_url_of(conn: Any, conn_id: str) -> str:
    """Label Studio's URL from a ``labelstudio`` connection (host with scheme; http:// if none)."""
    if not conn.host or not conn.password:
        raise LabelStudioError(
            f"connection {conn_id!r} needs host (the Label Studio URL, e.g. "
            f"http://label-studio:8080) and password (an API token)"
        )
    return url_of(conn)


class LabelStudioHook(BaseHook):
    """Wraps ``label_studio_sdk.LabelStudio``; the client is built on first use, never at parse time."""

    conn_name_attr = "labelstudio_conn_id"
    default_conn_name = settings.LABELSTUDIO_CONN_ID
    conn_type = "labelstudio"
    hook_name = "Label Studio"

    def __init__(
        self,
        labelstudio_conn_id: str = default_conn_name,
        timeout: float = 120.0,
        max_retries: int = 6,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.labelstudio_conn_id = labelstudio_conn_id
        self.timeout = timeout
        self.max_retries = max_retries

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form's layout; declared once in ``labelloop.provider``."""
        from labelloop.provider import ui_field_behaviour

        return ui_field_behaviour()

    @cached_property
    def client(self) -> LabelStudio:
        return self.get_conn()

    @cached_property
    def imports_in_flight(self) -> int:
        """Import requests ingest keeps open at once: the connection's extra ``imports_in_flight``,
        1 unless set. It is the server's property: Label Studio on PostgreSQL writes two imports at
        once (2 are 1.3x faster than 1 there); on SQLite its lock-retry middleware makes two 3x slower."""
        value = self.get_connection(self.labelstudio_conn_id).extra_dejson.get("imports_in_flight", 1)
        number = int(value) if isinstance(value, int | str) and str(value).isdigit() else 0
        if not 1 <= number <= MAX_IMPORTS_IN_FLIGHT:
            raise LabelStudioError(f"connection {self.labelstudio_conn_id!r}: extra imports_in_flight must be "
                                   f"a whole number from 1 to {MAX_IMPORTS_IN_FLIGHT}, not {value!r}")
        return number

    def get_conn(self) -> LabelStudio:
        from label_studio_sdk import LabelStudio

        conn = self.get_connection(self.labelstudio_conn_id)
        base_url = base_url_of(conn, self.labelstudio_conn_id)
        transport = NamedTransport(base_url, self.labelstudio_conn_id, self.max_retries)
        # No `timeout=` for the SDK: it would override the connect timeout of every request.
        http = httpx.Client(transport=transport, follow_redirects=True,
                            timeout=httpx.Timeout(self.timeout, connect=CONNECT_TIMEOUT))
        return LabelStudio(base_url=base_url, api_key=conn.password, max_retries=self.max_retries,
                           httpx_client=http)

    def project_url(self, project_id: int) -> str:
        """Where people open the project (its Data Manager), for operator links and logs."""
        base_url = base_url_of(self.get_connection(self.labelstudio_conn_id), self.labelstudio_conn_id)
        return f"{base_url}/projects/{project_id}/data"

    def test_connection(self) -> tuple[bool, str]:
        try:
            user = self.client.users.whoami()
        except Exception as error:  # the UI shows the message; any failure is a failed test
            return False, f"Label Studio refused or is unreachable: {error}"
        return True, f"Connected to Label Studio as {user.email}"

    # Projects -------------------------------------------------------------------------------

    def find_project(self, title: str) -> Any | None:
        """The project with exactly this title (titles are how specs name projects)."""
        matches = self._titled(title)
        if len(matches) > 1:
            raise LabelStudioError(
                f"{len(matches)} projects are titled {title!r} (ids {[p.id for p in matches]}); "
                f"rename or delete all but one so labelloop knows which to use"
            )
        return matches[0] if matches else None

    def upsert_project(self, title: str, **settings_: Any) -> tuple[Any, bool]:
        """Create the project or bring its settings to ``settings_``; returns (project, created)."""
        same = self._titled(title)
        if not same:
            created = self._create_project(title, settings_)
            project = self._settle_concurrent_creates(title)
            if created is not None and project.id == created.id:
                return created, True
        else:
            project = same[0] if len(same) == 1 else self._settle_concurrent_creates(title)
        changed = {key: value for key, value in settings_.items() if getattr(project, key, None) != value}
        if changed:
            project = self.client.projects.update(project.id, **changed)
        return project, False

    def _titled(self, title: str) -> list[Any]:
        """Projects with exactly this title, oldest first."""
        return sorted((project for project in self.client.projects.list(title=title, page_size=100)
                       if project.title == title), key=lambda project: project.id)

    def _create_project(self, title: str, settings_: dict[str, Any], attempts: int = 5) -> Any | None:
        """POST the project without the SDK's blind retry, which could leave a second one: after a
        transient failure, look first whether it landed. None when it did (its answer was lost)."""
        for attempt in range(1, attempts + 1):
            try:
                return self.client.projects.create(title=title, **settings_, request_options={"max_retries": 0})
            except Exception as error:
                if not _transient(error) or attempt == attempts:
                    raise
                if self._titled(title):
                    return None
                self.log.warning("creating project %r: %s; retrying (attempt %d)", title, error, attempt)
                time.sleep(min(2.0**attempt, 30.0))
        return None

    def _settle_concurrent_creates(self, title: str, rounds: int = 10) -> Any:
        """Titles are not unique in Label Studio, and two workers may create the same project at
        once (a scheduled ingest and the setup DAG; on SQLite, Label Studio's
        ``DatabaseIsLockedRetryMiddleware`` even replays a create that hit a lock, so one POST can
        make several). Every creator keeps the oldest and deletes the newer empty copies, until
        two listings in a row agree: one listing can miss a copy still being committed. Copies
        that hold tasks are refused by name, as ``find_project`` does."""
        from label_studio_sdk.core.api_error import ApiError

        kept = None
        for _ in range(rounds):
            same = self._titled(title)
            if not same:
                raise LabelStudioError(f"project {title!r} was created but is gone: was it deleted meanwhile?")
            empty = [extra for extra in same[1:] if not extra.task_number]
            if same[0].id == kept and not empty:
                if len(same) > 1:
                    return self.find_project(title)  # raises: the copies left hold tasks
                return same[0]
            kept = same[0].id
            for extra in empty:
                self.log.warning("project %r was created more than once: keeping id %s, deleting id %s",
                                 title, kept, extra.id)
                try:
                    self.client.projects.delete(extra.id)
                except ApiError as error:
                    if error.status_code != 404:  # another creator deleted it first
                        raise
            time.sleep(0.2)
        raise LabelStudioError(f"copies of project {title!r} kept appearing for {rounds} rounds; "
                               f"is something creating it in a loop?")

    def ensure_view(self, project_id: int, title: str, ordering: list[str]) -> int:
        """A Data Manager tab with this title and ordering (created once, then left to people)."""
        for view in self.client.views.list(project=project_id):
            if (view.data or {}).get("title") == title:
                return view.id
        return self.client.views.create(project=project_id, data={"title": title, "ordering": ordering}).id

    def ensure_ml_backend(self, project_id: int, url: str, title: str, user: str | None, password: str | None) -> int:
        """Connect the project to an ML backend at ``url`` once (Label Studio checks /health and /setup),
        without the event webhook Label Studio adds for it (``_drop_event_webhook``)."""
        found = next((backend.id for backend in self.client.ml.list(project=project_id)
                      if backend.url.rstrip("/") == url.rstrip("/")), None)
        if found is None:
            auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": user, "basic_auth_pass": password} if user else {}
            found = self.client.ml.create(url=url, project=project_id, title=title, is_interactive=False, **auth).id
        self._drop_event_webhook(project_id, url)
        return found

    def _drop_event_webhook(self, project_id: int, url: str) -> None:
        """Label Studio subscribes a new ML backend to every project event: a webhook to
        ``<url>/webhook`` carrying each payload, every imported task included. labelloop's backend
        acts on none (training is the retrain DAG's), and that webhook made each import 2.5x slower
        (docs/benchmarks.md). "Start training" does not use it: it calls the backend directly."""
        target = f"{url.rstrip('/')}/webhook"
        for webhook in self.client.webhooks.list(project=str(project_id)):
            if (webhook.url or "").rstrip("/") == target and webhook.project == project_id:
                self.client.webhooks.delete(webhook.id)
                log.info("project %s: removed Label Studio's event webhook to %s (the ML backend ignores events)",
                         project_id, target)

    def ensure_s3_import_storage(self, project_id: int, bucket: str, prefix: str, *, title: str,
                                 access_key: str | None, secret_key: str | None, region: str | None,
                                 endpoint: str | None, presign_ttl_minutes: int = 15) -> int:
        """Connect an S3 bucket so Label Studio turns the ``s3://`` URIs in task data into presigned
        URLs whenever a task is opened. Never synced (a sync would re-import every object as tasks):
        created not synchronizable. Brought to these settings on every call (keys may rotate)."""
        settings_ = {"bucket": bucket, "prefix": prefix, "title": title, "presign": True,
                     "presign_ttl": presign_ttl_minutes, "use_blob_urls": True, "synchronizable": False,
                     "aws_access_key_id": access_key, "aws_secret_access_key": secret_key,
                     "region_name": region, "s3endpoint": endpoint}
        for storage in self.client.import_storage.s3.list(project=project_id):
            if storage.bucket == bucket and (storage.prefix or "") == prefix:
                return self.client.import_storage.s3.update(id=storage.id, **settings_).id
        return self.client.import_storage.s3.create(project=project_id, **settings_).id

    def ensure_local_import_storage(self, project_id: int, path: str, *, title: str) -> int:
        """Connect a folder under Label Studio's local-files document root, which it then serves to
        the project's users as ``/data/local-files/?d=<path under the root>``. Never synced."""
        for storage in self.client.import_storage.local.list(project=project_id):
            if (storage.path or "").rstrip("/") == path.rstrip("/"):
                return storage.id
        return self.client.import_storage.local.create(project=project_id, path=path, title=title,
                                                       use_blob_urls=True, synchronizable=False).id

    def task_count(self, project_id: int) -> int:
        return int(self.client.projects.get(project_id).task_number or 0)

    # Tasks ----------------------------------------------------------------------------------

    def iter_tasks(
        self, project_id: int, query: str | None = None, fields: str = "task_only", page_size: int = 1000
    ) -> Iterator[Any]:
        """Every task of a project (the SDK pager follows the pages), optionally filtered, with its data
        as stored: Label Studio would otherwise rewrite an ``s3://`` URI into a proxy URL of its own,
        which a model cannot read and which must never be written back into the task."""
        yield from self.client.tasks.list(project=project_id, query=query, fields=fields, page_size=page_size,
                                          resolve_uri=False)

    def iter_unlabeled_tasks(self, project_id: int) -> Iterator[Any]:
        """Tasks with no submitted (not skipped) annotation, judged from the annotations themselves.

        (A Data Manager filter on ``total_annotations == 0`` once returned every task of a project
        whose 250 tasks had 3 answers each, right after they were submitted concurrently.)
        """
        for task in self.iter_tasks(project_id, fields="all"):
            if not any(not _field(annotation, "was_cancelled") for annotation in task.annotations or []):
                yield task

    def update_task_data(self, data: dict[int, dict[str, Any]], workers: int = 4) -> None:
        """Replace the data of these tasks (task id -> whole data): one PATCH each, a few at a time."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda item: self.client.tasks.update(id=item[0], data=item[1]), data.items()))

    def import_batch(
        self,
        project_id: int,
        tasks: list[dict[str, Any]],
        batch_id: str,
        key_field: str,
        batch_field: str,
        deadline_seconds: float = 600.0,
        fresh: bool = False,
    ) -> dict[str, int]:
        """Import tasks exactly once, even when the server dies mid-request.

        Every task carries ``data[batch_field] == batch_id`` and a unique ``data[key_field]``.
        Before each retry (and before the first attempt unless the caller knows the batch is
        ``fresh``, never sent before) the tasks of this batch already in Label Studio are looked
        up, so a POST that landed before its answer was lost is never sent again. The lookup is a
        Data Manager query that grows with the project: skipping it for fresh batches saves a
        quarter of the import time at 100k tasks. Returns key -> task id for the whole batch.
        """
        keys = [task["data"][key_field] for task in tasks]

        def attempt(number: int) -> dict[str, int]:
            landed = {} if fresh and number == 0 else {
                task.data[key_field]: task.id
                for task in self.iter_tasks(project_id, query=data_filter(batch_field, batch_id))}
            todo = [task for task, key in zip(tasks, keys) if key not in landed]
            if todo:
                response = self.client.projects.import_tasks(
                    project_id, request=todo, return_task_ids=True,
                    request_options={"max_retries": 0},
                )
                landed.update(zip((task["data"][key_field] for task in todo), response.task_ids or []))
            missing = [key for key in keys if key not in landed]
            if missing:
                raise LabelStudioError(f"batch {batch_id}: {len(missing)} tasks were not created")
            return landed

        return self._once(f"batch {batch_id}", attempt, deadline_seconds)

    def import_predictions(self, project_id: int, predictions: list[dict[str, Any]],
                           deadline_seconds: float = 600.0) -> None:
        """Add predictions (``{"task": id, "result": [...], "score", "model_version"}``) to tasks, once.

        The SDK's own retry of a 5xx would send a POST that landed before its answer was lost again,
        and those tasks would hold the prediction twice; here each retry first leaves out the tasks
        that already carry a prediction of their model version.
        """
        def attempt(number: int) -> None:
            todo = predictions
            if number:
                ids = [prediction["task"] for prediction in predictions]
                query = json.dumps({"filters": id_ranges_filter([(min(ids), max(ids))])})
                landed = {(task.id, _field(prediction, "model_version"))
                          for task in self.iter_tasks(project_id, query=query, fields="all")
                          for prediction in task.predictions or []}
                todo = [p for p in predictions if (p["task"], p["model_version"]) not in landed]
            if todo:
                self.client.projects.import_predictions(project_id, request=todo, request_options={"max_retries": 0})

        self._once(f"importing {len(predictions)} predictions", attempt, deadline_seconds)

    def _once(self, what: str, attempt: Callable[[int], _T], deadline_seconds: float) -> _T:
        """``attempt(0)``, then ``attempt(1)``, ... after transient failures, with backoff, until the
        deadline. Each attempt must itself look at what an earlier one already did."""
        started, number = time.monotonic(), 0
        while True:
            try:
                return attempt(number)
            except Exception as error:
                if not _transient(error) or time.monotonic() - started > deadline_seconds:
                    raise
                number += 1
                wait = min(2.0**number, 30.0)
                self.log.warning("%s: %s; retrying in %.0f s (attempt %d)", what, error, wait, number)
                time.sleep(wait)

    def delete_project(self, project_id: int) -> None:
        self.client.projects.delete(project_id)

    def delete_tasks(self, task_ids: list[int]) -> None:
        """Delete these tasks; one already gone (an earlier attempt of the caller) is fine."""
        from label_studio_sdk.core.api_error import ApiError

        for task_id in task_ids:
            try:
                self.client.tasks.delete(id=task_id)
            except ApiError as error:
                if error.status_code != 404:
                    raise

    # Predictions (pre-label refresh) ----------------------------------------------------------

    def set_model_version(self, project_id: int, model_version: str) -> None:
        """The predictions the project shows annotators: Label Studio refuses a version none carries."""
        self.client.projects.update(project_id, model_version=model_version)

    # Export and annotations (collect/audit) ---------------------------------------------------

    #: Expanded so one export holds who answered (id, e-mail, name) and the full predictions.
    EXPORT_OPTIONS: dict[str, Any] = {
        "annotations__completed_by": {"only_id": False},
        "predictions": {"only_id": False},
        "drafts": {"only_id": True},
        "include_annotation_history": False,
    }

    def create_export(self, project_id: int, title: str, view_id: int | None = None) -> int:
        """Start an export snapshot (never the synchronous export, which times out on big projects),
        of the tasks a Data Manager view selects when ``view_id`` is given."""
        return int(self._start_export(project_id, title, view_id).id)

    def _start_export(self, project_id: int, title: str, view_id: int | None) -> Any:
        filters = {} if view_id is None else {"task_filter_options": {"view": view_id}}
        return self.client.projects.exports.create(
            project_id, title=title, serialization_options=self.EXPORT_OPTIONS, **filters)

    def wait_export(self, project_id: int, export_id: int, timeout: float = 1800.0, poll: float = 1.0) -> None:
        """Poll until the snapshot is completed; a failed or overdue snapshot raises."""
        deadline = time.monotonic() + timeout
        while True:
            status = str(self.client.projects.exports.get(project_id, export_id).status or "")
            if status == "completed":
                return
            if status == "failed":
                raise LabelStudioError(f"export snapshot {export_id} of project {project_id} failed; "
                                       f"see the Label Studio server log")
            if time.monotonic() > deadline:
                raise LabelStudioError(f"export snapshot {export_id} of project {project_id} is still "
                                       f"{status or 'pending'} after {timeout:.0f} s")
            time.sleep(poll)

    def download_export(self, project_id: int, export_id: int) -> list[dict[str, Any]]:
        """The snapshot's tasks (JSON format: one dict per task, annotations inside)."""
        raw = b"".join(self.client.projects.exports.download(project_id, export_id, export_type="JSON"))
        return json.loads(raw) if raw.strip() else []

    def export_snapshot(self, project_id: int, title: str) -> list[dict[str, Any]]:
        """Create, wait for and download one snapshot, then delete it (our copy is the record)."""
        return self.export_selected(project_id, title)[1]

    def export_selected(self, project_id: int, title: str,
                        filters: dict[str, Any] | None = None) -> tuple[str, list[dict[str, Any]]]:
        """(when the server started it, ISO 8601; its tasks) of one export snapshot, then deleted.

        With Data Manager ``filters`` only the tasks they select are exported, through a view made
        for this export and deleted after it: the same serializer as a full export, so the rows
        are the same, at a cost that follows the number of selected tasks. The start time is the
        server's clock, so a watermark taken from it does not depend on the worker's.
        """
        self._delete_leftovers(project_id, title)
        view_id = None if filters is None else int(self.client.views.create(
            project=project_id, data={"title": title, "filters": filters}).id)
        try:
            export = self._start_export(project_id, title, view_id)
            export_id = int(export.id)
            try:
                self.wait_export(project_id, export_id)
                return export.created_at.isoformat(), self.download_export(project_id, export_id)
            finally:
                self._delete_quietly("export", lambda: self.client.projects.exports.delete(project_id, export_id))
        finally:
            if view_id is not None:
                self._delete_quietly("view", lambda: self.client.views.delete(id=view_id))

    def _delete_leftovers(self, project_id: int, title: str, keep_exports: frozenset[int] = frozenset(),
                          keep_views: frozenset[int] = frozenset()) -> None:
        """An attempt killed mid-export (SIGKILL runs no ``finally``) leaves its snapshot and view
        behind; titles are per run, so the next attempt of the run finds and deletes them. The kept
        ids are the ones this attempt still uses."""
        for export in self.client.projects.exports.list(project_id):
            if export.title == title and export.id not in keep_exports:
                self._delete_quietly("export", lambda export=export: self.client.projects.exports.delete(
                    project_id, export.id))
        for view in self.client.views.list(project=project_id):
            if (view.data or {}).get("title") == title and view.id not in keep_views:
                self._delete_quietly("view", lambda view=view: self.client.views.delete(id=view.id))

    def _delete_quietly(self, what: str, delete: Any) -> None:
        try:
            delete()
        except Exception as error:  # a leftover export file or view costs space, not correctness
            self.log.warning("could not delete the collect %s: %s", what, error)

    def task_totals(self, project_id: int, filters: dict[str, Any]) -> tuple[int, int, int]:
        """(tasks, annotations not cancelled, predictions) of the tasks these filters select: the
        totals of a one-task page of the task list, counted by the database, so cheap at any size."""
        page = self.client.tasks.list(project=project_id, query=json.dumps({"filters": filters}),
                                      fields="task_only", page_size=1)
        answer = page.response
        return int(answer.total or 0), int(answer.total_annotations or 0), int(answer.total_predictions or 0)

    def find_user(self, email: str) -> Any | None:
        """The user with this e-mail (case-insensitive, as Label Studio compares them)."""
        wanted = email.lower()
        return next((user for user in self.client.users.list() if (user.email or "").lower() == wanted), None)

    def ensure_user(self, email: str, username: str, first_name: str = "", last_name: str = "") -> Any:
        """Find the user by e-mail or create it (Community ignores passwords, so none is set)."""
        user = self.find_user(email)
        if user is None:
            user = self.client.users.create(email=email, username=username, first_name=first_name,
                                            last_name=last_name)
        return user

    def create_annotation(
        self, task_id: int, result: list[dict[str, Any]], completed_by: int | None = None,
        lead_time: float | None = None, was_cancelled: bool = False,
    ) -> Any:
        """One annotation on behalf of ``completed_by`` (the token's user when None)."""
        kwargs: dict[str, Any] = {"result": result, "was_cancelled": was_cancelled}
        if completed_by is not None:
            kwargs["completed_by"] = completed_by
        if lead_time is not None:
            kwargs["lead_time"] = lead_time
        return self.client.annotations.create(task_id, **kwargs)


def _field(item: Any, name: str) -> Any:
    """A field of an SDK object or of the plain dict some list endpoints return."""
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _transient(error: Exception) -> bool:
    """Worth another try: the server is restarting, overloaded or the connection broke."""
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(error, httpx.TransportError):
        return True
    return isinstance(error, ApiError) and error.status_code in TRANSIENT_STATUS
