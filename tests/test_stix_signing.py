"""STIX builders and batch signatures, without a store or a server."""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
import uuid

import orjson
import pytest
import rfc8785
import stix2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from stix2validator import ValidationOptions, validate_instance

from feeds import stix
from feeds.keys import b64url, thumbprint
from feeds.partners import Producer
from feeds.signing import (
    build_manifest,
    check_batch,
    digest,
    digest_of_canonical,
    manifest_row,
    public_keys,
    sign_manifest,
)

PRODUCER = Producer("CERT.br", "cert@example.org")
NOW = dt.datetime(2026, 12, 4, 10, 0, 0, 123456, tzinfo=dt.UTC)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TIMESTAMP_KEYS = {
    "created",
    "modified",
    "valid_from",
    "valid_until",
    "first_observed",
    "last_observed",
    "first_seen",
    "last_seen",
    "published",
    "date",
}


def sample_objects() -> list[dict[str, object]]:
    """One of every kind of object the feed publishes, with awkward values."""
    now = stix.timestamp(NOW)
    later = stix.timestamp(NOW + dt.timedelta(days=30))
    producer_id = stix.producer_identity_id(PRODUCER)
    authoring = stix.Authoring(producer_id, (stix.TLP_MARKING_IDS["amber"],))
    asn = stix.autonomous_system(64500, 'Example Télécom "TW"')
    address = stix.ip_address("198.51.100.7", asn["id"])
    address6 = stix.ip_address("2001:db8::7", None)
    observed = stix.observed_data(
        authoring,
        now,
        first_observed=now,
        last_observed=now,
        number_observed=3,
        object_refs=[address["id"], asn["id"]],
    )
    version = stix.IndicatorVersion(
        stix.indicator_id("c", "ipv4-addr:198.51.100.7", 0), now, now, now, later
    )
    indicator = stix.indicator(
        authoring,
        version,
        name="spam source 198.51.100.7",
        pattern=stix.indicator_pattern("ipv4-addr", "198.51.100.7"),
        indicator_types=["malicious-activity"],
        confidence=85,
        description="d",
    )
    link = stix.url("http://example.com/o'k\\?q=ü\u0001")
    url_indicator = stix.indicator(
        authoring,
        stix.IndicatorVersion(
            stix.indicator_id("c", "url:x", 0), now, now, now, later, revoked=True
        ),
        name="spam URL",
        pattern=stix.indicator_pattern("url", link["value"]),
        indicator_types=["malicious-activity"],
        confidence=70,
        description="d",
    )
    art = stix.artifact(b"Subject: hi\r\n\r\nbody \xe9\r\n")
    mail = stix.email_message(
        art["id"], is_multipart=False, subject='Olá 😀 "x"', date=now, content_type="text/plain"
    )
    sensors = stix.sensor_network_identity(PRODUCER, 3, stix.IDENTITY_CREATED)
    objects = [
        stix.producer_identity(PRODUCER, stix.IDENTITY_CREATED),
        sensors,
        stix.tlp_marking("amber"),
        stix.tlp_marking("amber+strict"),
        stix.tlp_extension_definition(),
        stix.signature_extension_definition(producer_id),
        asn,
        address,
        address6,
        observed,
        indicator,
        stix.relationship(authoring, now, "based-on", indicator["id"], observed["id"]),
        stix.sighting(
            authoring,
            now,
            indicator_ref=indicator["id"],
            observed_data_ref=observed["id"],
            sensor_network_ref=sensors["id"],
            first_seen=now,
            last_seen=now,
            count=3,
        ),
        link,
        url_indicator,
        art,
        mail,
    ]
    manifest = build_manifest(
        producer_id=producer_id,
        collection_id="c",
        batch_id="b",
        issued=now,
        rows=[manifest_row(o, digest(o)) for o in objects],
    )
    objects.append(
        stix.report(
            authoring,
            now,
            name="batch",
            description="d",
            object_refs=[o["id"] for o in objects if stix.is_reportable(o)],
            manifest=manifest,
            jws="e30..AA",
        )
    )
    return objects


def test_every_object_passes_the_validator_and_the_stix2_library() -> None:
    options = ValidationOptions(strict=False)
    for obj in sample_objects():
        result = validate_instance(orjson.loads(stix.dumps(obj)), options)
        assert result.is_valid, (obj["type"], [str(e) for e in result.errors])
        stix2.parse(stix.dumps(obj).decode(), allow_custom=False)


def test_timestamps_have_exactly_three_fractional_digits() -> None:
    for obj in sample_objects():
        for key in TIMESTAMP_KEYS & obj.keys():
            assert TIMESTAMP.match(str(obj[key])), (obj["type"], key, obj[key])
    assert stix.timestamp(dt.datetime(2009, 6, 19, 12)) == "2009-06-19T12:00:00.000Z"


def test_serialised_objects_are_their_rfc8785_form() -> None:
    for obj in sample_objects():
        assert stix.dumps(obj) == rfc8785.dumps(obj)
        assert digest_of_canonical(stix.dumps(obj)) == digest(obj)


