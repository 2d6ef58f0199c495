"""The ingest's import queue: steps run in order on one thread, at most ``ahead`` wait, and a
failed step stops every step after it (no batch goes out after one whose outcome is unknown)."""

from __future__ import annotations

import threading
import time

import pytest

from labelloop.ingest.pipeline import _ImportQueue


def test_steps_run_in_order_on_one_thread_and_overlap_the_caller() -> None:
    seen: list[tuple[int, str]] = []
    with _ImportQueue(ahead=1) as queue:
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
    with _ImportQueue(ahead=1) as queue:
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
        with _ImportQueue(ahead=3) as queue:
            queue.submit(lambda: ran.append(0))
            queue.submit(fail)
            queue.submit(lambda: ran.append(2))
            queue.submit(lambda: ran.append(3))
            queue.drain()
    assert ran == [0]
