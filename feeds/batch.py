"""The objects of one publication batch, built before the transaction that stores them.

A batch is made of units: a source address (its AS, the address, an observed-data, the
indicator based on it and a sighting by the sensor network), a URL and its indicator, a
sanitized sample (email-message and artifact), or an indicator that expired. Indicators keep
their id per collection and value (``feed_indicators``): seen again, a new version with a later
``modified`` and ``valid_until``; not seen for the expiry period, published once more, revoked,
after which the value starts a new generation with a new id. Every batch also carries the
producer and sensor-network identities, the TLP marking and the extension definitions.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Connection

from feeds import stix
from feeds.errors import StoreError
from feeds.keys import SigningKey
from feeds.partners import Collection, Partner, PartnersConfig
from feeds.rawstore import read_raw
from feeds.sanitize import SampleScrubber, sanitize
from feeds.selection import Sample, SourceActivity, UrlActivity
from feeds.settings import Settings
from feeds.signing import digest_of_canonical
from feeds.store import driver_mark, metadata

log = logging.getLogger(__name__)

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

# The version (modified) of each identity's content, so that a changed producer name or
# contact makes a new version instead of new bytes under a version already signed.
feed_object_versions = sa.Table(
    "feed_object_versions",
    metadata,
    sa.Column("object_id", sa.String(100), primary_key=True),
    sa.Column("content_sha256", sa.String(64), primary_key=True),
    sa.Column("modified", sa.String(24), nullable=False),
)

_CHUNK = 5000  # values bound in one IN (...), well under SQLite's 32,766
ONE_MS = dt.timedelta(milliseconds=1)


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


@functools.lru_cache(maxsize=262144)  # asked for by planning, state loading and building
def value_sha256(observable_type: str, value: str) -> str:
    return hashlib.sha256(f"{observable_type}:{value}".encode()).hexdigest()


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

    @functools.cached_property
    def issued(self) -> str:
        return stix.timestamp(self.now)


def shared_objects(
    connection: Connection, context: PublishContext, partner: Partner
) -> list[stix.StixObject]:
    """What every batch of the partner carries: the producer and sensor-network identities,
    the TLP marking and the extension definitions, each identity at the version its content
    was first published with (recorded now if the content is new: call in a write
    transaction)."""
    producer = context.config.producer
    sensors = len(context.config.sensors)
    producer_id = stix.producer_identity_id(producer)

    def versioned(
        make: Callable[[str], stix.StixObject], first: str = stix.IDENTITY_CREATED
    ) -> stix.StixObject:
        """The object with the ``modified`` its content was first published with: a change
        of content (a producer renamed) is a new version, never new bytes under a signed one."""
        probe: stix.StixObject = make(first)
        content = {k: v for k, v in probe.items() if k != "modified"}
        content_sha = digest_of_canonical(stix.dumps(content))
        t = feed_object_versions.c
        known = connection.execute(
            sa.select(t.modified).where(t.object_id == probe["id"], t.content_sha256 == content_sha)
        ).scalar()
        if known is not None:
            return make(str(known))
        latest = connection.execute(
            sa.select(sa.func.max(t.modified)).where(t.object_id == probe["id"])
        ).scalar()
        modified = first if latest is None else _after(str(latest), context.issued)
        connection.execute(
            feed_object_versions.insert().values(
                object_id=probe["id"], content_sha256=content_sha, modified=modified
            )
        )
        return make(modified)

    return [
        versioned(lambda modified: stix.producer_identity(producer, modified)),
        versioned(lambda modified: stix.sensor_network_identity(producer, sensors, modified)),
        stix.tlp_marking(partner.tlp),
        stix.tlp_extension_definition(),
        versioned(
            lambda modified: stix.signature_extension_definition(producer_id, modified),
            first=stix.SIGNATURE_EXTENSION_CREATED,
        ),
    ]


def _after(previous: str, wanted: str) -> str:
    """``wanted``, or one millisecond after ``previous`` if that is not earlier."""
    if wanted > previous:
        return wanted
    return stix.timestamp(stix.parse_timestamp(previous) + ONE_MS)


@dataclass
class BatchBuilder:
    """Builds one batch's objects from the indicator state committed before it
    (:meth:`load_states`); the caller writes them, and :meth:`state_rows`, in a transaction
    that first checks that nothing else published the collection meanwhile."""

    context: PublishContext
    partner: Partner
    collection: Collection
    scrubber: SampleScrubber
    shared: Sequence[stix.StixObject]
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
        """The batch's objects; the units' indicator states were loaded first."""
        for shared in self.shared:
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

    # indicators

    def load_states(self, connection: Connection, units: Sequence[Unit]) -> None:
        wanted = [self._value_key(unit.item) for unit in units]
        hashes = [value_sha256(kind, value) for kind, value in wanted if kind]
        # Straight to the driver: SQLAlchemy's compiling of thousands of IN values per batch
        # cost more than the look-up.
        mark = driver_mark(connection)
        for start in range(0, len(hashes), _CHUNK):
            chunk = hashes[start : start + _CHUNK]
            query = (
                "SELECT value_sha256, observable_type, value, generation, indicator_id, "  # noqa: S608
                "created, modified, valid_from, valid_until, expired "
                f"FROM {feed_indicators.name} WHERE collection_id = {mark} "
                f"AND value_sha256 IN ({', '.join([mark] * len(chunk))})"
            )
            for row in connection.exec_driver_sql(query, (self.collection.id, *chunk)):
                sha, kind, value, generation, known_id, created, modified, since, until, gone = row
                self.states[sha] = IndicatorState(
                    kind,
                    value,
                    int(generation),
                    known_id,
                    created,
                    modified,
                    since,
                    until,
                    bool(gone),
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
            state.modified = _after(state.modified, issued)
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
        state.modified = _after(state.modified, self.context.issued)
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

    def state_rows(self) -> StateRows:
        """The indicator state the batch leaves, as rows to write."""
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
        return StateRows(new, changed)


_STORED_STATE = (
    "generation",
    "indicator_id",
    "created",
    "modified",
    "valid_from",
    "valid_until",
    "expired",
)


@dataclass(frozen=True)
class StateRows:
    """A batch's indicator states: values new to the collection, and values it knew. Kept
    apart from the builder, so that a batch waiting for its commit does not keep the
    builder's objects alive beside their bytes."""

    new: list[tuple[Any, ...]]  # _STORED_STATE, collection_id, value_sha256, type, value
    changed: list[tuple[Any, ...]]  # _STORED_STATE, collection_id, value_sha256

    def save(self, connection: Connection) -> None:
        """Rows go to the driver's executemany as tuples: SQLAlchemy's per-row parameter
        processing cost more than the writing."""
        mark = driver_mark(connection)
        table = feed_indicators.name
        if self.new:
            columns = (*_STORED_STATE, "collection_id", "value_sha256", "observable_type", "value")
            connection.exec_driver_sql(
                f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - fixed names
                f"VALUES ({', '.join([mark] * len(columns))})",
                self.new,
            )
        if self.changed:
            assignments = ", ".join(f"{name} = {mark}" for name in _STORED_STATE)
            connection.exec_driver_sql(
                f"UPDATE {table} SET {assignments} "  # noqa: S608 - fixed names
                f"WHERE collection_id = {mark} AND value_sha256 = {mark}",
                self.changed,
            )


def _printable(text: str | None) -> str | None:
    if not text:
        return None
    return (
        "".join(ch for ch in text if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF)[:998]
        or None
    )


def _mail_date(header_date: str | None) -> str | None:
    if not header_date:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(header_date)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None or not 1970 <= parsed.year <= 9999:
        return None
    return stix.timestamp(parsed)
