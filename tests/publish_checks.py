"""What a partner can read of the published collections, compared across runs and stores."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from taxii_helpers import CHEAP

from feeds.generator import Generated, generate
from feeds.home import engine_for, init_home
from feeds.ingest import ingest_run
from feeds.publish import feed_batches, feed_watermarks
from feeds.settings import Settings, load_settings
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


def feed_store(
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


PASSWORDS = {"twcert": "twcert-secret-12", "jpcert": "jpcert-secret-12"}


def partners_text() -> str:
    def account(name: str) -> str:
        return f'{{username: {name}, password_hash: "{CHEAP.hash(PASSWORDS[name])}"}}'

    return "\n".join(
        [
            "producer: {name: CERT.br, contact: cert@example.org}",
            "sensors:",
            "  br-isp1-home: {addresses: [192.0.2.10], hostnames: [proxy1.example.net]}",
            "partners:",
            "  twcert:",
            "    name: TWCERT/CC",
            "    economy: TW",
            "    networks: {asns: [64500], prefixes: [198.51.100.0/26], domains: [tw]}",
            "    share: [ips, urls, samples]",
            f"    taxii: {account('twcert')}",
            "  jpcert:",
            "    name: JPCERT/CC",
            "    economy: JP",
            "    networks: {asns: [64501], prefixes: [198.51.100.64/26], domains: [jp]}",
            "    share: [ips, urls]",
            "    tlp: green",
            f"    taxii: {account('jpcert')}",
            "",
        ]
    )


def generated_feeds(
    environ: dict[str, str],
    tmp: Path,
    messages: int = 150,
    start: dt.datetime | None = None,
) -> tuple[dict[str, str], Generated]:
    """Generated messages (by default 150 of now) for the partners of test_publish, with the
    generator's .mmdb files: what test_publish and the publish fault tests ingest."""
    start = start or dt.datetime.now(dt.UTC)
    generated = generate(tmp / "spool", tmp / "mmdb", messages, seed=7, start=start)
    partners = tmp / "partners.yaml"
    partners.write_text(partners_text())
    environ = {
        **environ,
        "SPAMPOTS_PARTNERS": str(partners),
        "SPAMPOTS_COUNTRY_MMDB": str(generated.country_mmdb),
        "SPAMPOTS_ASN_MMDB": str(generated.asn_mmdb),
    }
    return environ, generated
