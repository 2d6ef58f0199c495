"""The ``labelloop_*`` fields labelloop writes into Label Studio task data, named once for every stage."""

from __future__ import annotations

#: SHA-256 of the record's canonical content: the de-duplication key across runs and workers.
HASH_FIELD = "labelloop_hash"
#: The ingest batch that imported the task (``<run>/<object>/<n>``): what a resumed run checks.
BATCH_FIELD = "labelloop_batch"
#: The source object the record came from (its URI and line).
SOURCE_FIELD = "labelloop_source"
#: The record's own id field, when the spec names one.
ID_FIELD = "labelloop_id"
#: Labeling order (highest first): the champion's uncertainty, or random (see ingest.pipeline.priority).
PRIORITY_FIELD = "labelloop_priority"
#: In a review task: the id of the task under review in the main project.
SOURCE_TASK_FIELD = "labelloop_task_id"
#: An image task's pixel size, read from the image by ingest: the audit works in pixels.
WIDTH_FIELD = "labelloop_width"
HEIGHT_FIELD = "labelloop_height"
