"""Weekly rollups per partner and direction: what the digest reads instead of raw messages.

A seed-week holds millions of messages; a digest must be built in seconds. So the messages a
partner's selection picks (see :mod:`feeds.selection`) are summed once, as they are ingested,
per ISO week (UTC; keyed by its Monday): per source IP, per URL, per URL domain, and the
connections per source IP, port and request type; and per UTC day, the messages (the chart).
Weekly keys keep a digest's reading to one row per IP or URL however many days it was seen.
Each partner keeps a watermark of the message and session ids already summed (ids grow in
ingest order), so :func:`refresh` only reads what is new. When a partner's networks change in
partners.yaml its rollups are rebuilt (over the newest :data:`HISTORY` of the store).

Ingest may call :func:`refresh` after each batch; the digest calls it too, so a digest is never
built from stale rollups."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from feeds.partners import Partner, PartnersConfig
from feeds.selection import message_condition, with_url_links
from feeds.store import as_utc, metadata, write_transaction
from feeds.store.captures import message_urls, messages, sessions

DIRECTIONS = ("originating", "returning")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Message ids summed per transaction: bounds how long a refresh holds SQLite's write lock.
CHUNK = 250_000
# How far back rollups reach when they are (re)built; digests of older weeks are refused.
HISTORY = dt.timedelta(days=70)
LATE_MARGIN = dt.timedelta(days=7)


def _keys() -> list[sa.Column[Any]]:
    return [
        sa.Column("partner_id", sa.String(40), primary_key=True),
        sa.Column("direction", sa.String(12), primary_key=True),
        sa.Column("week", sa.String(10), primary_key=True),  # its Monday, YYYY-MM-DD (UTC)
    ]


rollup_state = sa.Table(
    "digest_rollup_state",
    metadata,
    sa.Column("partner_id", sa.String(40), primary_key=True),
    sa.Column("networks", sa.String(64), nullable=False),
    sa.Column("messages_done", ID, nullable=False),
    sa.Column("sessions_done", ID, nullable=False),
    sa.Column("covers_from", sa.String(10)),  # YYYY-MM-DD; NULL: all of the store's history
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
day_totals = sa.Table(
    "digest_day_totals",
    metadata,
    sa.Column("partner_id", sa.String(40), primary_key=True),
    sa.Column("direction", sa.String(12), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),  # YYYY-MM-DD, UTC
    sa.Column("messages", sa.Integer, nullable=False),
)
ip_weeks = sa.Table(
    "digest_ip_weeks",
    metadata,
    *_keys(),
    sa.Column("src_ip", sa.String(45), primary_key=True),
    sa.Column("src_asn", sa.BigInteger),
    sa.Column("src_as_name", sa.String(255)),
    sa.Column("src_cc", sa.String(2)),
    sa.Column("messages", sa.Integer, nullable=False),
    sa.Column("recipients", sa.BigInteger, nullable=False),
    sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
)
# The digest lists a week's IPs busiest first: read in this order, they need no sort.
sa.Index(
    "ix_digest_ip_weeks_busiest",
    ip_weeks.c.partner_id,
    ip_weeks.c.direction,
    ip_weeks.c.week,
    ip_weeks.c.messages.desc(),
    ip_weeks.c.src_ip,
)
url_weeks = sa.Table(
    "digest_url_weeks",
    metadata,
    *_keys(),
    sa.Column("url_id", ID, primary_key=True),
    sa.Column("messages", sa.Integer, nullable=False),
)
url_domain_weeks = sa.Table(
    "digest_url_domain_weeks",
    metadata,
    *_keys(),
    sa.Column("domain", sa.String(255), primary_key=True),
    sa.Column("messages", sa.Integer, nullable=False),
)
# The ports each source IP connected to, ascending and space-separated as the per-IP CSV shows
# them: one row per IP, so the digest reads no connection rows to list them.
ip_ports = sa.Table(
    "digest_ip_ports",
    metadata,
    *_keys(),
    sa.Column("src_ip", sa.String(45), primary_key=True),
    sa.Column("ports", sa.Text, nullable=False),
)
# Connections per listening port, service and request type (ports abused, request types).
request_weeks = sa.Table(
    "digest_request_weeks",
    metadata,
    *_keys(),
    sa.Column("listen_port", sa.Integer, primary_key=True),
    sa.Column("service", sa.String(16), primary_key=True),
    sa.Column("request", sa.String(16), primary_key=True),
    sa.Column("sessions", sa.Integer, nullable=False),
)
ROLLUP_TABLES = (day_totals, ip_weeks, url_weeks, url_domain_weeks, ip_ports, request_weeks)


@dataclass
class RefreshReport:
    messages: int = 0
    sessions: int = 0
    rebuilt: list[str] = field(default_factory=list)


def networks_fingerprint(partner: Partner) -> str:
    """Changes whenever what the partner's selection picks may change."""
    networks = partner.networks
    text = json.dumps(
        [
            partner.economy,
            sorted(networks.asns),
            sorted(str(p) for p in networks.prefixes),
            sorted(networks.domains),
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def session_selection(partner: Partner, direction: str) -> sa.ColumnElement[bool]:
    """Connections from the partner's networks, or asking for a host under its domains."""
    s = sessions.c
    if direction == "originating":
        clauses: list[sa.ColumnElement[bool]] = [s.src_cc == partner.economy]
        if partner.networks.asns:
            clauses.append(s.src_asn.in_(partner.networks.asns))
        return sa.or_(*clauses)
    host = sa.func.lower(s.dst_host)
    domains = partner.networks.domains
    if not domains:
        return sa.false()
    return sa.or_(*[sa.or_(host == d, host.like(f"%.{d}")) for d in domains])


def request_kind(result: str, dst_port: int | None) -> str:
    """The seed's request types: connect to 25/TCP, connect to others, get, errors."""
    if result == "connect":
        return "connect_25" if dst_port == 25 else "connect_other"
    return "get" if result == "get" else "errors"


def day_of(connection: Connection, column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """The UTC day (YYYY-MM-DD) of a timestamp column, in SQL."""
    if connection.dialect.name == "sqlite":
        return sa.func.substr(column, 1, 10)  # SQLite keeps UTC as "YYYY-MM-DD HH:MM:SS..."
    return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD")


def iso_text(connection: Connection, column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """A timestamp column as ISO 8601 UTC to the second (YYYY-MM-DDTHH:MM:SSZ), in SQL."""
    if connection.dialect.name == "sqlite":
        return sa.func.strftime("%Y-%m-%dT%H:%M:%SZ", column)
    return sa.func.to_char(sa.func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')


def week_of(connection: Connection, column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """The Monday (YYYY-MM-DD) of the ISO week of a timestamp column, UTC, in SQL."""
    if connection.dialect.name == "sqlite":
        return sa.func.date(column, "-6 days", "weekday 1")  # the Monday on or before
    return sa.func.to_char(
        sa.func.date_trunc("week", sa.func.timezone("UTC", column)), "YYYY-MM-DD"
    )


def refresh(
    engine: Engine, config: PartnersConfig, partner_ids: Iterable[str] | None = None
) -> RefreshReport:
    """Sum what was ingested since the last refresh into each partner's daily rollups."""
    report = RefreshReport()
    wanted = list(partner_ids) if partner_ids is not None else list(config.partners)
    for partner_id in wanted:
        partner = config.partners[partner_id]
        if _reset_if_networks_changed(engine, partner):
            report.rebuilt.append(partner_id)
        report.messages += _refresh_messages(engine, partner)
        report.sessions += _refresh_sessions(engine, partner)
    return report


def _reset_if_networks_changed(engine: Engine, partner: Partner) -> bool:
    try:
        return _reset(engine, partner)
    except sa.exc.IntegrityError:  # another process started this partner's rollups just now
        return _reset(engine, partner)


def _reset(engine: Engine, partner: Partner) -> bool:
    fingerprint = networks_fingerprint(partner)
    with write_transaction(engine) as connection:
        state = connection.execute(
            sa.select(rollup_state.c.networks).where(rollup_state.c.partner_id == partner.id)
        ).first()
        if state is not None and state.networks == fingerprint:
            return False
        for table in ROLLUP_TABLES:
            connection.execute(table.delete().where(table.c.partner_id == partner.id))
        connection.execute(rollup_state.delete().where(rollup_state.c.partner_id == partner.id))
        covers_from, messages_from = _starting_point(connection, messages)
        _, sessions_from = _starting_point(connection, sessions)
        connection.execute(
            rollup_state.insert().values(
                partner_id=partner.id,
                networks=fingerprint,
                messages_done=messages_from,
                sessions_done=sessions_from,
                covers_from=covers_from,
                updated_at=dt.datetime.now(dt.UTC),
            )
        )
        return state is not None


def _starting_point(connection: Connection, table: sa.Table) -> tuple[str | None, int]:
    """(first day covered or None for all, the id after which to start summing).

    Summing a long history from scratch would take hours: (re)built rollups cover the newest
    :data:`HISTORY` of the store. Ids follow ingest order, which follows time up to late
    deliveries: starting a week before that day keeps what sensors delivered up to a week late.
    """
    oldest, newest = (
        connection.execute(sa.select(sa.func.min(table.c.ts))).scalar(),
        connection.execute(sa.select(sa.func.max(table.c.ts))).scalar(),
    )
    if oldest is None or newest is None:
        return None, 0
    covers_from = (as_utc(newest) - HISTORY).date()
    margin = dt.datetime.combine(covers_from, dt.time(), dt.UTC) - LATE_MARGIN
    if as_utc(oldest) >= margin:
        return None, 0
    first = connection.execute(
        sa.select(table.c.id).where(table.c.ts >= margin).order_by(table.c.ts).limit(1)
    ).scalar()
    return covers_from.isoformat(), int(first or 1) - 1


def _refresh_messages(engine: Engine, partner: Partner) -> int:
    return _refresh(engine, partner, messages, "messages_done", _sum_messages)


def _refresh_sessions(engine: Engine, partner: Partner) -> int:
    return _refresh(engine, partner, sessions, "sessions_done", _sum_sessions)


def _refresh(
    engine: Engine,
    partner: Partner,
    table: sa.Table,
    watermark: str,
    add_up: Callable[[Connection, Partner, str, int, int], None],
) -> int:
    """Sum the rows of ``table`` above the partner's watermark, a chunk per transaction."""
    done = 0
    while True:
        with write_transaction(engine) as connection:
            low = _watermark(connection, partner.id, watermark)
            newest = connection.execute(sa.select(sa.func.max(table.c.id))).scalar() or 0
            if newest <= low:
                return done
            high = min(newest, low + CHUNK)
            for direction in DIRECTIONS:
                add_up(connection, partner, direction, low, high)
            _set_watermark(connection, partner.id, watermark, high)
            done += high - low


def covers_from(connection: Connection, partner_id: str) -> str | None:
    """The first day the partner's rollups are complete from (None: all history)."""
    return connection.execute(
        sa.select(rollup_state.c.covers_from).where(rollup_state.c.partner_id == partner_id)
    ).scalar()


def _watermark(connection: Connection, partner_id: str, column: str) -> int:
    query = sa.select(rollup_state.c[column]).where(rollup_state.c.partner_id == partner_id)
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()  # two refreshes of one partner take turns
    return int(connection.execute(query).scalar_one())


def _set_watermark(connection: Connection, partner_id: str, column: str, value: int) -> None:
    connection.execute(
        rollup_state.update()
        .where(rollup_state.c.partner_id == partner_id)
        .values({column: value, "updated_at": dt.datetime.now(dt.UTC)})
    )


def _sum_messages(
    connection: Connection, partner: Partner, direction: str, low: int, high: int
) -> None:
    m = messages.c
    week = week_of(connection, m.ts).label("week")
    # Exactly the condition publishing uses, so the digest counts what the feed carries.
    chosen = message_condition(partner, direction, low, high)
    keys = {"partner_id": partner.id, "direction": direction}
    day = day_of(connection, m.ts).label("day")
    per_day = connection.execute(sa.select(day, sa.func.count()).where(chosen).group_by(day)).all()
    _upsert(
        connection,
        day_totals,
        [{**keys, "day": r[0], "messages": r[1]} for r in per_day],
        adds=("messages",),
    )
    per_ip = connection.execute(
        sa.select(
            week,
            m.src_ip,
            sa.func.max(m.src_asn),
            sa.func.max(m.src_as_name),
            sa.func.max(m.src_cc),
            sa.func.count(),
            sa.func.sum(m.rcpt_count),
            sa.func.min(m.ts),
            sa.func.max(m.ts),
        )
        .where(chosen)
        .group_by(week, m.src_ip)
    ).all()
    _upsert(
        connection,
        ip_weeks,
        [
            {
                **keys,
                "week": r[0],
                "src_ip": r[1],
                "src_asn": r[2],
                "src_as_name": r[3],
                "src_cc": r[4],
                "messages": r[5],
                "recipients": r[6],
                "first_seen": r[7],
                "last_seen": r[8],
            }
            for r in per_ip
        ],
        adds=("messages", "recipients"),
        earliest=("first_seen",),
        latest=("last_seen", "src_asn", "src_as_name", "src_cc"),
    )
    u = message_urls.c
    joined = with_url_links(low, high)
    per_url = connection.execute(
        sa.select(week, u.url_id, sa.func.count())
        .select_from(joined)
        .where(chosen)
        .group_by(week, u.url_id)
    ).all()
    _upsert(
        connection,
        url_weeks,
        [{**keys, "week": r[0], "url_id": r[1], "messages": r[2]} for r in per_url],
        adds=("messages",),
    )
    per_domain = connection.execute(
        sa.select(week, u.domain, sa.func.count(sa.distinct(u.message_id)))
        .select_from(joined)
        .where(chosen)
        .group_by(week, u.domain)
    ).all()
    _upsert(
        connection,
        url_domain_weeks,
        [{**keys, "week": r[0], "domain": r[1], "messages": r[2]} for r in per_domain],
        adds=("messages",),
    )


def _sum_sessions(
    connection: Connection, partner: Partner, direction: str, low: int, high: int
) -> None:
    s = sessions.c
    week = week_of(connection, s.ts).label("week")
    to_25 = sa.case((s.dst_port == 25, 25), else_=0).label("to_25")
    rows = connection.execute(
        sa.select(week, s.src_ip, s.listen_port, s.service, s.result, to_25, sa.func.count())
        .where(s.id > low, s.id <= high, session_selection(partner, direction))
        .group_by(week, s.src_ip, s.listen_port, s.service, s.result, to_25)
    ).all()
    summed: dict[tuple[str, int, str, str], int] = {}
    ports: dict[tuple[str, str], set[int]] = {}
    for r in rows:
        key = (r[0], r[2], r[3], request_kind(r[4], r[5]))
        summed[key] = summed.get(key, 0) + r[6]
        ports.setdefault((r[0], r[1]), set()).add(int(r[2]))
    keys = {"partner_id": partner.id, "direction": direction}
    _upsert(
        connection,
        request_weeks,
        [
            {
                **keys,
                "week": k[0],
                "listen_port": k[1],
                "service": k[2],
                "request": k[3],
                "sessions": count,
            }
            for k, count in summed.items()
        ],
        adds=("sessions",),
    )
    _add_ports(connection, partner.id, direction, ports)


def _add_ports(
    connection: Connection,
    partner_id: str,
    direction: str,
    new: dict[tuple[str, str], set[int]],
) -> None:
    """Merge newly seen ports into each (week, IP)'s list; only changed lists are written."""
    p = ip_ports.c
    changed = []
    for week in sorted({week for week, _ in new}):
        known = dict(
            connection.execute(
                sa.select(p.src_ip, p.ports).where(
                    p.partner_id == partner_id, p.direction == direction, p.week == week
                )
            ).all()
        )
        for (of_week, ip), numbers in new.items():
            if of_week != week:
                continue
            old = known.get(ip)
            merged = port_list(numbers, old)
            if merged != old:
                changed.append(
                    {
                        "partner_id": partner_id,
                        "direction": direction,
                        "week": week,
                        "src_ip": ip,
                        "ports": merged,
                    }
                )
    if changed:
        postgres = connection.dialect.name == "postgresql"
        statement = postgresql.insert(ip_ports) if postgres else sqlite.insert(ip_ports)
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[c.name for c in ip_ports.primary_key.columns],
                set_={"ports": statement.excluded.ports},
            ),
            changed,
        )


def port_list(numbers: Iterable[int], known: str | None = None) -> str:
    """Ports ascending and space-separated, with those of ``known`` (such a list) merged in."""
    every = set(numbers)
    if known:
        every.update(int(port) for port in known.split())
    return " ".join(str(port) for port in sorted(every))


def _upsert(
    connection: Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    adds: Sequence[str],
    earliest: Sequence[str] = (),
    latest: Sequence[str] = (),
) -> None:
    """Insert rows; where a row exists, add the counts and widen first/last seen."""
    if not rows:
        return
    postgres = connection.dialect.name == "postgresql"
    statement = postgresql.insert(table) if postgres else sqlite.insert(table)
    new = statement.excluded
    least, greatest = (sa.func.least, sa.func.greatest) if postgres else (sa.func.min, sa.func.max)
    updates: dict[str, Any] = {name: table.c[name] + new[name] for name in adds}
    updates.update({name: least(table.c[name], new[name]) for name in earliest})
    # Descriptive columns keep the greater value (independent of ingest order); NULL never wins.
    updates.update(
        {
            name: sa.func.coalesce(greatest(table.c[name], new[name]), table.c[name], new[name])
            for name in latest
        }
    )
    keys = [c.name for c in table.primary_key.columns]
    connection.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates), rows)
