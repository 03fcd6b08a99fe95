"""Objects in TAXII collections: the tables, adding objects, and the keyset queries pages use.

Each row is one version of one object in one collection, kept as the exact JSON bytes that were
published. Times are integers of microseconds since the epoch, the same on SQLite and PostgreSQL,
so ``added_after`` compares at full precision. ``date_added`` is unique and increasing within a
collection: adding takes the collection's row in ``taxii_collection_state`` for update, so
batches of one collection commit in the order of their dates and a reader that saw date D never
later meets a new object dated before D. ``is_last``/``is_first`` mark each object's newest and
oldest version, read from the row as the date index is walked: no index of their own, which
every write of a new version or a re-added SCO would have to move (migration 0011).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
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
    seconds, micros = divmod(us, 1_000_000)
    return f"{_format_second(seconds)}.{micros:06d}Z"


@functools.lru_cache(maxsize=1024)  # an addition's dates are consecutive microseconds
def _format_second(seconds: int) -> str:
    return from_us(seconds * 1_000_000).strftime("%Y-%m-%dT%H:%M:%S")


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


@dataclass(frozen=True)
class _Content:
    """What an addition writes into a version's row."""

    date_added_us: int
    version: str
    spec_version: str
    object_type: str
    body: bytes


@dataclass
class _Version:
    """One version of an object as it will be after the addition: stored, changed, or new."""

    content: _Content | None  # None: a stored version whose row the addition does not touch
    stored_as: int | None = None  # its version_us in the store now; None: a new row
    was_last: bool = False
    was_first: bool = False


@dataclass
class _ObjectVersions:
    versions: dict[int, _Version] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)  # stored version_us to delete


@dataclass
class CollectionVersions:
    """The stored versions of some objects of a collection, as of the collection's state
    (its last date_added and object count): what adding those objects needs to know.

    Loaded before the write transaction and brought up to date by every addition planned
    from it, so that under the collection's lock only the writing is left; the lock then
    checks that the state is still the collection's (:class:`StaleVersions` if not).
    """

    collection_id: str
    last_added_us: int
    object_count: int
    objects: dict[str, _ObjectVersions]


class StaleVersions(Exception):
    """The collection changed after its versions were loaded: load them again under lock."""


@dataclass
class Addition:
    """The writes that add a list of objects to a collection, planned from its versions."""

    collection_id: str
    expected: tuple[int, int]  # (last_added_us, object_count) the plan was made from
    dates: list[int]
    # Each statement's parameters, in the order it binds them (see store_addition).
    dropped: list[tuple[str, str, int]]
    flag_changes: list[tuple[bool, bool, str, str, int]]
    rewrites: list[tuple[Any, ...]]
    inserts: list[tuple[Any, ...]]

    @property
    def gain(self) -> int:
        return len(self.inserts) - len(self.dropped)


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
) -> list[dt.datetime]:
    """Store each object's exact JSON bytes in the collection, in the caller's transaction.

    Each object gets a ``date_added`` after every other in the collection, strictly increasing
    in the order given; the dates are returned. An object whose id and version are already in
    the collection is added again: it moves to its new date and its bytes are replaced. An object
    without ``modified`` and ``created`` (an SCO) has one version, its latest ``date_added``.
    Raises :class:`InvalidObject` before writing anything if an object cannot be stored.
    """
    if not objects:
        return []
    described = [describe(obj) for obj, _ in objects]
    state = CollectionVersions(collection_id, *lock_collection(connection, collection_id), {})
    versions = load_versions(
        connection, collection_id, [(d.object_id, d.version_us) for d in described], state
    )
    addition = plan_addition(versions, [body for _, body in objects], described)
    store_addition(connection, addition)
    return [from_us(date) for date in addition.dates]


