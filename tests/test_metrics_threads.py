"""The first requests of a TAXII server worker arrive on several threads at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

FIRST_USE_ON_16_THREADS = """
import threading
from feeds.metrics import metrics

barrier = threading.Barrier(16)
made = []

def first_use():
    barrier.wait()
    made.append(metrics())

threads = [threading.Thread(target=first_use) for _ in range(16)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
assert len(made) == 16 and all(m is made[0] for m in made), len(made)
"""


def test_metrics_made_once_when_first_used_on_many_threads_at_once() -> None:
    # A fresh process: prometheus_client's registry is per process and the race is on first use.
    done = subprocess.run(
        [sys.executable, "-c", FIRST_USE_ON_16_THREADS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "DuplicateTimeseries" not in done.stderr
