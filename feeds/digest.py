"""The weekly digest's figures for one partner and ISO week, read from the daily rollups.

A week runs from Monday 00:00 to the next Monday 00:00 UTC. Both directions ("from your
networks": originating, "to your networks": returning) count what the partner's feed selects
(:mod:`feeds.selection`, summed by :mod:`feeds.rollups`) with the definitions of
``spampots stats``: messages, potential recipients (the envelope recipients), unique source
IPs and ASNs, and unique URLs; each with the week before for comparison.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from feeds import rollups
from feeds.errors import UsageError
from feeds.partners import Partner, PartnersConfig
from feeds.rollups import (
    day_totals,
    ip_ports,
    ip_weeks,
    request_weeks,
    url_domain_weeks,
    url_weeks,
)
from feeds.store import as_utc
from feeds.store.captures import urls

DIRECTION_TITLES = {"originating": "from your networks", "returning": "to your networks"}
TOP = 10
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


@dataclass(frozen=True)
class Week:
    """An ISO week: Monday 00:00 to the next Monday 00:00 UTC."""

    year: int
    number: int

    @property
    def label(self) -> str:
        return f"{self.year}-W{self.number:02d}"

    @property
    def start(self) -> dt.datetime:
        day = dt.date.fromisocalendar(self.year, self.number, 1)
        return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)

    @property
    def end(self) -> dt.datetime:
        return self.start + dt.timedelta(days=7)

    @property
    def days(self) -> list[str]:
        return [(self.start + dt.timedelta(days=i)).date().isoformat() for i in range(7)]

    def previous(self) -> Week:
        return week_of(self.start - dt.timedelta(days=1))


def week_of(moment: dt.datetime) -> Week:
    year, number, _ = moment.astimezone(dt.UTC).isocalendar()
    return Week(year, number)


def last_complete_week(now: dt.datetime | None = None) -> Week:
    """The newest week that has ended."""
    now = now or dt.datetime.now(dt.UTC)
    return week_of(now).previous()


def parse_week(text: str) -> Week:
    match = _WEEK.match(text.strip())
    if match:
        try:
            week = Week(int(match.group(1)), int(match.group(2)))
            week.start  # noqa: B018  (raises for a week the year does not have)
            return week
        except ValueError:
            pass
    raise UsageError(
        f"--week {text!r} is not an ISO week",
        hint="write YYYY-Www, such as 2026-W48 (weeks start on Monday, UTC)",
    )


def report_id(partner_id: str, week: Week) -> str:
    """The digest's id: the same for the same partner and week, whenever it is built."""
    return f"SPAMPOTS-{partner_id.upper()}-{week.label}"


@dataclass(frozen=True)
class Totals:
    messages: int = 0
    recipients: int = 0
    unique_ips: int = 0
    unique_asns: int = 0
    unique_urls: int = 0


class SourceRow(NamedTuple):
    """One source IP over the week: a row of the per-IP CSV, as the store formats it (times
    ISO 8601 UTC to the second, ports ascending and space-separated)."""

    ip: str
    asn: int | None
    as_name: str | None
    cc: str | None
    messages: int
    recipients: int
    first_seen: str
    last_seen: str
    ports: str


class UrlRow(NamedTuple):
    url: str
    host: str
    domain: str
    messages: int


@dataclass(frozen=True)
class Ranked:
    key: str
    label: str
    count: int


@dataclass(frozen=True)
class DirectionFigures:
    direction: str
    totals: Totals
    previous: Totals
    per_day: tuple[int, ...]
    top_asns: list[Ranked]
    top_ips: list[Ranked]
    top_url_domains: list[Ranked]
    ports: list[Ranked]
    requests: dict[str, dict[str, int]]
    sources: list[SourceRow]
    urls: list[UrlRow]

    @property
    def title(self) -> str:
        return DIRECTION_TITLES[self.direction]


@dataclass(frozen=True)
class BatchInfo:
    collection: str
    batch_id: str
    objects: int
    kid: str
    published_at: dt.datetime


@dataclass(frozen=True)
class PollInfo:
    collection: str
    collection_id: str
    username: str | None
    last_poll: dt.datetime | None


@dataclass(frozen=True)
class Digest:
    report_id: str
    partner: Partner
    producer_name: str
    producer_contact: str
    week: Week
    directions: dict[str, DirectionFigures]
    batches: list[BatchInfo] = field(default_factory=list)
    polls: list[PollInfo] = field(default_factory=list)

    @property
    def has_data(self) -> bool:
        return any(figures.totals.messages for figures in self.directions.values())

    @property
    def never_polled(self) -> list[PollInfo]:
        """The partner's collections it has never read."""
        return [poll for poll in self.polls if poll.last_poll is None]

    @property
    def not_polled_this_week(self) -> list[PollInfo]:
        """The collections it did not read between the week's start and now."""
        return [
            poll
            for poll in self.polls
            if poll.last_poll is None or poll.last_poll < self.week.start
        ]


