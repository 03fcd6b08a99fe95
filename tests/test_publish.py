"""Publishing through the real store and the real TAXII server, verified as a partner would."""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import email.utils
import gzip
import hashlib
import ipaddress
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
import stix2
from publish_checks import PASSWORDS, generated_feeds
from stix2validator import ValidationOptions, validate_instance
from taxii2client.v21 import Server
from taxii_helpers import RunningServer, running_server

from feeds import publish as publish_module
from feeds.generator import Generated, _plan_networks
from feeds.home import engine_for, init_home
from feeds.ingest import ingest_run
from feeds.partners import load_partners
from feeds.publish import feed_batches, feed_watermarks, largest_first, publish
from feeds.settings import Settings, load_settings
from feeds.store import write_transaction
from feeds.verify import VerifyError, verify_collection
from taxii_server.objects import add_objects, taxii_objects

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


@dataclass
class Feed:
    settings: Settings
    generated: Generated
    tmp: Path
    records: list[dict[str, Any]]  # the message records the generator wrote
    env: dict[str, str]

    def password_file(self, user: str) -> str:
        path = self.tmp / f"{user}.password"
        path.write_text(PASSWORDS[user] + "\n")
        return str(path)


@pytest.fixture
def feed(tmp_path: Path, environ: dict[str, str]) -> Feed:
    environ, generated = generated_feeds(environ, tmp_path, 300, start=NOW - dt.timedelta(days=2))
    env = {
        **environ,
        "SPAMPOTS_SPOOL": str(generated.spool),
        "SPAMPOTS_BATCH_OBJECTS": "200",
        "SPAMPOTS_PUBLISH_COMMIT_OBJECTS": "200",  # one batch a transaction
        "SPAMPOTS_SAMPLES_PER_PUBLISH": "60",
    }
    settings = load_settings(env)
    records = [
        record
        for path in generated.batches
        for line in (
            gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        ).splitlines()
        if (record := orjson.loads(line)).get("type") == "message"
    ]
    init_home(settings)
    ingest_run(settings, workers=1).run()
    return Feed(settings, generated, tmp_path, records, env)


@pytest.fixture
def server(feed: Feed) -> Iterator[RunningServer]:
    with running_server(feed.settings) as running:
        yield running


def verify(
    feed: Feed, server: RunningServer, collection: str, user: str = "twcert", **options: Any
) -> tuple[Any, list[str]]:
    lines: list[str] = []
    outcome = verify_collection(
        url=server.discovery,
        collection=collection,
        user=user,
        password=PASSWORDS[user],
        jwks_source=f"{server.url}/.well-known/jwks.json",
        emit=lines.append,
        **options,
    )
    return outcome, lines


def indicator_addresses(objects: list[dict[str, Any]]) -> set[str]:
    found = set()
    for obj in objects:
        if obj["type"] == "indicator" and "addr:value" in obj["pattern"]:
            found.add(obj["pattern"].split("'")[1])
    return found


def tw_addresses(feed: Feed) -> set[str]:
    """What the generator put in TW's networks (its plan, not the store's enrichment)."""
    networks = [ipaddress.ip_network(n.cidr) for n in _plan_networks()["TW"]]
    return {
        ip
        for ip in feed.generated.expected.src_ips
        if any(ipaddress.ip_address(ip) in net for net in networks)
    }


def test_a_partner_polls_and_verifies_every_batch(feed: Feed, server: RunningServer) -> None:
    report = publish(feed.settings, now=NOW)
    assert any(b.collection_alias == "twcert-originating" for b in report.batches)
    outcome, lines = verify(feed, server, "twcert-originating", out=feed.tmp / "bundle.json")
    assert outcome.ok, [line for line in lines if "ok," not in line]
    assert len(outcome.checks) >= 2  # bounded batches: 200 objects each
    assert all(line.startswith("batch ") and ": ok," in line for line in lines[:-1])
    bundle = orjson.loads((feed.tmp / "bundle.json").read_bytes())
    assert indicator_addresses(bundle["objects"]) == tw_addresses(feed)
    kinds = Counter(obj["type"] for obj in bundle["objects"])
    assert kinds["artifact"] and kinds["email-message"] and kinds["url"]
    shown: set[str] = set()
    for artifact in (o for o in bundle["objects"] if o["type"] == "artifact"):
        payload = base64.b64decode(artifact["payload_bin"])
        assert hashlib.sha256(payload).hexdigest() == artifact["hashes"]["SHA-256"]
        sample = email.message_from_bytes(payload, policy=email.policy.compat32)
        shown |= {address for _, address in email.utils.getaddresses(sample.get_all("To", []))}
    # Recipients are not TW's own (a partner may keep those only with keep_own_recipients).
    assert "recipient@redacted.invalid" in shown and shown <= {"recipient@redacted.invalid", ""}
    # Every source address published once: one observed-data per address.
    assert kinds["observed-data"] == len(tw_addresses(feed))


