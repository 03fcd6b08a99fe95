"""Digest benchmark: all six partners' weekly digests over one generated seed-week.

    .venv/bin/python bench/digest_bench.py --messages 8400000                 # SQLite
    .venv/bin/python bench/digest_bench.py --messages 8400000 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test      # PostgreSQL

1. writes ``--messages`` captures of one ISO week straight into the ingest tables (messages,
   recipient domains, URLs, sessions) with the seed's shapes (the source and target mixes of
   feeds.generator, 9.1 recipients per message, campaigns of recurring URLs, SOCKS 1080 and
   HTTP 8080 most abused), deterministic by ``--seed``. Parsing MIME is ingest's cost and has
   its own benchmark; it is not repeated here;
2. times summing them into the daily rollups (:func:`feeds.rollups.refresh`), the work ingest
   does batch by batch, in ``--rollup-every`` message steps as ingest would;
3. times, per partner, building the digest (figures, chart, CSVs, the MIME message) and prints
   the seconds of each against the target of 5 s.

On PostgreSQL the tables live in a fresh schema that is dropped afterwards (``--keep`` keeps it,
and the SQLite work folder).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from feeds import rollups  # noqa: E402
from feeds.batches import ingest_batches  # noqa: E402
from feeds.digest import build_digest, parse_week  # noqa: E402
from feeds.enrich import ip_key  # noqa: E402
from feeds.generator import SOURCE_MIX, TARGET_MIX  # noqa: E402
from feeds.home import engine_for, init_home  # noqa: E402
from feeds.mail import compose  # noqa: E402
from feeds.messages import domain_key  # noqa: E402
from feeds.partners import load_partners  # noqa: E402
from feeds.settings import load_settings  # noqa: E402

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
    """Pools with the seed's shapes: sources, mail servers, recipient domains, URLs."""

    def __init__(
        self, rng: random.Random, messages: int, ips: int | None = None, urls: int | None = None
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


def _rows(world: World, count: int) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    """Chunks of rows per table, messages in time order through the week (ingest order)."""
    rng = world.rng
    span = (WEEK.end - WEEK.start).total_seconds()
    message_id = session_id = 0
    listeners = [(port, service) for port, service, _ in LISTENERS]
    listener_weights = [w for _, _, w in LISTENERS]
    while message_id < count:
        size = min(CHUNK, count - message_id)
        sources = rng.choices(world.sources, world.source_weights, k=size)
        targets = rng.choices(world.targets, world.target_weights, k=size)
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
            domains = {f"mail{rng.randrange(5_000)}.{tld}": recipients}
            if recipients > 4 and rng.random() < 0.5:
                other = f"mail{rng.randrange(5_000)}.{rng.choice(list(TLDS.values()))}"
                domains[other] = domains.get(other, 0) + recipients // 2
            for domain, n in domains.items():
                chunk["message_domains"].append((message_id, domain, domain_key(domain), n))
            chunk["messages"].append(
                (
                    message_id,
                    "bench",
                    f"s{session_id}",
                    ts,
                    src_ip,
                    ip_key(src_ip),
                    src_cc,
                    src_asn,
                    src_name,
                    host,
                    domain_key(host),
                    dst_ip,
                    ip_key(dst_ip),
                    dst_cc,
                    25,
                    "spam@example.net",
                    recipients,
                    "[]",
                    f"{message_id:064x}",
                    2000,
                    False,
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


def _bulk(engine: sa.Engine, table: str, rows: list[tuple[Any, ...]]) -> None:
    columns = COLUMNS[table]
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "postgresql":
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
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


def generate(
    engine: sa.Engine, world: World, count: int, config: Any, rollup_every: int
) -> tuple[float, float]:
    """Write the week, refreshing the rollups every ``rollup_every`` messages as ingest would.

    Returns (seconds writing, seconds refreshing rollups)."""
    writing = summing = 0.0
    began = time.perf_counter()
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
    written = since_refresh = 0
    for chunk in _rows(world, count):
        for table in ("sessions", "messages", "message_domains", "message_urls"):
            _bulk(engine, table, chunk[table])
        written += len(chunk["messages"])
        since_refresh += len(chunk["messages"])
        if since_refresh >= rollup_every or written >= count:
            writing += time.perf_counter() - began
            began = time.perf_counter()
            rollups.refresh(engine, config)
            summing += time.perf_counter() - began
            print(
                f"  {written:>10,} messages written, rollups refreshed ({summing:.1f} s so far)",
                flush=True,
            )
            since_refresh = 0
            began = time.perf_counter()
    return writing, summing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=8_400_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", help="default: SQLite in the work folder")
    parser.add_argument(
        "--rollup-every",
        type=int,
        default=1_200_000,
        help="messages ingested between two rollup refreshes (one seed-day)",
    )
    parser.add_argument("--ips", type=int, help="source IP pool (default: messages/150, <= 60k)")
    parser.add_argument("--urls", type=int, help="URL pool (default: messages/150, <= 50k)")
    parser.add_argument("--work", help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the data afterwards")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="digest-bench-"))
    home = work / "var"
    url = args.database_url or f"sqlite:///{home}/spampots.db"
    schema = None
    admin = None
    if url.startswith("postgresql"):
        schema = f"digest_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    settings = load_settings(
        {
            "SPAMPOTS_HOME": str(home),
            "SPAMPOTS_DATABASE_URL": url,
            "SPAMPOTS_PARTNERS": str(REPO / "partners.yaml"),
        }
    )
    try:
        init_home(settings)
        engine = engine_for(url)
        config = load_partners(settings.partners)
        world = World(random.Random(args.seed), args.messages, args.ips, args.urls)
        writing, summing = generate(engine, world, args.messages, config, args.rollup_every)
        print(
            f"{engine.dialect.name}: wrote {args.messages:,} messages of {WEEK.label} "
            f"in {writing:.0f} s"
        )
        print(
            f"rollups: summed them (and their sessions) for {len(config.partners)} partners "
            f"in {summing:.1f} s, {args.messages / summing:,.0f} messages/s, in steps of "
            f"{args.rollup_every:,} messages (ingest's share of the digest's cost)"
        )
        slowest = 0.0
        for partner_id in config.partners:
            began = time.perf_counter()
            digest = build_digest(engine, config, partner_id, WEEK)
            message = compose(
                digest,
                mail_from="bench@example.org",
                reply_to="bench@example.org",
                to=["bench@example.org"],
                message_id="<bench@example.org>",
            )
            size = len(message.as_bytes())
            seconds = time.perf_counter() - began
            slowest = max(slowest, seconds)
            figures = digest.directions
            print(
                f"  {partner_id:<8} {seconds:6.2f} s  from: "
                f"{figures['originating'].totals.messages:>9,} msgs "
                f"{figures['originating'].totals.unique_ips:>6,} IPs  to: "
                f"{figures['returning'].totals.messages:>9,} msgs "
                f"{figures['returning'].totals.unique_ips:>6,} IPs  "
                f"mail {size / 1e6:.1f} MB"
            )
        verdict = "meets" if slowest < 5 else "MISSES"
        print(f"slowest digest {slowest:.2f} s: {verdict} the target of < 5 s per digest")
    finally:
        engine_for(url).dispose()
        if admin is not None and schema is not None:
            if not args.keep:
                with admin.connect() as connection:
                    connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
