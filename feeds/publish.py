"""Selections become signed batches in the partners' TAXII collections.

One run of publishing for a collection takes the messages ingested since the collection's
watermark (the last message id it published) up to the newest one, turns them into units
(a source address with its indicator, a URL with its indicator, a sanitized sample, an
indicator that expired), and packs the units into batches of at most ``batch_objects``
objects. Each batch ends with its signed report, and the batch's objects, the report, the
indicator state and the watermark are written in one transaction: killed mid-publish, nothing
of that batch is visible; run again, the run resumes after the last committed batch, whose
unit key the watermark keeps, and publishes every unit once. What a batch holds, and the
indicator state behind stable ids, is :mod:`feeds.batch`.

Batches are built, hashed, signed and planned (which rows to insert, rewrite or flag) from
what the last commit left, before the write transaction, reading in short transactions
(:func:`build_slice`); the transaction first checks that the collection's watermark and
state are still what the building saw, so that its lock is held only for the writing
(:func:`write_group`). Collections are published side by side in ``publish_workers``
processes, the largest backlogs first (:func:`largest_first`): while one writes (SQLite takes
one writer at a time), another builds.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import datetime as dt
import hashlib
import multiprocessing
import os
import signal
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from feeds import stix
from feeds.batch import (
    BatchBuilder,
    ExpiredIndicator,
    PublishContext,
    Signer,
    StateRows,
    Unit,
    feed_indicators,
    shared_objects,
    value_sha256,
)
from feeds.errors import SigningKeyError, SpampotsError, StoreError, UsageError
from feeds.gc_pace import bulk_pace_for_good, fewer_collections
from feeds.keys import SigningKey, active_key, load_private_key
from feeds.partners import Collection, Partner, PartnersConfig, load_partners
from feeds.sanitize import scrubber_for
from feeds.selection import (
    chosen_once,
    count_messages,
    last_message_id,
    message_condition,
    samples,
    sources,
    spam_urls,
)
from feeds.settings import Settings
from feeds.signing import build_manifest, digest_of_canonical, sign_manifest
from feeds.store import metadata, restart_long_log, write_transaction
from taxii_server.objects import (
    Addition,
    CollectionVersions,
    Described,
    describe_own,
    load_versions,
    lock_collection,
    plan_addition,
    store_addition,
)

feed_watermarks = sa.Table(
    "feed_watermarks",
    metadata,
    sa.Column("collection_id", sa.String(36), primary_key=True),
    sa.Column("last_message_id", sa.BigInteger, nullable=False),
    # A run that committed some of its batches: the id it runs up to and its last unit key.
    sa.Column("pending_upto", sa.BigInteger),
    sa.Column("pending_cursor", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

feed_batches = sa.Table(
    "feed_batches",
    metadata,
    sa.Column("batch_id", sa.String(36), primary_key=True),
    sa.Column("collection_id", sa.String(36), nullable=False),
    sa.Column("partner_id", sa.String(40), nullable=False),
    sa.Column("feed", sa.String(16), nullable=False),
    sa.Column("report_id", sa.String(100), nullable=False),
    sa.Column("kid", sa.String(64), nullable=False),
    sa.Column("objects", sa.Integer, nullable=False),
    sa.Column("indicators", sa.Integer, nullable=False),
    sa.Column("expired", sa.Integer, nullable=False),
    sa.Column("after_message_id", sa.BigInteger, nullable=False),
    sa.Column("upto_message_id", sa.BigInteger, nullable=False),
    sa.Column("issued", sa.DateTime(timezone=True), nullable=False),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Index("ix_feed_batches_collection_issued", "collection_id", "issued"),
)


# SQLite's page cache while a publishing transaction writes (see write_transaction).
_PAGE_CACHE_MIB = 1024
# The write-ahead log is started over when it is longer (see restart_long_log).
_MOST_LOG_BYTES = 1 << 30
# The newest messages whose share in each collection estimates its backlog (largest_first).
_SAMPLE_MESSAGES = 50_000


class PublishConflict(StoreError):
    """Another publish run moved the collection's watermark while this one was running."""


