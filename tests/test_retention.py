"""Retention removes whole weeks of captures (SQLite and PostgreSQL), nothing built on them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from digest_data import Dataset, make_captures, store_captures
from sqlalchemy.engine import Engine

from feeds import rollups
from feeds.digest import build_digest, parse_week
from feeds.errors import SettingError
from feeds.home import engine_for
from feeds.partners import PartnersConfig, load_partners
from feeds.retention import apply_retention, retention_cutoff
from feeds.settings import MIN_RETENTION_DAYS, Settings, load_settings
from feeds.store.captures import message_domains, message_urls, messages, sessions
from feeds.store.partitions import week_start, weeks_of

OLD_WEEK = parse_week("2026-W30")
NOW = dt.datetime(2026, 12, 4, 12, tzinfo=dt.UTC)
DAYS = 100


@pytest.fixture
def store(initialised: Settings) -> tuple[Engine, PartnersConfig]:
    return engine_for(initialised.database_url), load_partners(initialised.partners)


def _count(engine: Engine, query: sa.Select[tuple[int]]) -> int:
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def _orphans(engine: Engine, child: sa.Table) -> int:
    return _count(
        engine,
        sa.select(sa.func.count())
        .select_from(child)
        .where(~child.c.message_id.in_(sa.select(messages.c.id))),
    )


def _old_then_recent(engine: Engine, config: PartnersConfig) -> Dataset:
    """An old week summed into the rollups as ingest would, then the months up to NOW."""
    dataset = Dataset()
    make_captures(dataset, 1, OLD_WEEK.start - dt.timedelta(days=3), OLD_WEEK.end, 300)
    store_captures(engine, dataset)
    rollups.refresh(engine, config)
    first_message, first_session = dataset.next_message, dataset.next_session
    make_captures(dataset, 2, OLD_WEEK.end, NOW, 600)
    store_captures(engine, dataset, first_message, first_session)
    rollups.refresh(engine, config)
    return dataset


def test_weeks_before_the_cutoff_go_and_what_was_built_stays(
    store: tuple[Engine, PartnersConfig],
) -> None:
    engine, config = store
    dataset = _old_then_recent(engine, config)
    digest_before = build_digest(engine, config, "twcert", OLD_WEEK)
    cutoff = retention_cutoff(DAYS, NOW)
    assert cutoff is not None and cutoff == week_start(cutoff) and cutoff > OLD_WEEK.end
    kept = [c for c in dataset.captures if c.ts >= cutoff]
    kept_sessions = [s for s in dataset.connections if s.ts >= cutoff]
    assert 0 < len(kept) < len(dataset.captures)

    report = apply_retention(engine, DAYS, NOW)

    assert report.messages == len(dataset.captures) - len(kept)
    assert report.sessions == len(dataset.connections) - len(kept_sessions)
    assert report.weeks and all(w < f"{cutoff:%Y-%m-%d}" for w in report.weeks)
    with engine.connect() as connection:
        ids = set(connection.execute(sa.select(messages.c.id)).scalars())
        session_ids = set(connection.execute(sa.select(sessions.c.id)).scalars())
    assert ids == {c.id for c in kept}
    assert session_ids == {s.id for s in kept_sessions}
    assert _orphans(engine, message_domains) == 0
    assert _orphans(engine, message_urls) == 0
    assert _count(engine, sa.select(sa.func.count()).select_from(message_urls)) == sum(
        len(c.url_ids) for c in kept
    )
    # The digest of a removed week reads its rollups, which stay as they were.
    digest_after = build_digest(engine, config, "twcert", OLD_WEEK)
    for direction in ("originating", "returning"):
        assert digest_before.directions[direction].totals.messages > 0
        assert digest_after.directions[direction] == digest_before.directions[direction]
    # Run again: nothing left to remove; new captures still go in.
    assert apply_retention(engine, DAYS, NOW).messages == 0
    make_captures(dataset, 3, NOW - dt.timedelta(days=1), NOW, 20)
    store_captures(engine, dataset, max(ids) + 1, max(session_ids) + 1)
    assert _count(engine, sa.select(sa.func.count()).select_from(messages)) == len(kept) + 20


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_drops_the_weeks_partitions_and_makes_the_coming_ones(
    store: tuple[Engine, PartnersConfig],
) -> None:
    engine, config = store
    _old_then_recent(engine, config)
    cutoff = retention_cutoff(DAYS, NOW)
    assert cutoff is not None
    with engine.connect() as connection:
        before = {table: weeks_of(connection, table) for table in ("messages", "sessions")}
    assert any(monday < cutoff for monday in before["messages"])

    report = apply_retention(engine, DAYS, NOW)

    with engine.connect() as connection:
        after = {table: weeks_of(connection, table) for table in ("messages", "sessions")}
    coming = {week_start(NOW + dt.timedelta(weeks=n)) for n in range(5)}
    for table in ("messages", "sessions"):
        assert set(after[table]) == {m for m in before[table] if m >= cutoff} | coming
    assert {f"{m:%Y-%m-%d}" for m in before["messages"] if m < cutoff} == set(report.weeks)


def test_retention_off_keeps_everything(store: tuple[Engine, PartnersConfig]) -> None:
    engine, config = store
    dataset = _old_then_recent(engine, config)
    report = apply_retention(engine, 0, NOW)
    assert report.cutoff is None and report.messages == 0
    total = _count(engine, sa.select(sa.func.count()).select_from(messages))
    assert total == len(dataset.captures)


def test_the_cli_applies_the_setting(
    initialised: Settings, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    engine = engine_for(initialised.database_url)
    dataset = Dataset()
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    make_captures(dataset, 1, old, old + dt.timedelta(days=2), 30)
    recent = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    make_captures(dataset, 2, recent, recent + dt.timedelta(days=1), 10)
    store_captures(engine, dataset)
    code, out, err = run_cli("retention", env={"SPAMPOTS_RETENTION_DAYS": "365"})
    assert code == 0, err
    assert "removed 30 messages" in out
    assert _count(engine, sa.select(sa.func.count()).select_from(messages)) == 10


def test_retention_shorter_than_the_rollups_history_is_refused() -> None:
    assert (rollups.HISTORY + rollups.LATE_MARGIN).days <= MIN_RETENTION_DAYS
    with pytest.raises(SettingError, match="RETENTION_DAYS"):
        load_settings({"SPAMPOTS_RETENTION_DAYS": str(MIN_RETENTION_DAYS - 1)})
    assert load_settings({"SPAMPOTS_RETENTION_DAYS": "0"}).retention_days == 0
