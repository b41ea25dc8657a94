"""The cyclic garbage collector, tuned for bulk work (planning, import, dispatch).

Bulk work allocates millions of short-lived dicts and tuples that die by reference counting, yet
each allocation counts toward the collector's thresholds: with the defaults a planner over a
million customers runs thousands of collections that find nothing, each walking the whole young
heap, and the oldest generation walks every module, table and template loaded at start-up.
Measured on `run` of 135,000 recipients: 0.93 s of ~7 s spent in 1,468 collections; frozen and
with a gen-0 threshold of 50,000, 0.02 s in one.  Peak memory does not change: nothing in these
loops makes reference cycles worth collecting early.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

BULK_THRESHOLDS = (50_000, 20, 20)


def tune_for_bulk_work() -> None:
    """For a process that does nothing but bulk work from now on (a worker): what is loaded now
    lives as long as the process, so the collector stops looking at it."""
    gc.freeze()
    gc.set_threshold(*BULK_THRESHOLDS)


@contextmanager
def bulk_work() -> Iterator[None]:
    """The same for the length of one piece of work in a process that goes on afterwards."""
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*BULK_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
