"""Migration 0008: the ports per IP and the request types move out of the per-IP connection
rollup; a store summed before it gives the same digests after it, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import sqlalchemy as sa
from alembic import command
from digest_data import Dataset, make_captures, store_captures
from sqlalchemy.engine import Engine

from feeds import rollups
from feeds.digest import Digest, build_digest, parse_week
from feeds.home import engine_for
from feeds.partners import PartnersConfig, load_partners
from feeds.settings import Settings
from feeds.store import as_utc, migrate, write_transaction
from feeds.store.captures import sessions
from feeds.store.engine import _alembic_config, is_current

WEEK = parse_week("2026-W47")
OLD = sa.MetaData()
# digest_session_weeks as migration 0005 made it and the refresh of 0005-0007 filled it.
session_weeks = sa.Table(
    "digest_session_weeks",
    OLD,
    sa.Column("partner_id", sa.String(40), primary_key=True),
    sa.Column("direction", sa.String(12), primary_key=True),
    sa.Column("week", sa.String(10), primary_key=True),
    sa.Column("src_ip", sa.String(45), primary_key=True),
    sa.Column("listen_port", sa.Integer, primary_key=True),
    sa.Column("service", sa.String(16), primary_key=True),
    sa.Column("request", sa.String(16), primary_key=True),
    sa.Column("sessions", sa.Integer, nullable=False),
)


def _monday(moment: dt.datetime) -> str:
    day = as_utc(moment).date()
    return (day - dt.timedelta(days=day.weekday())).isoformat()


def _old_session_rows(engine: Engine, config: PartnersConfig) -> list[dict[str, object]]:
    """What the refresh before 0008 kept: connections per partner, direction, week, IP, port,
    service and request type (counted here in Python from the sessions table)."""
    s = sessions.c
    counted: Counter[tuple[str, str, str, str, int, str, str]] = Counter()
    with engine.connect() as connection:
        for partner in config.partners.values():
            for direction in rollups.DIRECTIONS:
                for ts, ip, port, service, result, dst_port in connection.execute(
                    sa.select(s.ts, s.src_ip, s.listen_port, s.service, s.result, s.dst_port).where(
                        rollups.session_selection(partner, direction)
                    )
                ):
                    request = rollups.request_kind(result, dst_port)
                    counted[(partner.id, direction, _monday(ts), ip, port, service, request)] += 1
    names = [c.name for c in session_weeks.columns]
    return [dict(zip(names, (*key, count), strict=True)) for key, count in counted.items()]


def _back_to_0007(engine: Engine, config: PartnersConfig) -> None:
    """The store as 0007 left it after a refresh: the old rollup in place of the new ones."""
    old_rows = _old_session_rows(engine, config)
    assert old_rows
    with engine.connect() as connection:  # the revisions after 0008 step down on their own
        command.downgrade(_alembic_config(connection), "0008")
        connection.commit()
    with write_transaction(engine) as connection:
        for index in rollups.ip_weeks.indexes:
            index.drop(connection)
        rollups.ip_ports.drop(connection)
        rollups.request_weeks.drop(connection)
        session_weeks.create(connection)
        connection.execute(session_weeks.insert(), old_rows)
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0007'"))


def _digests(engine: Engine, config: PartnersConfig, *, refresh: bool) -> dict[str, Digest]:
    return {
        partner_id: build_digest(engine, config, partner_id, WEEK, refresh=refresh)
        for partner_id in config.partners
    }


def test_a_store_summed_before_0008_gives_the_same_digests_after_it(
    initialised: Settings,
) -> None:
    engine = engine_for(initialised.database_url)
    config = load_partners(initialised.partners)
    dataset = Dataset()
    make_captures(
        dataset, 1, WEEK.start - dt.timedelta(days=8), WEEK.end + dt.timedelta(days=1), 600
    )
    store_captures(engine, dataset)
    summed_by_0008 = _digests(engine, config, refresh=True)
    twcert = summed_by_0008["twcert"].directions["originating"]
    assert any(" " in source.ports for source in twcert.sources)  # IPs with several ports
    assert twcert.ports and twcert.requests

    _back_to_0007(engine, config)
    assert migrate(engine) and is_current(engine)  # up through 0008 to the newest
    migrated = _digests(engine, config, refresh=False)
    for partner_id, digest in summed_by_0008.items():
        assert migrated[partner_id].directions == digest.directions, partner_id

    # Down to 0007 the per-IP connection rows cannot be rebuilt: the rollups are emptied and the
    # next refresh after upgrading again sums them anew, to the same figures.
    with engine.connect() as connection:
        command.downgrade(_alembic_config(connection), "0007")
        connection.commit()
        assert sa.inspect(connection).has_table("digest_session_weeks")
        state = connection.execute(sa.select(sa.func.count()).select_from(rollups.rollup_state))
        assert state.scalar_one() == 0
    assert migrate(engine) and is_current(engine)  # up through 0008 to the newest
    rebuilt = _digests(engine, config, refresh=True)
    for partner_id, digest in summed_by_0008.items():
        assert rebuilt[partner_id].directions == digest.directions, partner_id
