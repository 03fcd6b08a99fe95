"""What each partner gets: messages originating from, or returning to, its networks.

- Originating from partner P: the message's ``src_ip`` lies in P's networks: its economy by
  the enrichment (``src_cc``), the ASNs and the prefixes partners.yaml lists for P.
- Returning to P: the message was aimed at P: its ``dst_ip`` lies in P's networks (``dst_cc``,
  ASNs, prefixes), or the ``dst_host`` or a recipient's domain lies under one of P's domains.

A selection covers the messages with ids in (``after``, ``upto``]: the ids are the ingest
order, so a collection's watermark is the last id it published.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feeds.partners import Partner
from feeds.store.captures import (
    in_network,
    message_domains,
    message_urls,
    messages,
    under_domain,
    urls,
)


@dataclass(frozen=True)
class SourceActivity:
    """One source address over the window: the base of an IP indicator."""

    address: str
    ip_key: str
    asn: int | None
    as_name: str | None
    first_seen: dt.datetime
    last_seen: dt.datetime
    messages: int


@dataclass(frozen=True)
class UrlActivity:
    url: str
    sha256: str
    first_seen: dt.datetime
    last_seen: dt.datetime
    messages: int


@dataclass(frozen=True)
class Sample:
    """A captured message to share (sanitized) with the partner: the most frequent ones."""

    raw_sha256: str
    messages: int
    recipients: tuple[str, ...]
    subject: str | None
    header_date: str | None
    content_types: str


def originating(partner: Partner) -> sa.ColumnElement[bool]:
    m = messages.c
    parts: list[sa.ColumnElement[bool]] = [m.src_cc == partner.economy]
    if partner.networks.asns:
        parts.append(m.src_asn.in_(partner.networks.asns))
    parts.extend(in_network(m.src_ip_key, prefix) for prefix in partner.networks.prefixes)
    return sa.or_(*parts)


def returning(partner: Partner, after: int, upto: int) -> sa.ColumnElement[bool]:
    m = messages.c
    parts: list[sa.ColumnElement[bool]] = [m.dst_cc == partner.economy]
    if partner.networks.asns:
        parts.append(m.dst_asn.in_(partner.networks.asns))
    parts.extend(in_network(m.dst_ip_key, prefix) for prefix in partner.networks.prefixes)
    for domain in partner.networks.domains:
        parts.append(under_domain(m.dst_host_rev, domain))
    if partner.networks.domains:
        d = message_domains.c
        # Materialised: PostgreSQL would otherwise run the subquery again in every partition
        # of messages (ten weeks of history: 680,000 page reads for one partner-day).
        aimed = (
            sa.select(d.message_id)
            .where(
                d.message_id > after,
                d.message_id <= upto,
                sa.or_(
                    *(under_domain(d.domain_rev, domain) for domain in partner.networks.domains)
                ),
            )
            .cte("aimed")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        parts.append(m.id.in_(sa.select(aimed.c.message_id)))
    return sa.or_(*parts)


def message_condition(partner: Partner, feed: str, after: int, upto: int) -> sa.ColumnElement[bool]:
    chosen = originating(partner) if feed == "originating" else returning(partner, after, upto)
    return sa.and_(messages.c.id > after, messages.c.id <= upto, chosen)


# The messages of one window chosen for one collection, while its selections read them.
_chosen = sa.Table(
    "selection_chosen",
    sa.MetaData(),
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    prefixes=["TEMPORARY"],
)


@contextlib.contextmanager
def chosen_once(
    connection: Connection, condition: sa.ColumnElement[bool], after: int, upto: int
) -> Iterator[sa.ColumnElement[bool]]:
    """The messages (``after``, ``upto``] that ``condition`` selects, chosen once into a
    temporary table for several selections (sources, URLs, samples) to read: the condition
    that picks them from it. Testing the returning condition reads the window's recipient
    domains, and each selection tested it again: on a seed-week window of 500,000 messages,
    the three selections of all twelve collections took 10.0 s, 7.2 s choosing once."""
    _chosen.create(connection)
    connection.execute(
        _chosen.insert().from_select(["id"], sa.select(messages.c.id).where(condition))
    )
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"ANALYZE {_chosen.name}")  # temporary: never analysed
    m = messages.c
    yield sa.and_(m.id > after, m.id <= upto, m.id.in_(sa.select(_chosen.c.id)))
    # Not after an error: the transaction's rollback takes the table away (PostgreSQL would
    # refuse the drop in a failed transaction, hiding the error).
    _chosen.drop(connection)


def last_message_id(connection: Connection) -> int:
    return int(connection.execute(sa.select(sa.func.max(messages.c.id))).scalar() or 0)


def count_messages(connection: Connection, condition: sa.ColumnElement[bool]) -> int:
    return int(
        connection.execute(
            sa.select(sa.func.count()).select_from(messages).where(condition)
        ).scalar_one()
    )


def sources(connection: Connection, condition: sa.ColumnElement[bool]) -> list[SourceActivity]:
    return [
        SourceActivity(ip, key, int(asn) if asn is not None else None, name, first, last, count)
        for ip, key, asn, name, first, last, count in connection.execute(sources_query(condition))
    ]


def sources_query(condition: sa.ColumnElement[bool]) -> sa.Select[Any]:
    m = messages.c
    return (
        sa.select(
            m.src_ip,
            m.src_ip_key,
            sa.func.max(m.src_asn),
            sa.func.max(m.src_as_name),
            sa.func.min(m.ts),
            sa.func.max(m.ts),
            sa.func.count(),
        )
        .where(condition)
        # Grouped in the order wanted, so that one sort serves both (an address has one key).
        .group_by(m.src_ip_key, m.src_ip)
        .order_by(m.src_ip_key, m.src_ip)
    )


def with_url_links(after: int, upto: int, chosen: sa.FromClause = messages) -> sa.Join:
    """messages (or ``chosen`` ones, by their ``id``) joined to their URL links, the links
    read within the same id window.

    PostgreSQL carries no range across a join's equality: without its own bounds the links
    table is read whole, all of history, for one window of messages."""
    mu = message_urls.c
    return chosen.join(
        message_urls,
        sa.and_(mu.message_id == chosen.c.id, mu.message_id > after, mu.message_id <= upto),
    )


def spam_urls(
    connection: Connection, condition: sa.ColumnElement[bool], after: int, upto: int
) -> list[UrlActivity]:
    """The URLs of the messages (``after``, ``upto``] that ``condition`` selects."""
    return [
        UrlActivity(*row) for row in connection.execute(spam_urls_query(condition, after, upto))
    ]


def spam_urls_query(condition: sa.ColumnElement[bool], after: int, upto: int) -> sa.Select[Any]:
    m, mu, u = messages.c, message_urls.c, urls.c
    # The window's chosen messages first, then only their links: reading every link of the
    # window and its message to test the condition cost several times more for a partner
    # whose messages are few.
    chosen = sa.select(m.id, m.ts).where(condition).cte("chosen").prefix_with("MATERIALIZED")
    # Links counted per URL id before the URLs are read: sorting every link with its URL's
    # text and digest cost more (a seed-week window of 500,000 messages: 2.3 -> 1.6 s for
    # the twelve collections).
    per_url = (
        sa.select(
            mu.url_id,
            sa.func.min(chosen.c.ts).label("first_seen"),
            sa.func.max(chosen.c.ts).label("last_seen"),
            sa.func.count().label("messages"),
        )
        .select_from(with_url_links(after, upto, chosen))
        .group_by(mu.url_id)
        .subquery()
    )
    p = per_url.c
    return (
        sa.select(u.url, u.sha256, p.first_seen, p.last_seen, p.messages)
        .join_from(per_url, urls, u.id == p.url_id)
        .order_by(u.sha256, u.id)
    )


def samples(connection: Connection, condition: sa.ColumnElement[bool], limit: int) -> list[Sample]:
    """The ``limit`` most frequent distinct messages, with one capture's details each."""
    if limit <= 0:
        return []
    return [
        Sample(sha, int(count), tuple(orjson.loads(rcpt)), subject, date, types or "")
        for sha, count, rcpt, subject, date, types in connection.execute(
            samples_query(condition, limit)
        )
    ]


def samples_query(condition: sa.ColumnElement[bool], limit: int) -> sa.Select[Any]:
    m = messages.c
    counted = (
        sa.select(m.raw_sha256, sa.func.count().label("n"), sa.func.min(m.id).label("first_id"))
        .where(condition)
        .group_by(m.raw_sha256)
        .order_by(sa.func.count().desc(), m.raw_sha256)
        .limit(limit)
        .subquery()
    )
    return (
        sa.select(
            counted.c.raw_sha256, counted.c.n, m.rcpt_to, m.subject, m.header_date, m.content_types
        )
        .join_from(counted, messages, m.id == counted.c.first_id)
        .order_by(counted.c.raw_sha256)
    )