def test_published_objects_pass_the_validator(feed: Feed, server: RunningServer) -> None:
    publish(feed.settings, partner_id="jpcert", now=NOW)
    outcome, lines = verify(feed, server, "jpcert-returning", user="jpcert")
    assert outcome.ok, lines
    options = ValidationOptions(strict=False)
    seen_types = set()
    for obj in outcome.verified:  # every object, as the partner received it
        seen_types.add(obj["type"])
        result = validate_instance(obj, options)
        assert result.is_valid, (obj["id"], [str(e) for e in result.errors])
        stix2.parse(orjson.dumps(obj).decode(), allow_custom=False)
    assert {
        "indicator",
        "observed-data",
        "relationship",
        "sighting",
        "report",
        "identity",
        "marking-definition",
        "extension-definition",
        "ipv4-addr",
    } <= seen_types


def test_an_object_altered_in_the_store_is_named(
    feed: Feed, server: RunningServer, run_cli: Any
) -> None:
    publish(feed.settings, partner_id="twcert", now=NOW)
    twcert = load_partners(feed.settings.partners).partners["twcert"]
    originating = next(c.id for c in twcert.collections if c.feed == "originating")
    engine = engine_for(feed.settings.database_url)
    t = taxii_objects.c
    with engine.begin() as connection:
        row_id, object_id, body = connection.execute(
            sa.select(t.row_id, t.object_id, t.body)
            .where(t.object_type == "indicator", t.collection_id == originating)
            .order_by(t.row_id)
            .limit(1)
        ).one()
        altered = orjson.loads(body) | {"confidence": 1}
        connection.execute(
            taxii_objects.update().where(t.row_id == row_id).values(body=orjson.dumps(altered))
        )
    outcome, lines = verify(feed, server, "twcert-originating")
    assert not outcome.ok
    failed = [line for line in lines if line.startswith("batch ") and "FAILED" in line]
    assert len(failed) == 1 and object_id in failed[0] and "altered" in failed[0]
    assert outcome.unsigned == [f"{object_id} {altered['modified']}"]
    code, out, _ = run_cli(
        "verify",
        "--url",
        server.discovery,
        "--collection",
        "twcert-originating",
        "--user",
        "twcert",
        "--password-file",
        feed.password_file("twcert"),
        "--jwks",
        f"{server.url}/.well-known/jwks.json",
    )
    assert code == 1 and object_id in out


def test_jp_sees_no_tw_collection(feed: Feed, server: RunningServer) -> None:
    publish(feed.settings, now=NOW)
    client = Server(server.discovery, user="jpcert", password=PASSWORDS["jpcert"])
    aliases = {c.alias for root in client.api_roots for c in root.collections}
    assert aliases == {"jpcert-originating", "jpcert-returning"}
    with pytest.raises(VerifyError, match="no collection 'twcert-originating'"):
        verify(feed, server, "twcert-originating", user="jpcert")


