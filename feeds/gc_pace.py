"""The cycle collector's pace for the bulk stages (ingest, publish).

Both allocate millions of short-lived containers (rows, parsed parts, STIX objects) that
reference counting frees at once. At CPython's default pace (a collection every 700
allocations, each older generation's pass walking more of a heap that grows with the run's
caches) the collector cost ingest ~30% and publish ~25% of their CPU for nothing
(bench/README.md). Cycles are still collected, a little later.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

BULK_THRESHOLD = (50_000, 50, 1000)


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """The bulk pace for the duration, then the pace before."""
    before = gc.get_threshold()
    gc.set_threshold(*BULK_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def bulk_pace_for_good() -> None:
    """The bulk pace for the rest of the process: a pool's worker that does nothing else."""
    gc.set_threshold(*BULK_THRESHOLD)
