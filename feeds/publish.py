"""Selections become signed batches in the partners' TAXII collections.

One run of publishing for a collection takes the messages ingested since the collection's
watermark (the last message id it published) up to the newest one, turns them into units
(a source address with its indicator, a URL with its indicator, a sanitized sample, an
indicator that expired), and packs the units into batches of at most ``batch_objects``
objects. Each batch ends with its signed report, and the batch's objects, the report, the
indicator state and the watermark are written in one transaction: killed mid-publish, nothing
of that batch is visible; run again, the run resumes after the last committed batch, whose
unit key the watermark keeps, and publishes every unit once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Connection, Engine

from feeds import stix
from feeds.errors import SigningKeyError, StoreError, UsageError
from feeds.keys import SigningKey, active_key, load_private_key
from feeds.partners import Collection, Partner, PartnersConfig, load_partners
from feeds.rawstore import read_raw
from feeds.sanitize import SampleScrubber, sanitize, scrubber_for
from feeds.selection import (
    Sample,
    SourceActivity,
    UrlActivity,
    last_message_id,
    message_condition,
    samples,
    sources,
    spam_urls,
)
from feeds.settings import Settings
from feeds.signing import build_manifest, digest_of_canonical, sign_manifest
from feeds.store import metadata, write_transaction
from taxii_server.objects import add_objects

log = logging.getLogger(__name__)

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

feed_indicators = sa.Table(
    "feed_indicators",
    metadata,
    sa.Column("collection_id", sa.String(36), primary_key=True),
    sa.Column("value_sha256", sa.String(64), primary_key=True),
    sa.Column("observable_type", sa.String(32), nullable=False),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("indicator_id", sa.String(100), nullable=False),
    sa.Column("created", sa.String(24), nullable=False),
    sa.Column("modified", sa.String(24), nullable=False),
    sa.Column("valid_from", sa.String(24), nullable=False),
    sa.Column("valid_until", sa.String(24), nullable=False),
    sa.Column("expired", sa.Boolean, nullable=False),
    sa.Index("ix_feed_indicators_expiry", "collection_id", "expired", "valid_until"),
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

# The version (modified) of each identity's content, so that a changed producer name or
# contact makes a new version instead of new bytes under a version already signed.
feed_object_versions = sa.Table(
    "feed_object_versions",
    metadata,
    sa.Column("object_id", sa.String(100), primary_key=True),
    sa.Column("content_sha256", sa.String(64), primary_key=True),
    sa.Column("modified", sa.String(24), nullable=False),
)

_CHUNK = 500
ONE_MS = dt.timedelta(milliseconds=1)


class PublishConflict(StoreError):
    """Another publish run moved the collection's watermark while this one was running."""


# ---- units ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpiredIndicator:
    value_sha256: str
    observable_type: str
    value: str


UnitItem = SourceActivity | UrlActivity | Sample | ExpiredIndicator


@dataclass(frozen=True)
class Unit:
    """Objects that go into the same batch; ``key`` orders units and marks progress."""

    key: str
    item: UnitItem
    size: int


def value_sha256(observable_type: str, value: str) -> str:
    return hashlib.sha256(f"{observable_type}:{value}".encode()).hexdigest()


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
        if "ips" in partner.share:
            for source in sources(connection, condition):
                seen.add(value_sha256(stix.address_type(source.address), source.address))
                units.append(Unit(f"1|{source.ip_key}", source, 6 if source.asn else 5))
        if "urls" in partner.share:
            for found in spam_urls(connection, condition):
                seen.add(value_sha256("url", stix.uri(found.url)))
                units.append(Unit(f"2|{found.sha256}", found, 2))
        if "samples" in partner.share:
            for sample in samples(connection, condition, sample_limit):
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


# ---- building a batch ----------------------------------------------------------------------


@dataclass
class IndicatorState:
    observable_type: str
    value: str
    generation: int
    indicator_id: str
    created: str
    modified: str
    valid_from: str
    valid_until: str
    expired: bool
    stored: bool


@dataclass
class Signer:
    key: SigningKey
    private: Ed25519PrivateKey


