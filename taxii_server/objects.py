"""Objects in TAXII collections: the tables, adding objects, and the keyset queries pages use.

Each row is one version of one object in one collection, kept as the exact JSON bytes that were
published. Times are integers of microseconds since the epoch, the same on SQLite and PostgreSQL,
so ``added_after`` compares at full precision. ``date_added`` is unique and increasing within a
collection: adding takes the collection's row in ``taxii_collection_state`` for update, so
batches of one collection commit in the order of their dates and a reader that saw date D never
later meets a new object dated before D. ``is_last``/``is_first`` mark each object's newest and
oldest version so that the default ``match[version]=last`` is an index range scan.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from feeds.store import bulk_insert_values, driver_mark, metadata
from taxii_server.errors import InvalidObject

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
ONE_MICROSECOND = dt.timedelta(microseconds=1)
STIX_MEDIA_TYPE = "application/stix+json;version={}"
_ID = re.compile(
    r"^([a-z0-9][a-z0-9-]{0,249})--[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"
)
_TIMESTAMP = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,12}))?([Zz]|[+-]\d{2}:\d{2})$"
)
# Ids bound in one IN (...): few queries per batch, well under SQLite's limit of 32,766.
_ID_CHUNK = 5000

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

taxii_objects = sa.Table(
    "taxii_objects",
    metadata,
    sa.Column("row_id", RowId, primary_key=True, autoincrement=True),
    sa.Column("collection_id", sa.String(36), nullable=False),
    sa.Column("object_id", sa.String(300), nullable=False),
    sa.Column("object_type", sa.String(250), nullable=False),
    sa.Column("spec_version", sa.String(8), nullable=False),
    sa.Column("version", sa.String(40), nullable=False),
    sa.Column("version_us", sa.BigInteger, nullable=False),
    sa.Column("date_added_us", sa.BigInteger, nullable=False),
    sa.Column("is_last", sa.Boolean, nullable=False),
    sa.Column("is_first", sa.Boolean, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("collection_id", "date_added_us"),
    sa.UniqueConstraint("collection_id", "object_id", "version_us"),
    sa.Index("ix_taxii_objects_last", "collection_id", "is_last", "date_added_us"),
    # match[type] of a rare type (a batch's one report) must not scan the whole collection
    sa.Index("ix_taxii_objects_type", "collection_id", "object_type", "date_added_us"),
)

collection_state = sa.Table(
    "taxii_collection_state",
    metadata,
    sa.Column("collection_id", sa.String(36), primary_key=True),
    sa.Column("last_added_us", sa.BigInteger, nullable=False),
    sa.Column("object_count", sa.BigInteger, nullable=False),
)


def to_us(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - EPOCH) // ONE_MICROSECOND


def from_us(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=us)


def format_us(us: int) -> str:
    """A TAXII timestamp at full (microsecond) precision: 2026-12-04T20:12:11.123456Z."""
    return from_us(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@functools.lru_cache(maxsize=65536)  # a batch's objects share a handful of timestamps
def parse_timestamp(text: str) -> int:
    """An RFC 3339 timestamp as microseconds, rounded down. Raises ValueError if it is none."""
    match = _TIMESTAMP.match(text)
    if not match:
        raise ValueError(text)
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = (match.group(7) or "").ljust(6, "0")[:6]
    zone = match.group(8).upper()
    offset = dt.timedelta(0)
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        offset = sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    moment = dt.datetime(
        year, month, day, hour, minute, second, int(fraction), tzinfo=dt.timezone(offset)
    )
    return to_us(moment)


def now_us() -> int:
    return to_us(dt.datetime.now(dt.UTC))


@dataclass(frozen=True)
class Described:
    """What the store needs to know of an object: its id, type, spec version and version."""

    object_id: str
    object_type: str
    spec_version: str
    version: str | None  # modified, else created; None for objects without either (SCOs)
    version_us: int | None


def describe(obj: Any) -> Described:
    """Check an object is storable and say what it is; raises :class:`InvalidObject`."""
    if not isinstance(obj, dict):
        raise InvalidObject("an object is not a JSON object", hint="send STIX objects")
    object_id = obj.get("id")
    match = _ID.match(object_id) if isinstance(object_id, str) else None
    if match is None or not isinstance(object_id, str):
        raise InvalidObject(
            f"object id {object_id!r} is not a STIX identifier",
            hint="use <type>--<UUID>",
            object_id=object_id,
        )
    object_type = match.group(1)
    if obj.get("type") != object_type:
        raise InvalidObject(
            f"object {object_id}: type {obj.get('type')!r} does not match its id",
            hint="the id must start with the type",
            object_id=object_id,
        )
    spec_version = obj.get("spec_version", "2.1")
    if not isinstance(spec_version, str) or not re.fullmatch(r"\d\.\d", spec_version):
        raise InvalidObject(
            f"object {object_id}: spec_version {spec_version!r} is not valid",
            hint="use 2.1",
            object_id=object_id,
        )
    version = obj.get("modified", obj.get("created"))
    if version is None:
        return Described(object_id, object_type, spec_version, None, None)
    try:
        version_us = parse_timestamp(version) if isinstance(version, str) else None
    except ValueError:
        version_us = None
    if version_us is None or len(version) > 40:
        raise InvalidObject(
            f"object {object_id}: modified/created {version!r} is not a timestamp",
            hint="use RFC 3339 UTC such as 2026-12-04T10:00:00.000Z",
            object_id=object_id,
        )
    return Described(object_id, object_type, spec_version, version, version_us)


@dataclass
class _Version:
    """One version of an object as it will be after the batch: stored, changed, or new."""

    date_added_us: int
    version: str
    version_us: int
    spec_version: str
    object_type: str
    body: bytes | None  # None: a stored row whose content the batch does not touch
    row_id: int | None = None  # None: a new row
    was_last: bool = False
    was_first: bool = False


@dataclass
class _ObjectVersions:
    versions: dict[int, _Version] = field(default_factory=dict)
    dropped_rows: list[int] = field(default_factory=list)


def describe_own(obj: dict[str, Any]) -> Described:
    """:func:`describe` without the checks, for objects this service built itself (the
    publisher's, whose form the tests prove): it runs for every published object."""
    version = obj.get("modified") or obj.get("created")
    return Described(
        obj["id"],
        obj["type"],
        obj.get("spec_version", "2.1"),
        version,
        parse_timestamp(version) if version else None,
    )


def add_objects(
    connection: Connection,
    collection_id: str,
    objects: Sequence[tuple[dict[str, Any], bytes]],
    *,
    own: bool = False,
    new_ids: frozenset[str] | set[str] = frozenset(),
) -> list[dt.datetime]:
    """Store each object's exact JSON bytes in the collection, in the caller's transaction.

    Each object gets a ``date_added`` after every other in the collection, strictly increasing
    in the order given; the dates are returned. An object whose id and version are already in
    the collection is added again: it moves to its new date and its bytes are replaced. An object
    without ``modified`` and ``created`` (an SCO) has one version, its latest ``date_added``.
    Raises :class:`InvalidObject` before writing anything if an object cannot be stored.
    ``own``: the objects were built by this service (see :func:`describe_own`); ``new_ids``:
    ids the caller has just made at random, so no stored version of them is looked up.
    """
    if not objects:
        return []
    described = [(describe_own if own else describe)(obj) for obj, _ in objects]
    first_date = max(now_us(), _lock_collection(connection, collection_id) + 1)
    dates = [first_date + index for index in range(len(objects))]
    state = _load_versions(
        connection, collection_id, {d.object_id for d in described} - set(new_ids)
    )
    for (_, body), what, date in zip(objects, described, dates, strict=True):
        entry = state.setdefault(what.object_id, _ObjectVersions())
        if what.version_us is None:
            version_us, version = date, format_us(date)
            reused = _take_all(entry)
        else:
            version_us, version = what.version_us, str(what.version)
            old = entry.versions.pop(version_us, None)
            reused = old.row_id if old else None
        entry.versions[version_us] = _Version(
            date, version, version_us, what.spec_version, what.object_type, bytes(body), reused
        )
    inserted = _write_versions(connection, collection_id, state)
    connection.execute(
        collection_state.update()
        .where(collection_state.c.collection_id == collection_id)
        .values(last_added_us=dates[-1], object_count=collection_state.c.object_count + inserted)
    )
    return [from_us(date) for date in dates]


def _take_all(entry: _ObjectVersions) -> int | None:
    """Remove every version of an unversioned object; returns a stored row to reuse, if any."""
    rows = [v.row_id for v in entry.versions.values() if v.row_id is not None]
    entry.versions.clear()
    if not rows:
        return None
    entry.dropped_rows.extend(rows[1:])
    return rows[0]


def _lock_collection(connection: Connection, collection_id: str) -> int:
    """The collection's last date_added, its state row locked until the transaction ends."""
    select = (
        sa.select(collection_state.c.last_added_us)
        .where(collection_state.c.collection_id == collection_id)
        .with_for_update()
    )
    last = connection.execute(select).scalar_one_or_none()
    if last is not None:
        return int(last)
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    connection.execute(
        insert(collection_state)
        .values(collection_id=collection_id, last_added_us=0, object_count=0)
        .on_conflict_do_nothing(index_elements=["collection_id"])
    )
    return int(connection.execute(select).scalar_one())


def _load_versions(
    connection: Connection, collection_id: str, object_ids: Iterable[str]
) -> dict[str, _ObjectVersions]:
    state: dict[str, _ObjectVersions] = {}
    ids = sorted(object_ids)
    # Straight to the driver: SQLAlchemy's compiling of thousands of IN values per batch
    # cost more than the look-up.
    mark = driver_mark(connection)
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        query = (
            "SELECT row_id, object_id, version_us, version, date_added_us, spec_version, "  # noqa: S608
            f"object_type, is_last, is_first FROM {taxii_objects.name} "
            f"WHERE collection_id = {mark} AND object_id IN ({', '.join([mark] * len(chunk))})"
        )
        rows = connection.exec_driver_sql(query, (collection_id, *chunk))
        for row_id, object_id, version_us, version, added_us, spec, kind, last, first in rows:
            entry = state.setdefault(object_id, _ObjectVersions())
            entry.versions[version_us] = _Version(
                added_us, version, version_us, spec, kind, None, row_id, bool(last), bool(first)
            )
    return state


_COLUMNS = (
    "collection_id",
    "object_id",
    "object_type",
    "spec_version",
    "version",
    "version_us",
    "date_added_us",
    "is_last",
    "is_first",
    "body",
)


def _update_rows(
    connection: Connection, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Set ``columns`` of rows by row_id (each row's last value), executemany straight to the
    driver: SQLAlchemy's per-row parameter processing cost more than the writing."""
    if not rows:
        return
    mark = driver_mark(connection)
    assignments = ", ".join(f"{name} = {mark}" for name in columns)
    connection.exec_driver_sql(
        f"UPDATE {taxii_objects.name} SET {assignments} WHERE row_id = {mark}",  # noqa: S608
        rows,
    )


def _write_versions(
    connection: Connection, collection_id: str, state: dict[str, _ObjectVersions]
) -> int:
    """Insert new rows, rewrite changed ones and fix first/last flags; returns the row gain."""
    t = taxii_objects
    inserts: list[tuple[Any, ...]] = []
    rewrites: list[tuple[Any, ...]] = []
    flag_changes: list[tuple[Any, ...]] = []
    dropped: list[int] = []
    for object_id, entry in state.items():
        dropped.extend(entry.dropped_rows)
        if not entry.versions:
            continue
        last, first = max(entry.versions), min(entry.versions)
        for version_us, v in entry.versions.items():
            is_last, is_first = version_us == last, version_us == first
            if v.body is None:
                if (is_last, is_first) != (v.was_last, v.was_first):
                    flag_changes.append((is_last, is_first, v.row_id))
                continue
            values = (
                collection_id,
                object_id,
                v.object_type,
                v.spec_version,
                v.version,
                version_us,
                v.date_added_us,
                is_last,
                is_first,
                v.body,
            )
            if v.row_id is None:
                inserts.append(values)
            else:
                rewrites.append((*values[2:], v.row_id))
    if dropped:
        connection.execute(t.delete().where(t.c.row_id.in_(dropped)))
    _update_rows(connection, ("is_last", "is_first"), flag_changes)
    _update_rows(connection, _COLUMNS[2:], rewrites)
    bulk_insert_values(connection, t, _COLUMNS, inserts)
    return len(inserts) - len(dropped)


@dataclass(frozen=True)
class VersionFilter:
    """``match[version]``: any of first, last, all, or exact version timestamps."""

    all: bool = False
    first: bool = False
    last: bool = False
    exact: tuple[int, ...] = ()

    def clause(self, use_flag_index: bool = True) -> sa.ColumnElement[bool] | None:
        if self.all:
            return None
        t = taxii_objects
        is_last: sa.ColumnElement[bool] = t.c.is_last
        is_first: sa.ColumnElement[bool] = t.c.is_first
        if not use_flag_index:
            # The same test, but one no index can serve: the planner then takes another.
            is_last = sa.func.coalesce(t.c.is_last, sa.false())
            is_first = sa.func.coalesce(t.c.is_first, sa.false())
        parts: list[sa.ColumnElement[bool]] = []
        if self.last:
            parts.append(is_last == sa.true())
        if self.first:
            parts.append(is_first == sa.true())
        if self.exact:
            parts.append(t.c.version_us.in_(self.exact))
        return sa.or_(*parts)


ALL_VERSIONS = VersionFilter(all=True)
LATEST = VersionFilter(last=True)  # TAXII's default


@dataclass(frozen=True)
class Query:
    """One page's worth of a filtered walk through a collection, ordered by date_added."""

    collection_id: str
    limit: int
    after_us: int | None = None
    ids: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    versions: VersionFilter = LATEST
    spec_versions: tuple[str, ...] = ()

    def where(self) -> list[sa.ColumnElement[bool]]:
        t = taxii_objects
        clauses: list[sa.ColumnElement[bool]] = [t.c.collection_id == self.collection_id]
        if self.after_us is not None:
            clauses.append(t.c.date_added_us > self.after_us)
        if self.ids:
            clauses.append(t.c.object_id.in_(self.ids))
        if self.types:
            clauses.append(t.c.object_type.in_(self.types))
        if self.spec_versions:
            clauses.append(t.c.spec_version.in_(self.spec_versions))
        # With a type filter the (collection, type, date) index is the narrow one; SQLite, having
        # no statistics, would as soon pick the (collection, is_last, date) one and scan every
        # object for a rare type.
        version_clause = self.versions.clause(use_flag_index=not self.types)
        if version_clause is not None:
            clauses.append(version_clause)
        return clauses


@dataclass(frozen=True)
class ManifestRecord:
    object_id: str
    date_added_us: int
    version: str
    spec_version: str

    def resource(self) -> dict[str, str]:
        return {
            "id": self.object_id,
            "date_added": format_us(self.date_added_us),
            "version": self.version,
            "media_type": STIX_MEDIA_TYPE.format(self.spec_version),
        }


def _page(connection: Connection, query: Query, *columns: Any) -> tuple[list[Any], bool]:
    t = taxii_objects
    rows = connection.execute(
        sa.select(t.c.date_added_us, *columns)
        .where(*query.where())
        .order_by(t.c.date_added_us)
        .limit(query.limit + 1)
    ).all()
    return list(rows[: query.limit]), len(rows) > query.limit


def page_objects(connection: Connection, query: Query) -> tuple[list[tuple[int, bytes]], bool]:
    """(date_added, exact JSON bytes) of the page's objects, and whether more follow."""
    rows, more = _page(connection, query, taxii_objects.c.body)
    return [(row[0], bytes(row[1])) for row in rows], more


def page_manifest(connection: Connection, query: Query) -> tuple[list[ManifestRecord], bool]:
    t = taxii_objects
    rows, more = _page(connection, query, t.c.object_id, t.c.version, t.c.spec_version)
    return [
        ManifestRecord(r.object_id, r.date_added_us, r.version, r.spec_version) for r in rows
    ], more


def object_exists(connection: Connection, collection_id: str, object_id: str) -> bool:
    t = taxii_objects
    found = connection.execute(
        sa.select(t.c.row_id)
        .where(t.c.collection_id == collection_id, t.c.object_id == object_id)
        .limit(1)
    ).first()
    return found is not None


def delete_versions(
    connection: Connection,
    collection_id: str,
    object_id: str,
    versions: VersionFilter,
    spec_versions: tuple[str, ...],
) -> int:
    """Delete the object's versions that match; the rest keep correct first/last flags."""
    t = taxii_objects
    query = Query(
        collection_id, 0, ids=(object_id,), versions=versions, spec_versions=spec_versions
    )
    doomed = [r[0] for r in connection.execute(sa.select(t.c.row_id).where(*query.where()))]
    if not doomed:
        return 0
    connection.execute(t.delete().where(t.c.row_id.in_(doomed)))
    remaining = connection.execute(
        sa.select(t.c.row_id, t.c.version_us).where(
            t.c.collection_id == collection_id, t.c.object_id == object_id
        )
    ).all()
    if remaining:
        last = max(remaining, key=lambda r: r.version_us).row_id
        first = min(remaining, key=lambda r: r.version_us).row_id
        for row_id in {last, first}:
            connection.execute(
                t.update()
                .where(t.c.row_id == row_id)
                .values(is_last=row_id == last, is_first=row_id == first)
            )
    connection.execute(
        collection_state.update()
        .where(collection_state.c.collection_id == collection_id)
        .values(object_count=collection_state.c.object_count - len(doomed))
    )
    return len(doomed)


def object_counts(connection: Connection) -> dict[str, int]:
    """Stored object versions per collection id (collections never written to are absent)."""
    rows = connection.execute(
        sa.select(collection_state.c.collection_id, collection_state.c.object_count)
    )
    return {row.collection_id: int(row.object_count) for row in rows}