class PublishProcessDied(SpampotsError):
    """A publishing process ended without an answer (see ``publish_workers``)."""


def plan_units(
    connection: Connection,
    partner: Partner,
    collection: Collection,
    after: int,
    upto: int,
    now: str | None,
    sample_limit: int,
) -> list[Unit]:
    """The units of messages (``after``, ``upto``] and, if ``now`` is given, the indicators
    expired by then; sorted by key."""
    units: list[Unit] = []
    seen: set[str] = set()
    if upto > after:
        condition = message_condition(partner, collection.feed, after, upto)
        with chosen_once(connection, condition, after, upto) as chosen:
            if "ips" in partner.share:
                for source in sources(connection, chosen):
                    seen.add(value_sha256(stix.address_type(source.address), source.address))
                    units.append(Unit(f"1|{source.ip_key}", source, 6 if source.asn else 5))
            if "urls" in partner.share:
                for found in spam_urls(connection, chosen, after, upto):
                    seen.add(value_sha256("url", stix.uri(found.url)))
                    units.append(Unit(f"2|{found.sha256}", found, 2))
            if "samples" in partner.share:
                for sample in samples(connection, chosen, sample_limit):
                    units.append(Unit(f"3|{sample.raw_sha256}", sample, 2))
    if now is not None:
        t = feed_indicators.c
        expired = connection.execute(
            sa.select(t.value_sha256, t.observable_type, t.value)
            .where(t.collection_id == collection.id, t.expired == sa.false(), t.valid_until <= now)
            .order_by(t.value_sha256)
        )
        for sha, kind, value in expired:
            if sha not in seen:
                units.append(Unit(f"4|{sha}", ExpiredIndicator(sha, kind, value), 1))
    units.sort(key=lambda unit: unit.key)
    return units


def pack(units: Sequence[Unit], capacity: int) -> list[list[Unit]]:
    """Consecutive units in batches of at most ``capacity`` objects (a unit is never split,
    so a capacity below the largest unit still gets one unit per batch)."""
    batches: list[list[Unit]] = []
    current: list[Unit] = []
    size = 0
    for unit in units:
        if current and size + unit.size > capacity:
            batches.append(current)
            current, size = [], 0
        current.append(unit)
        size += unit.size
    if current:
        batches.append(current)
    return batches


def commit_groups(batches: Sequence[list[Unit]], most_objects: int) -> list[list[list[Unit]]]:
    """Consecutive batches committed together, at most ``most_objects`` objects (with each
    batch's six shared objects and report) a transaction, and at least one batch."""
    groups: list[list[list[Unit]]] = []
    current: list[list[Unit]] = []
    size = 0
    for batch in batches:
        objects = sum(unit.size for unit in batch) + 6
        if current and size + objects > most_objects:
            groups.append(current)
            current, size = [], 0
        current.append(batch)
        size += objects
    if current:
        groups.append(current)
    return groups


@dataclass(frozen=True)
class BatchSummary:
    collection_alias: str
    batch_id: str
    objects: int
    indicators: int
    expired: int

    def line(self) -> str:
        return (
            f"{self.collection_alias}: batch {self.batch_id} published, {self.objects} "
            f"objects ({self.indicators} indicators, {self.expired} expired)"
        )


@dataclass
class PublishReport:
    batches: list[BatchSummary] = field(default_factory=list)
    idle: list[str] = field(default_factory=list)

    @property
    def objects(self) -> int:
        return sum(b.objects for b in self.batches)

    def lines(self) -> list[str]:
        lines = [batch.line() for batch in self.batches]
        lines.extend(f"{alias}: nothing new to publish" for alias in self.idle)
        return lines


@dataclass(frozen=True)
class Watermark:
    last_message_id: int
    pending_upto: int | None
    pending_cursor: str | None


