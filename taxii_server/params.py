"""TAXII query parameters: checked here, so a malformed one is a 400 that says what is wrong.

``next`` is a stateless keyset token: it holds the ``date_added`` of the last object of the
page it came with, so it works in any server process, after restarts, and never expires.
Since ``date_added`` is unique and increasing within a collection, ``next`` and
``added_after`` mean the same thing (objects added after a moment); given both, the later wins.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

from taxii_server.errors import BadRequest
from taxii_server.objects import ALL_VERSIONS, LATEST, Query, VersionFilter, parse_timestamp

OBJECTS_FILTERS = frozenset({"id", "type", "version", "spec_version"})
OBJECT_FILTERS = frozenset({"version", "spec_version"})
VERSIONS_FILTERS = frozenset({"spec_version"})
_TOKEN_PREFIX = "after:"  # noqa: S105 (a token's prefix, not a secret)
_TYPE = re.compile(r"^[a-z0-9][a-z0-9-]{0,249}$")
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,249}--[0-9a-fA-F-]{36}$")
_SPEC_VERSION = re.compile(r"^\d\.\d$")


def encode_next(date_added_us: int) -> str:
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{date_added_us}".encode()).decode().rstrip("=")


def decode_next(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(_TOKEN_PREFIX) or not text[len(_TOKEN_PREFIX) :].isdigit():
        raise BadRequest(
            f"next={token!r} is not a token this server gave",
            hint="pass the 'next' value of the previous page unchanged",
        )
    return int(text[len(_TOKEN_PREFIX) :])


def parse_limit(args: Mapping[str, str], max_page_size: int) -> int:
    raw = args.get("limit")
    if raw is None or raw == "":
        return max_page_size
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise BadRequest(
            f"limit={raw!r} is not a positive whole number", hint=f"use 1 to {max_page_size}"
        )
    return min(limit, max_page_size)


def _values(args: Mapping[str, str], name: str) -> list[str]:
    raw = args.get(name)
    if raw is None:
        return []
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not values:
        raise BadRequest(f"{name} is empty", hint="give at least one value or leave it out")
    return values


def _checked(
    args: Mapping[str, str], name: str, pattern: re.Pattern[str], what: str
) -> tuple[str, ...]:
    values = _values(args, name)
    for value in values:
        if not pattern.match(value):
            raise BadRequest(
                f"{name}: {value!r} is not {what}", hint=f"give {what}s, separated by commas"
            )
    return tuple(values)


def parse_versions(args: Mapping[str, str], default: VersionFilter) -> VersionFilter:
    values = _values(args, "match[version]")
    if not values:
        return default
    if "all" in values:
        return ALL_VERSIONS
    exact: list[int] = []
    for value in values:
        if value in ("first", "last"):
            continue
        try:
            exact.append(parse_timestamp(value))
        except ValueError:
            raise BadRequest(
                f"match[version]: {value!r} is not first, last, all or a timestamp",
                hint="write timestamps as 2026-12-04T10:00:00.000Z",
            ) from None
    return VersionFilter(first="first" in values, last="last" in values, exact=tuple(exact))


def parse_after(args: Mapping[str, str]) -> int | None:
    """The position to start after: the later of ``added_after`` and ``next``, if any."""
    positions: list[int] = []
    added_after = args.get("added_after")
    if added_after is not None:
        try:
            positions.append(parse_timestamp(added_after.strip()))
        except ValueError:
            raise BadRequest(
                f"added_after={added_after!r} is not a timestamp",
                hint="write it as 2026-12-04T10:00:00.000000Z (RFC 3339, UTC)",
            ) from None
    token = args.get("next")
    if token:
        positions.append(decode_next(token))
    return max(positions) if positions else None


def parse_query(
    args: Mapping[str, str],
    collection_id: str,
    allowed: frozenset[str],
    max_page_size: int,
    default_versions: VersionFilter = LATEST,
) -> Query:
    for name in args:
        if name.startswith("match[") and name[6:-1] not in allowed:
            raise BadRequest(
                f"{name} is not a filter of this endpoint",
                hint="use " + ", ".join(f"match[{f}]" for f in sorted(allowed)),
            )
    return Query(
        collection_id=collection_id,
        limit=parse_limit(args, max_page_size),
        after_us=parse_after(args),
        ids=_checked(args, "match[id]", _ID, "a STIX id") if "id" in allowed else (),
        types=_checked(args, "match[type]", _TYPE, "a STIX type") if "type" in allowed else (),
        versions=parse_versions(args, default_versions) if "version" in allowed else ALL_VERSIONS,
        spec_versions=_checked(args, "match[spec_version]", _SPEC_VERSION, "a spec version"),
    )