def load_versions(
    connection: Connection,
    collection_id: str,
    adding: Iterable[tuple[str, int | None]],
    known: CollectionVersions | None = None,
) -> CollectionVersions:
    """What the collection holds of the objects in ``adding`` (id, version_us to be added;
    ids absent from the collection, such as fresh random ones, need not be asked for).

    Only each object's first and last stored versions (whose flags an addition may change)
    and any stored version being added again are known, not every version in between (an
    indicator republished every run has as many versions as runs), and they are read from the
    (collection, object id, version) index, not from the rows.

    ``known``: versions already loaded and planned on (additions not yet written, such as the
    earlier commit groups of a publishing run), or only the collection's state as the lock
    read it: the objects it knows are not read again, the others are added to it, and it is
    returned."""
    if known is None:
        state = connection.execute(_state_query(collection_id)).first()
        last, count = (int(state[0]), int(state[1])) if state else (0, 0)
        known = CollectionVersions(collection_id, last, count, {})
    found: dict[str, _ObjectVersions] = {}
    bounds: dict[str, tuple[int, int]] = {}  # each found object's first and last stored version
    pairs = [pair for pair in adding if pair[0] not in known.objects]
    # Straight to the driver: SQLAlchemy's compiling of thousands of IN values per batch
    # cost more than the look-up.
    mark = driver_mark(connection)
    table = taxii_objects.name
    ids = sorted({object_id for object_id, _ in pairs})
    unversioned = {object_id for object_id, version_us in pairs if version_us is None}
    crowded: list[str] = []
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        # From the (collection, object id, version) index alone: the rows' flags follow
        # from the first and last version, and reading each version's row cost a page each.
        query = (
            f"SELECT object_id, min(version_us), max(version_us), count(*) FROM {table} "  # noqa: S608
            f"WHERE collection_id = {mark} AND object_id IN ({', '.join([mark] * len(chunk))}) "
            "GROUP BY object_id"
        )
        for object_id, first, last, stored in connection.exec_driver_sql(
            query, (collection_id, *chunk)
        ):
            bounds[object_id] = (int(first), int(last))
            for version_us in bounds[object_id]:
                _keep_stored(found, bounds, object_id, version_us)
            if stored > 2 and object_id in unversioned:
                crowded.append(object_id)  # added without a version: replaces every one
    by_id = f"collection_id = {mark} AND object_id = {mark}"
    for object_id in crowded:
        query = f"SELECT version_us FROM {table} WHERE {by_id}"  # noqa: S608
        for (version_us,) in connection.exec_driver_sql(query, (collection_id, object_id)):
            _keep_stored(found, bounds, object_id, int(version_us))
    # A version between an object's first and last may be stored: look for it by its key.
    between = {
        (object_id, version_us)
        for object_id, version_us in pairs
        if version_us is not None
        and object_id in bounds
        and bounds[object_id][0] < version_us < bounds[object_id][1]
        and version_us not in found[object_id].versions
    }
    by_key = f"{by_id} AND version_us = {mark}"
    for object_id, version_us in sorted(between):
        query = f"SELECT version_us FROM {table} WHERE {by_key}"  # noqa: S608
        if connection.exec_driver_sql(query, (collection_id, object_id, version_us)).first():
            _keep_stored(found, bounds, object_id, version_us)
    known.objects.update(found)
    return known


def _keep_stored(
    found: dict[str, _ObjectVersions],
    bounds: dict[str, tuple[int, int]],
    object_id: str,
    version_us: int,
) -> None:
    """A stored version of an object, flagged as its first and last stored versions say."""
    first, last = bounds[object_id]
    entry = found.setdefault(object_id, _ObjectVersions())
    entry.versions[version_us] = _Version(None, version_us, version_us == last, version_us == first)