def _read_watermark(connection: Connection, collection_id: str, *, lock: bool) -> Watermark:
    t = feed_watermarks.c
    query = sa.select(t.last_message_id, t.pending_upto, t.pending_cursor).where(
        t.collection_id == collection_id
    )
    row = connection.execute(query.with_for_update() if lock else query).first()
    if row is None:
        return Watermark(0, None, None)
    return Watermark(int(row[0]), row[1], row[2])


def _write_watermark(
    connection: Connection, collection_id: str, mark: Watermark, now: dt.datetime
) -> None:
    t = feed_watermarks.c
    values = {
        "last_message_id": mark.last_message_id,
        "pending_upto": mark.pending_upto,
        "pending_cursor": mark.pending_cursor,
        "updated_at": now,
    }
    updated = connection.execute(
        feed_watermarks.update().where(t.collection_id == collection_id).values(values)
    )
    if updated.rowcount == 0:
        connection.execute(feed_watermarks.insert().values(collection_id=collection_id, **values))


def publish_collection(
    engine: Engine,
    context: PublishContext,
    partner: Partner,
    collection: Collection,
    shared: Sequence[stix.StixObject],
) -> list[BatchSummary]:
    """Everything new for the collection, a slice of at most ``publish_slice_messages``
    message ids at a time (a bounded memory whatever the backlog), expiries with the last;
    each commit group built, then written. ``shared``: the partner's
    :func:`~feeds.batch.shared_objects`."""
    with engine.connect() as connection:
        mark = _read_watermark(connection, collection.id, lock=False)
        newest = last_message_id(connection)
    step = int(context.settings.publish_slice_messages)
    summaries: list[BatchSummary] = []
    while True:
        upto = mark.pending_upto or min(newest, mark.last_message_id + step)
        final = upto >= newest
        for group in build_slice(engine, context, partner, collection, shared, mark, upto, final):
            write_group(engine, collection, group, context.now)
            summaries.extend(batch.summary for batch in group.batches)
            mark = group.after
        if final:
            return summaries


@dataclass
class BuiltBatch:
    """A batch ready to store: its objects' exact bytes (the report last) and what the store
    needs to know of each, the indicator state it leaves, and its row in ``feed_batches``."""

    bodies: list[bytes]
    described: list[Described]
    fresh: set[str]  # ids made at random just now: no stored versions to look up
    states: StateRows
    row: dict[str, object]
    summary: BatchSummary


@dataclass
class BuiltGroup:
    """Batches of a collection committed together, with the writes that store them (planned
    from what the collection's earlier groups leave), the watermark the commit expects and
    the one it leaves. A group without batches only moves the watermark."""

    batches: list[BuiltBatch]
    additions: list[Addition]
    before: Watermark
    after: Watermark


def build_slice(
    engine: Engine,
    context: PublishContext,
    partner: Partner,
    collection: Collection,
    shared: Sequence[stix.StixObject],
    mark: Watermark,
    upto: int,
    with_expiry: bool,
) -> Iterator[BuiltGroup]:
    """The commit groups that publish messages (``mark``, ``upto``] of the collection, built,
    hashed, signed and planned from what the collection's last commit and the groups before
    them leave. They are written in order (:func:`write_group`), all of them before the
    collection's next slice is built, which reads the indicator state they leave.

    Reads take short transactions: a snapshot held while building would keep the writer from
    starting the write-ahead log over (:func:`~feeds.store.restart_long_log`)."""
    with engine.connect() as connection:
        units = plan_units(
            connection,
            partner,
            collection,
            mark.last_message_id,
            upto,
            context.issued if with_expiry else None,
            int(context.settings.samples_per_publish),
        )
    cursor = mark.pending_cursor or ""
    units = [unit for unit in units if unit.key > cursor]
    done = Watermark(max(upto, mark.last_message_id), None, None)
    if not units:
        if done != mark:
            yield BuiltGroup([], [], mark, done)
        return
    # Room for the five shared objects and the report in every batch.
    capacity = max(int(context.settings.batch_objects) - 6, 1)
    scrubber = scrubber_for(context.config.sensors.values(), partner)
    chunks = pack(units, capacity)
    groups = commit_groups(chunks, int(context.settings.publish_commit_objects))
    versions: CollectionVersions | None = None
    before = mark
    for number, group in enumerate(groups, 1):
        builders = [BatchBuilder(context, partner, collection, scrubber, shared) for _ in group]
        with engine.connect() as connection:
            for index, chunk in enumerate(group):
                builders[index].load_states(connection, chunk)
        # Taken out of the list as they are built: their objects, now bytes, are not kept
        # while the group is written.
        built = [_build_batch(builders.pop(0), chunk, upto, mark) for chunk in group]
        with engine.connect() as connection:
            versions, additions = _plan_writes(connection, collection.id, built, versions)
        last = number == len(groups)
        after = done if last else Watermark(mark.last_message_id, upto, group[-1][-1].key)
        yield BuiltGroup(built, additions, before, after)
        before = after