@dataclass
class PublishContext:
    settings: Settings
    config: PartnersConfig
    signer: Signer
    now: dt.datetime

    @property
    def issued(self) -> str:
        return stix.timestamp(self.now)


@dataclass
class BatchBuilder:
    """Builds one batch's objects in the batch's transaction."""

    connection: Connection
    context: PublishContext
    partner: Partner
    collection: Collection
    scrubber: SampleScrubber
    states: dict[str, IndicatorState] = field(default_factory=dict)
    objects: dict[tuple[str, str], stix.StixObject] = field(default_factory=dict)
    indicators: int = 0
    expired: int = 0
    skipped_samples: int = 0

    def __post_init__(self) -> None:
        producer = self.context.config.producer
        self.producer_id = stix.producer_identity_id(producer)
        self.authoring = stix.Authoring(self.producer_id, (stix.TLP_MARKING_IDS[self.partner.tlp],))
        self.sensor_network_id = stix.sensor_network_id(producer)
        self.expiry = dt.timedelta(days=int(self.context.settings.indicator_expiry_days))
        self.fresh_until = stix.timestamp(self.context.now + self.expiry)

    def add(self, obj: stix.StixObject) -> None:
        self.objects[(obj["id"], stix.version_of(obj))] = obj

    def build(self, units: Sequence[Unit]) -> list[stix.StixObject]:
        self._load_states(units)
        for shared in self._shared_objects():
            self.add(shared)
        for unit in units:
            item = unit.item
            if isinstance(item, SourceActivity):
                self._source(item)
            elif isinstance(item, UrlActivity):
                self._url(item)
            elif isinstance(item, Sample):
                self._sample(item)
            else:
                self._expire(item)
        return list(self.objects.values())

    # shared objects

    def _shared_objects(self) -> list[stix.StixObject]:
        producer = self.context.config.producer
        sensors = len(self.context.config.sensors)
        return [
            self._versioned(lambda modified: stix.producer_identity(producer, modified)),
            self._versioned(
                lambda modified: stix.sensor_network_identity(producer, sensors, modified)
            ),
            stix.tlp_marking(self.partner.tlp),
            stix.tlp_extension_definition(),
            stix.signature_extension_definition(self.producer_id),
        ]

    def _versioned(self, make: Callable[[str], stix.StixObject]) -> stix.StixObject:
        probe: stix.StixObject = make(stix.IDENTITY_CREATED)
        content = {k: v for k, v in probe.items() if k != "modified"}
        content_sha = digest_of_canonical(stix.dumps(content))
        t = feed_object_versions.c
        known = self.connection.execute(
            sa.select(t.modified).where(t.object_id == probe["id"], t.content_sha256 == content_sha)
        ).scalar()
        if known is not None:
            return make(str(known))
        latest = self.connection.execute(
            sa.select(sa.func.max(t.modified)).where(t.object_id == probe["id"])
        ).scalar()
        modified = (
            stix.IDENTITY_CREATED
            if latest is None
            else self._after(str(latest), self.context.issued)
        )
        self.connection.execute(
            feed_object_versions.insert().values(
                object_id=probe["id"], content_sha256=content_sha, modified=modified
            )
        )
        return make(modified)

    # indicators

    def _load_states(self, units: Sequence[Unit]) -> None:
        wanted = [self._value_key(unit.item) for unit in units]
        hashes = [value_sha256(kind, value) for kind, value in wanted if kind]
        t = feed_indicators.c
        for start in range(0, len(hashes), _CHUNK):
            rows = self.connection.execute(
                sa.select(feed_indicators).where(
                    t.collection_id == self.collection.id,
                    t.value_sha256.in_(hashes[start : start + _CHUNK]),
                )
            )
            for row in rows:
                self.states[row.value_sha256] = IndicatorState(
                    row.observable_type,
                    row.value,
                    row.generation,
                    row.indicator_id,
                    row.created,
                    row.modified,
                    row.valid_from,
                    row.valid_until,
                    bool(row.expired),
                    stored=True,
                )

    @staticmethod
    def _value_key(item: UnitItem) -> tuple[str, str]:
        if isinstance(item, SourceActivity):
            return stix.address_type(item.address), item.address
        if isinstance(item, UrlActivity):
            return "url", stix.uri(item.url)
        if isinstance(item, ExpiredIndicator):
            return item.observable_type, item.value
        return "", ""

    @staticmethod
    def _after(previous: str, wanted: str) -> str:
        """``wanted``, or one millisecond after ``previous`` if that is not earlier."""
        if wanted > previous:
            return wanted
        return stix.timestamp(stix.parse_timestamp(previous) + ONE_MS)

    def _observe(
        self, kind: str, value: str, first_seen: dt.datetime, last_seen: dt.datetime
    ) -> stix.IndicatorVersion:
        """The indicator version for a value seen again: same id, a later modified and
        valid_until; a new id (next generation) after the old one expired."""
        sha = value_sha256(kind, value)
        issued = self.context.issued
        last = last_seen if last_seen.tzinfo else last_seen.replace(tzinfo=dt.UTC)
        valid_until = (
            self.fresh_until if last <= self.context.now else stix.timestamp(last + self.expiry)
        )
        state = self.states.get(sha)
        if state is None or state.expired:
            generation = state.generation + 1 if state else 0
            first = stix.timestamp(first_seen)
            state = IndicatorState(
                kind,
                value,
                generation,
                stix.indicator_id(self.collection.id, f"{kind}:{value}", generation),
                issued,
                issued,
                min(first, issued),
                valid_until,
                False,
                stored=state.stored if state else False,
            )
        else:
            state.modified = self._after(state.modified, issued)
            state.valid_until = max(state.valid_until, valid_until)
        self.states[sha] = state
        self.indicators += 1
        return stix.IndicatorVersion(
            state.indicator_id,
            state.created,
            state.modified,
            state.valid_from,
            state.valid_until,
        )

    def _source(self, source: SourceActivity) -> None:
        issued = self.context.issued
        kind = stix.address_type(source.address)
        as_id = None
        if source.asn:
            system = stix.autonomous_system(source.asn, source.as_name)
            self.add(system)
            as_id = system["id"]
        address = stix.ip_address(source.address, as_id)
        self.add(address)
        first, last = stix.timestamp(source.first_seen), stix.timestamp(source.last_seen)
        refs = [address["id"]] + ([as_id] if as_id else [])
        observed = stix.observed_data(
            self.authoring,
            issued,
            first_observed=first,
            last_observed=last,
            number_observed=source.messages,
            object_refs=refs,
        )
        self.add(observed)
        version = self._observe(kind, source.address, source.first_seen, source.last_seen)
        direction = "sent" if self.collection.feed == "originating" else "aimed"
        target = "through" if direction == "sent" else f"at {self.partner.name} through"
        indicator = stix.indicator(
            self.authoring,
            version,
            name=f"Spam source {source.address}",
            pattern=stix.indicator_pattern(kind, source.address),
            indicator_types=["malicious-activity"],
            confidence=stix.confidence_for(source.messages),
            description=f"{source.address} {direction} {source.messages} spam messages "
            f"{target} the SpamPots honeypot sensors between {first} and {last}.",
        )
        self.add(indicator)
        self.add(
            stix.relationship(self.authoring, issued, "based-on", indicator["id"], observed["id"])
        )
        self.add(
            stix.sighting(
                self.authoring,
                issued,
                indicator_ref=indicator["id"],
                observed_data_ref=observed["id"],
                sensor_network_ref=self.sensor_network_id,
                first_seen=first,
                last_seen=last,
                count=source.messages,
            )
        )

    def _url(self, found: UrlActivity) -> None:
        link = stix.url(found.url)
        self.add(link)
        version = self._observe("url", link["value"], found.first_seen, found.last_seen)
        self.add(
            stix.indicator(
                self.authoring,
                version,
                name="Spam URL",
                pattern=stix.indicator_pattern("url", link["value"]),
                indicator_types=["malicious-activity"],
                confidence=stix.confidence_for(found.messages),
                description=f"Advertised in {found.messages} spam messages caught by the SpamPots "
                f"sensors between {stix.timestamp(found.first_seen)} and "
                f"{stix.timestamp(found.last_seen)}.",
            )
        )

    def _sample(self, sample: Sample) -> None:
        try:
            raw = read_raw(self.context.settings.raw_dir, sample.raw_sha256)
        except StoreError as error:
            log.warning("sample %s left out: %s", sample.raw_sha256, error)
            self.skipped_samples += 1
            return
        clean = sanitize(raw, sample.recipients, self.scrubber)
        art = stix.artifact(clean)
        content_type = (
            (sample.content_types.split(",")[0] or None) if sample.content_types else None
        )
        message = stix.email_message(
            art["id"],
            is_multipart=bool(content_type and content_type.startswith("multipart/")),
            subject=_printable(sample.subject),
            date=_mail_date(sample.header_date),
            content_type=content_type,
        )
        # The subject alone makes an email-message's id: of two samples with one subject in
        # a batch, the first is kept rather than overwritten by the second.
        if (message["id"], "") in self.objects:
            return
        self.add(art)
        self.add(message)

    def _expire(self, item: ExpiredIndicator) -> None:
        state = self.states.get(item.value_sha256)
        if state is None or state.expired:
            return
        state.modified = self._after(state.modified, self.context.issued)
        state.expired = True
        self.expired += 1
        version = stix.IndicatorVersion(
            state.indicator_id,
            state.created,
            state.modified,
            state.valid_from,
            state.valid_until,
            revoked=True,
        )
        name = "Spam URL" if item.observable_type == "url" else f"Spam source {item.value}"
        self.add(
            stix.indicator(
                self.authoring,
                version,
                name=name,
                pattern=stix.indicator_pattern(item.observable_type, item.value),
                indicator_types=["malicious-activity"],
                confidence=50,
                description=f"Expired: not seen by the SpamPots sensors since it was last "
                f"published; valid until {state.valid_until}.",
            )
        )

    def save_states(self) -> None:
        """Write the indicator state of the batch. Rows go to the driver's executemany as
        tuples: SQLAlchemy's per-row parameter processing cost more than the writing."""
        stored_columns = (
            "generation",
            "indicator_id",
            "created",
            "modified",
            "valid_from",
            "valid_until",
            "expired",
        )
        new: list[tuple[Any, ...]] = []
        changed: list[tuple[Any, ...]] = []
        for sha, state in self.states.items():
            values = (
                state.generation,
                state.indicator_id,
                state.created,
                state.modified,
                state.valid_from,
                state.valid_until,
                state.expired,
            )
            if state.stored:
                changed.append((*values, self.collection.id, sha))
            else:
                new.append((*values, self.collection.id, sha, state.observable_type, state.value))
        mark = "?" if self.connection.dialect.paramstyle == "qmark" else "%s"
        table = feed_indicators.name
        if new:
            columns = (*stored_columns, "collection_id", "value_sha256", "observable_type", "value")
            self.connection.exec_driver_sql(
                f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - fixed names
                f"VALUES ({', '.join([mark] * len(columns))})",
                new,
            )
        if changed:
            assignments = ", ".join(f"{name} = {mark}" for name in stored_columns)
            self.connection.exec_driver_sql(
                f"UPDATE {table} SET {assignments} "  # noqa: S608 - fixed names
                f"WHERE collection_id = {mark} AND value_sha256 = {mark}",
                changed,
            )