def plan_addition(
    versions: CollectionVersions,
    bodies: Sequence[bytes],
    described: Sequence[Described],
    fresh: AbstractSet[str] = frozenset(),
) -> Addition:
    """The writes that add objects (their exact ``bodies``, see :func:`add_objects`) to the
    collection as ``versions`` knows it, which afterwards knows the collection as the writes
    leave it.
    ``fresh``: ids just made at random, which no collection holds: their rows are planned
    straight away, and ``versions`` need not remember them."""
    collection_id = versions.collection_id
    expected = (versions.last_added_us, versions.object_count)
    first_date = max(now_us(), versions.last_added_us + 1)
    dates = list(range(first_date, first_date + len(bodies)))
    addition = Addition(collection_id, expected, dates, [], [], [], [])
    known = versions.objects
    touched: dict[str, _ObjectVersions] = {}
    for body, what, date in zip(bodies, described, dates, strict=True):
        object_id = what.object_id
        if what.version_us is None:
            version_us, version = date, format_us(date)
        else:
            version_us, version = what.version_us, str(what.version)
        if object_id in fresh:
            row = (what.object_type, what.spec_version, version, version_us, date, True, True)
            addition.inserts.append((collection_id, object_id, *row, body))
            continue
        entry = known.get(object_id)
        if entry is None:
            entry = known[object_id] = _ObjectVersions()
        touched[object_id] = entry
        if what.version_us is None:
            reused = _take_all(entry)
        else:
            old = entry.versions.pop(version_us, None)
            reused = old.stored_as if old else None
        content = _Content(date, version, what.spec_version, what.object_type, body)
        entry.versions[version_us] = _Version(content, reused)
    for object_id, entry in touched.items():
        _plan_writes(collection_id, object_id, entry, addition)
    versions.last_added_us = dates[-1]
    versions.object_count += addition.gain
    return addition


def _take_all(entry: _ObjectVersions) -> int | None:
    """Remove every version of an unversioned object; returns a stored one to reuse, if any."""
    stored = [v.stored_as for v in entry.versions.values() if v.stored_as is not None]
    entry.versions.clear()
    if not stored:
        return None
    entry.dropped.extend(stored[1:])
    return stored[0]


def _plan_writes(
    collection_id: str, object_id: str, entry: _ObjectVersions, addition: Addition
) -> None:
    """The object's rows as the addition leaves them; ``entry`` then describes those rows."""
    if entry.dropped:
        addition.dropped.extend((collection_id, object_id, version) for version in entry.dropped)
        entry.dropped.clear()
    if not entry.versions:
        return
    last, first = max(entry.versions), min(entry.versions)
    for version_us, v in entry.versions.items():
        is_last, is_first = version_us == last, version_us == first
        content = v.content
        if content is None:
            if (is_last, is_first) != (v.was_last, v.was_first):
                addition.flag_changes.append(
                    (is_last, is_first, collection_id, object_id, version_us)
                )
        else:
            values = (
                content.object_type,
                content.spec_version,
                content.version,
                version_us,
                content.date_added_us,
                is_last,
                is_first,
                content.body,
            )
            if v.stored_as is None:
                addition.inserts.append((collection_id, object_id, *values))
            else:
                addition.rewrites.append((*values, collection_id, object_id, v.stored_as))
        v.content, v.stored_as, v.was_last, v.was_first = None, version_us, is_last, is_first


def store_addition(connection: Connection, addition: Addition) -> None:
    """Write a planned addition, in the caller's transaction; raises :class:`StaleVersions`
    (before writing) if the collection is no longer as the plan found it."""
    if not addition.dates:
        return
    collection_id = addition.collection_id
    if lock_collection(connection, collection_id) != addition.expected:
        raise StaleVersions(collection_id)
    mark = driver_mark(connection)
    by_key = f"collection_id = {mark} AND object_id = {mark} AND version_us = {mark}"
    table = taxii_objects.name
    if addition.dropped:
        connection.exec_driver_sql(
            f"DELETE FROM {table} WHERE {by_key}",  # noqa: S608
            addition.dropped,
        )
    if addition.flag_changes:
        connection.exec_driver_sql(
            f"UPDATE {table} SET is_last = {mark}, is_first = {mark} WHERE {by_key}",  # noqa: S608
            addition.flag_changes,
        )
    if addition.rewrites:
        assignments = ", ".join(f"{name} = {mark}" for name in _COLUMNS[2:])
        connection.exec_driver_sql(
            f"UPDATE {table} SET {assignments} WHERE {by_key}",  # noqa: S608
            addition.rewrites,
        )
    bulk_insert_values(connection, taxii_objects, _COLUMNS, addition.inserts)
    connection.execute(
        collection_state.update()
        .where(collection_state.c.collection_id == collection_id)
        .values(
            last_added_us=addition.dates[-1],
            object_count=collection_state.c.object_count + addition.gain,
        )
    )


