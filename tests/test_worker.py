"""The worker with short intervals, the real TAXII server, store and SMTP sink: what sensors drop
in the spool reaches a partner's poll and its digest with no manual step."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from smtp_sink import SmtpSink
from taxii2client.v21 import Server
from taxii_helpers import CHEAP, running_server

from feeds.digest import last_complete_week
from feeds.generator import generate
from feeds.home import init_home, open_store
from feeds.jobs import jobs_for
from feeds.settings import Settings, load_settings
from feeds.worker import Worker, job_runs

PASSWORDS = {
    "twcert": "twcert-secret-12",
    "jpcert": "jpcert-secret-12",
    "certpl": "certpl-secret-12",
}


def partner(partner_id: str, economy: str, digest: bool = False) -> list[str]:
    account = f'{{username: {partner_id}, password_hash: "{CHEAP.hash(PASSWORDS[partner_id])}"}}'
    lines = [
        f"  {partner_id}:",
        f"    name: {partner_id.upper()}",
        f"    economy: {economy}",
        "    publish: 1m",
        f"    taxii: {account}",
    ]
    if digest:
        lines.append(
            f"    digest: {{to: [{partner_id}@example.org], weekday: mon, "
            'time: "09:00", timezone: UTC}'
        )
    return lines


def partners_text(*entries: list[str]) -> str:
    head = ["producer: {name: CERT.br, contact: cert@example.org}", "partners:"]
    return "\n".join(head + [line for entry in entries for line in entry]) + "\n"


def wait_for(condition: Callable[[], object], what: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def service(environ: dict[str, str], tmp_path: Path, smtp_sink: SmtpSink) -> Settings:
    """A data folder whose spool holds a generated last complete week, an SMTP sink, and two
    partners (TW with a weekly digest, JP without)."""
    partners_file = tmp_path / "partners.yaml"
    partners_file.write_text(
        partners_text(partner("twcert", "TW", digest=True), partner("jpcert", "JP"))
    )
    week = last_complete_week()
    spool = Path(environ["SPAMPOTS_HOME"]) / "spool"
    data = generate(
        spool, tmp_path / "mmdb", 200, seed=3, start=week.start + dt.timedelta(days=2, hours=3)
    )
    env = {
        **environ,
        "SPAMPOTS_PARTNERS": str(partners_file),
        "SPAMPOTS_COUNTRY_MMDB": str(data.country_mmdb),
        "SPAMPOTS_ASN_MMDB": str(data.asn_mmdb),
        "SPAMPOTS_SMTP_URL": smtp_sink.url,
        "SPAMPOTS_INGEST_EVERY": "5",
    }
    settings = load_settings(env)
    init_home(settings)
    return settings


@pytest.fixture
def workers(service: Settings) -> Iterator[list[Worker]]:
    """Two workers on one store, as a primary and a standby would run."""
    running = [Worker(service, open_store(service), jobs_for, heartbeat=0.2) for _ in range(2)]
    threads = [threading.Thread(target=w.run_forever, daemon=True) for w in running]
    for thread in threads:
        thread.start()
    yield running
    for worker in running:
        worker.stop()
    for thread in threads:
        thread.join(timeout=60)


def objects_seen(url: str, user: str, alias: str) -> list[dict[str, object]]:
    server = Server(url, user=user, password=PASSWORDS[user])
    [root] = server.api_roots
    [collection] = [c for c in root.collections if c.alias == alias]
    return list(collection.get_objects().get("objects", []))


def aliases_of(url: str, user: str) -> set[str]:
    server = Server(url, user=user, password=PASSWORDS[user])
    return {c.alias for root in server.api_roots for c in root.collections}


def test_spool_to_poll_and_digest_with_no_manual_step(
    service: Settings,
    smtp_sink: SmtpSink,
    workers: list[Worker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running_server(service) as taxii:
        wait_for(lambda: any(w.active for w in workers), "a worker to become active")
        wait_for(lambda: len(smtp_sink.received) >= 1, "TW's weekly digest")
        objects = objects_seen(taxii.discovery, "twcert", "twcert-originating")
        assert any(o["type"] == "indicator" for o in objects)
        assert any(o["type"] == "report" for o in objects)
        digest = smtp_sink.received[0].parsed()
        assert "TWCERT" in digest["Subject"]
        assert last_complete_week().label in digest["Subject"]
        assert smtp_sink.received[0].rcpt_tos == ["twcert@example.org"]
        csv_files = [p for p in digest.iter_attachments() if p.get_filename().endswith(".csv")]
        assert csv_files and any(len(p.get_content().splitlines()) > 1 for p in csv_files)

        active = [w for w in workers if w.active]
        assert len(active) == 1
        time.sleep(1)  # let the standby tick a few more times
        assert len(smtp_sink.received) == 1
        engine = open_store(service)
        with engine.connect() as connection:
            runs = dict(
                connection.execute(
                    sa.select(job_runs.c.name, job_runs.c.runs).where(
                        job_runs.c.name.like("digest:%")
                    )
                ).all()
            )
        assert runs == {"digest:twcert": 1}


def test_partners_edits_take_effect_live_and_a_bad_edit_keeps_the_last_good(
    service: Settings,
    workers: list[Worker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = Path(service.partners)
    with running_server(service) as taxii:
        wait_for(lambda: any(w.active for w in workers), "a worker to become active")
        active = next(w for w in workers if w.active)
        path.write_text(
            partners_text(
                partner("twcert", "TW", digest=True),
                partner("jpcert", "JP"),
                partner("certpl", "PL"),
            )
        )
        wait_for(
            lambda: active.scheduler.get_job("publish:certpl") is not None,
            "the worker to schedule the new partner",
        )
        assert aliases_of(taxii.discovery, "certpl") == {"certpl-originating", "certpl-returning"}
        path.write_text(path.read_text().replace("economy: PL", "economy: P1"))
        wait_for(lambda: "partners.yaml edit refused" in caplog.text, "the bad edit refused")
        assert "economy 'P1' is not an ISO 3166-1 alpha-2 code" in caplog.text
        assert active.config is not None and "certpl" in active.config.partners
        assert active.scheduler.get_job("publish:certpl") is not None
        assert aliases_of(taxii.discovery, "certpl") == {"certpl-originating", "certpl-returning"}


def test_a_refused_digest_fails_its_job_and_the_retry_job_sends_it_later(
    service: Settings, smtp_sink: SmtpSink, environ: dict[str, str]
) -> None:
    from feeds.partners import load_partners
    from feeds.worker import run_job

    settings = load_settings(
        {
            **environ,
            "SPAMPOTS_PARTNERS": str(service.partners),
            "SPAMPOTS_SMTP_URL": smtp_sink.url,
            "SPAMPOTS_SMTP_RETRIES": "1",
        }
    )
    engine = open_store(settings)
    specs = {s.name: s for s in jobs_for(settings, load_partners(settings.partners), engine)}
    smtp_sink.refuse_next(1, "451 4.3.0 Try again later")
    assert run_job(engine, specs["digest:twcert"]) is None
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(job_runs).where(job_runs.c.name == "digest:twcert")
        ).one()
    assert row.last_status == "failed" and "twcert@example.org" in row.last_message
    assert smtp_sink.received == []
    outcome = run_job(engine, specs["digest-retry"])
    assert outcome is not None and outcome.counts["retried"] >= 1
    assert [r.rcpt_tos for r in smtp_sink.received] == [["twcert@example.org"]]
