"""Captures by week on PostgreSQL: ``messages`` and ``sessions`` are range-partitioned on ``ts``.

Each partition holds one UTC week (Monday 00:00 to the next Monday, the digest's week), named
``<table>_w<YYYYMMDD of its Monday>``. A query bounded in time reads only its weeks, and
retention drops whole weeks instead of deleting rows. Partitions are made ahead of time by the
retention job and, for captures of any other week (a late or historic batch), on demand by
every write that goes through :func:`feeds.store.bulk_insert`, so ingest never meets a week
without its partition. SQLite keeps plain tables; the functions here do nothing there.

PostgreSQL wants the partition key in every unique key: ``messages`` is unique on
(sensor, session_id, raw_sha256, ts) and keyed on (id, ts), ``sessions`` on (sensor,
session_id, ts) and (id, ts). A capture always carries the same ``ts``, so a batch read twice
still counts each capture once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feeds.store.times import as_utc

PARTITIONED = ("sessions", "messages")
WEEK = dt.timedelta(days=7)


def week_start(moment: dt.datetime) -> dt.datetime:
    """The Monday 00:00 UTC that begins ``moment``'s week."""
    utc = as_utc(moment)
    day = utc.date() - dt.timedelta(days=utc.weekday())
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def partition_name(table: str, monday: dt.datetime) -> str:
    return f"{table}_w{monday:%Y%m%d}"


def is_partitioned(connection: Connection, table: str) -> bool:
    if connection.dialect.name != "postgresql":
        return False
    kind = connection.execute(
        sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:table)"), {"table": table}
    ).scalar()
    return kind == "p"


def weeks_of(connection: Connection, table: str) -> dict[dt.datetime, str]:
    """The partitions of ``table``: their weeks' Mondays and names (empty on SQLite)."""
    if connection.dialect.name != "postgresql":
        return {}
    rows = connection.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:table)"
        ),
        {"table": table},
    ).scalars()
    prefix = f"{table}_w"
    weeks = {}
    for name in rows:
        if name.startswith(prefix):
            day = dt.datetime.strptime(name[len(prefix) :], "%Y%m%d").replace(tzinfo=dt.UTC)
            weeks[day] = name
    return weeks


def ensure_weeks(connection: Connection, table: str, moments: Iterable[dt.datetime]) -> list[str]:
    """Create the partitions of ``table`` that the weeks of ``moments`` need; returns the new
    ones. Runs in the caller's transaction (the new partitions commit with its rows)."""
    if table not in PARTITIONED or connection.dialect.name != "postgresql":
        return []
    wanted = {week_start(moment) for moment in moments}
    missing = wanted - set(weeks_of(connection, table))
    if not missing or not is_partitioned(connection, table):  # before migration 0007
        return []
    # One creator of a table's partitions at a time, per schema: advisory locks are the whole
    # database's, and stores in other schemas must not wait for this transaction.
    connection.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtext(current_schema()), hashtext(:table))"),
        {"table": table},
    )
    missing -= set(weeks_of(connection, table))  # made meanwhile by another transaction
    created = []
    for monday in sorted(missing):
        name = partition_name(table, monday)
        connection.exec_driver_sql(
            f'CREATE TABLE "{name}" PARTITION OF "{table}" '
            f"FOR VALUES FROM ('{monday.isoformat()}') TO ('{(monday + WEEK).isoformat()}')"
        )
        created.append(name)
    return created


def ensure_ahead(connection: Connection, now: dt.datetime, weeks: int = 4) -> list[str]:
    """Partitions for this week and the next ``weeks`` of every partitioned table."""
    moments = [now + WEEK * n for n in range(weeks + 1)]
    return [name for table in PARTITIONED for name in ensure_weeks(connection, table, moments)]