def build_digest(
    engine: Engine,
    config: PartnersConfig,
    partner_id: str,
    week: Week,
    *,
    refresh: bool = True,
) -> Digest:
    """Every figure of one partner's digest for ``week``."""
    partner = config.partners.get(partner_id)
    if partner is None:
        known = ", ".join(sorted(config.partners)) or "none"
        raise UsageError(
            f"no partner {partner_id!r} in {config.path}", hint=f"partners are: {known}"
        )
    if refresh:
        rollups.refresh(engine, config, [partner_id])
    with _snapshot(engine) as connection:
        covered = rollups.covers_from(connection, partner_id)
        if covered is not None and week.previous().days[0] < covered:
            raise UsageError(
                f"the rollups of {partner_id} cover {covered} onwards; {week.label} and the "
                "week before it are not all covered",
                hint=f"ask for {_first_covered_week(covered).label} or later: rollups are "
                "rebuilt over the newest 70 days when a partner's networks change",
            )
        directions = {
            direction: _direction(connection, partner_id, direction, week)
            for direction in partner.feeds
        }
        batches = _batches(connection, partner, week)
        polls = _polls(connection, partner)
    return Digest(
        report_id=report_id(partner_id, week),
        partner=partner,
        producer_name=config.producer.name,
        producer_contact=config.producer.contact,
        week=week,
        directions=directions,
        batches=batches,
        polls=polls,
    )


def _first_covered_week(covered: str) -> Week:
    """The first week whose digest (with the week before it) the rollups cover."""
    week = week_of(dt.datetime.fromisoformat(covered).replace(tzinfo=dt.UTC))
    while week.previous().days[0] < covered:
        week = week_of(week.end)
    return week


def _snapshot(engine: Engine) -> Connection:
    """A connection whose reads all see one state of the store, so every figure agrees."""
    connection = engine.connect()
    if engine.dialect.name == "postgresql":
        connection = connection.execution_options(isolation_level="REPEATABLE READ")
    return connection  # SQLite: a read transaction in WAL mode is a snapshot already


def _in_week(
    table: sa.Table, partner_id: str, direction: str, week: Week
) -> sa.ColumnElement[bool]:
    return sa.and_(
        table.c.partner_id == partner_id,
        table.c.direction == direction,
        table.c.week == week.days[0],
    )


def _direction(
    connection: Connection, partner_id: str, direction: str, week: Week
) -> DirectionFigures:
    sources = _sources(connection, partner_id, direction, week)
    url_rows = _urls(connection, partner_id, direction, week)
    t = day_totals.c
    per_day = dict(
        connection.execute(
            sa.select(t.day, t.messages).where(
                t.partner_id == partner_id,
                t.direction == direction,
                t.day >= week.days[0],
                t.day <= week.days[-1],
            )
        ).all()
    )
    by_asn: dict[int | None, list[Any]] = {}
    for source in sources:  # the most messages first: an ASN's name is its busiest IP's
        entry = by_asn.get(source[1])
        if entry is None:
            by_asn[source[1]] = [source[2], source[4]]
        else:
            entry[0] = entry[0] or source[2]
            entry[1] += source[4]
    top_asns = [
        Ranked(f"AS{asn}" if asn is not None else "unknown AS", name or "", count)
        for asn, (name, count) in sorted(
            by_asn.items(), key=lambda item: (-item[1][1], item[0] or 0)
        )[:TOP]
    ]
    top_ips = [  # sources come ordered by messages, most first
        Ranked(s.ip, f"AS{s.asn} {s.as_name or ''}".strip() if s.asn else "", s.messages)
        for s in sources[:TOP]
    ]
    d = url_domain_weeks.c
    top_domains = [
        Ranked(domain, "", int(count))
        for domain, count in connection.execute(
            sa.select(d.domain, sa.func.sum(d.messages).label("n"))
            .where(_in_week(url_domain_weeks, partner_id, direction, week))
            .group_by(d.domain)
            .order_by(sa.desc("n"), d.domain)
            .limit(TOP)
        )
    ]
    ports, requests = _connections(connection, partner_id, direction, week)
    return DirectionFigures(
        direction=direction,
        totals=_totals(sources, url_rows),
        previous=_previous_totals(connection, partner_id, direction, week.previous()),
        per_day=tuple(int(per_day.get(day, 0)) for day in week.days),
        top_asns=top_asns,
        top_ips=top_ips,
        top_url_domains=top_domains,
        ports=ports,
        requests=requests,
        sources=sources,
        urls=url_rows,
    )


def _totals(sources: list[SourceRow], url_rows: list[UrlRow]) -> Totals:
    return Totals(
        messages=sum(s[4] for s in sources),
        recipients=sum(s[5] for s in sources),
        unique_ips=len(sources),
        unique_asns=len({s[1] for s in sources} - {None}),
        unique_urls=len(url_rows),
    )


