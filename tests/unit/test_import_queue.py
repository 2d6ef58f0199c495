"""The ingest's import queue: sends overlap, records run in order on one thread, at most
``in_flight`` steps wait, and a failed step stops every step after it (no batch goes out after one
whose outcome is unknown, beyond those already in flight)."""

from __future__ import annotations

import threading
import time

import pytest

from labelloop.ingest.pipeline import _ImportQueue


def test_steps_run_in_order_on_one_thread_and_overlap_the_caller() -> None:
    seen: list[tuple[int, str]] = []
    with _ImportQueue(in_flight=1) as queue:
        for number in range(5):
            queue.submit(lambda number=number: (time.sleep(0.02), seen.append((number, threading.current_thread().name)),
                                                number)[-1])
        # The caller got here while steps were still running: the last one has not finished yet.
        assert len(seen) < 5
        assert queue.drain() == [0, 1, 2, 3, 4]
    assert [number for number, _ in seen] == [0, 1, 2, 3, 4]
    assert len({name for _, name in seen}) == 1 and seen[0][1] != threading.current_thread().name


def test_submit_blocks_while_the_queue_is_full() -> None:
    release = threading.Event()
    with _ImportQueue(in_flight=1) as queue:
        queue.submit(release.wait)  # running
        queue.submit(lambda: None)  # waiting: the queue is full now
        third = threading.Thread(target=queue.submit, args=(lambda: None,))
        third.start()
        third.join(0.3)
        assert third.is_alive(), "a third step was accepted while one ran and one waited"
        release.set()
        third.join(5)
        assert not third.is_alive()
        queue.drain()


def test_a_failed_step_stops_the_steps_after_it_and_its_error_reaches_the_caller() -> None:
    ran: list[int] = []

    def fail() -> None:
        raise ValueError("batch 1 failed")

    with pytest.raises(ValueError, match="batch 1 failed"):
        with _ImportQueue(in_flight=3) as queue:
            queue.submit(lambda: ran.append(0))
            queue.submit(fail)
            queue.submit(lambda: ran.append(2))
            queue.submit(lambda: ran.append(3))
            queue.drain()
    assert ran == [0]


def test_sends_overlap_and_their_records_keep_the_order_of_submission() -> None:
    """Two POSTs in flight at once; the journal still commits batch 0 before batch 1, even when
    batch 1's answer comes first."""
    both_sending = threading.Barrier(2, timeout=5)
    recorded: list[tuple[int, str, str]] = []

    def send(number: int) -> str:
        both_sending.wait()  # fails unless the two sends run at the same time
        time.sleep(0.1 if number == 0 else 0.0)  # batch 1 is answered first
        return f"ids of {number}"

    with _ImportQueue(in_flight=2) as queue:
        for number in range(2):
            queue.submit(lambda ids, number=number: recorded.append((number, ids, threading.current_thread().name)),
                         send=lambda number=number: send(number))
        queue.drain()
    assert [(number, ids) for number, ids, _ in recorded] == [(0, "ids of 0"), (1, "ids of 1")]
    assert len({name for *_, name in recorded}) == 1


def test_a_failed_send_stops_the_sends_not_started_and_every_record_after_it() -> None:
    sent: list[int] = []
    recorded: list[int] = []
    release = threading.Event()

    def send(number: int) -> int:
        if number == 0:
            release.wait(5)
            raise ConnectionError("batch 0's POST failed")
        sent.append(number)
        release.set()
        while queue.failed is None:  # answered after batch 0 failed: its thread is free for batch 2 only then
            time.sleep(0.01)
        return number

    with pytest.raises(ConnectionError, match="batch 0"):
        with _ImportQueue(in_flight=2) as queue:
            for number in range(4):
                queue.submit(lambda ids, number=number: recorded.append(number), send=lambda number=number: send(number))
            queue.drain()
    # Batch 1 was in flight beside batch 0 (its pending marker settles it on resume); batches 2
    # and 3 were never sent, and nothing was recorded after the failure.
    assert sent == [1] and recorded == []