def _build_batch(
    builder: BatchBuilder, units: Sequence[Unit], upto: int, mark: Watermark
) -> BuiltBatch:
    context, partner, collection = builder.context, builder.partner, builder.collection
    objects = builder.build(units)
    bodies = []
    rows = []
    for (object_id, version), obj in builder.objects.items():
        body = stix.dumps(obj)
        bodies.append(body)
        rows.append((object_id, version, digest_of_canonical(body)))
    batch_id = str(uuid.uuid4())
    manifest = build_manifest(
        producer_id=builder.producer_id,
        collection_id=collection.id,
        batch_id=batch_id,
        issued=context.issued,
        rows=rows,
    )
    signer = context.signer
    jws = sign_manifest(manifest, signer.private, signer.key.kid)
    report = stix.report(
        builder.authoring,
        context.issued,
        name=f"SpamPots {collection.alias} batch {batch_id}",
        description=f"Signed publication batch of {len(objects)} objects for {partner.name}: "
        "the manifest and its signature are in this report's extension.",
        object_refs=[obj["id"] for obj in objects if stix.is_reportable(obj)],
        manifest=manifest,
        jws=jws,
    )
    bodies.append(stix.dumps(report))
    described = [describe_own(obj) for obj in (*builder.objects.values(), report)]
    row = {
        "batch_id": batch_id,
        "collection_id": collection.id,
        "partner_id": partner.id,
        "feed": collection.feed,
        "report_id": report["id"],
        "kid": signer.key.kid,
        "objects": len(objects) + 1,
        "indicators": builder.indicators,
        "expired": builder.expired,
        "after_message_id": mark.last_message_id,
        "upto_message_id": upto,
        "issued": context.now,
        "manifest_sha256": hashlib.sha256(stix.dumps(manifest)).hexdigest(),
    }
    summary = BatchSummary(
        collection.alias, batch_id, len(objects) + 1, builder.indicators, builder.expired
    )
    made_at_random = {d.object_id for d in described if d.object_type in stix.RANDOM_ID_TYPES}
    return BuiltBatch(bodies, described, made_at_random, builder.state_rows(), row, summary)


def _plan_writes(
    connection: Connection,
    collection_id: str,
    batches: Sequence[BuiltBatch],
    known: CollectionVersions | None = None,
) -> tuple[CollectionVersions, list[Addition]]:
    """The writes that store the batches, one after the other, from the collection's versions
    of their objects as ``connection`` sees them and as the additions already planned from
    ``known`` leave them; and the versions as these writes leave them."""
    adding = [
        (what.object_id, what.version_us)
        for batch in batches
        for what in batch.described
        if what.object_id not in batch.fresh
    ]
    versions = load_versions(connection, collection_id, adding, known)
    additions = [
        plan_addition(versions, batch.bodies, batch.described, batch.fresh) for batch in batches
    ]
    return versions, additions


