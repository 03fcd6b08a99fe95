"""Publishing collections side by side in several processes (``publish_workers``): the same
collections as one process publishes, and a run killed mid-way takes its processes with it."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from publish_checks import collections, feed_store, generated_feeds, no_half_batch

from feeds.home import engine_for
from feeds.publish import feed_batches, publish
from feeds.settings import load_settings
from feeds.store import connect, restart_long_log

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
REPO = Path(__file__).resolve().parent.parent


def test_two_publishing_processes_publish_what_one_does(
    environ: dict[str, str], tmp_path: Path
) -> None:
    environ, generated = generated_feeds(environ, tmp_path, 300, start=NOW - dt.timedelta(days=2))
    one_url = f"sqlite:///{tmp_path}/one.db"
    one_env, _ = feed_store(environ, tmp_path, generated.spool, one_url, "one")
    two_url = environ["SPAMPOTS_DATABASE_URL"]  # SQLite and PostgreSQL
    two_env, _ = feed_store(environ, tmp_path, generated.spool, two_url, "two")

    one = publish(load_settings({**one_env, "SPAMPOTS_PUBLISH_WORKERS": "1"}), now=NOW)
    two = publish(load_settings({**two_env, "SPAMPOTS_PUBLISH_WORKERS": "2"}), now=NOW)

    assert len(two.batches) == len(one.batches) > 12
    assert [b.collection_alias for b in two.batches] == [b.collection_alias for b in one.batches]
    no_half_batch(two_url)
    assert collections(two_url) == collections(one_url)


@pytest.mark.parametrize("victim", ["the-run", "one-worker"])
def test_a_publish_run_killed_midway_or_its_worker_leaves_whole_batches_only(
    environ: dict[str, str], tmp_path: Path, victim: str
) -> None:
    """kill -9 of the run: its publishing processes die too (nothing publishes on unseen
    beside the next run). kill -9 of one publishing process (out of memory): the run stops
    with one line, no traceback. Either way only whole batches show, and the next run
    publishes the rest once."""
    environ, generated = generated_feeds(environ, tmp_path, 600, start=NOW - dt.timedelta(days=2))
    clean_url = f"sqlite:///{tmp_path}/clean.db"
    clean_env, _ = feed_store(environ, tmp_path, generated.spool, clean_url, "clean")
    url = environ["SPAMPOTS_DATABASE_URL"]
    killed_env, _ = feed_store(environ, tmp_path, generated.spool, url, "killed")
    small = {"SPAMPOTS_BATCH_OBJECTS": "10", "SPAMPOTS_PUBLISH_COMMIT_OBJECTS": "10"}
    clean_env, killed_env = {**clean_env, **small}, {**killed_env, **small}
    publish(load_settings(clean_env), now=NOW)

    base = {k: v for k, v in os.environ.items() if not k.startswith("SPAMPOTS_")}
    run = subprocess.Popen(
        [sys.executable, "-m", "feeds.cli", "publish"],
        env={**base, **killed_env, "SPAMPOTS_PUBLISH_WORKERS": "2"},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    engine = engine_for(url)
    try:
        deadline = time.monotonic() + 120
        while _batches(engine) == 0 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.01)
        workers = [pid for pid in _children(run.pid) if _is_publisher(pid)]
        assert run.poll() is None and len(workers) == 2, "the run ended before it was killed"
        os.kill(run.pid if victim == "the-run" else workers[0], signal.SIGKILL)
        _, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
        run.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)
    if victim == "one-worker":
        assert run.returncode == 1
        assert stderr.strip().splitlines() == [
            "spampots: error: a publishing process ended abruptly (killed, or out of memory); "
            "the batches it had not committed were rolled back; run publish again; if it "
            "recurs, see the system log and try SPAMPOTS_PUBLISH_WORKERS=1"
        ]
    no_half_batch(url)
    assert 0 < _batches(engine) < sum(len(c["batches"]) for c in _published(clean_url))

    publish(load_settings(killed_env), now=NOW)
    no_half_batch(url)
    assert collections(url) == collections(clean_url)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_long_write_ahead_log_starts_over_even_while_it_is_being_read(
    database_url: str, tmp_path: Path
) -> None:
    """What keeps the log from growing without end while publishing processes take turns
    reading and writing: past its limit it is copied into the database, and the next write
    starts it over from its beginning; while another connection reads, only once it is
    several times too long (waiting idles the publishing process)."""
    engine = connect(database_url)
    log = tmp_path / "store.db-wal"
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE filler (body BLOB)")
        connection.exec_driver_sql("INSERT INTO filler VALUES (zeroblob(200000))")
    size = log.stat().st_size
    restart_long_log(engine, size)  # not longer than the limit: left as it is
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO filler VALUES (zeroblob(200000))")
    longer = log.stat().st_size
    assert longer > size  # appended: the log was not started over
    reader = connect(database_url)
    with reader.connect() as reading:
        assert reading.exec_driver_sql("SELECT count(*) FROM filler").scalar_one() == 2
        read_ended = threading.Event()

        def end_read() -> None:
            reading.rollback()
            read_ended.set()

        threading.Timer(3, end_read).start()
        # A little too long, and read meanwhile: left for the next call, without waiting.
        restart_long_log(engine, longer - 1)
        assert not read_ended.is_set()
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO filler VALUES (zeroblob(200000))")
        longest = log.stat().st_size
        assert longest > longer  # appended
        # Several times too long: it waits for the reader's transaction to end.
        restart_long_log(engine, longer // 4)
        assert read_ended.is_set()
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO filler VALUES (zeroblob(200000))")
    assert log.stat().st_size == longest  # written again from its beginning
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM filler").scalar_one() == 4
    reader.dispose()
    engine.dispose()


def _batches(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(sa.select(sa.func.count()).select_from(feed_batches)).scalar_one()
        )


def _published(url: str) -> list[dict[str, Any]]:
    return [entry for key, entry in collections(url).items() if key != "watermarks"]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _is_publisher(pid: int) -> bool:
    """One of the pool's processes, not multiprocessing's resource tracker."""
    return b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its (dead) parent to be reaped by init."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
