"""The partner's side: poll a collection with taxii2-client and verify every signed batch.

Needs nothing of the producer's store: the TAXII discovery URL, an account, and the producer's
JWKS (a URL or a file). One line per batch: ok, or which object failed and why. Objects that
no verified batch covers are reported too, since the feed publishes nothing unsigned.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests
from taxii2client.exceptions import TAXIIServiceException
from taxii2client.v21 import Collection, Server, as_pages

from feeds.errors import SpampotsError
from feeds.signing import (
    BatchCheck,
    SignatureError,
    check_batch,
    digest,
    public_keys,
    signed_extension,
    verify_jws,
)
from feeds.stix import StixObject, random_id, version_of

Print = Callable[[str], None]


class VerifyError(SpampotsError):
    """The collection cannot be polled or the keys cannot be read."""


@dataclass
class VerifyOutcome:
    checks: list[BatchCheck] = field(default_factory=list)
    unsigned: list[str] = field(default_factory=list)
    verified: list[StixObject] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks) and not self.unsigned


def load_jwks(source: str, timeout: float = 30.0) -> dict[str, Any]:
    if source.startswith(("http://", "https://")):
        try:
            response = requests.get(source, timeout=timeout)
            response.raise_for_status()
            loaded = orjson.loads(response.content)
        except requests.RequestException as error:
            raise VerifyError(
                f"cannot fetch the JWKS at {source}: {error}",
                hint="check the URL the producer gave you",
            ) from None
        except orjson.JSONDecodeError:
            raise VerifyError(
                f"the JWKS at {source} is not JSON", hint="check the URL the producer gave you"
            ) from None
    else:
        try:
            loaded = orjson.loads(Path(source).read_bytes())
        except OSError as error:
            raise VerifyError(
                f"cannot read the JWKS file {source}: {error.strerror}",
                hint="give a JWKS URL or an existing file",
            ) from None
        except orjson.JSONDecodeError:
            raise VerifyError(
                f"the JWKS file {source} is not JSON",
                hint="export it again with 'spampots keys export-jwks'",
            ) from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("keys"), list):
        raise VerifyError(
            f"{source} is not a JWKS (no 'keys' list)",
            hint="give the producer's /.well-known/jwks.json",
        )
    return loaded


def read_password(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError):
        raise VerifyError(
            f"cannot read a password from {path}",
            hint="put the password on the first line of that file",
        ) from None


def find_collection(server: Server, wanted: str) -> Collection:
    seen: list[str] = []
    for api_root in server.api_roots:
        for collection in api_root.collections:
            if wanted in (collection.id, collection.alias):
                return collection
            seen.append(collection.alias or collection.id)
    raise VerifyError(
        f"no collection {wanted!r} is readable with this account",
        hint=f"readable: {', '.join(seen) or 'none'}",
    )


def poll(collection: Collection, page_size: int) -> Iterator[StixObject]:
    """Every version of every object in the collection, page by page."""
    for envelope in as_pages(collection.get_objects, per_request=page_size, version="all"):
        yield from envelope.get("objects", [])


def verify_objects(
    objects: list[StixObject],
    jwks: dict[str, Any],
    collection_id: str | None,
    trusted_kids: frozenset[str] = frozenset(),
) -> VerifyOutcome:
    """Check every signed report among ``objects``; with ``trusted_kids``, only signatures by
    those keys (the kids the producer announced out of band) count."""
    keys = public_keys(jwks)
    if trusted_kids:
        keys = {kid: key for kid, key in keys.items() if kid in trusted_kids}
    stored: dict[tuple[str, str], list[StixObject]] = defaultdict(list)
    reports = []
    for obj in objects:
        stored[(str(obj.get("id")), version_of(obj))].append(obj)
        if obj.get("type") == "report" and signed_extension(obj) is not None:
            reports.append(obj)
    outcome = VerifyOutcome()
    signed = _signed_rows(reports, keys)
    signed_scos = {(object_id, found) for object_id, version, found in signed if not version}
    done: set[tuple[str, str, str]] = set()
    for report in sorted(reports, key=lambda r: (str(r.get("created")), str(r.get("id")))):
        check = check_batch(
            report,
            keys,
            stored,
            collection_id,
            lambda object_id, found: (object_id, found) in signed_scos,
        )
        outcome.checks.append(check)
        if not check.ok:
            continue
        outcome.verified.append(report)
        manifest = (signed_extension(report) or {}).get("manifest") or {}
        for object_id, version, expected in manifest.get("objects", []):
            if (object_id, version, expected) in done:
                continue
            done.add((object_id, version, expected))
            good = [c for c in stored[(object_id, version)] if digest(c) == expected]
            outcome.verified.extend(good[:1])  # a superseded SCO copy is no longer served
    for (object_id, version), copies in stored.items():
        for copy in copies:
            if (object_id, version, digest(copy)) not in signed:
                outcome.unsigned.append(f"{object_id} {version}".strip())
    return outcome


def _signed_rows(reports: list[StixObject], keys: Any) -> set[tuple[str, str, str]]:
    """(id, version, digest) of every row of a manifest whose signature holds, and of the
    reports carrying them."""
    signed: set[tuple[str, str, str]] = set()
    for report in reports:
        extension = signed_extension(report) or {}
        manifest, jws = extension.get("manifest"), extension.get("jws")
        if not isinstance(manifest, dict) or not isinstance(jws, str):
            continue
        try:
            verify_jws(manifest, jws, keys)
        except SignatureError:
            continue
        signed.add((str(report["id"]), version_of(report), digest(report)))
        signed.update(tuple(row) for row in manifest.get("objects", []) if len(row) == 3)
    return signed


def describe(check: BatchCheck) -> str:
    if check.ok:
        return f"batch {check.batch_id}: ok, {check.objects} objects, signed by {check.kid}"
    shown = "; ".join(check.problems[:3])
    more = f" (and {len(check.problems) - 3} more)" if len(check.problems) > 3 else ""
    return f"batch {check.batch_id}: FAILED: {shown}{more}"


def verify_collection(
    *,
    url: str,
    collection: str,
    user: str,
    password: str,
    jwks_source: str,
    out: Path | None = None,
    page_size: int = 1000,
    trusted_kids: frozenset[str] = frozenset(),
    emit: Print = print,
) -> VerifyOutcome:
    jwks = load_jwks(jwks_source)
    try:
        server = Server(url, user=user, password=password)
        found = find_collection(server, collection)
        objects = list(poll(found, page_size))
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        hint = (
            "check the user name and password file"
            if status in (401, 403)
            else "check the discovery URL"
        )
        raise VerifyError(f"the TAXII server at {url} answered HTTP {status}", hint=hint) from None
    except (requests.RequestException, TAXIIServiceException) as error:
        raise VerifyError(
            f"cannot poll {url}: {error}",
            hint="check the discovery URL and that the server answers",
        ) from None
    outcome = verify_objects(objects, jwks, found.id, trusted_kids)
    for check in outcome.checks:
        emit(describe(check))
    if not outcome.checks:
        emit(f"collection {collection}: no signed batch found ({len(objects)} objects)")
    if outcome.unsigned:
        shown = ", ".join(outcome.unsigned[:5])
        more = f" and {len(outcome.unsigned) - 5} more" if len(outcome.unsigned) > 5 else ""
        emit(f"FAILED: {len(outcome.unsigned)} objects are in no verified batch: {shown}{more}")
    if out is not None:
        bundle = {"type": "bundle", "id": random_id("bundle"), "objects": outcome.verified}
        out.write_bytes(orjson.dumps(bundle))
        emit(f"wrote {len(outcome.verified)} verified objects to {out}")
    return outcome
