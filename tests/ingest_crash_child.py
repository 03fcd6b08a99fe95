"""Run ingest in this process and SIGKILL it at a chosen point (used by test_ingest_crash).

    python ingest_crash_child.py POINT N
POINT: ``in-chunk`` (inside the Nth chunk's transaction, rows written, not committed),
``after-chunk`` (right after the Nth chunk committed), ``before-move`` (the Nth batch is
marked done but not yet moved to done/). Settings come from the SPAMPOTS_* environment.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from feeds import ingest
from feeds.settings import load_settings


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    point, n = sys.argv[1], int(sys.argv[2])
    seen = {"chunks": 0, "batches": 0}
    run = ingest.ingest_run(load_settings(os.environ))
    if point == "in-chunk":
        store = ingest._Writer.store

        def store_then_die(self: Any, *args: Any) -> Any:
            counts = store(self, *args)
            seen["chunks"] += 1
            if seen["chunks"] == n:
                die()
            return counts

        ingest._Writer.store = store_then_die  # type: ignore[method-assign]
    elif point == "after-chunk":

        def after_chunk(name: str, line: int) -> None:
            seen["chunks"] += 1
            if seen["chunks"] == n:
                die()

        run.on_chunk = after_chunk
    elif point == "before-move":
        move = ingest.IngestRun._move_to_done

        def die_before_move(self: Any, path: Any) -> None:
            seen["batches"] += 1
            if seen["batches"] == n:
                die()
            move(self, path)

        ingest.IngestRun._move_to_done = die_before_move  # type: ignore[method-assign]
    run.run()


if __name__ == "__main__":
    main()