def write_group(
    engine: Engine, collection: Collection, group: BuiltGroup, now: dt.datetime
) -> None:
    """Commit a built group: its batches, the indicator state they leave and the watermark,
    after checking that the collection's watermark is still the one it was built from. If a
    TAXII client added objects to the collection meanwhile, the writes are planned again
    under the lock."""
    try:
        with write_transaction(engine, page_cache_mib=_PAGE_CACHE_MIB) as connection:
            _check_unchanged(connection, collection, group.before)
            additions = group.additions
            if additions:
                state = lock_collection(connection, collection.id)
                if state != additions[0].expected:
                    current = CollectionVersions(collection.id, *state, {})
                    _, additions = _plan_writes(connection, collection.id, group.batches, current)
            for batch, addition in zip(group.batches, additions, strict=True):
                store_addition(connection, addition)
                batch.states.save(connection)
                connection.execute(feed_batches.insert().values(batch.row))
            _write_watermark(connection, collection.id, group.after, now)
    except sa.exc.IntegrityError:
        # Two first runs of a collection: no watermark row to lock, so the second
        # learns of the first only when its own row collides; its batch rolled back.
        raise _published_meanwhile(collection) from None
    restart_long_log(engine, _MOST_LOG_BYTES)


def _check_unchanged(connection: Connection, collection: Collection, expected: Watermark) -> None:
    if _read_watermark(connection, collection.id, lock=True) != expected:
        raise _published_meanwhile(collection)


def _published_meanwhile(collection: Collection) -> PublishConflict:
    return PublishConflict(
        f"collection {collection.alias} was published by another run meanwhile",
        hint="let that run finish; the next run publishes what is left",
        collection=collection.alias,
    )


def load_signer(engine: Engine, keys_dir: Path) -> Signer:
    with engine.connect() as connection:
        key = active_key(connection)
    if key is None:
        raise SigningKeyError(
            "there is no active signing key", hint="run 'spampots init' or 'spampots keys rotate'"
        )
    return Signer(key, load_private_key(keys_dir, key.kid))


def publish(
    settings: Settings,
    partner_id: str | None = None,
    *,
    now: dt.datetime | None = None,
    engine: Engine | None = None,
    config: PartnersConfig | None = None,
) -> PublishReport:
    """Publish every collection (or one partner's) from its watermark; see the module doc.
    ``config``: the partners file already loaded (the worker's), else it is read now.
    With ``publish_workers`` above one, collections are published side by side in that many
    processes (each builds its batches while another writes)."""
    from feeds.home import open_store

    config = config or load_partners(settings.partners)
    if partner_id is not None and partner_id not in config.partners:
        raise UsageError(
            f"no partner {partner_id!r} in {config.path}",
            hint=f"use one of {', '.join(config.partners)}",
        )
    engine = engine or open_store(settings)
    context = PublishContext(
        settings,
        config,
        load_signer(engine, Path(settings.keys_dir)),
        now or dt.datetime.now(dt.UTC),
    )
    chosen: list[Partner] = (
        [config.partners[partner_id]] if partner_id else list(config.partners.values())
    )
    try:
        with write_transaction(engine) as connection:
            shared = {p.id: shared_objects(connection, context, p) for p in chosen}
    except sa.exc.IntegrityError:
        # Another run recorded the same new identity version first (PostgreSQL).
        raise PublishConflict(
            "another publish run was recording the producer's identities meanwhile",
            hint="let that run finish; the next run publishes what is left",
        ) from None
    work = [(partner, collection) for partner in chosen for collection in partner.collections]
    workers = min(int(settings.publish_workers), len(work))
    with fewer_collections():
        if workers > 1:
            with engine.connect() as connection:
                ranked = largest_first(connection, work)
            summaries = _publish_in_processes(context, ranked, shared, workers)
            by_collection = {c.id: s for (_, c), s in zip(ranked, summaries, strict=True)}
            results = [by_collection[collection.id] for _, collection in work]
        else:
            results = [
                publish_collection(engine, context, partner, collection, shared[partner.id])
                for partner, collection in work
            ]
    report = PublishReport()
    for (_, collection), published in zip(work, results, strict=True):
        report.batches.extend(published)
        if not published:
            report.idle.append(collection.alias)
    return report