def _previous_totals(connection: Connection, partner_id: str, direction: str, week: Week) -> Totals:
    i = ip_weeks.c
    row = connection.execute(
        sa.select(
            sa.func.sum(i.messages),
            sa.func.sum(i.recipients),
            sa.func.count(sa.distinct(i.src_ip)),
            sa.func.count(sa.distinct(i.src_asn)),
        ).where(_in_week(ip_weeks, partner_id, direction, week))
    ).one()
    unique_urls = connection.execute(
        sa.select(sa.func.count(sa.distinct(url_weeks.c.url_id))).where(
            _in_week(url_weeks, partner_id, direction, week)
        )
    ).scalar()
    return Totals(
        int(row[0] or 0), int(row[1] or 0), int(row[2]), int(row[3]), int(unique_urls or 0)
    )


def _sources(
    connection: Connection, partner_id: str, direction: str, week: Week
) -> list[SourceRow]:
    """One row per IP and week (the rollups summed it already), with its ports, most first."""
    i = ip_weeks.c
    p = ip_ports.c
    # Two range reads merged here rather than a join: each follows an index in its own order
    # (the IPs busiest first by ix_digest_ip_weeks_busiest), so neither needs a sort.
    ports: dict[str, str] = dict(
        connection.execute(
            sa.select(p.src_ip, p.ports).where(_in_week(ip_ports, partner_id, direction, week))
        ).all()
    )
    rows = connection.execute(
        sa.select(
            i.src_ip,
            i.src_asn,
            i.src_as_name,
            i.src_cc,
            i.messages,
            i.recipients,
            rollups.iso_text(connection, i.first_seen),
            rollups.iso_text(connection, i.last_seen),
        )
        .where(_in_week(ip_weeks, partner_id, direction, week))
        .order_by(i.messages.desc(), i.src_ip)
    ).all()
    return [
        SourceRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], ports.get(r[0], "")) for r in rows
    ]


def _urls(connection: Connection, partner_id: str, direction: str, week: Week) -> list[UrlRow]:
    u = url_weeks.c
    rows = connection.execute(
        sa.select(urls.c.url, urls.c.host, urls.c.domain, u.messages)
        .join_from(url_weeks, urls, urls.c.id == u.url_id)
        .where(_in_week(url_weeks, partner_id, direction, week))
        .order_by(u.messages.desc(), urls.c.url)
    )
    return [UrlRow(r[0], r[1], r[2], r[3]) for r in rows]


MODULES = {"socks4": "socks", "socks5": "socks", "smtp-relay": "smtp"}
REQUEST_KINDS = ("connect_25", "connect_other", "get", "errors")


def _connections(
    connection: Connection, partner_id: str, direction: str, week: Week
) -> tuple[list[Ranked], dict[str, dict[str, int]]]:
    """Ports abused and requests per module (socks, http, smtp) by type, as ``spampots stats``."""
    r = request_weeks.c
    port_counts: dict[int, int] = defaultdict(int)
    requests: dict[str, dict[str, int]] = {}
    for port, service, request, count in connection.execute(
        sa.select(r.listen_port, r.service, r.request, r.sessions).where(
            _in_week(request_weeks, partner_id, direction, week)
        )
    ):
        port_counts[int(port)] += int(count)
        module = MODULES.get(service, "http" if service.startswith("http") else service)
        kinds = requests.setdefault(module, dict.fromkeys((*REQUEST_KINDS, "total"), 0))
        kinds[request] += int(count)
        kinds["total"] += int(count)
    ports = [
        Ranked(str(port), "", count)
        for port, count in sorted(port_counts.items(), key=lambda item: (-item[1], item[0]))
    ]
    return ports, requests


def _polls(connection: Connection, partner: Partner) -> list[PollInfo]:
    from taxii_server.audit import last_polls

    polled = last_polls(connection)
    username = partner.taxii.username if partner.taxii else None
    return [
        PollInfo(
            collection=collection.alias,
            collection_id=collection.id,
            username=username,
            last_poll=polled.get((collection.id, username)) if username else None,
        )
        for collection in partner.collections
    ]


def _batches(connection: Connection, partner: Partner, week: Week) -> list[BatchInfo]:
    """The signed batches published to the partner's collections during the week."""
    from feeds.publish import feed_batches

    b = feed_batches.c
    aliases = {c.id: c.alias for c in partner.collections}
    rows = connection.execute(
        sa.select(b.collection_id, b.batch_id, b.objects, b.kid, b.issued)
        .where(b.partner_id == partner.id, b.issued >= week.start, b.issued < week.end)
        .order_by(b.issued, b.batch_id)
    )
    return [BatchInfo(aliases.get(r[0], r[0]), r[1], int(r[2]), r[3], as_utc(r[4])) for r in rows]