def _printable(text: str | None) -> str | None:
    if not text:
        return None
    return (
        "".join(ch for ch in text if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF)[:998]
        or None
    )


def _mail_date(header_date: str | None) -> str | None:
    import email.utils

    if not header_date:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(header_date)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None or not 1970 <= parsed.year <= 9999:
        return None
    return stix.timestamp(parsed)


# ---- the run -------------------------------------------------------------------------------


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
    engine: Engine, context: PublishContext, partner: Partner, collection: Collection
) -> list[BatchSummary]:
    """Everything new for the collection, a slice of at most ``publish_slice_messages``
    message ids at a time (a bounded memory whatever the backlog), expiries with the last."""
    with engine.connect() as connection:
        mark = _read_watermark(connection, collection.id, lock=False)
        newest = last_message_id(connection)
    step = int(context.settings.publish_slice_messages)
    summaries: list[BatchSummary] = []
    while True:
        upto = mark.pending_upto or min(newest, mark.last_message_id + step)
        final = upto >= newest
        published, mark = _publish_slice(engine, context, partner, collection, mark, upto, final)
        summaries.extend(published)
        if final:
            return summaries


def _publish_slice(
    engine: Engine,
    context: PublishContext,
    partner: Partner,
    collection: Collection,
    mark: Watermark,
    upto: int,
    with_expiry: bool,
) -> tuple[list[BatchSummary], Watermark]:
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
            with write_transaction(engine) as connection:
                _check_unchanged(connection, collection, mark)
                _write_watermark(connection, collection.id, done, context.now)
        return [], done
    # Room for the five shared objects and the report in every batch.
    capacity = max(int(context.settings.batch_objects) - 6, 1)
    scrubber = scrubber_for(context.config.sensors.values(), partner)
    summaries = []
    chunks = pack(units, capacity)
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        try:
            with write_transaction(engine) as connection:
                _check_unchanged(connection, collection, mark)
                summary = _publish_batch(
                    connection,
                    context,
                    partner,
                    collection,
                    scrubber,
                    chunk,
                    mark.last_message_id,
                    upto,
                )
                mark = done if last else Watermark(mark.last_message_id, upto, chunk[-1].key)
                _write_watermark(connection, collection.id, mark, context.now)
        except sa.exc.IntegrityError:
            # Two first runs of a collection: no watermark row to lock, so the second
            # learns of the first only when its own row collides; its batch rolled back.
            raise PublishConflict(
                f"collection {collection.alias} was published by another run meanwhile",
                hint="let that run finish; the next run publishes what is left",
                collection=collection.alias,
            ) from None
        summaries.append(summary)
    return summaries, mark


