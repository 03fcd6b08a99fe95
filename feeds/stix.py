"""STIX 2.1 objects of the feed, built as plain dicts (serialised with orjson, never ``stix2``).

Building with the ``stix2`` library costs about a hundred times more per object; the tests
prove with ``stix2`` and ``stix2-validator`` that these dicts are what the library would accept.

Every timestamp is written with exactly three fractional digits. SCO ids are UUIDv5 in the
STIX namespace over the canonical JSON of the id-contributing properties (STIX 2.1 §2.9), so
the same address, AS, URL or artifact always gets the same id.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import ipaddress
import os
import threading
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from feeds.partners import Producer

StixObject = dict[str, Any]

STIX_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
# Our own ids (identities, indicators, the signature extension) are UUIDv5 in this namespace.
FEED_NAMESPACE = uuid.UUID("3b0f3f8e-6a0e-5d55-9c4c-1f5d2b8a7e10")

TLP_EXTENSION_ID = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP_MARKING_IDS = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
TLP_CREATED = "2022-10-01T00:00:00.000Z"
TLP_SCHEMA = (
    "https://github.com/oasis-open/cti-stix-common-objects/tree/main/"
    "extension-definition-specifications/tlp-2.0"
)
TLP_CREATOR = "identity--b3bca3c2-1f3d-4b54-b44f-dac42c3a8f01"

SIGNATURE_EXTENSION_ID = f"extension-definition--{uuid.uuid5(FEED_NAMESPACE, 'signed-batch/1')}"
SIGNATURE_EXTENSION_CREATED = "2026-12-01T00:00:00.000Z"
SIGNATURE_SCHEMA = "https://spampots.example.org/docs/feed-signatures.md"

# Fixed creation time of the identities: their content changes make new versions (modified).
IDENTITY_CREATED = "2026-12-01T00:00:00.000Z"


def timestamp(moment: dt.datetime) -> str:
    """RFC 3339 UTC with exactly three fractional digits; a naive time is taken as UTC."""
    if moment.tzinfo is not None and moment.utcoffset():
        moment = moment.astimezone(dt.UTC)
    # Formatted by hand: this runs several times for every published object.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
    )


def parse_timestamp(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def dumps(obj: StixObject) -> bytes:
    """The bytes an object is stored and served as: sorted keys, no white space.

    For the objects built here (ASCII keys, no floats, integers below 2**53) this is exactly
    their RFC 8785 canonical form, so the digest of an object is the SHA-256 of these bytes;
    :func:`feeds.signing.canonical` checks the claim and the tests check it on every object.
    """
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def _uuid_text(raw: bytes, version: int) -> str:
    """RFC 9562 text of 16 bytes with the version and variant set (what uuid.UUID does,
    without building the object: ids are made for every published object)."""
    h = raw[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{version:x}{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


# The first hex digit of the clock_seq field with the RFC 9562 variant (10xx) set.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


@functools.cache
def _namespace_bytes(namespace: uuid.UUID) -> bytes:
    return namespace.bytes


def _uuid5(namespace: uuid.UUID, name: str) -> str:
    raw = hashlib.sha1(_namespace_bytes(namespace) + name.encode("utf-8")).digest()  # noqa: S324
    return _uuid_text(raw, 5)


def sco_id(object_type: str, contributing: StixObject) -> str:
    name = orjson.dumps(contributing, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    return f"{object_type}--{_uuid5(STIX_NAMESPACE, name)}"


@functools.lru_cache(maxsize=262144)
def value_sco_id(object_type: str, value: str | int, name: str = "value") -> str:
    """The id of an SCO whose one id-contributing property is ``name``: the same addresses,
    ASes and URLs recur in every slice and collection, so their ids are kept."""
    return sco_id(object_type, {name: value})


def feed_id(object_type: str, *parts: str) -> str:
    return f"{object_type}--{_uuid5(FEED_NAMESPACE, '/'.join(parts))}"


# The types this module gives random ids (an email-message without a subject aside): a fresh
# one is new to every collection, so storing it looks up no earlier version.
RANDOM_ID_TYPES = frozenset({"observed-data", "relationship", "sighting", "report"})


def random_id(object_type: str) -> str:
    return f"{object_type}--{_uuid_text(_random_16(), 4)}"


# 16 bytes of the system's random source at a time, read 64 KiB at once: a system call per
# published object cost more than the rest of making its id. Each thread reads its own, and
# a forked child forgets its parent's.
_random = threading.local()


def _random_16() -> bytes:
    try:
        return next(_random.chunks)  # type: ignore[no-any-return]
    except (AttributeError, StopIteration):
        data = os.urandom(65536)
        _random.chunks = iter([data[start : start + 16] for start in range(0, len(data), 16)])
        return next(_random.chunks)  # type: ignore[no-any-return]


def _forget_random() -> None:
    _random.__dict__.pop("chunks", None)


os.register_at_fork(after_in_child=_forget_random)


@dataclass(frozen=True)
class Authoring:
    """Who made the objects and how they are marked: the same on every object of a feed."""

    producer_id: str
    marking_ids: tuple[str, ...]


# ---- identities, markings and extension definitions -------------------------------------


def producer_identity_id(producer: Producer) -> str:
    return feed_id("identity", "producer", producer.name)


def producer_identity(producer: Producer, modified: str) -> StixObject:
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": producer_identity_id(producer),
        "created": IDENTITY_CREATED,
        "modified": modified,
        "name": producer.name,
        "identity_class": "organization",
        "contact_information": producer.contact,
    }


def sensor_network_id(producer: Producer) -> str:
    return feed_id("identity", "sensor-network", producer.name)


def sensor_network_identity(producer: Producer, sensor_count: int, modified: str) -> StixObject:
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": sensor_network_id(producer),
        "created": IDENTITY_CREATED,
        "modified": modified,
        "created_by_ref": producer_identity_id(producer),
        "name": f"{producer.name} SpamPots sensor network",
        "description": f"{sensor_count} honeypot sensors emulating open proxies and open mail "
        "relays; they keep what spammers send through them instead of delivering it.",
        "identity_class": "system",
    }


def tlp_marking(level: str) -> StixObject:
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": TLP_MARKING_IDS[level],
        "created": TLP_CREATED,
        "name": f"TLP:{level.upper()}",
        "extensions": {
            TLP_EXTENSION_ID: {"extension_type": "property-extension", "tlp_2_0": level}
        },
    }


def tlp_extension_definition() -> StixObject:
    return {
        "type": "extension-definition",
        "spec_version": "2.1",
        "id": TLP_EXTENSION_ID,
        "created_by_ref": TLP_CREATOR,
        "created": TLP_CREATED,
        "modified": TLP_CREATED,
        "name": "TLP 2.0",
        "description": "Traffic Light Protocol 2.0 data markings "
        "(OASIS CTI TC, cti-stix-common-objects).",
        "schema": TLP_SCHEMA,
        "version": "1.0.0",
        "extension_types": ["property-extension"],
    }


def signature_extension_definition(
    producer_id: str, modified: str = SIGNATURE_EXTENSION_CREATED
) -> StixObject:
    return {
        "type": "extension-definition",
        "spec_version": "2.1",
        "id": SIGNATURE_EXTENSION_ID,
        "created_by_ref": producer_id,
        "created": SIGNATURE_EXTENSION_CREATED,
        "modified": modified,
        "name": "SpamPots signed publication batch",
        "description": "A report ending each publication batch carries 'manifest' (the id, "
        "version and SHA-256 of the RFC 8785 form of every object of the batch) and 'jws' (a "
        "detached compact JWS, Ed25519, over the RFC 8785 form of the manifest).",
        "schema": SIGNATURE_SCHEMA,
        "version": "1.0.0",
        "extension_types": ["property-extension"],
    }


# ---- observables --------------------------------------------------------------------------


def address_type(value: str) -> str:
    return "ipv6-addr" if ":" in value else "ipv4-addr"


def autonomous_system(number: int, name: str | None) -> StixObject:
    obj: StixObject = {
        "type": "autonomous-system",
        "spec_version": "2.1",
        "id": value_sco_id("autonomous-system", number, "number"),
        "number": number,
    }
    if name:
        obj["name"] = name
    return obj


def ip_address(value: str, as_id: str | None) -> StixObject:
    kind = address_type(value)
    obj: StixObject = {
        "type": kind,
        "spec_version": "2.1",
        "id": value_sco_id(kind, value),
        "value": value,
    }
    if as_id:
        obj["belongs_to_refs"] = [as_id]
    return obj


_URI_SAFE = "!#$&'()*+,/:;=?@[]~%"


@functools.lru_cache(maxsize=65536)
def uri(value: str) -> str:
    """A URL as spam writes it, percent-encoded where RFC 3986 allows no raw character
    (white space, controls, non-ASCII, backslashes): the ``url`` SCO's value must be a URI."""
    return urllib.parse.quote(value.strip(), safe=_URI_SAFE)


