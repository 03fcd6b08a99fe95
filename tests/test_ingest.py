"""Ingest into the real store (SQLite and PostgreSQL) from generated spool data."""

from __future__ import annotations

import gc
import gzip
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from ingest_helpers import GeneratedHome

from feeds.batches import find_batches, ingest_batches, quarantine
from feeds.enrich import enrichment_sources
from feeds.gc_pace import BULK_THRESHOLD
from feeds.home import open_store
from feeds.ingest import ingest_run
from feeds.messages import domain_key
from feeds.rawstore import read_raw
from feeds.store.captures import (
    message_domains,
    message_urls,
    messages,
    sessions,
    under_domain,
    urls,
)

CLI = Callable[..., tuple[int, str, str]]


def scalar(settings: Any, query: Any) -> Any:
    with open_store(settings).connect() as connection:
        return connection.execute(query).scalar()


def count(settings: Any, table: sa.Table) -> int:
    return int(scalar(settings, sa.select(sa.func.count()).select_from(table)))


def test_ingest_stores_what_was_generated(generated: GeneratedHome, run_cli: CLI) -> None:
    expected = generated.data.expected
    code, out, err = run_cli("ingest", env=generated.environ)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == len(generated.data.batches)
    assert all("read" in line and "accepted" in line and "quarantined" in line for line in lines)
    settings = generated.settings
    assert count(settings, messages) == expected.emails
    assert count(settings, sessions) == expected.sessions
    assert scalar(settings, sa.select(sa.func.sum(messages.c.rcpt_count))) == expected.recipients
    assert count(settings, quarantine) == expected.quarantined > 0
    with open_store(settings).connect() as connection:
        batches = connection.execute(sa.select(ingest_batches)).all()
    assert {b.status for b in batches} == {"done"}
    for batch in batches:  # read = accepted + quarantined, for every batch
        assert batch.records_read == batch.accepted + batch.quarantined
    assert sum(b.records_read for b in batches) == expected.records
    incoming = Path(settings.spool) / "incoming"
    assert not [p for p in incoming.rglob("*") if p.is_file()]
    done = Path(settings.spool) / "done"
    assert len([p for p in done.rglob("*") if p.is_file()]) == len(generated.data.batches)


def test_messages_keep_enrichment_provenance_domains_and_urls(ingested: GeneratedHome) -> None:
    settings = ingested.settings
    with open_store(settings).connect() as connection:
        row = connection.execute(
            sa.select(messages).where(messages.c.src_cc == "TW").order_by(messages.c.id)
        ).first()
        assert row is not None
        assert row.src_asn is not None and row.src_as_name
        source = connection.execute(
            sa.select(enrichment_sources).where(enrichment_sources.c.id == row.src_cc_source)
        ).one()
        assert source.kind in {"country", "partners"} and source.version
        domains = connection.execute(
            sa.select(message_domains.c.domain, message_domains.c.recipients).where(
                message_domains.c.message_id == row.id
            )
        ).all()
        assert sum(n for _, n in domains) == row.rcpt_count
        assert sorted(d for d, _ in domains) == sorted(
            {a.rsplit("@", 1)[1] for a in orjson.loads(row.rcpt_to)}
        )
        assert row.dst_host_rev == domain_key(row.dst_host)
        linked = connection.execute(
            sa.select(urls.c.url, urls.c.domain, message_urls.c.domain)
            .join(message_urls, message_urls.c.url_id == urls.c.id)
            .where(message_urls.c.message_id == row.id)
        ).all()
        assert linked and all(u.startswith("http") and d == md for u, d, md in linked)
        partner_sources = connection.execute(
            sa.select(sa.func.count())
            .select_from(messages)
            .join(enrichment_sources, enrichment_sources.c.id == messages.c.src_cc_source)
            .where(enrichment_sources.c.kind == "partners")
        ).scalar_one()
        assert partner_sources > 0  # partners.yaml networks answered for their addresses
        aimed_at_jp = connection.execute(
            sa.select(sa.func.count(sa.distinct(message_domains.c.message_id))).where(
                under_domain(message_domains.c.domain_rev, "co.jp")
            )
        ).scalar_one()
        assert aimed_at_jp > 0
    raw = read_raw(settings.raw_dir, row.raw_sha256)
    assert hashlib.sha256(raw).hexdigest() == row.raw_sha256
    assert len(raw) == row.raw_size


def test_ingesting_again_counts_nothing_twice(ingested: GeneratedHome, run_cli: CLI) -> None:
    settings = ingested.settings
    before = {t.name: count(settings, t) for t in (messages, sessions, quarantine, urls)}
    done = Path(settings.spool) / "done"
    batch = sorted(p for p in done.rglob("*.jsonl") if p.is_file())[0]
    # The same batch again, and the same content under another name.
    shutil.copy(batch, Path(settings.spool) / "incoming" / "again.jsonl")
    code, out, _ = run_cli("ingest", str(batch), env=ingested.environ)
    assert code == 0 and "already ingested" in out
    code, out, _ = run_cli("ingest", env=ingested.environ)
    assert code == 0 and "already ingested" in out
    # Same records in a new file (another digest): accepted, but stored once.
    renamed = Path(settings.spool) / "incoming" / "resent.jsonl"
    renamed.write_bytes(batch.read_bytes() + b"\n")
    code, out, _ = run_cli("ingest", env=ingested.environ)
    assert code == 0 and "already in the store" in out
    assert {t.name: count(settings, t) for t in (messages, sessions, urls)} == {
        k: v for k, v in before.items() if k != "quarantine"
    }


