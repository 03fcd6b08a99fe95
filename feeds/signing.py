"""Signed publication batches (docs/feed-signatures.md): digests, manifests, detached JWS.

The producer signs a manifest of per-object digests; the digest of an object is SHA-256 over
the RFC 8785 (JCS) form of the object exactly as the TAXII server returns it. The manifest
travels in the batch's last object, a ``report``, with the compact detached JWS (Ed25519).
Verification needs only the objects, the report and the producer's JWKS.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from feeds.errors import SpampotsError
from feeds.stix import SIGNATURE_EXTENSION_ID, StixObject, version_of

MANIFEST_VERSION = 1
ACCEPTED_ALGORITHMS = ("Ed25519", "EdDSA")
Row = tuple[str, str, str]


class SignatureError(SpampotsError):
    """A batch's signature or manifest cannot be checked or does not hold."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical form (the reference implementation: what a verifier computes)."""
    return bytes(rfc8785.dumps(obj))


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()


def digest_of_canonical(serialised: bytes) -> str:
    """Digest of an object whose serialised bytes already are its canonical form."""
    return hashlib.sha256(serialised).hexdigest()


def manifest_row(obj: StixObject, object_digest: str) -> Row:
    return (str(obj["id"]), version_of(obj), object_digest)


def build_manifest(
    *, producer_id: str, collection_id: str, batch_id: str, issued: str, rows: Iterable[Row]
) -> dict[str, Any]:
    return {
        "v": MANIFEST_VERSION,
        "producer": producer_id,
        "collection": collection_id,
        "batch": batch_id,
        "issued": issued,
        "digest_alg": "sha-256",
        "canonicalization": "RFC8785",
        "objects": sorted(rows),  # (id, version, digest): sorted by id, then version
    }


def _canonical_manifest(manifest: Mapping[str, Any]) -> bytes:
    # Manifests hold ASCII keys, strings and one small integer: sorted compact JSON from
    # orjson is their RFC 8785 form, and costs a hundredth of the reference implementation.
    return orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)


def sign_manifest(manifest: Mapping[str, Any], private_key: Ed25519PrivateKey, kid: str) -> str:
    header = b64url(orjson.dumps({"alg": "Ed25519", "kid": kid}))
    payload = b64url(_canonical_manifest(manifest))
    signature = private_key.sign(f"{header}.{payload}".encode("ascii"))
    return f"{header}..{b64url(signature)}"


def public_keys(jwks: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS by kid; other key types are ignored."""
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in jwks.get("keys", []):
        if not isinstance(jwk, Mapping) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        try:
            raw = b64url_decode(str(jwk["x"]))
            keys[str(jwk["kid"])] = Ed25519PublicKey.from_public_bytes(raw)
        except (KeyError, ValueError, binascii.Error):
            continue
    return keys


def verify_jws(manifest: Mapping[str, Any], jws: str, keys: Mapping[str, Ed25519PublicKey]) -> str:
    """Check a detached compact JWS over the manifest; returns the kid that signed it."""
    parts = jws.split(".")
    if len(parts) != 3 or parts[1] != "":
        raise SignatureError(
            "the jws is not a compact JWS with a detached payload",
            hint="the report was altered or not made by this producer",
        )
    try:
        header = orjson.loads(b64url_decode(parts[0]))
        signature = b64url_decode(parts[2])
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise SignatureError(
            "the jws header or signature is not valid base64url JSON", hint="the report was altered"
        ) from None
    if not isinstance(header, dict) or header.get("alg") not in ACCEPTED_ALGORITHMS:
        raise SignatureError(
            f"the jws algorithm {header.get('alg')!r} is not Ed25519"
            if isinstance(header, dict)
            else "the jws header is not an object",
            hint="only Ed25519 signatures are accepted",
        )
    kid = str(header.get("kid", ""))
    key = keys.get(kid)
    if key is None:
        raise SignatureError(
            f"key {kid or '(none)'} is not among the trusted keys of the JWKS",
            hint="fetch the producer's current JWKS, or ask the producer "
            "whether the key was revoked or should be trusted",
            kid=kid,
        )
    # A verifier recomputes RFC 8785 with the reference implementation, not the fast path.
    payload = b64url(canonical(dict(manifest)))
    try:
        key.verify(signature, f"{parts[0]}.{payload}".encode("ascii"))
    except InvalidSignature:
        raise SignatureError(
            f"the signature by key {kid} does not match the manifest",
            hint="the manifest was altered after signing",
            kid=kid,
        ) from None
    return kid


@dataclass
class BatchCheck:
    """The outcome of checking one batch: its id, the key, and every problem found."""

    batch_id: str
    report_id: str
    kid: str = ""
    objects: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def signed_extension(report: StixObject) -> dict[str, Any] | None:
    extension = (report.get("extensions") or {}).get(SIGNATURE_EXTENSION_ID)
    return extension if isinstance(extension, dict) else None


def check_batch(
    report: StixObject,
    keys: Mapping[str, Ed25519PublicKey],
    stored: Mapping[tuple[str, str], Sequence[StixObject]],
    collection_id: str | None = None,
    signed_elsewhere: Callable[[str, str], bool] | None = None,
) -> BatchCheck:
    """Check a signed report: the signature, then every manifest row against ``stored``.

    ``stored`` maps (id, version) to the copies of that object the server returned; for SCOs
    (version "") any copy with the right digest satisfies the row, since a TAXII server keeps
    one copy per time it was added. A TAXII server keeps one copy of an SCO, the one added
    last: ``signed_elsewhere(id, digest)`` says whether another verified batch signed the copy
    found, which then replaced the one this batch signed.
    """
    extension = signed_extension(report) or {}
    manifest = extension.get("manifest")
    check = BatchCheck(
        batch_id=str((manifest or {}).get("batch", "?")), report_id=str(report.get("id"))
    )
    if not isinstance(manifest, dict) or not isinstance(extension.get("jws"), str):
        check.problems.append(f"report {check.report_id}: no manifest or jws in the extension")
        return check
    try:
        check.kid = verify_jws(manifest, extension["jws"], keys)
    except SignatureError as error:
        check.problems.append(f"report {check.report_id}: {error}")
        return check
    if collection_id is not None and manifest.get("collection") != collection_id:
        check.problems.append(
            f"report {check.report_id}: signed for collection "
            f"{manifest.get('collection')}, found in {collection_id}"
        )
    rows = manifest.get("objects")
    if not isinstance(rows, list):
        check.problems.append(f"report {check.report_id}: the manifest lists no objects")
        return check
    for row in rows:
        object_id, version, expected = [*list(row), "", "", ""][:3]
        check.objects += 1
        copies = stored.get((object_id, version), ())
        where = f"{object_id} version {version}" if version else object_id
        if not copies:
            check.problems.append(f"object {where}: missing from the collection")
        elif all(digest(copy) != expected for copy in copies):
            if (
                not version
                and signed_elsewhere is not None
                and any(signed_elsewhere(object_id, digest(copy)) for copy in copies)
            ):
                continue
            check.problems.append(
                f"object {where}: digest differs from the signed manifest (the object was altered)"
            )
    return check
