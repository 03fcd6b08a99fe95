"""Captures written straight into the ingest tables, and the digest figures they must give.

The expected figures are computed here in plain Python from the records, by the selection
rules of design-notes.md, independently of the SQL in feeds.selection and feeds.rollups.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from feeds.batches import ingest_batches
from feeds.enrich import ip_key
from feeds.messages import domain_key
from feeds.partners import Partner
from feeds.store import write_transaction
from feeds.store.captures import message_domains, message_urls, messages, sessions, urls
from feeds.store.partitions import ensure_weeks

# (ip, cc, asn, as_name): TW by the enrichment, TW's listed ASN seen from a US address, an
# address in TW's listed prefix that the enrichment did not place, and others.
SOURCES = [
    ("203.0.113.1", "TW", 3462, "HINET"),
    ("203.0.113.2", "TW", 3462, "HINET"),
    ("203.0.113.3", "TW", 4780, "SEEDNET"),
    ("192.0.2.77", "US", 64500, "LISTED-AS"),
    ("198.51.100.5", None, None, None),
    ("2001:db8::7", "TW", 9924, "TFN"),
    ("100.64.0.1", "CN", 4134, "CHINANET"),
    ("100.64.0.2", "CN", 4134, "CHINANET"),
    ("100.65.0.1", "JP", 2914, "NTT"),
]
# (dst_host, dst_ip, dst_cc, dst_asn)
TARGETS = [
    ("mx.example.tw", "100.70.0.1", "TW", 3462),
    ("mail.example.jp", "100.71.0.1", "JP", 2914),
    ("mx.example.com", "100.72.0.1", "US", 15169),
    ("mx.example.com", "198.51.100.9", None, None),  # TW's listed prefix, not placed
    (None, None, None, None),
]
RECIPIENT_DOMAINS = ["example.tw", "shop.com.tw", "example.jp", "example.com", "example.org"]
URLS = [
    ("http://promo.example.net/a", "promo.example.net", "example.net"),
    ("http://promo.example.net/b", "promo.example.net", "example.net"),
    ("https://pills.example.biz/", "pills.example.biz", "example.biz"),
    ("http://shop.example.com.tw/x", "shop.example.com.tw", "example.com.tw"),
]
LISTENERS = [(1080, "socks5"), (1080, "socks4"), (8080, "http-connect"), (3128, "http-get")]


@dataclass
class Capture:
    id: int
    ts: dt.datetime
    src: tuple[str, str | None, int | None, str | None]
    target: tuple[str | None, str | None, str | None, int | None]
    recipients: list[str]
    url_ids: list[int]
    session_pk: int


@dataclass
class Connection:
    id: int
    ts: dt.datetime
    src: tuple[str, str | None, int | None, str | None]
    listen_port: int
    service: str
    dst_host: str | None
    dst_port: int | None
    result: str


@dataclass
class Dataset:
    captures: list[Capture] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    next_message: int = 1
    next_session: int = 1
    batch_id: int = 0


def make_captures(
    dataset: Dataset, seed: int, start: dt.datetime, end: dt.datetime, count: int
) -> Dataset:
    """Add ``count`` messages (each with its session) and some message-less sessions."""
    rng = random.Random(seed)
    span = (end - start).total_seconds()
    for _ in range(count):
        ts = start + dt.timedelta(seconds=rng.random() * span)
        ts = ts.replace(microsecond=(ts.microsecond // 1000) * 1000)
        src = rng.choice(SOURCES)
        target = rng.choice(TARGETS)
        recipients = [
            f"user{rng.randrange(1000)}@{rng.choice(RECIPIENT_DOMAINS)}"
            for _ in range(rng.randint(1, 12))
        ]
        url_ids = sorted(rng.sample(range(1, len(URLS) + 1), rng.randint(0, 2)))
        port, service = rng.choice(LISTENERS)
        session = Connection(
            dataset.next_session,
            ts - dt.timedelta(seconds=2),
            src,
            port,
            service,
            target[0],
            25,
            "connect",
        )
        dataset.connections.append(session)
        dataset.captures.append(
            Capture(dataset.next_message, ts, src, target, recipients, url_ids, session.id)
        )
        dataset.next_message += 1
        dataset.next_session += 1
    for _ in range(count // 4):
        ts = start + dt.timedelta(seconds=rng.random() * span)
        port, service = rng.choice(LISTENERS)
        result = rng.choice(["get", "error", "connect"])
        dst_port = 80 if result != "error" else None
        dataset.connections.append(
            Connection(
                dataset.next_session,
                ts,
                rng.choice(SOURCES),
                port,
                service,
                rng.choice(TARGETS)[0],
                dst_port,
                result,
            )
        )
        dataset.next_session += 1
    return dataset


def store_captures(
    engine: Engine, dataset: Dataset, first_message: int = 1, first_session: int = 1
) -> None:
    """Write the captures with ids >= the given ones, as one ingest batch."""
    dataset.batch_id += 1
    now = dt.datetime.now(dt.UTC)
    with write_transaction(engine) as connection:
        connection.execute(
            ingest_batches.insert().values(
                id=dataset.batch_id,
                digest=f"{dataset.batch_id:064x}",
                name="test",
                status="done",
                lines_done=0,
                records_read=0,
                accepted=0,
                quarantined=0,
                duplicates=0,
                started_at=now,
                finished_at=now,
            )
        )
        existing = {row[0] for row in connection.execute(sa.select(urls.c.id))}
        missing = [i for i in range(1, len(URLS) + 1) if i not in existing]
        if missing:
            connection.execute(
                urls.insert(),
                [
                    {
                        "id": i,
                        "sha256": f"{i:064x}",
                        "url": URLS[i - 1][0],
                        "host": URLS[i - 1][1],
                        "domain": URLS[i - 1][2],
                        "first_message_id": 1,
                    }
                    for i in missing
                ],
            )
        session_rows = [
            _session_row(s, dataset.batch_id) for s in dataset.connections if s.id >= first_session
        ]
        if session_rows:
            ensure_weeks(connection, "sessions", [row["ts"] for row in session_rows])
            connection.execute(sessions.insert(), session_rows)
        new = [c for c in dataset.captures if c.id >= first_message]
        if not new:
            return
        ensure_weeks(connection, "messages", [c.ts for c in new])
        connection.execute(messages.insert(), [_message_row(c, dataset.batch_id) for c in new])
        domain_rows = []
        for c in new:
            counts: dict[str, int] = defaultdict(int)
            for address in c.recipients:
                counts[address.rpartition("@")[2]] += 1
            domain_rows += [
                {"message_id": c.id, "domain": d, "domain_rev": domain_key(d), "recipients": n}
                for d, n in counts.items()
            ]
        connection.execute(message_domains.insert(), domain_rows)
        url_rows = [
            {"message_id": c.id, "url_id": u, "domain": URLS[u - 1][2]}
            for c in new
            for u in c.url_ids
        ]
        if url_rows:
            connection.execute(message_urls.insert(), url_rows)


def _session_row(s: Connection, batch_id: int) -> dict[str, Any]:
    return {
        "id": s.id,
        "sensor": "br-isp1-home",
        "session_id": f"s-{s.id}",
        "ts": s.ts,
        "src_ip": s.src[0],
        "src_port": 40000,
        "src_cc": s.src[1],
        "src_asn": s.src[2],
        "service": s.service,
        "listen_port": s.listen_port,
        "dst_host": s.dst_host,
        "dst_port": s.dst_port,
        "result": s.result,
        "error": None,
        "batch_id": batch_id,
        "line": s.id,
    }


def _message_row(c: Capture, batch_id: int) -> dict[str, Any]:
    host, dst_ip, dst_cc, dst_asn = c.target
    return {
        "id": c.id,
        "sensor": "br-isp1-home",
        "session_id": f"s-{c.session_pk}",
        "ts": c.ts,
        "src_ip": c.src[0],
        "src_ip_key": ip_key(c.src[0]),
        "src_cc": c.src[1],
        "src_asn": c.src[2],
        "src_as_name": c.src[3],
        "dst_host": host,
        "dst_host_rev": domain_key(host) if host else None,
        "dst_ip": dst_ip,
        "dst_ip_key": ip_key(dst_ip) if dst_ip else None,
        "dst_cc": dst_cc,
        "dst_asn": dst_asn,
        "dst_as_name": None,
        "dst_port": 25,
        "mail_from": "spam@example.net",
        "rcpt_count": len(c.recipients),
        "rcpt_to": orjson.dumps(c.recipients).decode(),
        "raw_sha256": f"{c.id:064x}",
        "raw_size": 1000,
        "truncated": False,
        "content_types": "text/plain",
        "charsets": "us-ascii",
        "languages": "",
        "defects": 0,
        "batch_id": batch_id,
        "line": c.id,
    }


# The selection rules of design-notes.md, in plain Python.


def _in_networks(ip: str | None, cc: str | None, asn: int | None, partner: Partner) -> bool:
    if ip is None:
        return False
    address = ipaddress.ip_address(ip)
    return (
        cc == partner.economy
        or (asn is not None and asn in partner.networks.asns)
        or any(address in prefix for prefix in partner.networks.prefixes)
    )


def _under(domain: str | None, partner: Partner) -> bool:
    return bool(domain) and any(
        domain == d or str(domain).endswith("." + d) for d in partner.networks.domains
    )


def selected(c: Capture, partner: Partner, direction: str) -> bool:
    if direction == "originating":
        return _in_networks(c.src[0], c.src[1], c.src[2], partner)
    host, dst_ip, dst_cc, dst_asn = c.target
    return (
        _in_networks(dst_ip, dst_cc, dst_asn, partner)
        or _under(host, partner)
        or any(_under(r.rpartition("@")[2], partner) for r in c.recipients)
    )


def session_selected(s: Connection, partner: Partner, direction: str) -> bool:
    if direction == "originating":
        return s.src[1] == partner.economy or (s.src[2] in partner.networks.asns)
    return _under(s.dst_host, partner)


@dataclass
class Expected:
    messages: int
    recipients: int
    ips: dict[str, dict[str, Any]]
    asns: set[int]
    urls: dict[str, int]
    url_domains: dict[str, int]
    per_day: list[int]
    ports: dict[int, int]
    requests: dict[str, dict[str, int]]


def expected(dataset: Dataset, partner: Partner, direction: str, start: dt.datetime) -> Expected:
    end = start + dt.timedelta(days=7)
    chosen = [
        c for c in dataset.captures if start <= c.ts < end and selected(c, partner, direction)
    ]
    ports_of_ip: dict[str, set[int]] = defaultdict(set)
    ports: dict[int, int] = defaultdict(int)
    requests: dict[str, dict[str, int]] = {}
    for s in dataset.connections:
        if not (start <= s.ts < end and session_selected(s, partner, direction)):
            continue
        ports_of_ip[s.src[0]].add(s.listen_port)
        ports[s.listen_port] += 1
        module = "socks" if s.service.startswith("socks") else "http"
        kind = (
            ("connect_25" if s.dst_port == 25 else "connect_other")
            if s.result == "connect"
            else ("get" if s.result == "get" else "errors")
        )
        kinds = requests.setdefault(
            module, dict.fromkeys(("connect_25", "connect_other", "get", "errors", "total"), 0)
        )
        kinds[kind] += 1
        kinds["total"] += 1
    ips: dict[str, dict[str, Any]] = {}
    url_counts: dict[str, int] = defaultdict(int)
    url_domains: dict[str, int] = defaultdict(int)
    per_day = [0] * 7
    for c in chosen:
        entry = ips.setdefault(
            c.src[0],
            {
                "asn": c.src[2],
                "as_name": c.src[3],
                "cc": c.src[1],
                "messages": 0,
                "recipients": 0,
                "first": c.ts,
                "last": c.ts,
            },
        )
        entry["messages"] += 1
        entry["recipients"] += len(c.recipients)
        entry["first"] = min(entry["first"], c.ts)
        entry["last"] = max(entry["last"], c.ts)
        for u in c.url_ids:
            url_counts[URLS[u - 1][0]] += 1
        for domain in {URLS[u - 1][2] for u in c.url_ids}:
            url_domains[domain] += 1
        per_day[(c.ts - start).days] += 1
    for ip, entry in ips.items():
        entry["ports"] = tuple(sorted(ports_of_ip.get(ip, ())))
    return Expected(
        messages=len(chosen),
        recipients=sum(len(c.recipients) for c in chosen),
        ips=ips,
        asns={c.src[2] for c in chosen if c.src[2] is not None},
        urls=dict(url_counts),
        url_domains=dict(url_domains),
        per_day=per_day,
        ports=dict(ports),
        requests=requests,
    )
