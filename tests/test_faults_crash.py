"""SIGKILL at 20 seeded random steps of publishing and of a digest send, then run again: the
collections end as after one clean run, no half batch is ever visible, no mail goes twice.

(Ingest's crash test is tests/test_ingest_crash.py; the killing is tests/crash_child.py.)
"""

from __future__ import annotations

import datetime as dt
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from crash_helpers import Crasher, kill_gaps
from digest_data import Dataset, make_captures, store_captures
from publish_checks import PASSWORDS, collections, feed_store, generated_feeds, no_half_batch
from smtp_sink import SmtpSink
from taxii_helpers import running_server

from feeds.deliveries import deliveries
from feeds.digest import parse_week
from feeds.home import engine_for
from feeds.settings import Settings
from feeds.verify import verify_collection


# The killed runs on PostgreSQL against a clean run on SQLite: both stores in one test.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_publish_killed_at_20_random_steps_then_once_more_equals_one_clean_run(
    environ: dict[str, str], tmp_path: Path, crasher: Crasher
) -> None:
    # Published in the command's own process, where the crash child counts its steps (a run
    # with publishing processes killed midway: tests/test_publish_processes.py).
    environ, generated = generated_feeds({**environ, "SPAMPOTS_PUBLISH_WORKERS": "1"}, tmp_path)
    clean_url = f"sqlite:///{tmp_path}/clean.db"
    clean_env, _ = feed_store(environ, tmp_path, generated.spool, clean_url, "clean")
    url = environ["SPAMPOTS_DATABASE_URL"]
    crashed_env, crashed = feed_store(environ, tmp_path, generated.spool, url, "crashed")
    done, steps = crasher.counted(clean_env, ["publish"])
    assert done.code == 0, done.stderr

    runs = crasher.killed_runs(
        crashed_env, ["publish"], kill_gaps(seed=5, steps=steps), lambda: no_half_batch(url)
    )
    assert sum(run.code == -signal.SIGKILL for run in runs) >= 18, [r.code for r in runs]
    final = crasher.run(crashed_env, ["publish"])
    assert final.code == 0, final.stderr
    no_half_batch(url)
    assert collections(url) == collections(clean_url)

    # And as a partner sees it: every batch whole and its signature good.
    with running_server(crashed) as server:
        for user, alias in (("twcert", "twcert-originating"), ("jpcert", "jpcert-originating")):
            lines: list[str] = []
            outcome = verify_collection(
                url=server.discovery,
                collection=alias,
                user=user,
                password=PASSWORDS[user],
                jwks_source=f"{server.url}/.well-known/jwks.json",
                emit=lines.append,
            )
            assert outcome.ok and outcome.checks, lines


WEEK = parse_week("2026-W47")
ADDRESSES = [f"soc{n}@twcert.example.org" for n in range(8)]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_digest_send_killed_at_20_random_steps_never_mails_an_address_twice(
    initialised: Settings,
    environ: dict[str, str],
    tmp_path: Path,
    smtp_sink: SmtpSink,
    crasher: Crasher,
) -> None:
    engine = engine_for(initialised.database_url)
    dataset = Dataset()
    make_captures(
        dataset, 7, WEEK.start - dt.timedelta(days=7), WEEK.end + dt.timedelta(hours=1), 60
    )
    store_captures(engine, dataset)
    partners = tmp_path / "partners.yaml"
    shipped = Path(initialised.partners).read_text()
    partners.write_text(
        shipped.replace("to: [twcert@example.org]", f"to: [{', '.join(ADDRESSES)}]", 1)
    )
    env = {
        **environ,
        "SPAMPOTS_PARTNERS": str(partners),
        "SPAMPOTS_SMTP_URL": smtp_sink.url,
        "SPAMPOTS_SMTP_BACKOFF": "0.05",
    }
    argv = ["digest", "--partner", "twcert", "--week", WEEK.label, "--send"]
    clean, steps = crasher.counted(env, argv)
    assert clean.code == 0, clean.stderr
    clean_rows = _delivery_rows(engine)
    assert [r["status"] for r in clean_rows] == ["sent"] * len(ADDRESSES)
    assert sorted(a for m in smtp_sink.received for a in m.rcpt_tos) == sorted(ADDRESSES)
    with engine.begin() as connection:  # the same start again
        connection.execute(deliveries.delete())
    smtp_sink.received.clear()

    runs = crasher.killed_runs(env, argv, kill_gaps(seed=9, steps=steps))
    assert sum(run.code == -signal.SIGKILL for run in runs) >= 15, [r.code for r in runs]
    final = crasher.run(env, argv)
    rows = {r["address"]: r for r in _delivery_rows(engine)}
    mails = Counter(a for m in smtp_sink.received for a in m.rcpt_tos)
    message_ids = {a: m.parsed()["Message-ID"] for m in smtp_sink.received for a in m.rcpt_tos}
    assert set(rows) == set(ADDRESSES)
    for address, row in rows.items():
        assert mails[address] <= 1, f"{address} got the digest {mails[address]} times"
        if row["status"] == "sent":  # as after the clean run, and the one mail is this one
            assert mails[address] == 1 and message_ids[address] == row["message_id"]
            clean_row = next(r for r in clean_rows if r["address"] == address)
            assert {k: row[k] for k in ("report_id", "sends")} == {
                k: clean_row[k] for k in ("report_id", "sends")
            }
        else:  # killed while the server took it: never sent again on its own; a person decides
            assert row["status"] == "sending", row
            assert f"uncertain: {address} {row['message_id']}" in final.stdout
    uncertain = [a for a, r in rows.items() if r["status"] == "sending"]
    assert final.code == (1 if uncertain else 0), final.stderr
    assert len(uncertain) < len(ADDRESSES)  # the kills also landed outside that window


def _delivery_rows(engine: sa.engine.Engine) -> list[dict[str, Any]]:
    d = deliveries.c
    with engine.connect() as connection:
        return [
            dict(row)
            for row in connection.execute(sa.select(deliveries).order_by(d.address)).mappings()
        ]
