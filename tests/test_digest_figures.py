"""The digest's figures equal what the store holds, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from digest_data import Dataset, Expected, expected, make_captures, store_captures
from sqlalchemy.engine import Engine

from feeds import rollups
from feeds.digest import DirectionFigures, build_digest, last_complete_week, parse_week
from feeds.errors import UsageError
from feeds.home import engine_for
from feeds.mail import render_text
from feeds.partners import Networks, PartnersConfig, load_partners
from feeds.publish import feed_batches
from feeds.settings import Settings, load_settings
from feeds.store import write_transaction
from taxii_server.audit import taxii_polls
from taxii_server.objects import taxii_objects

WEEK = parse_week("2026-W47")
START = WEEK.start


def _check(figures: DirectionFigures, want: Expected) -> None:
    assert figures.totals.messages == want.messages
    assert figures.totals.recipients == want.recipients
    assert figures.totals.unique_ips == len(want.ips)
    assert figures.totals.unique_asns == len(want.asns)
    assert figures.totals.unique_urls == len(want.urls)
    assert list(figures.per_day) == want.per_day
    got_ips = {
        s.ip: {
            "asn": s.asn,
            "as_name": s.as_name,
            "cc": s.cc,
            "messages": s.messages,
            "recipients": s.recipients,
            "first": s.first_seen,
            "last": s.last_seen,
            "ports": s.ports,
        }
        for s in figures.sources
    }
    # The digest shows times to the second (UTC) and ports as its CSV does.
    assert got_ips == {
        ip: {
            **entry,
            "first": entry["first"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "last": entry["last"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ports": " ".join(str(port) for port in entry["ports"]),
        }
        for ip, entry in want.ips.items()
    }
    assert [s.messages for s in figures.sources] == sorted(
        (e["messages"] for e in want.ips.values()), reverse=True
    )
    assert {u.url: u.messages for u in figures.urls} == want.urls
    assert {r.key: r.count for r in figures.top_url_domains} == want.url_domains
    assert {int(r.key): r.count for r in figures.ports} == want.ports
    assert figures.requests == want.requests
    by_asn: dict[str, int] = {}
    for entry in want.ips.values():
        key = f"AS{entry['asn']}" if entry["asn"] is not None else "unknown AS"
        by_asn[key] = by_asn.get(key, 0) + entry["messages"]
    assert {r.key: r.count for r in figures.top_asns} == by_asn
    assert [r.count for r in figures.top_ips] == sorted(
        (e["messages"] for e in want.ips.values()), reverse=True
    )


@pytest.fixture
def store(initialised: Settings) -> tuple[Engine, PartnersConfig]:
    return engine_for(initialised.database_url), load_partners(initialised.partners)


def _two_weeks(engine: Engine) -> Dataset:
    dataset = Dataset()
    # The week before, the week, and a little on each side to catch boundary mistakes.
    make_captures(dataset, 1, START - dt.timedelta(days=8), START + dt.timedelta(days=8), 600)
    store_captures(engine, dataset)
    return dataset


def test_figures_equal_the_store_in_both_directions(
    store: tuple[Engine, PartnersConfig],
) -> None:
    engine, config = store
    dataset = _two_weeks(engine)
    twcert = config.partners["twcert"]
    digest = build_digest(engine, config, "twcert", WEEK)
    assert digest.report_id == "SPAMPOTS-TWCERT-2026-W47"
    for direction in ("originating", "returning"):
        want = expected(dataset, twcert, direction, START)
        assert want.messages > 0
        _check(digest.directions[direction], want)
        before = expected(dataset, twcert, direction, WEEK.previous().start)
        assert digest.directions[direction].previous.messages == before.messages
        assert digest.directions[direction].previous.unique_ips == len(before.ips)
        assert digest.directions[direction].previous.unique_urls == len(before.urls)
    # Another partner's digest counts its own selection, not TW's.
    jp = build_digest(engine, config, "jpcert", WEEK)
    _check(
        jp.directions["originating"],
        expected(dataset, config.partners["jpcert"], "originating", START),
    )


def test_rollups_follow_new_data_and_changed_networks(
    store: tuple[Engine, PartnersConfig],
) -> None:
    engine, config = store
    dataset = _two_weeks(engine)
    build_digest(engine, config, "twcert", WEEK)
    # Late data for days already summed, in a new batch.
    first_message, first_session = dataset.next_message, dataset.next_session
    make_captures(dataset, 2, START, START + dt.timedelta(days=7), 150)
    store_captures(engine, dataset, first_message, first_session)
    twcert = config.partners["twcert"]
    digest = build_digest(engine, config, "twcert", WEEK)
    _check(digest.directions["originating"], expected(dataset, twcert, "originating", START))
    _check(digest.directions["returning"], expected(dataset, twcert, "returning", START))
    # Staff drop TW's listed prefix: the rollups are rebuilt without it.
    narrower = dataclasses.replace(twcert, networks=Networks(asns=(64500,), domains=("tw",)))
    changed = dataclasses.replace(config, partners={**config.partners, "twcert": narrower})
    report = rollups.refresh(engine, changed, ["twcert"])
    assert report.rebuilt == ["twcert"]
    digest = build_digest(engine, changed, "twcert", WEEK)
    want = expected(dataset, narrower, "originating", START)
    assert "198.51.100.5" not in want.ips
    _check(digest.directions["originating"], want)


def test_partner_with_no_data_gets_a_digest_saying_so(
    store: tuple[Engine, PartnersConfig],
) -> None:
    engine, config = store
    _two_weeks(engine)
    digest = build_digest(engine, config, "certuy", WEEK)
    assert not digest.has_data
    assert all(f.totals.messages == 0 for f in digest.directions.values())
    text = render_text(digest)
    assert "No spam from or to the networks of CERTuy" in text


def test_batches_and_polls_of_the_week(store: tuple[Engine, PartnersConfig]) -> None:
    engine, config = store
    twcert = config.partners["twcert"]
    originating, returning = twcert.collections
    rows = [
        (originating.id, "b-in-week", START + dt.timedelta(days=2), 120),
        (returning.id, "b-first-second", START, 30),
        (originating.id, "b-next-week", WEEK.end, 99),
        (config.partners["jpcert"].collections[0].id, "b-other-partner", START, 7),
    ]
    with write_transaction(engine) as connection:
        connection.execute(
            feed_batches.insert(),
            [
                {
                    "batch_id": batch,
                    "collection_id": cid,
                    "partner_id": "jpcert" if "other" in batch else "twcert",
                    "feed": "originating",
                    "report_id": batch,
                    "kid": "kid-1",
                    "objects": objects,
                    "indicators": 1,
                    "expired": 0,
                    "after_message_id": 0,
                    "upto_message_id": 1,
                    "issued": issued,
                    "manifest_sha256": "0" * 64,
                }
                for cid, batch, issued, objects in rows
            ],
        )
        connection.execute(
            taxii_polls.insert(),
            [
                {
                    "polled_at": START + dt.timedelta(days=3),
                    "username": "twcert",
                    "collection_id": originating.id,
                    "endpoint": "objects",
                    "objects_returned": 120,
                }
            ],
        )
    digest = build_digest(engine, config, "twcert", WEEK)
    assert [(b.batch_id, b.objects, b.kid) for b in digest.batches] == [
        ("b-first-second", 30, "kid-1"),
        ("b-in-week", 120, "kid-1"),
    ]
    polls = {p.collection: p.last_poll for p in digest.polls}
    assert polls == {originating.alias: START + dt.timedelta(days=3), returning.alias: None}
    text = render_text(digest)
    assert f"WARNING: TWCERT/CC did not poll {returning.alias}" in text
    # JP never polled anything: the warning says so.
    assert "has never polled its TAXII collections" in render_text(
        build_digest(engine, config, "jpcert", WEEK)
    )


def test_weeks() -> None:
    assert parse_week("2026-W01").start == dt.datetime(2025, 12, 29, tzinfo=dt.UTC)
    assert parse_week("2026-W53").start == dt.datetime(2026, 12, 28, tzinfo=dt.UTC)
    assert last_complete_week(dt.datetime(2026, 12, 7, 0, 0, tzinfo=dt.UTC)).label == "2026-W49"
    assert last_complete_week(dt.datetime(2026, 12, 6, 23, 59, tzinfo=dt.UTC)).label == "2026-W48"
    for bad in ("2026-48", "2025-W53", "W48", "2026-W00"):
        with pytest.raises(UsageError, match="is not an ISO week"):
            parse_week(bad)


def test_digest_agrees_with_the_published_feed(
    initialised: Settings, tmp_path: Path, environ: dict[str, str]
) -> None:
    from feeds.publish import publish

    # The shipped partners, sharing IPs and URLs (samples need raw messages this data lacks).
    partners_file = tmp_path / "partners.yaml"
    partners_file.write_text(
        Path(environ["SPAMPOTS_PARTNERS"])
        .read_text()
        .replace("[ips, urls, samples]", "[ips, urls]")
    )
    settings = load_settings({**environ, "SPAMPOTS_PARTNERS": str(partners_file)})
    engine, config = engine_for(settings.database_url), load_partners(partners_file)
    dataset = Dataset()
    make_captures(dataset, 3, START, WEEK.end - dt.timedelta(seconds=1), 300)
    store_captures(engine, dataset)
    report = publish(settings, "twcert", now=START + dt.timedelta(days=7, hours=-1))
    assert report.batches
    digest = build_digest(engine, config, "twcert", WEEK)
    assert sorted((b.batch_id, b.objects) for b in digest.batches) == sorted(
        (b.batch_id, b.objects) for b in report.batches
    )
    for collection in config.partners["twcert"].collections:
        with engine.connect() as connection:
            bodies = [
                orjson.loads(body)
                for (body,) in connection.execute(
                    sa.select(taxii_objects.c.body).where(
                        taxii_objects.c.collection_id == collection.id
                    )
                )
            ]
        figures = digest.directions[collection.feed]
        published_ips = {o["value"] for o in bodies if o["type"] in ("ipv4-addr", "ipv6-addr")}
        published_urls = {o["value"] for o in bodies if o["type"] == "url"}
        assert published_ips == {s.ip for s in figures.sources}
        assert published_urls == {u.url for u in figures.urls}
        assert len(published_ips) == figures.totals.unique_ips


def test_rollups_built_over_a_long_history_cover_its_newest_weeks(
    store: tuple[Engine, PartnersConfig],
) -> None:
    engine, config = store
    dataset = Dataset()
    first_day = WEEK.start - dt.timedelta(days=120)
    for day in range(127):  # ingested in time order, like the sensors deliver
        begin = first_day + dt.timedelta(days=day)
        make_captures(dataset, day, begin, begin + dt.timedelta(days=1), 6)
    store_captures(engine, dataset)
    digest = build_digest(engine, config, "twcert", WEEK)
    twcert = config.partners["twcert"]
    for direction in ("originating", "returning"):
        _check(digest.directions[direction], expected(dataset, twcert, direction, START))
    with engine.connect() as connection:
        covered = rollups.covers_from(connection, "twcert")
    newest = max(c.ts for c in dataset.captures)
    assert covered == (newest - rollups.HISTORY).date().isoformat()
    old = parse_week("2026-W30")
    with pytest.raises(UsageError, match=f"cover {covered} onwards") as raised:
        build_digest(engine, config, "twcert", old)
    assert "ask for 2026-W" in str(raised.value)
