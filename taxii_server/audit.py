"""The poll audit: every read of a collection (who, which, how many objects, when).

A reader must never wait for the store's write lock (the publisher may hold it for a whole
batch), so reads are queued in memory and a background thread writes them about once a
second. :func:`last_polls` and :func:`poll_summary` are what the digest and
``spampots status`` read; :func:`object_counts` says how full each collection is.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from feeds.store import as_utc, metadata, write_transaction
from taxii_server.objects import object_counts

__all__ = ["PollAudit", "PollSummary", "last_polls", "object_counts", "poll_summary", "taxii_polls"]

log = logging.getLogger(__name__)
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Polls kept in memory while the store cannot be written; beyond this the oldest are dropped.
MAX_QUEUED = 100_000

taxii_polls = sa.Table(
    "taxii_polls",
    metadata,
    sa.Column("id", RowId, primary_key=True, autoincrement=True),
    sa.Column("polled_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("collection_id", sa.String(36), nullable=False),
    sa.Column("endpoint", sa.String(16), nullable=False),
    sa.Column("objects_returned", sa.Integer, nullable=False),
    sa.Index(
        "ix_taxii_polls_collection_id_username_polled_at", "collection_id", "username", "polled_at"
    ),
    sa.Index("ix_taxii_polls_polled_at", "polled_at"),
)


class PollAudit:
    """Queues poll records and writes them from a background thread (started per process)."""

    def __init__(self, engine: Engine, interval: float = 1.0) -> None:
        self._engine = engine
        self._interval = interval
        self._queue: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._thread_pid: int | None = None

    def record(self, username: str, collection_id: str, endpoint: str, returned: int) -> None:
        row = {
            "polled_at": dt.datetime.now(dt.UTC),
            "username": username,
            "collection_id": collection_id,
            "endpoint": endpoint,
            "objects_returned": returned,
        }
        with self._lock:
            self._queue.append(row)
            if len(self._queue) > MAX_QUEUED:
                del self._queue[: len(self._queue) - MAX_QUEUED]
            if self._thread_pid != os.getpid() and not self._stopped:
                # the first record in this process (gunicorn forks workers after loading)
                self._thread_pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="poll-audit", daemon=True)
                self._thread.start()
                atexit.register(self.close)

    def flush(self) -> int:
        """Write what is queued now; returns how many records were written."""
        with self._write_lock:
            with self._lock:
                rows, self._queue = self._queue, []
            if not rows:
                return 0
            try:
                with write_transaction(self._engine) as connection:
                    connection.execute(taxii_polls.insert(), rows)
            except sa.exc.SQLAlchemyError as error:
                log.error("cannot write %d poll audit records (will retry): %s", len(rows), error)
                with self._lock:
                    self._queue[:0] = rows
                return 0
            return len(rows)

    def close(self) -> None:
        """Stop the background writer after writing what is queued."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread_pid == os.getpid():
            self._thread.join()
        atexit.unregister(self.close)
        self.flush()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._interval)
            self.flush()


def last_polls(connection: Connection) -> dict[tuple[str, str], dt.datetime]:
    """The time of the latest read per (collection id, username)."""
    t = taxii_polls
    rows = connection.execute(
        sa.select(t.c.collection_id, t.c.username, sa.func.max(t.c.polled_at)).group_by(
            t.c.collection_id, t.c.username
        )
    )
    return {(row[0], row[1]): as_utc(row[2]) for row in rows}


@dataclass(frozen=True)
class PollSummary:
    collection_id: str
    username: str
    requests: int
    objects_returned: int
    last_poll: dt.datetime


def poll_summary(connection: Connection, since: dt.datetime) -> list[PollSummary]:
    """Reads per collection and account since a time: requests, objects returned, latest."""
    t = taxii_polls
    rows = connection.execute(
        sa.select(
            t.c.collection_id,
            t.c.username,
            sa.func.count(),
            sa.func.sum(t.c.objects_returned),
            sa.func.max(t.c.polled_at),
        )
        .where(t.c.polled_at >= as_utc(since))
        .group_by(t.c.collection_id, t.c.username)
        .order_by(t.c.collection_id, t.c.username)
    )
    return [PollSummary(r[0], r[1], int(r[2]), int(r[3] or 0), as_utc(r[4])) for r in rows]