@pytest.mark.parametrize(
    ("commit_objects", "visible"),
    [("200", 1), ("2000", 0)],
    ids=["one-batch-a-transaction", "batches-committed-together"],
)
def test_killed_mid_publish_nothing_shows_and_a_rerun_publishes_once(
    feed: Feed,
    server: RunningServer,
    monkeypatch: pytest.MonkeyPatch,
    commit_objects: str,
    visible: int,
) -> None:
    """Killed in its second batch, a run leaves the batches committed before it, whole, and
    nothing of the batches it was writing with it; the next run publishes the rest once."""
    # One publishing process, so that the patched store_addition is the one that runs.
    feed.settings = load_settings(
        {
            **feed.env,
            "SPAMPOTS_PUBLISH_COMMIT_OBJECTS": commit_objects,
            "SPAMPOTS_PUBLISH_WORKERS": "1",
        }
    )
    real_store = publish_module.store_addition
    calls = Counter[str]()

    def dies_on_second_batch(connection: Any, addition: Any) -> None:
        calls[addition.collection_id] += 1
        real_store(connection, addition)
        if calls[addition.collection_id] == 2:
            raise KeyboardInterrupt  # killed after writing, before the commit

    monkeypatch.setattr(publish_module, "store_addition", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        publish(feed.settings, partner_id="twcert", now=NOW)
    outcome, _ = verify(feed, server, "twcert-originating")
    assert len(outcome.checks) == visible and all(check.ok for check in outcome.checks)
    assert not outcome.unsigned  # no object of a batch that was not committed whole
    monkeypatch.setattr(publish_module, "store_addition", real_store)
    publish(feed.settings, partner_id="twcert", now=NOW + dt.timedelta(minutes=1))
    outcome, lines = verify(feed, server, "twcert-originating")
    assert outcome.ok, lines
    observed = [o for o in outcome.verified if o["type"] == "observed-data"]
    assert len(observed) == len(tw_addresses(feed))
    assert publish(feed.settings, partner_id="twcert").batches == []  # nothing new


def test_an_object_added_while_a_group_is_built_is_kept_and_the_group_planned_again(
    feed: Feed, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's writes are planned before its transaction; an object that someone adds to the
    collection (as the TAXII server's add does) between the planning and the writing makes the
    writes planned again under the lock: nothing collides, nothing is lost."""
    feed.settings = load_settings({**feed.env, "SPAMPOTS_PUBLISH_WORKERS": "1"})
    real_build = publish_module.build_slice
    note: dict[str, Any] = {
        "type": "note",
        "spec_version": "2.1",
        "id": "note--6f1a2c3e-4b5d-4e6f-8a9b-0c1d2e3f4a5b",
        "created": "2026-12-04T11:00:00.000Z",
        "modified": "2026-12-04T11:00:00.000Z",
        "content": "added by staff while publishing ran",
        "object_refs": ["identity--6f1a2c3e-4b5d-4e6f-8a9b-0c1d2e3f4a5b"],
    }
    added: list[str] = []

    def with_an_object_added(
        engine: Any, context: Any, partner: Any, collection: Any, *rest: Any
    ) -> Any:
        for group in real_build(engine, context, partner, collection, *rest):
            if group.batches and collection.alias == "twcert-originating" and not added:
                with write_transaction(engine) as connection:
                    add_objects(connection, collection.id, [(note, orjson.dumps(note))])
                added.append(note["id"])
            yield group

    monkeypatch.setattr(publish_module, "build_slice", with_an_object_added)
    publish(feed.settings, partner_id="twcert", now=NOW)
    outcome, _ = verify(feed, server, "twcert-originating")
    assert added and len(outcome.checks) >= 2 and all(check.ok for check in outcome.checks)
    assert [entry.split()[0] for entry in outcome.unsigned] == added  # the note, in no batch
    observed = [o for o in outcome.verified if o["type"] == "observed-data"]
    assert len(observed) == len(tw_addresses(feed))


def test_indicators_keep_their_ids_get_new_versions_and_expire(
    feed: Feed, server: RunningServer
) -> None:
    publish(feed.settings, partner_id="jpcert", now=NOW)
    first, _ = verify(feed, server, "jpcert-originating", user="jpcert")
    before = {o["pattern"]: o for o in first.verified if o["type"] == "indicator"}
    assert before
    # Seen again: the same messages once more (the watermark put back).
    engine = engine_for(feed.settings.database_url)
    with engine.begin() as connection:
        connection.execute(feed_watermarks.update().values(last_message_id=0))
    later = NOW + dt.timedelta(days=1)
    publish(feed.settings, partner_id="jpcert", now=later)
    second, lines = verify(feed, server, "jpcert-originating", user="jpcert")
    assert second.ok, lines
    versions: dict[str, list[dict[str, Any]]] = {}
    for obj in second.verified:
        if obj["type"] == "indicator":
            versions.setdefault(obj["id"], []).append(obj)
    assert len(versions) == len(before)
    for pattern, old in before.items():
        new = max(versions[old["id"]], key=lambda o: o["modified"])
        assert new["pattern"] == pattern and new["created"] == old["created"]
        assert new["modified"] > old["modified"] and new["valid_until"] > old["valid_until"]
    # Not seen for the expiry period: published once more, as expired.
    expired_at = later + dt.timedelta(days=31)
    report = publish(feed.settings, partner_id="jpcert", now=expired_at)
    assert sum(
        b.expired for b in report.batches if b.collection_alias == "jpcert-originating"
    ) == len(before)
    third, lines = verify(feed, server, "jpcert-originating", user="jpcert")
    assert third.ok, lines
    revoked = [o for o in third.verified if o["type"] == "indicator" and o.get("revoked")]
    assert {o["id"] for o in revoked} == set(versions)
    assert all(o["valid_until"] < o["modified"] for o in revoked)
    again = publish(feed.settings, partner_id="jpcert", now=expired_at + dt.timedelta(days=1))
    assert again.batches == []
    with engine.connect() as connection:
        kids = set(connection.execute(sa.select(feed_batches.c.kid)).scalars())
    assert len(kids) == 1


def test_after_rotation_old_and_new_batches_verify_from_an_exported_jwks(
    feed: Feed, server: RunningServer, run_cli: Any
) -> None:
    env = {
        "SPAMPOTS_PARTNERS": str(feed.settings.partners),
        "SPAMPOTS_SPOOL": str(feed.settings.spool),
    }
    assert run_cli("publish", "--partner", "jpcert", env=env)[0] == 0
    code, out, _ = run_cli("keys", "rotate", env=env)
    assert code == 0 and "retired" in out and "active" in out
    engine = engine_for(feed.settings.database_url)
    with engine.begin() as connection:
        connection.execute(feed_watermarks.update().values(last_message_id=0))
    code, out, _ = run_cli("publish", "--partner", "jpcert", env=env)
    assert code == 0 and "jpcert-originating: batch" in out
    jwks_file = feed.tmp / "jwks.json"
    assert run_cli("keys", "export-jwks", "--out", str(jwks_file), env=env)[0] == 0
    bundle = feed.tmp / "verified.json"

    def verify_jpcert(*options: str) -> tuple[int, str, str]:
        return run_cli(  # type: ignore[no-any-return]
            "verify",
            "--url",
            server.discovery,
            "--collection",
            "jpcert-originating",
            "--user",
            "jpcert",
            "--password-file",
            feed.password_file("jpcert"),
            "--jwks",
            str(jwks_file),
            *options,
            env=env,
        )

    code, out, _ = verify_jpcert("--out", str(bundle))
    assert code == 0, out
    kids = {line.rsplit(" ", 1)[1] for line in out.splitlines() if ": ok," in line}
    assert len(kids) == 2
    assert orjson.loads(bundle.read_bytes())["type"] == "bundle"
    # A partner that pinned only the new key: the older batches do not count.
    with engine.connect() as connection:
        newest = connection.execute(
            sa.select(feed_batches.c.kid).order_by(feed_batches.c.issued.desc()).limit(1)
        ).scalar_one()
    code, out, _ = verify_jpcert("--trust-kid", newest)
    assert code == 1
    assert f"signed by {newest}" in out and "not among the trusted keys" in out


def test_publish_names_an_unknown_partner(feed: Feed, run_cli: Any) -> None:
    code, _, err = run_cli(
        "publish", "--partner", "nobody", env={"SPAMPOTS_PARTNERS": str(feed.settings.partners)}
    )
    assert code == 2 and "no partner 'nobody'" in err and "twcert" in err


def test_a_concurrent_run_is_refused_not_duplicated(
    feed: Feed, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_plan = publish_module.plan_units

    def plan_then_another_run_commits(
        connection: Any, partner: Any, collection: Any, *args: Any
    ) -> Any:
        units = real_plan(connection, partner, collection, *args)
        other = sa.create_engine(feed.settings.database_url)
        with other.begin() as writer:
            writer.execute(
                feed_watermarks.insert().values(
                    collection_id=collection.id, last_message_id=1, updated_at=NOW
                )
            )
        other.dispose()
        return units

    monkeypatch.setattr(publish_module, "plan_units", plan_then_another_run_commits)
    in_process = load_settings({**feed.env, "SPAMPOTS_PUBLISH_WORKERS": "1"})
    with pytest.raises(publish_module.PublishConflict, match="published by another run"):
        publish(in_process, partner_id="jpcert", now=NOW)
    engine = engine_for(feed.settings.database_url)
    with engine.connect() as connection:
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(feed_batches)).scalar() == 0
        )


def test_batches_stay_within_the_bound(feed: Feed) -> None:
    report = publish(feed.settings, partner_id="twcert", now=NOW)
    assert len(report.batches) > 2
    assert max(batch.objects for batch in report.batches) <= 200


def test_verify_says_when_the_password_is_wrong(
    feed: Feed, server: RunningServer, run_cli: Any
) -> None:
    wrong = feed.tmp / "wrong.password"
    wrong.write_text("not-the-password\n")
    code, _, err = run_cli(
        "verify",
        "--url",
        server.discovery,
        "--collection",
        "twcert-originating",
        "--user",
        "twcert",
        "--password-file",
        str(wrong),
        "--jwks",
        f"{server.url}/.well-known/jwks.json",
    )
    assert code == 1
    assert "HTTP 401" in err and "password" in err and "Traceback" not in err


def test_returning_is_what_was_aimed_at_the_partner(feed: Feed, server: RunningServer) -> None:
    publish(feed.settings, partner_id="jpcert", now=NOW)
    outcome, lines = verify(feed, server, "jpcert-returning", user="jpcert")
    assert outcome.ok, lines
    jp_networks = [ipaddress.ip_network(n.cidr) for n in _plan_networks()["JP"]]

    def under_jp(host: str) -> bool:
        return host.lower().rstrip(".").endswith(".jp")

    aimed = {
        record["src_ip"]
        for record in feed.records
        if any(ipaddress.ip_address(record["dst_ip"]) in net for net in jp_networks)
        or under_jp(record["dst_host"])
        or any(under_jp(address.rpartition("@")[2]) for address in record["rcpt_to"])
    }
    assert aimed
    assert indicator_addresses(outcome.verified) == aimed


def test_a_backlog_is_published_in_slices(feed: Feed, server: RunningServer) -> None:
    sliced = load_settings({**feed.env, "SPAMPOTS_PUBLISH_SLICE_MESSAGES": "100"})
    publish(sliced, partner_id="twcert", now=NOW)
    engine = engine_for(feed.settings.database_url)
    with engine.connect() as connection:
        ranges = set(
            connection.execute(
                sa.select(feed_batches.c.after_message_id, feed_batches.c.upto_message_id).where(
                    feed_batches.c.partner_id == "twcert", feed_batches.c.feed == "originating"
                )
            )
        )
        marks = connection.execute(sa.select(feed_watermarks.c.last_message_id)).scalars()
        newest = connection.execute(sa.text("SELECT max(id) FROM messages")).scalar()
    assert len(ranges) >= 3 and all(upto - after <= 100 for after, upto in ranges)
    assert set(marks) == {newest}
    outcome, lines = verify(feed, server, "twcert-originating")
    assert outcome.ok, lines
    by_address: dict[str, set[str]] = {}
    for obj in outcome.verified:
        if obj["type"] == "indicator" and "addr:value" in obj["pattern"]:
            by_address.setdefault(obj["pattern"].split("'")[1], set()).add(obj["id"])
    assert set(by_address) == tw_addresses(feed)
    assert all(len(ids) == 1 for ids in by_address.values())  # one id per address


def test_the_largest_backlogs_are_published_first(feed: Feed) -> None:
    publish(feed.settings, partner_id="twcert", now=NOW)
    config = load_partners(feed.settings.partners)
    work = [(p, c) for p in config.partners.values() for c in p.collections]
    with engine_for(feed.settings.database_url).connect() as connection:
        ranked = [collection.alias for _, collection in largest_first(connection, work)]
    assert sorted(ranked) == sorted(c.alias for _, c in work)
    assert set(ranked[-2:]) == {"twcert-originating", "twcert-returning"}  # nothing left

    publish(feed.settings, now=NOW)
    aliases = {c.id: c.alias for _, c in work}
    with engine_for(feed.settings.database_url).connect() as connection:
        published = Counter(
            {
                aliases[collection_id]: objects
                for collection_id, objects in connection.execute(
                    sa.select(feed_batches.c.collection_id, sa.func.sum(feed_batches.c.objects))
                    .where(feed_batches.c.partner_id != "twcert")
                    .group_by(feed_batches.c.collection_id)
                )
            }
        )
    assert ranked[0] == published.most_common(1)[0][0]


def test_a_changed_producer_is_a_new_identity_version(feed: Feed, server: RunningServer) -> None:
    publish(feed.settings, partner_id="jpcert", now=NOW)
    partners = Path(feed.settings.partners)
    partners.write_text(partners.read_text().replace("cert@example.org", "cti@example.org"))
    engine = engine_for(feed.settings.database_url)
    with engine.begin() as connection:
        connection.execute(feed_watermarks.update().values(last_message_id=0))
    publish(feed.settings, partner_id="jpcert", now=NOW + dt.timedelta(hours=1))
    outcome, lines = verify(feed, server, "jpcert-originating", user="jpcert")
    assert outcome.ok, lines  # the first batches still verify: nothing re-signed in place
    producers = [
        o
        for o in outcome.verified
        if o["type"] == "identity" and o.get("identity_class") == "organization"
    ]
    assert sorted(o["contact_information"] for o in producers) == [
        "cert@example.org",
        "cti@example.org",
    ]
    assert len({o["id"] for o in producers}) == 1
    assert len({o["modified"] for o in producers}) == 2
