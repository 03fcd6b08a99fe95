"""Captures by week on PostgreSQL: where rows land, what a time window reads, the migration;
and on both stores, that a publishing window reads its own messages and not their history."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from digest_data import Dataset, make_captures, store_captures
from ingest_helpers import GeneratedHome

from conftest import REPO
from feeds.home import open_store
from feeds.partners import load_partners
from feeds.selection import (
    chosen_once,
    message_condition,
    samples,
    samples_query,
    sources,
    sources_query,
    spam_urls,
    spam_urls_query,
)
from feeds.settings import Settings
from feeds.store import bulk_insert, connect, migrate, write_transaction
from feeds.store.captures import message_domains, messages, sessions
from feeds.store.engine import _alembic_config, is_current
from feeds.store.partitions import partition_name, week_start, weeks_of

only_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@only_postgresql
def test_ingested_captures_sit_in_the_partition_of_their_week(ingested: GeneratedHome) -> None:
    with open_store(ingested.settings).connect() as connection:
        for table in (messages, sessions):
            rows = connection.execute(
                sa.text(f"SELECT tableoid::regclass::text, ts FROM {table.name}")  # noqa: S608
            ).all()
            assert rows
            assert {name for name, ts in rows} == set(weeks_of(connection, table.name).values())
            for name, ts in rows:
                assert name == partition_name(table.name, week_start(ts))


@only_postgresql
def test_a_time_window_reads_only_its_weeks(initialised: Settings) -> None:
    engine, dataset = six_weeks_stored(initialised)
    day = dt.datetime(2026, 9, 23, tzinfo=dt.UTC)
    window = sa.and_(messages.c.ts >= day, messages.c.ts < day + dt.timedelta(days=1))
    query = sa.select(sa.func.count()).select_from(messages).where(window)
    with engine.connect() as connection:
        compiled = query.compile(connection, compile_kwargs={"literal_binds": True})
        plan = "\n".join(connection.exec_driver_sql(f"EXPLAIN {compiled}").scalars())
        weeks = weeks_of(connection, "messages")
        assert len(weeks) >= 6
        assert connection.execute(query).scalar_one() == sum(
            1 for c in dataset.captures if day <= c.ts < day + dt.timedelta(days=1)
        )
    read = {name for name in weeks.values() if name in plan}
    assert read == {partition_name("messages", week_start(day))}


def test_migrating_a_filled_store_keeps_its_rows_and_keys(settings: Settings) -> None:
    engine = connect(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        command.upgrade(_alembic_config(connection), "0006")
        connection.commit()
    dataset = Dataset()
    start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    make_captures(dataset, 1, start, start + dt.timedelta(weeks=3), 120)
    store_captures(engine, dataset)
    with engine.connect() as connection:
        domains = connection.execute(sa.select(sa.func.count()).select_from(message_domains))
        domain_count = domains.scalar_one()

    # From 0006 up to the newest revision, 0007 among them (migrate() names the heads reached).
    assert migrate(engine)
    assert is_current(engine)

    with engine.connect() as connection:
        ids = set(connection.execute(sa.select(messages.c.id)).scalars())
        session_ids = set(connection.execute(sa.select(sessions.c.id)).scalars())
        assert ids == {c.id for c in dataset.captures}
        assert session_ids == {s.id for s in dataset.connections}
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(message_domains)).scalar_one()
            == domain_count
        )
        if engine.dialect.name == "postgresql":
            assert {week_start(c.ts) for c in dataset.captures} <= set(
                weeks_of(connection, "messages")
            )
        copy = connection.execute(sa.select(messages).where(messages.c.id == 1)).mappings().one()
    # The dedup key still holds: the same capture again, under a new id, is ignored.
    with write_transaction(engine) as connection:
        bulk_insert(connection, messages, [{**copy, "id": max(ids) + 1}], ignore=True)
    with engine.connect() as connection:
        total = connection.execute(sa.select(sa.func.count()).select_from(messages))
        assert total.scalar_one() == len(ids)
    engine.dispose()


@only_postgresql
def test_the_returning_selection_reads_the_domains_of_its_window_only(
    initialised: Settings,
) -> None:
    engine, _ = six_weeks_stored(initialised)
    twcert = load_partners(REPO / "partners.yaml").partners["twcert"]
    assert twcert.networks.domains
    with engine.connect() as connection:
        ids = sorted(connection.execute(sa.select(messages.c.id)).scalars())
        after, upto = ids[len(ids) // 2], ids[len(ids) // 2 + 50]
        condition = message_condition(twcert, "returning", after, upto)
        # Sequential scans off: the small test tables would otherwise be read whole either way.
        connection.exec_driver_sql("SET enable_seqscan = off")
        plans = [
            plan_of(connection, query)
            for query in (
                sa.select(sa.func.count()).where(condition),
                spam_urls_query(condition, after, upto),
            )
        ]
    for plan in plans:
        domain_reads = [line for line in plan.splitlines() if " on message_domains" in line]
        assert domain_reads, plan
        # By message id within the window: never a domain's whole history.
        assert all("message_domains_pkey" in line for line in domain_reads), plan
        # Read once into a CTE, not again in each week's partition of messages.
        assert "CTE Scan on aimed" in plan, plan
    # The URL links too are read by message id within the window, not all of them.
    lines = plans[1].splitlines()
    link_reads = [i for i, line in enumerate(lines) if " on message_urls" in line]
    assert link_reads, plans[1]
    for at in link_reads:
        assert "message_urls_pkey" in lines[at], plans[1]
        assert f"message_id > {after}" in lines[at + 1], plans[1]


def test_every_selection_reads_the_messages_of_its_window_by_id(initialised: Settings) -> None:
    engine, _ = six_weeks_stored(initialised)
    partners = load_partners(REPO / "partners.yaml").partners.values()
    with engine.connect() as connection:
        ids = sorted(connection.execute(sa.select(messages.c.id)).scalars())
        after, upto = ids[len(ids) // 2], ids[len(ids) // 2 + 50]
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET enable_seqscan = off")
        plans = {}
        for partner in partners:
            for feed in ("originating", "returning"):
                condition = message_condition(partner, feed, after, upto)
                with chosen_once(connection, condition, after, upto) as chosen:
                    for form, picked in (("condition", condition), ("chosen once", chosen)):
                        queries = {
                            "sources": sources_query(picked),
                            "urls": spam_urls_query(picked, after, upto),
                            "samples": samples_query(picked, 10),
                        }
                        for name, query in queries.items():
                            plans[partner.id, feed, form, name] = plan_of(connection, query)
    for what, plan in plans.items():
        message_reads = [
            line
            for line in plan.splitlines()
            if " messages " in f"{line} " or " on messages_" in line
        ]
        assert message_reads, (what, plan)
        for line in message_reads:
            # Never by an index of a selection key (country, AS, address, host): that reads
            # the key's whole history and keeps the window's few rows.
            if connection.dialect.name == "sqlite":
                assert "USING INTEGER PRIMARY KEY" in line, (what, plan)
            else:
                assert "_pkey" in line, (what, plan)


def test_choosing_once_selects_what_the_condition_selects(initialised: Settings) -> None:
    engine, _ = six_weeks_stored(initialised)
    partners = load_partners(REPO / "partners.yaml").partners.values()
    found = 0
    with engine.connect() as connection:
        ids = sorted(connection.execute(sa.select(messages.c.id)).scalars())
        after, upto = ids[len(ids) // 4], ids[3 * len(ids) // 4]
        for partner in partners:
            for feed in ("originating", "returning"):
                condition = message_condition(partner, feed, after, upto)
                direct = (
                    sources(connection, condition),
                    spam_urls(connection, condition, after, upto),
                    samples(connection, condition, 10),
                )
                with chosen_once(connection, condition, after, upto) as chosen:
                    once = (
                        sources(connection, chosen),
                        spam_urls(connection, chosen, after, upto),
                        samples(connection, chosen, 10),
                    )
                assert once == direct, (partner.id, feed)
                found += sum(map(len, direct))
    assert found > 0


def six_weeks_stored(settings: Settings) -> tuple[sa.Engine, Dataset]:
    """The store of ``settings`` with six weeks of generated captures from 1 September 2026."""
    engine = open_store(settings)
    dataset = Dataset()
    start = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
    make_captures(dataset, 1, start, start + dt.timedelta(weeks=6), 300)
    store_captures(engine, dataset)
    return engine, dataset


def plan_of(connection: sa.Connection, query: sa.Select[Any]) -> str:
    compiled = query.compile(connection, compile_kwargs={"literal_binds": True})
    if connection.dialect.name == "sqlite":
        rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
        return "\n".join(row[3] for row in rows)
    return "\n".join(connection.exec_driver_sql(f"EXPLAIN {compiled}").scalars())
