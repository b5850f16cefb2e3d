"""The live engine's loop: while it runs, the cyclic garbage collector leaves the heap it found alone."""

from __future__ import annotations

import gc

from aif_sim.live.loop import live_loop


def _scanned(obj: object) -> bool:
    """Whether a full collection would scan `obj` (it is in one of the collector's generations)."""
    return any(tracked is obj for tracked in gc.get_objects())


def test_a_live_loop_keeps_the_heap_it_found_out_of_the_collectors_scans():
    """A full collection during a live run scans only what the run made: the caller's objects, however many, are
    frozen for the run (otherwise each full collection would stop the loop for as long as it takes to scan them)
    and handed back to the collector afterwards; the loop is closed."""
    before = [[i] for i in range(10_000)]
    assert _scanned(before)
    with live_loop() as loop:
        made = [[i] for i in range(10)]
        assert not _scanned(before) and not _scanned(before[0]) and _scanned(made)
        assert gc.get_freeze_count() >= len(before)
        assert loop.run_until_complete(_answer()) == 42
    assert loop.is_closed() and gc.get_freeze_count() == 0
    assert _scanned(before) and _scanned(made)


async def _answer() -> int:
    return 42