def url(value: str) -> StixObject:
    value = uri(value)
    return {
        "type": "url",
        "spec_version": "2.1",
        "id": value_sco_id("url", value),
        "value": value,
    }


def artifact(payload: bytes) -> StixObject:
    payload_bin = base64.b64encode(payload).decode("ascii")
    hashes = {"SHA-256": hashlib.sha256(payload).hexdigest()}
    return {
        "type": "artifact",
        "spec_version": "2.1",
        "id": sco_id("artifact", {"hashes": hashes, "payload_bin": payload_bin}),
        "mime_type": "message/rfc822",
        "payload_bin": payload_bin,
        "hashes": hashes,
    }


def email_message(
    artifact_id: str,
    *,
    is_multipart: bool,
    subject: str | None,
    date: str | None,
    content_type: str | None,
) -> StixObject:
    # Of the id-contributing properties (from_ref, subject, body) only the subject is kept:
    # with none of them STIX asks for a random id.
    obj: StixObject = {
        "type": "email-message",
        "spec_version": "2.1",
        "id": sco_id("email-message", {"subject": subject})
        if subject
        else random_id("email-message"),
        "is_multipart": is_multipart,
        "raw_email_ref": artifact_id,
    }
    if subject:
        obj["subject"] = subject
    if date:
        obj["date"] = date
    if content_type:
        obj["content_type"] = content_type
    return obj


