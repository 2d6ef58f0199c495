"""Which differing tasks a reconciliation counts: those Label Studio did not stamp after the
incremental export started (labelloop.collect.merge.unchanged_since). The live case, an answer
submitted between the two exports, is in tests/integration/test_incremental_collect.py."""

from __future__ import annotations

from labelloop.collect.merge import unchanged_since

STARTED = "2026-12-02T01:15:26.500000+00:00"


def test_only_tasks_stamped_before_the_incremental_export_count() -> None:
    updated = {1: "2026-12-02T01:15:26.499999Z",   # before: must be equal, counted
               2: "2026-12-02T01:15:26.500000Z",   # at the start: may be in either export
               3: "2026-12-02T01:20:00+00:00",     # during the full export
               4: "2026-12-01T23:15:26+00:00"}     # long before, another offset style
    assert unchanged_since({1, 2, 3, 4}, updated, STARTED) == [1, 4]


def test_tasks_without_a_stamp_are_counted() -> None:
    # Missing from the full export (deleted; one deleted while the exports ran looks the same, and
    # is counted too: a false alarm is safer than a missed difference) or never stamped.
    assert unchanged_since({5, 6, 7}, {6: None, 7: ""}, STARTED) == [5, 6, 7]


def test_nothing_differing_stays_nothing() -> None:
    assert unchanged_since(set(), {1: "2026-12-02T01:20:00Z"}, STARTED) == []