def test_missing_raw_is_quarantined_then_retried(generated: GeneratedHome, run_cli: CLI) -> None:
    settings = generated.settings
    spool_raw = Path(settings.spool) / "raw"
    hidden = sorted(spool_raw.glob("*.eml"))[:3]
    parked = Path(settings.home) / "parked"
    parked.mkdir()
    for path in hidden:
        path.rename(parked / path.name)
    assert run_cli("ingest", env=generated.environ)[0] == 0
    expected = generated.data.expected
    assert count(settings, messages) < expected.emails
    code, out, _ = run_cli("quarantine", "list", env=generated.environ)
    assert code == 0
    assert "is not in the spool" in out and ".jsonl" in out
    for path in hidden:
        (parked / path.name).rename(path)
    code, out, _ = run_cli("quarantine", "retry", env=generated.environ)
    assert code == 0 and "released" in out
    assert count(settings, messages) == expected.emails
    held = scalar(
        settings,
        sa.select(sa.func.count()).select_from(quarantine).where(quarantine.c.status == "held"),
    )
    assert held == expected.quarantined  # only the records that really break the contract
    with open_store(settings).connect() as connection:
        for batch in connection.execute(sa.select(ingest_batches)):
            assert batch.records_read == batch.accepted + batch.quarantined
    code, out, _ = run_cli("quarantine", "retry", env=generated.environ)
    assert code == 0 and "0 released" in out


def test_two_workers_store_the_same_as_one(generated: GeneratedHome, tmp_path: Path) -> None:
    run = ingest_run(generated.settings, workers=2)
    reports = run.run()
    assert all(r.status == "ingested" for r in reports)
    assert count(generated.settings, messages) == generated.data.expected.emails
    with open_store(generated.settings).connect() as connection:
        ids = list(connection.execute(sa.select(messages.c.id).order_by(messages.c.id)).scalars())
    assert ids == list(range(1, len(ids) + 1))  # the watermark grows without gaps


def test_a_batch_that_breaks_midway_among_others_keeps_its_good_part(
    generated: GeneratedHome,
) -> None:
    """Workers read ahead into the next batches while a batch is written: a batch whose gzip
    breaks partway still has the lines before the break stored, and the batches before and
    after it are ingested whole, reported in order."""
    incoming = Path(generated.settings.spool) / "incoming"
    batches = sorted(incoming.rglob("*.jsonl"))
    assert len(batches) >= 3
    victim = batches[len(batches) // 2]
    packed = gzip.compress(victim.read_bytes())
    victim.unlink()
    broken = victim.with_name(victim.name + ".gz")
    broken.write_bytes(packed[: len(packed) * 2 // 3])
    order = [path.relative_to(incoming).as_posix() for path in find_batches(incoming)]
    run = ingest_run(generated.settings, workers=2)
    run.chunk_lines = 7
    reports = run.run()
    assert [r.name for r in reports] == order
    failed = [r for r in reports if r.status == "failed"]
    assert [r.name for r in failed] == [broken.relative_to(incoming).as_posix()]
    assert "cannot read on" in failed[0].error
    assert failed[0].read >= 7  # the chunks before the break are in the store
    assert all(r.status == "ingested" for r in reports if r is not failed[0])
    assert sorted(incoming.rglob("*.jsonl*")) == [broken]  # the others moved to done/
    with open_store(generated.settings).connect() as connection:
        ids = list(connection.execute(sa.select(messages.c.id).order_by(messages.c.id)).scalars())
    assert ids == list(range(1, len(ids) + 1))


def test_ingest_paces_the_cycle_collector_and_then_restores_it(generated: GeneratedHome) -> None:
    before = gc.get_threshold()
    during = []
    run = ingest_run(generated.settings)
    run.on_chunk = lambda name, line: during.append(gc.get_threshold())
    run.run()
    assert during and set(during) == {BULK_THRESHOLD}
    assert gc.get_threshold() == before != BULK_THRESHOLD


def test_a_broken_batch_file_is_reported_and_left(initialised: Any, run_cli: CLI) -> None:
    incoming = Path(initialised.spool) / "incoming"
    (incoming / "cut.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    (incoming / "partial.jsonl.tmp").write_bytes(b"not yet renamed")
    code, out, _ = run_cli("ingest")
    assert code == 1
    assert "cut.jsonl.gz: FAILED" in out and "partial" not in out
    assert (incoming / "cut.jsonl.gz").exists()


def test_bad_command_lines_are_one_clear_error(initialised: Any, run_cli: CLI) -> None:
    code, _, err = run_cli("ingest", "/nonexistent/batch.jsonl")
    assert code == 2 and "no such batch file" in err and "Traceback" not in err
    code, _, err = run_cli("stats", "--since", "yesterday")
    assert code == 2 and "--since" in err


def test_an_unreadable_raw_message_is_quarantined(generated: GeneratedHome, run_cli: CLI) -> None:
    spool_raw = Path(generated.settings.spool) / "raw"
    victim = sorted(spool_raw.glob("*.eml"))[0]
    victim.unlink()
    victim.mkdir()  # reading it fails with an OS error other than "not found"
    code, _, _ = run_cli("ingest", env=generated.environ)
    assert code == 0
    code, out, _ = run_cli("quarantine", "list", env=generated.environ)
    assert code == 0 and f"cannot read raw/{victim.name}" in out