# ---- indicators and what they rest on -----------------------------------------------------


def pattern_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def indicator_pattern(observable_type: str, value: str) -> str:
    return f"[{observable_type}:value = {pattern_literal(value)}]"


def indicator_id(collection_id: str, value_key: str, generation: int) -> str:
    """Stable per collection, value and generation (a new generation only after revocation)."""
    return feed_id("indicator", collection_id, value_key, str(generation))


@dataclass(frozen=True)
class IndicatorVersion:
    id: str
    created: str
    modified: str
    valid_from: str
    valid_until: str
    revoked: bool = False


def confidence_for(messages: int) -> int:
    """Honeypot traffic is abuse by construction; more messages, less room for a mistake."""
    if messages >= 100:
        return 95
    if messages >= 10:
        return 85
    return 70


def indicator(
    authoring: Authoring,
    version: IndicatorVersion,
    *,
    name: str,
    pattern: str,
    indicator_types: Sequence[str],
    confidence: int,
    description: str,
) -> StixObject:
    obj: StixObject = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": version.id,
        "created_by_ref": authoring.producer_id,
        "created": version.created,
        "modified": version.modified,
        "name": name,
        "description": description,
        "indicator_types": list(indicator_types),
        "pattern": pattern,
        "pattern_type": "stix",
        "pattern_version": "2.1",
        "valid_from": version.valid_from,
        "valid_until": version.valid_until,
        "confidence": confidence,
        "object_marking_refs": list(authoring.marking_ids),
    }
    if version.revoked:
        obj["revoked"] = True
    return obj


def observed_data(
    authoring: Authoring,
    created: str,
    *,
    first_observed: str,
    last_observed: str,
    number_observed: int,
    object_refs: Sequence[str],
) -> StixObject:
    return {
        "type": "observed-data",
        "spec_version": "2.1",
        "id": random_id("observed-data"),
        "created_by_ref": authoring.producer_id,
        "created": created,
        "modified": created,
        "first_observed": first_observed,
        "last_observed": last_observed,
        "number_observed": number_observed,
        "object_refs": list(object_refs),
        "object_marking_refs": list(authoring.marking_ids),
    }


def relationship(
    authoring: Authoring, created: str, relationship_type: str, source_ref: str, target_ref: str
) -> StixObject:
    return {
        "type": "relationship",
        "spec_version": "2.1",
        "id": random_id("relationship"),
        "created_by_ref": authoring.producer_id,
        "created": created,
        "modified": created,
        "relationship_type": relationship_type,
        "source_ref": source_ref,
        "target_ref": target_ref,
        "object_marking_refs": list(authoring.marking_ids),
    }


def sighting(
    authoring: Authoring,
    created: str,
    *,
    indicator_ref: str,
    observed_data_ref: str,
    sensor_network_ref: str,
    first_seen: str,
    last_seen: str,
    count: int,
) -> StixObject:
    return {
        "type": "sighting",
        "spec_version": "2.1",
        "id": random_id("sighting"),
        "created_by_ref": authoring.producer_id,
        "created": created,
        "modified": created,
        "first_seen": first_seen,
        "last_seen": last_seen,
        "count": min(count, 999_999_999),
        "sighting_of_ref": indicator_ref,
        "observed_data_refs": [observed_data_ref],
        "where_sighted_refs": [sensor_network_ref],
        "object_marking_refs": list(authoring.marking_ids),
    }


def report(
    authoring: Authoring,
    created: str,
    *,
    name: str,
    description: str,
    object_refs: Sequence[str],
    manifest: dict[str, Any],
    jws: str,
) -> StixObject:
    return {
        "type": "report",
        "spec_version": "2.1",
        "id": random_id("report"),
        "created_by_ref": authoring.producer_id,
        "created": created,
        "modified": created,
        "published": created,
        "name": name,
        "description": description,
        "report_types": ["indicator", "observed-data"],
        "object_refs": list(object_refs),
        "object_marking_refs": list(authoring.marking_ids),
        "extensions": {
            SIGNATURE_EXTENSION_ID: {
                "extension_type": "property-extension",
                "manifest": manifest,
                "jws": jws,
            }
        },
    }


def version_of(obj: StixObject) -> str:
    """The version a manifest row names: ``modified``, else ``created``, else "" (SCOs)."""
    return str(obj.get("modified") or obj.get("created") or "")


def is_reportable(obj: StixObject) -> bool:
    """Whether a report's ``object_refs`` may name it: SDOs, SROs and SCOs, not SMOs."""
    return obj["type"] not in {"marking-definition", "extension-definition", "language-content"}


def canonical_address(value: str) -> str:
    return str(ipaddress.ip_address(value))