def test_sco_ids_are_those_the_stix2_library_derives() -> None:
    objects = {o["type"] + str(o.get("value", "")): o for o in sample_objects()}
    for obj in objects.values():
        if obj["type"] in {
            "autonomous-system",
            "ipv4-addr",
            "ipv6-addr",
            "url",
            "artifact",
            "email-message",
        }:
            parsed = stix2.parse({k: v for k, v in obj.items() if k != "id"}, allow_custom=False)
            assert parsed.id == obj["id"], obj["type"]


def test_random_ids_are_version_4_and_never_repeat_across_threads_or_forks() -> None:
    """Ids are cut from a buffer of random bytes: each thread and each forked child must
    read its own, or two of them would publish the same id."""
    made: list[str] = []

    def make() -> None:
        made.extend(stix.random_id("sighting") for _ in range(5000))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == len(made) == 20000
    assert {uuid.UUID(i.split("--")[1]).version for i in made} == {4}

    stix.random_id("sighting")  # the buffer is filled; a child inherits it
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(writing, stix.random_id("sighting").encode())
        os._exit(0)
    os.close(writing)
    from_child = os.read(reading, 200).decode()
    os.waitpid(child, 0)
    os.close(reading)
    assert from_child.startswith("sighting--")
    assert from_child != stix.random_id("sighting")


def test_indicator_ids_are_stable_per_collection_and_value() -> None:
    first = stix.indicator_id("coll-a", "ipv4-addr:198.51.100.7", 0)
    assert first == stix.indicator_id("coll-a", "ipv4-addr:198.51.100.7", 0)
    assert first != stix.indicator_id("coll-b", "ipv4-addr:198.51.100.7", 0)
    assert first != stix.indicator_id("coll-a", "ipv4-addr:198.51.100.7", 1)


def _key() -> tuple[Ed25519PrivateKey, dict[str, object]]:
    private = Ed25519PrivateKey.generate()
    x = b64url(
        private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    )
    return private, {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": thumbprint(x)}]}


def _signed_batch(private: Ed25519PrivateKey, kid: str) -> tuple[dict[str, object], dict]:
    objects = sample_objects()[:-1]
    now = stix.timestamp(NOW)
    producer_id = stix.producer_identity_id(PRODUCER)
    manifest = build_manifest(
        producer_id=producer_id,
        collection_id="c",
        batch_id="b1",
        issued=now,
        rows=[manifest_row(o, digest(o)) for o in objects],
    )
    report = stix.report(
        stix.Authoring(producer_id, ()),
        now,
        name="n",
        description="d",
        object_refs=[o["id"] for o in objects if stix.is_reportable(o)],
        manifest=manifest,
        jws=sign_manifest(manifest, private, kid),
    )
    stored: dict = {}
    for obj in objects:
        stored.setdefault((obj["id"], stix.version_of(obj)), []).append(obj)
    return report, stored


def test_a_signed_batch_verifies() -> None:
    private, jwks = _key()
    kid = str(jwks["keys"][0]["kid"])  # type: ignore[index]
    report, stored = _signed_batch(private, kid)
    check = check_batch(report, public_keys(jwks), stored, "c")
    assert check.ok, check.problems
    assert check.kid == kid
    assert check.objects == sum(len(v) for v in stored.values())
    header = orjson.loads(rfc8785_b64(report))
    assert header == {"alg": "Ed25519", "kid": kid}


def rfc8785_b64(report: dict) -> bytes:
    from feeds.signing import b64url_decode

    jws = report["extensions"][stix.SIGNATURE_EXTENSION_ID]["jws"]
    return b64url_decode(jws.split(".")[0])


def test_an_altered_object_is_named() -> None:
    private, jwks = _key()
    report, stored = _signed_batch(private, str(jwks["keys"][0]["kid"]))  # type: ignore[index]
    key = next(k for k in stored if k[0].startswith("indicator--"))
    stored[key] = [{**stored[key][0], "confidence": 1}]
    check = check_batch(report, public_keys(jwks), stored, "c")
    assert not check.ok
    assert len(check.problems) == 1
    assert key[0] in check.problems[0] and "altered" in check.problems[0]


def test_a_missing_object_is_named() -> None:
    private, jwks = _key()
    report, stored = _signed_batch(private, str(jwks["keys"][0]["kid"]))  # type: ignore[index]
    key = next(k for k in stored if k[0].startswith("url--"))
    del stored[key]
    problems = check_batch(report, public_keys(jwks), stored, "c").problems
    assert len(problems) == 1 and key[0] in problems[0] and "missing" in problems[0]


@pytest.mark.parametrize("tamper", ["manifest", "jws", "kid", "collection"])
def test_a_tampered_report_fails(tamper: str) -> None:
    private, jwks = _key()
    report, stored = _signed_batch(private, str(jwks["keys"][0]["kid"]))  # type: ignore[index]
    extension = report["extensions"][stix.SIGNATURE_EXTENSION_ID]  # type: ignore[index]
    collection = "c"
    if tamper == "manifest":
        extension["manifest"]["objects"].pop()
    elif tamper == "jws":
        head, _, signature = extension["jws"].partition("..")
        extension["jws"] = f"{head}..{signature[:-4]}AAAA"
    elif tamper == "kid":
        _, other = _key()
        jwks = other
    else:
        collection = "another"
    check = check_batch(report, public_keys(jwks), stored, collection)
    assert not check.ok
