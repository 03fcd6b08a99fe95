"""SIGKILL at 20 seeded random steps of publishing and of a digest send, then run again: the
collections end as after one clean run, no half batch is ever visible, no mail goes twice.

(Ingest's crash test is tests/test_ingest_crash.py; the killing is tests/crash_child.py.)
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from crash_helpers import Crasher, kill_gaps
from digest_data import Dataset, make_captures, store_captures
from smtp_sink import SmtpSink
from taxii_helpers import running_server
from test_publish import PASSWORDS, partners_text

from feeds.deliveries import deliveries
from feeds.digest import parse_week
from feeds.generator import generate
from feeds.home import engine_for, init_home
from feeds.ingest import ingest_run
from feeds.publish import feed_batches, feed_watermarks
from feeds.settings import Settings, load_settings
from feeds.verify import verify_collection
from taxii_server.objects import taxii_objects

# What differs between two runs that publish the same: random (version 4) ids, times.
RANDOM_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
SIGNED = "extensions"  # the report's signed manifest: over random ids and times


def _normal(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in sorted(value.items()) if k != SIGNED}
    if isinstance(value, list):
        return sorted((_normal(v) for v in value), key=repr)
    if isinstance(value, str):
        return TIMESTAMP.sub("<time>", RANDOM_UUID.sub("<random>", value))
    return value


def collections(url: str) -> dict[str, Any]:
    """Per collection: its objects with random ids and times taken out, and its batches."""
    t, b = taxii_objects.c, feed_batches.c
    found: dict[str, Any] = {}
    with engine_for(url).connect() as connection:
        for collection_id, body in connection.execute(sa.select(t.collection_id, t.body)):
            entry = found.setdefault(collection_id, {"objects": Counter(), "batches": []})
            entry["objects"][repr(_normal(orjson.loads(body)))] += 1
        for row in connection.execute(
            sa.select(b.collection_id, b.objects, b.indicators, b.expired, b.after_message_id)
        ):
            found[row[0]]["batches"].append(tuple(row[1:]))
        for entry in found.values():
            entry["batches"].sort()
        marks = connection.execute(sa.select(feed_watermarks)).mappings().all()
        found["watermarks"] = sorted(
            (m["collection_id"], m["last_message_id"], m["pending_upto"], m["pending_cursor"])
            for m in marks
        )
    return found


def no_half_batch(url: str) -> None:
    """Every object in a collection is a batch's report or in the signed manifest of one, and
    every batch recorded has its report: what a partner can read is only ever whole batches."""
    t = taxii_objects.c
    with engine_for(url).connect() as connection:
        rows = connection.execute(sa.select(t.collection_id, t.object_id, t.object_type)).all()
        reports = connection.execute(
            sa.select(t.collection_id, t.body).where(t.object_type == "report")
        ).all()
        batches = connection.execute(sa.select(sa.func.count()).select_from(feed_batches))
        assert batches.scalar_one() == len(reports)
    listed = set()
    for collection_id, body in reports:
        report = orjson.loads(body)
        (signed,) = report["extensions"].values()
        listed |= {(collection_id, row[0]) for row in signed["manifest"]["objects"]}
        listed.add((collection_id, report["id"]))
    loose = {(c, i) for c, i, _ in rows} - listed
    assert not loose, f"objects outside any committed batch: {sorted(loose)[:5]}"


def _feed_env(
    environ: dict[str, str], tmp: Path, spool: Path, url: str, name: str
) -> tuple[dict[str, str], Settings]:
    """A data folder and store of its own, with the generated spool ingested."""
    folder = tmp / name
    shutil.copytree(spool, folder / "spool")
    env = {
        **environ,
        "SPAMPOTS_HOME": str(folder / "var"),
        "SPAMPOTS_DATABASE_URL": url,
        "SPAMPOTS_SPOOL": str(folder / "spool"),
        "SPAMPOTS_BATCH_OBJECTS": "40",
        "SPAMPOTS_SAMPLES_PER_PUBLISH": "30",
    }
    settings = load_settings(env)
    init_home(settings)
    ingest_run(settings, workers=1).run()
    return env, settings


def test_publish_killed_at_20_random_steps_then_once_more_equals_one_clean_run(
    environ: dict[str, str], tmp_path: Path, crasher: Crasher
) -> None:
    generated = generate(
        tmp_path / "spool", tmp_path / "mmdb", 150, seed=7, start=dt.datetime.now(dt.UTC)
    )
    partners = tmp_path / "partners.yaml"
    partners.write_text(partners_text())
    environ = {
        **environ,
        "SPAMPOTS_PARTNERS": str(partners),
        "SPAMPOTS_COUNTRY_MMDB": str(generated.country_mmdb),
        "SPAMPOTS_ASN_MMDB": str(generated.asn_mmdb),
    }
    clean_url = f"sqlite:///{tmp_path}/clean.db"
    clean_env, _ = _feed_env(environ, tmp_path, generated.spool, clean_url, "clean")
    url = environ["SPAMPOTS_DATABASE_URL"]
    crashed_env, crashed = _feed_env(environ, tmp_path, generated.spool, url, "crashed")
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
