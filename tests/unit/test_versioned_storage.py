"""Versions of what ingest reads and collect points at, on local storage (S3: tests/integration/
test_faults_storage.py).

A source object is read as the version the listing saw, or not at all (``ObjectChanged``); what
is not a regular file (a symbolic link, a FIFO) is listed with why it is refused. Collect's
``latest.json`` moves by compare-and-swap: two collects racing leave the later ``run_after``.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath
from airflow.sdk.io import attach
from fsspec.implementations.memory import MemoryFileSystem

from labelloop.collect.table import point_latest, read_latest
from labelloop.ingest.state import ObjectChanged, list_objects, open_listed
from labelloop.state import read_versioned, write_if

LINES = b"".join(b'{"text": "record %05d %s"}\n' % (number, b"x" * 1000) for number in range(3000))  # 3 MiB


def local(path: Path) -> ObjectStoragePath:
    return ObjectStoragePath(f"file://{path}")


def listed(folder: Path) -> list:
    return list(list_objects(local(folder)))


def test_a_local_object_is_read_as_listed_or_not_at_all(tmp_path) -> None:
    (tmp_path / "a.jsonl").write_bytes(LINES)
    [obj] = listed(tmp_path)
    with open_listed(obj) as stream:
        assert stream.read() == LINES

    # Replaced by a rename while open (how most writers publish a file): the open file is the listed one.
    with open_listed(obj) as stream:
        head = stream.read(1000)
        (tmp_path / "a.new").write_bytes(LINES.replace(b"record", b"RECORD"))
        os.replace(tmp_path / "a.new", tmp_path / "a.jsonl")
        assert head + stream.read() == LINES

    # Changed since the listing: refused at the open, naming both versions.
    with pytest.raises(ObjectChanged, match=rf"^it changed after it was listed \(listed as {obj.fingerprint}, "
                                            r"now size:\d+:mtime:"):
        with open_listed(obj):
            pass

    # Rewritten in place during the read: the read after the write fails, before its bytes are used.
    [obj] = listed(tmp_path)
    with pytest.raises(ObjectChanged, match=rf"listed as {obj.fingerprint}, now size:"):
        with open_listed(obj) as stream:
            stream.read(1 << 20)
            with open(tmp_path / "a.jsonl", "r+b") as writer:
                writer.seek(2 << 20)
                writer.write(b"spliced")
                os.utime(writer.fileno(), ns=(1, 1))  # a distinct mtime even on a coarse clock
            stream.read(1 << 20)


def test_links_and_fifos_are_listed_as_refused_with_the_reason(tmp_path) -> None:
    raw, outside = tmp_path / "raw", tmp_path / "outside"
    raw.mkdir()
    outside.mkdir()
    (outside / "secret.jsonl").write_bytes(b'{"text": "outside"}\n')
    (raw / "real.jsonl").write_bytes(b'{"text": "inside"}\n')
    (raw / "link.jsonl").symlink_to(outside / "secret.jsonl")
    (raw / "linked_dir").symlink_to(outside, target_is_directory=True)
    os.mkfifo(raw / "pipe.jsonl")

    refused = {obj.path.name: obj.refused for obj in listed(raw)}

    assert refused.pop("real.jsonl") is None
    assert refused.pop("pipe.jsonl").startswith("not a regular file (a FIFO, socket or device)")
    reason = "not followed, so no link leads ingest out of the source; copy the file into the source folder instead"
    assert refused == {"link.jsonl": f"a symbolic link (to {outside / 'secret.jsonl'}): {reason}",
                       "linked_dir": f"a symbolic link (to {outside}): {reason}"}


def test_write_if_moves_a_file_only_from_the_version_read(tmp_path, caplog) -> None:
    path = local(tmp_path / "collect" / "latest.json")
    assert read_versioned(path) == (None, None)
    assert write_if(path, b"one", None)
    assert not write_if(path, b"two", None)  # it exists now
    raw, tag = read_versioned(path)
    assert raw == b"one" and write_if(path, b"two", tag)
    assert not write_if(path, b"three", tag)  # another writer moved it after this tag was read
    assert path.read_bytes() == b"two"
    assert sorted(file.name for file in path.parent.iterdir()) == [".latest.json.lock", "latest.json"]

    # A store with no conditional write (an in-memory one here): the same answers, and a warning.
    attach("memory", fs=MemoryFileSystem())
    other = ObjectStoragePath("memory://versioned/latest.json")
    with caplog.at_level(logging.WARNING, logger="labelloop.state"):
        assert write_if(other, b"one", None) and not write_if(other, b"two", None)
    assert "memory offers labelloop no conditional write, so this compare-then-write is not atomic" in caplog.text


def race_for_latest(root, rounds: int) -> None:
    """Two collects move ``latest.json`` at the same instant, each round in the other order: the
    later ``run_after`` must end latest every time (shared with the S3 test in test_faults_storage.py)."""
    for round_ in range(rounds):
        early, late = (f"early_{round_}", f"2026-12-01T{round_ // 60:02d}:{round_ % 60:02d}:00+00:00"), \
                      (f"late_{round_}", f"2026-12-01T{round_ // 60:02d}:{round_ % 60:02d}:30+00:00")
        start, moved = threading.Barrier(2), {}

        def collect(run: str, run_after: str) -> None:
            start.wait()
            moved[run] = point_latest(root, run, run_after, {"tasks": round_})

        order = (early, late) if round_ % 2 else (late, early)
        threads = [threading.Thread(target=collect, args=pair) for pair in order]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pointer = read_latest(root)
        assert (pointer["run"], pointer["run_after"], moved[late[0]]) == (late[0], late[1], True), round_


def test_two_collects_racing_for_latest_json_leave_the_later_run_after(tmp_path) -> None:
    race_for_latest(local(tmp_path / "store"), 200)