def _state_query(collection_id: str) -> sa.Select[int, int]:
    """The collection's last date_added and object count."""
    t = collection_state.c
    return sa.select(t.last_added_us, t.object_count).where(t.collection_id == collection_id)


def lock_collection(connection: Connection, collection_id: str) -> tuple[int, int]:
    """The collection's last date_added and object count (what :attr:`Addition.expected`
    is compared with), its state row locked until the transaction ends."""
    select = _state_query(collection_id).with_for_update()
    state = connection.execute(select).first()
    if state is None:
        insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        connection.execute(
            insert(collection_state)
            .values(collection_id=collection_id, last_added_us=0, object_count=0)
            .on_conflict_do_nothing(index_elements=["collection_id"])
        )
        state = connection.execute(select).one()
    return int(state[0]), int(state[1])


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


@dataclass(frozen=True)
class VersionFilter:
    """``match[version]``: any of first, last, all, or exact version timestamps."""

    all: bool = False
    first: bool = False
    last: bool = False
    exact: tuple[int, ...] = ()

    def clause(self) -> sa.ColumnElement[bool] | None:
        if self.all:
            return None
        t = taxii_objects
        parts: list[sa.ColumnElement[bool]] = []
        if self.last:
            parts.append(t.c.is_last == sa.true())
        if self.first:
            parts.append(t.c.is_first == sa.true())
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
        """The page's conditions, written so that SQLite, which keeps no statistics, reads the
        narrowest index: the (collection, object id, version) one for ids, else the
        (collection, type, date) one for types, else the (collection, date) one.
        Left to choose, it takes a date index, for the order, and reads every object of the
        collection to find a few (seconds for one object among millions)."""
        t = taxii_objects
        object_type: sa.ColumnElement[str] = t.c.object_type
        if self.ids:
            object_type = object_type.concat("")  # the same test, but one no index serves
        clauses: list[sa.ColumnElement[bool]] = [t.c.collection_id == self.collection_id]
        if self.after_us is not None:
            clauses.append(self.date_added() > self.after_us)
        if self.ids:
            clauses.append(t.c.object_id.in_(self.ids))
        if self.types:
            clauses.append(object_type.in_(self.types))
        if self.spec_versions:
            clauses.append(t.c.spec_version.in_(self.spec_versions))
        version_clause = self.versions.clause()
        if version_clause is not None:
            clauses.append(version_clause)
        return clauses

    def date_added(self) -> sa.ColumnElement[int]:
        """date_added as the conditions and the order test it: objects asked for by id are
        sorted once found, so there in a form no index serves (see :meth:`where`)."""
        return taxii_objects.c.date_added_us + 0 if self.ids else taxii_objects.c.date_added_us


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


def page_statement(query: Query, *columns: Any) -> sa.Select[Any]:
    """The query's page (one row more, to tell whether more follow), by date_added."""
    return (
        sa.select(taxii_objects.c.date_added_us, *columns)
        .where(*query.where())
        .order_by(query.date_added())
        .limit(query.limit + 1)
    )


def _page(connection: Connection, query: Query, *columns: Any) -> tuple[list[Any], bool]:
    rows = connection.execute(page_statement(query, *columns)).all()
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
