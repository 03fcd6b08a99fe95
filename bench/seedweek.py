"""A generated seed-week written straight into the ingest tables, for the benchmarks of the
stages after ingest (digest_bench.py, publish_bench.py).

Messages, recipient domains, URLs and sessions of one ISO week with the seed's shapes (the
source and target mixes of feeds.generator, 9.1 recipients per message, campaigns of recurring
URLs, SOCKS 1080 and HTTP 8080 most abused), deterministic by the seed. The messages' bodies
come from a pool of distinct raw messages (spam recurs: a campaign's message is captured many
times), kept in the raw store when a raw folder is given, so that samples can be published.
Parsing MIME is ingest's cost and has its own benchmark; it is not repeated here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import random
import sys
from collections.abc import Iterator
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from feeds.batches import ingest_batches  # noqa: E402
from feeds.digest import parse_week  # noqa: E402
from feeds.enrich import ip_key  # noqa: E402
from feeds.generator import SOURCE_MIX, TARGET_MIX, Generator  # noqa: E402
from feeds.messages import domain_key  # noqa: E402
from feeds.rawstore import RawPacks  # noqa: E402
from feeds.store.partitions import PARTITIONED, ensure_weeks  # noqa: E402

WEEK = parse_week("2026-W47")
TLDS = {
    "TW": "tw",
    "JP": "jp",
    "AU": "au",
    "UY": "uy",
    "PL": "pl",
    "HK": "hk",
    "CN": "cn",
    "US": "com",
    "BR": "br",
    "DE": "de",
    "RU": "ru",
    "KR": "kr",
    "IN": "in",
    "VN": "vn",
}
LISTENERS = [
    (1080, "socks5", 30),
    (1080, "socks4", 7),
    (8080, "http-connect", 35),
    (3128, "http-connect", 10),
    (80, "http-get", 8),
    (6588, "http-post", 5),
    (25, "smtp-relay", 5),
]
CHUNK = 100_000


class World:
    """Pools with the seed's shapes: sources, mail servers, recipient domains, URLs, and the
    distinct raw messages (sha256, subject, Date header, bytes)."""

    def __init__(
        self,
        rng: random.Random,
        messages: int,
        ips: int | None = None,
        urls: int | None = None,
        bodies: int = 2_000,
    ) -> None:
        self.rng = rng
        unique_ips = ips or max(1_000, min(60_000, messages // 150))
        economies = list(SOURCE_MIX)
        weights = [SOURCE_MIX[e] for e in economies]
        self.sources: list[tuple[str, str, int, str]] = []
        asns_of: dict[str, list[int]] = {}
        next_asn = 100_000
        for number in range(unique_ips):
            economy = rng.choices(economies, weights)[0]
            pool = asns_of.setdefault(economy, [])
            if len(pool) < 2 + len(self.sources) // 60 // max(1, len(economies)):
                pool.append(next_asn)
                next_asn += 1
            asn = rng.choice(pool)
            address = str(ipaddress.IPv4Address(0x0B000000 + number * 7919 % 0x00FFFFFF))
            self.sources.append((address, economy, asn, f"AS-{economy}-{asn}"))
        # A few sources in the partners' listed ASNs and prefixes (partners.yaml).
        self.sources += [
            ("198.51.100.10", "TW", 64500, "LISTED-TW"),
            ("198.51.100.70", "JP", 64501, "LISTED-JP"),
            ("203.0.113.50", "PL", 64502, "LISTED-PL"),
        ]
        self.source_weights = [1 / (rank + 1) ** 0.8 for rank in range(len(self.sources))]
        targets = list(TARGET_MIX)
        self.targets: list[tuple[str, str, str, str]] = []
        for number in range(5_000):
            economy = rng.choices(targets, [TARGET_MIX[t] for t in targets])[0]
            host = f"mx{number % 3}.mail{number}.{TLDS.get(economy, 'com')}"
            address = str(ipaddress.IPv4Address(0x2C000000 + number * 104729 % 0x00FFFFFF))
            self.targets.append((host, address, economy, TLDS.get(economy, "com")))
        self.target_weights = [1 / (rank + 1) ** 0.5 for rank in range(len(self.targets))]
        self.urls: list[tuple[str, str, str]] = []
        for number in range(urls or max(500, min(50_000, messages // 150))):
            domain = f"campaign{number % 5_000}.{rng.choice(['com', 'net', 'info', 'tw', 'cn'])}"
            host = f"www.{domain}"
            self.urls.append((f"http://{host}/p/{number}", host, domain))
        self.url_weights = [1 / (rank + 1) ** 0.9 for rank in range(len(self.urls))]
        composer = Generator(rng.randrange(2**32), start=WEEK.start)
        self.bodies: list[tuple[str, str, str, bytes]] = []
        for number in range(bodies):
            ts = WEEK.start + dt.timedelta(minutes=number)
            raw, _ = composer._raw(number % len(composer.campaigns), ts, f"user{number}@mail.tw")
            subject = composer.campaigns[number % len(composer.campaigns)].subject
            sha = hashlib.sha256(raw).hexdigest()
            self.bodies.append((sha, subject, format_datetime(ts), raw))
        self.body_weights = [1 / (rank + 1) for rank in range(len(self.bodies))]

    def store_bodies(self, raw_dir: Path) -> None:
        packs = RawPacks(raw_dir)
        try:
            packs.keep({sha: raw for sha, _, _, raw in self.bodies})
        finally:
            packs.close()


def rows(
    world: World, count: int, *, sessions: bool = True
) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    """Chunks of rows per table, messages in time order through the week (ingest order)."""
    rng = world.rng
    span = (WEEK.end - WEEK.start).total_seconds()
    message_id = session_id = 0
    listeners = [(port, service) for port, service, _ in LISTENERS]
    listener_weights = [w for _, _, w in LISTENERS]
    # Keys of the pools' addresses and names, made once rather than for every message.
    ip_keys = {a: ip_key(a) for a, *_ in world.sources} | {
        t[1]: ip_key(t[1]) for t in world.targets
    }
    domain_keys: dict[str, str] = {t[0]: domain_key(t[0]) for t in world.targets}
    while message_id < count:
        size = min(CHUNK, count - message_id)
        sources = rng.choices(world.sources, world.source_weights, k=size)
        targets = rng.choices(world.targets, world.target_weights, k=size)
        bodies = rng.choices(world.bodies, world.body_weights, k=size)
        url_picks = rng.choices(range(len(world.urls)), world.url_weights, k=size * 2)
        chunk: dict[str, list[tuple[Any, ...]]] = {
            "messages": [],
            "message_domains": [],
            "message_urls": [],
            "sessions": [],
        }
        for index in range(size):
            message_id += 1
            session_id += 1
            ts = WEEK.start + dt.timedelta(seconds=span * (message_id - 0.5) / count)
            src_ip, src_cc, src_asn, src_name = sources[index]
            host, dst_ip, dst_cc, tld = targets[index]
            port, service = rng.choices(listeners, listener_weights)[0]
            if sessions:
                chunk["sessions"].append(
                    (
                        session_id,
                        "bench",
                        f"s{session_id}",
                        ts,
                        src_ip,
                        src_cc,
                        src_asn,
                        service,
                        port,
                        host,
                        25,
                        "connect",
                        1,
                        session_id,
                    )
                )
            if message_id % 10 == 0:  # probes and errors that carry no message
                session_id += 1
                if sessions:
                    chunk["sessions"].append(
                        (
                            session_id,
                            "bench",
                            f"s{session_id}",
                            ts,
                            src_ip,
                            src_cc,
                            src_asn,
                            service,
                            port,
                            None,
                            None,
                            "error",
                            1,
                            session_id,
                        )
                    )
            recipients = max(1, int(rng.expovariate(1 / 9.1)))
            first_domain = f"mail{rng.randrange(5_000)}.{tld}"
            domains = {first_domain: recipients}
            if recipients > 4 and rng.random() < 0.5:
                other = f"mail{rng.randrange(5_000)}.{rng.choice(list(TLDS.values()))}"
                domains[other] = domains.get(other, 0) + recipients // 2
            for domain, n in domains.items():
                key = domain_keys.get(domain) or domain_keys.setdefault(domain, domain_key(domain))
                chunk["message_domains"].append((message_id, domain, key, n))
            raw_sha256, subject, header_date, _ = bodies[index]
            chunk["messages"].append(
                (
                    message_id,
                    "bench",
                    f"s{session_id}",
                    ts,
                    src_ip,
                    ip_keys[src_ip],
                    src_cc,
                    src_asn,
                    src_name,
                    host,
                    domain_keys[host],
                    dst_ip,
                    ip_keys[dst_ip],
                    dst_cc,
                    25,
                    "spam@example.net",
                    recipients,
                    f'["user{message_id % 997}@{first_domain}"]',
                    raw_sha256,
                    2000,
                    False,
                    subject,
                    header_date,
                    "text/html",
                    "utf-8",
                    "",
                    0,
                    1,
                    message_id,
                )
            )
            for url_index in set(url_picks[index * 2 : index * 2 + rng.randint(0, 2)]):
                chunk["message_urls"].append((message_id, url_index + 1, world.urls[url_index][2]))
        yield chunk


COLUMNS = {
    "messages": (
        "id",
        "sensor",
        "session_id",
        "ts",
        "src_ip",
        "src_ip_key",
        "src_cc",
        "src_asn",
        "src_as_name",
        "dst_host",
        "dst_host_rev",
        "dst_ip",
        "dst_ip_key",
        "dst_cc",
        "dst_port",
        "mail_from",
        "rcpt_count",
        "rcpt_to",
        "raw_sha256",
        "raw_size",
        "truncated",
        "subject",
        "header_date",
        "content_types",
        "charsets",
        "languages",
        "defects",
        "batch_id",
        "line",
    ),
    "message_domains": ("message_id", "domain", "domain_rev", "recipients"),
    "message_urls": ("message_id", "url_id", "domain"),
    "sessions": (
        "id",
        "sensor",
        "session_id",
        "ts",
        "src_ip",
        "src_cc",
        "src_asn",
        "service",
        "listen_port",
        "dst_host",
        "dst_port",
        "result",
        "batch_id",
        "line",
    ),
}


def bulk(engine: sa.Engine, table: str, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    columns = COLUMNS[table]
    if table in PARTITIONED and engine.dialect.name == "postgresql":
        at = columns.index("ts")
        with engine.begin() as connection:
            ensure_weeks(connection, table, {row[at] for row in rows})
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "postgresql":
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            # A big page cache: the messages' indexes outgrow SQLite's default 2 MB early.
            cursor.execute("PRAGMA cache_size=-1000000")
            cursor.execute("BEGIN")
            text_rows = [
                tuple(
                    v.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, dt.datetime) else v
                    for v in row
                )
                for row in rows
            ]
            marks = ", ".join("?" for _ in columns)
            cursor.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",  # noqa: S608
                text_rows,
            )
            cursor.execute("COMMIT")
        raw.commit()
    finally:
        raw.close()


def write_start(engine: sa.Engine, world: World) -> None:
    """The ingest batch the messages belong to, and the URL pool."""
    with engine.begin() as connection:
        now = dt.datetime.now(dt.UTC)
        connection.execute(
            ingest_batches.insert().values(
                id=1,
                digest="0" * 64,
                name="bench",
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
        connection.execute(
            sa.text(
                "INSERT INTO urls (id, sha256, url, host, domain, first_message_id) "
                "VALUES (:id, :sha, :url, :host, :domain, 1)"
            ),
            [
                {"id": i + 1, "sha": f"{i + 1:064x}", "url": u, "host": h, "domain": d}
                for i, (u, h, d) in enumerate(world.urls)
            ],
        )


def write_chunk(engine: sa.Engine, chunk: dict[str, list[tuple[Any, ...]]]) -> None:
    for table in ("sessions", "messages", "message_domains", "message_urls"):
        bulk(engine, table, chunk[table])