def largest_first(
    connection: Connection, work: Sequence[tuple[Partner, Collection]]
) -> list[tuple[Partner, Collection]]:
    """``work`` in the order in which to hand it to the publishing processes: the largest
    backlog first, so that a run does not end with one process publishing a large collection while
    the others idle. A backlog is estimated as the messages a collection has not published
    times its share of the newest messages (a scan of those alone, not a selection)."""
    newest = last_message_id(connection)
    since = max(newest - _SAMPLE_MESSAGES, 0)

    def backlog(item: tuple[Partner, Collection]) -> int:
        partner, collection = item
        pending = newest - _read_watermark(connection, collection.id, lock=False).last_message_id
        if pending <= 0:
            return 0
        return pending * count_messages(
            connection, message_condition(partner, collection.feed, since, newest)
        )

    return sorted(work, key=backlog, reverse=True)


def _publish_in_processes(
    context: PublishContext,
    work: Sequence[tuple[Partner, Collection]],
    shared: dict[str, list[stix.StixObject]],
    workers: int,
) -> list[list[BatchSummary]]:
    # Spawned, not forked: a fork would inherit the parent's open SQLite connections.
    pool = concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_publisher,
        initargs=(os.getpid(), context.settings, context.config, context.signer.key, context.now),
    )
    with pool:
        futures = [
            pool.submit(_publish_in_process, partner.id, collection.id, shared[partner.id])
            for partner, collection in work
        ]
        try:
            return [future.result() for future in futures]
        except concurrent.futures.process.BrokenProcessPool:
            raise PublishProcessDied(
                "a publishing process ended abruptly (killed, or out of memory); the batches "
                "it had not committed were rolled back",
                hint="run publish again; if it recurs, see the system log and try "
                "SPAMPOTS_PUBLISH_WORKERS=1",
            ) from None
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


_publisher: tuple[Engine, PublishContext] | None = None


def _start_publisher(
    parent: int, settings: Settings, config: PartnersConfig, key: SigningKey, now: dt.datetime
) -> None:
    from feeds.home import open_store

    global _publisher
    _die_with_parent(parent)
    bulk_pace_for_good()
    signer = Signer(key, load_private_key(Path(settings.keys_dir), key.kid))
    engine = open_store(settings)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _publishing_pragmas)
        engine.dispose()  # the check's connection, opened before the pragmas were set
    _publisher = (engine, PublishContext(settings, config, signer, now))


def _publishing_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """A publishing process's connections keep the page cache a publishing transaction uses
    (setting it back after every transaction freed it page by page, ~4% of the CPU), and
    checkpoint every ~800 MB of log rather than every 80 MB: the collections' indexes are
    written all over, and a page several transactions touch is then copied into the
    database once (bench/README.md). A log that grew longer than the limit at which
    :func:`restart_long_log` starts it over is cut back to that when it does."""
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA cache_size=-{_PAGE_CACHE_MIB * 1024}")
    cursor.execute("PRAGMA wal_autocheckpoint=200000")
    cursor.execute(f"PRAGMA journal_size_limit={_MOST_LOG_BYTES}")
    cursor.close()


def _die_with_parent(parent: int) -> None:
    """A publishing process killed with its parent (kill -9 of the publish run) rolls back
    instead of publishing on, unseen, beside the next run. Linux only; elsewhere a no-op."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request was made
        os._exit(1)


def _publish_in_process(
    partner_id: str, collection_id: str, shared: list[stix.StixObject]
) -> list[BatchSummary]:
    assert _publisher is not None, "_start_publisher runs first"
    engine, context = _publisher
    partner = context.config.partners[partner_id]
    collection = next(c for c in partner.collections if c.id == collection_id)
    return publish_collection(engine, context, partner, collection, shared)