def _check_unchanged(connection: Connection, collection: Collection, expected: Watermark) -> None:
    current = _read_watermark(connection, collection.id, lock=True)
    if current != expected:
        raise PublishConflict(
            f"collection {collection.alias} was published by another run meanwhile",
            hint="let that run finish; the next run publishes what is left",
            collection=collection.alias,
        )


def _publish_batch(
    connection: Connection,
    context: PublishContext,
    partner: Partner,
    collection: Collection,
    scrubber: SampleScrubber,
    units: Sequence[Unit],
    after: int,
    upto: int,
) -> BatchSummary:
    builder = BatchBuilder(connection, context, partner, collection, scrubber)
    objects = builder.build(units)
    serialised = []
    rows = []
    for (object_id, version), obj in builder.objects.items():
        body = stix.dumps(obj)
        serialised.append((obj, body))
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
    report_body = stix.dumps(report)
    add_objects(connection, collection.id, [*serialised, (report, report_body)])
    builder.save_states()
    connection.execute(
        feed_batches.insert().values(
            batch_id=batch_id,
            collection_id=collection.id,
            partner_id=partner.id,
            feed=collection.feed,
            report_id=report["id"],
            kid=signer.key.kid,
            objects=len(objects) + 1,
            indicators=builder.indicators,
            expired=builder.expired,
            after_message_id=after,
            upto_message_id=upto,
            issued=context.now,
            manifest_sha256=hashlib.sha256(stix.dumps(manifest)).hexdigest(),
        )
    )
    return BatchSummary(
        collection.alias, batch_id, len(objects) + 1, builder.indicators, builder.expired
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
    ``config``: the partners file already loaded (the worker's), else it is read now."""
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
    report = PublishReport()
    chosen: Iterable[Partner] = (
        [config.partners[partner_id]] if partner_id else config.partners.values()
    )
    for partner in chosen:
        for collection in partner.collections:
            published = publish_collection(engine, context, partner, collection)
            report.batches.extend(published)
            if not published:
                report.idle.append(collection.alias)
    return report
