"""Retention: captures older than ``retention_days`` leave the store, a whole UTC week at a time.

The cutoff is the Monday that begins the week ``retention_days`` ago, so both stores remove the
same captures: PostgreSQL drops the weeks' partitions of ``messages`` and ``sessions`` (see
:mod:`feeds.store.partitions`), SQLite deletes their rows; the messages' recipient domains and
URL links go with them. What was built from the captures stays: the digests' weekly rollups,
the URL dictionary they name, published batches and TAXII objects, ingest's batch records and
the watermarks (message ids are never reused). Each week is removed in its own transaction,
under ingest's lock, so a batch being ingested never links to a message being removed.

The same job makes the partitions of the coming weeks ahead of time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from feeds.ingest import ingest_transaction
from feeds.store import as_utc, write_transaction
from feeds.store.captures import message_domains, message_urls, messages, sessions
from feeds.store.partitions import WEEK, ensure_ahead, week_start, weeks_of


@dataclass
class RetentionReport:
    cutoff: dt.datetime | None
    weeks: list[str] = field(default_factory=list)  # Mondays (YYYY-MM-DD) of the weeks removed
    messages: int = 0
    sessions: int = 0
    created: list[str] = field(default_factory=list)  # partitions made ahead

    def line(self) -> str:
        ahead = f"; {len(self.created)} partitions made ahead" if self.created else ""
        if self.cutoff is None:
            return f"retention is off (retention_days 0): every capture kept{ahead}"
        removed = (
            f"removed {self.messages:,} messages and {self.sessions:,} sessions of "
            f"{len(self.weeks)} weeks ({', '.join(self.weeks)})"
            if self.weeks
            else "nothing to remove"
        )
        return f"captures before {self.cutoff:%Y-%m-%d}: {removed}{ahead}"


def retention_cutoff(days: int, now: dt.datetime) -> dt.datetime | None:
    """Captures before this moment are removed; None: retention is off."""
    return week_start(now - dt.timedelta(days=days)) if days else None


def apply_retention(engine: Engine, days: int, now: dt.datetime) -> RetentionReport:
    """Remove the captures of every week wholly before the cutoff; make partitions ahead."""
    report = RetentionReport(retention_cutoff(days, now))
    if engine.dialect.name == "postgresql":
        with write_transaction(engine) as connection:
            report.created = ensure_ahead(connection, now)
    if report.cutoff is None:
        return report
    for monday in _weeks_before(engine, report.cutoff):
        with ingest_transaction(engine) as connection:
            removed_messages, removed_sessions = _remove_week(connection, monday)
        if removed_messages or removed_sessions:
            report.weeks.append(f"{monday:%Y-%m-%d}")
            report.messages += removed_messages
            report.sessions += removed_sessions
    return report


def _weeks_before(engine: Engine, cutoff: dt.datetime) -> list[dt.datetime]:
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            mondays = set(weeks_of(connection, "messages")) | set(weeks_of(connection, "sessions"))
            return sorted(monday for monday in mondays if monday + WEEK <= cutoff)
        oldest = [
            connection.execute(sa.select(sa.func.min(table.c.ts))).scalar()
            for table in (messages, sessions)
        ]
    known = [as_utc(moment) for moment in oldest if moment is not None]
    if not known:
        return []
    monday, weeks = week_start(min(known)), []
    while monday < cutoff:
        weeks.append(monday)
        monday += WEEK
    return weeks


def _remove_week(connection: Connection, monday: dt.datetime) -> tuple[int, int]:
    """Remove one week's captures; returns the messages and sessions removed."""
    if connection.dialect.name == "postgresql":
        return _drop_week(connection, monday)
    in_week = sa.and_(messages.c.ts >= monday, messages.c.ts < monday + WEEK)
    ids = sa.select(messages.c.id).where(in_week)
    connection.execute(message_domains.delete().where(message_domains.c.message_id.in_(ids)))
    connection.execute(message_urls.delete().where(message_urls.c.message_id.in_(ids)))
    removed_messages = connection.execute(messages.delete().where(in_week)).rowcount
    removed_sessions = connection.execute(
        sessions.delete().where(sessions.c.ts >= monday, sessions.c.ts < monday + WEEK)
    ).rowcount
    return removed_messages, removed_sessions


def _drop_week(connection: Connection, monday: dt.datetime) -> tuple[int, int]:
    counts = []
    for table in (messages, sessions):
        name = weeks_of(connection, table.name).get(monday)
        if name is None:
            counts.append(0)
            continue
        if table is messages:
            for child in (message_domains, message_urls):
                connection.exec_driver_sql(
                    f'DELETE FROM {child.name} WHERE message_id IN (SELECT id FROM "{name}")'  # noqa: S608
                )
        count = connection.exec_driver_sql(f'SELECT count(*) FROM "{name}"')  # noqa: S608
        counts.append(int(count.scalar_one()))
        connection.exec_driver_sql(f'DROP TABLE "{name}"')
    return counts[0], counts[1]
