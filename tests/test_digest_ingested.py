"""End to end: generated sensor batches, ingested for real, give a digest that agrees with
'spampots stats' and with the selection publishing uses, over the same week."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import sqlalchemy as sa

from feeds.digest import build_digest, parse_week
from feeds.generator import generate
from feeds.home import engine_for, init_home
from feeds.ingest import ingest_run
from feeds.partners import load_partners
from feeds.selection import message_condition, sources, spam_urls
from feeds.settings import load_settings
from feeds.stats import compute_stats
from feeds.store.captures import messages

WEEK = parse_week("2026-W47")


def test_digest_of_ingested_data_agrees_with_stats_and_selection(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    generated = generate(
        tmp_path / "spool", tmp_path / "mmdb", 500, seed=11, start=WEEK.start + dt.timedelta(days=2)
    )
    settings = load_settings(
        {
            **environ,
            "SPAMPOTS_SPOOL": str(generated.spool),
            "SPAMPOTS_COUNTRY_MMDB": str(generated.country_mmdb),
            "SPAMPOTS_ASN_MMDB": str(generated.asn_mmdb),
        }
    )
    init_home(settings)
    ingest_run(settings, workers=1).run()
    engine = engine_for(settings.database_url)
    config = load_partners(settings.partners)
    stats = compute_stats(engine, WEEK.start, WEEK.end)
    by_cc = {row["key"]: row["count"] for row in stats["by_cc"]}
    assert stats["totals"]["emails"] == generated.expected.emails > 0
    in_week = sa.and_(messages.c.ts >= WEEK.start, messages.c.ts < WEEK.end)
    checked = 0
    for partner in config.partners.values():
        digest = build_digest(engine, config, partner.id, WEEK)
        originating = digest.directions["originating"]
        # Ingest gives the partner's listed networks its economy, so "from your networks" is
        # exactly the stats' count for that country code.
        if partner.economy in by_cc:
            assert originating.totals.messages == by_cc[partner.economy]
            checked += 1
        with engine.connect() as connection:
            for direction, figures in digest.directions.items():
                condition = sa.and_(in_week, message_condition(partner, direction, 0, 2**62))
                selected = sources(connection, condition)
                assert {s.address: s.messages for s in selected} == {
                    s.ip: s.messages for s in figures.sources
                }
                assert figures.totals.messages == sum(s.messages for s in selected)
                assert {u.url: u.messages for u in spam_urls(connection, condition, 0, 2**62)} == {
                    u.url: u.messages for u in figures.urls
                }
    assert checked >= 2  # TW and at least one more economy appear in the stats' top ten
