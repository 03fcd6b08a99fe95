"""Digest benchmark: all six partners' weekly digests over one generated seed-week.

    .venv/bin/python bench/digest_bench.py --messages 8400000                 # SQLite
    .venv/bin/python bench/digest_bench.py --messages 8400000 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test      # PostgreSQL

Writing 8.4M messages takes the better part of an hour; fill once, then time the digests alone
(under the shared benchmark lock) as often as needed::

    nice -n 10 .venv/bin/python bench/digest_bench.py --work /tmp/db8 --fill-only
    flock /tmp/team/bench.lock .venv/bin/python bench/digest_bench.py --work /tmp/db8 \\
        --digests-only --repeat 3 --keep
    (PostgreSQL: the same with --database-url ... --schema bench_NAME; the last run without
    --keep drops the schema)

1. writes ``--messages`` captures of one ISO week straight into the ingest tables (messages,
   recipient domains, URLs, sessions) with the seed's shapes (bench/seedweek.py),
   deterministic by ``--seed``;
2. times summing them into the daily rollups (:func:`feeds.rollups.refresh`), the work ingest
   does batch by batch, in ``--rollup-every`` message steps as ingest would;
3. times, per partner, building the digest (figures, chart, CSVs, the MIME message) and prints
   the seconds of each against the target of 5 s.

On PostgreSQL the tables live in their own schema (``--schema``, default a fresh one) that is
dropped afterwards (``--keep`` or ``--fill-only`` keeps it, and the SQLite work folder).
Per digest it prints the wall seconds and this process's CPU seconds (PostgreSQL's own CPU is
not in the latter).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from seedweek import WEEK, World, rows, write_chunk, write_start  # noqa: E402

from feeds import rollups  # noqa: E402
from feeds.digest import build_digest  # noqa: E402
from feeds.home import engine_for, init_home  # noqa: E402
from feeds.mail import compose  # noqa: E402
from feeds.partners import load_partners  # noqa: E402
from feeds.settings import load_settings  # noqa: E402
from feeds.store import migrate  # noqa: E402


def generate(
    engine: sa.Engine, world: World, count: int, config: Any, rollup_every: int
) -> tuple[float, float]:
    """Write the week, refreshing the rollups every ``rollup_every`` messages as ingest would.

    Returns (seconds writing, seconds refreshing rollups)."""
    writing = summing = 0.0
    began = time.perf_counter()
    write_start(engine, world)
    written = since_refresh = 0
    for chunk in rows(world, count):
        write_chunk(engine, chunk)
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
    parser.add_argument("--schema", help="PostgreSQL schema (default: a fresh digest_bench_*)")
    parser.add_argument(
        "--fill-only", action="store_true", help="write the week and its rollups, keep them, stop"
    )
    parser.add_argument(
        "--digests-only",
        action="store_true",
        help="time the digests over a week filled before (--work, and --schema on PostgreSQL)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="passes over the six digests")
    args = parser.parse_args()
    if args.digests_only and not (args.work and (args.schema or not args.database_url)):
        parser.error("--digests-only needs the --work (and on PostgreSQL --schema) of a fill")
    keep = args.keep or args.fill_only

    work = Path(args.work or tempfile.mkdtemp(prefix="digest-bench-"))
    home = work / "var"
    url = args.database_url or f"sqlite:///{home}/spampots.db"
    schema = None
    admin = None
    if url.startswith("postgresql"):
        schema = args.schema or f"digest_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        if not args.digests_only:
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
        config = load_partners(settings.partners)
        if not args.digests_only:
            init_home(settings)
            engine = engine_for(url)
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
            if admin is not None:
                vacuum_rollups(admin, schema)
        else:
            # A kept store gets the migrations added since its fill (as ingest's startup would
            # do), and on PostgreSQL what they filled is analysed, as autovacuum would.
            applied = migrate(engine_for(url))
            if applied:
                print(f"migrated the kept store to {', '.join(applied)}")
                if admin is not None:
                    vacuum_rollups(admin, schema)
        if not args.fill_only:
            time_digests(engine_for(url), config, args.repeat)
    finally:
        engine_for(url).dispose()
        if admin is not None and schema is not None:
            if not keep:
                with admin.connect() as connection:
                    connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            else:
                print(f"kept PostgreSQL schema {schema}")
            admin.dispose()
        if not keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


def vacuum_rollups(admin: sa.Engine, schema: str | None) -> None:
    """What autovacuum does long before a weekly digest (the test server runs without it):
    each refresh updates rollup rows, and their dead versions would otherwise be read too."""
    with admin.connect() as connection:
        for table in (*rollups.ROLLUP_TABLES, rollups.rollup_state):
            connection.execute(sa.text(f'VACUUM ANALYZE "{schema}"."{table.name}"'))


def _attached(composed: Any) -> str:
    fitted = composed.attachments
    if fitted.zip_name is None:
        return ""
    left_out = sum(cut.rows_left_out for cut in fitted.left_out)
    return f" (CSVs zipped{f', {left_out:,} rows left out' if left_out else ''})"


def time_digests(engine: sa.Engine, config: Any, repeat: int) -> None:
    """Build, per pass, each partner's digest and MIME message; print wall and CPU seconds."""
    print(f"{engine.dialect.name}: load average {Path('/proc/loadavg').read_text().strip()}")
    best: dict[str, float] = {}
    for number in range(1, repeat + 1):
        print(f"pass {number}:")
        for partner_id in config.partners:
            began, cpu = time.perf_counter(), time.process_time()
            digest = build_digest(engine, config, partner_id, WEEK)
            composed = compose(
                digest,
                mail_from="bench@example.org",
                reply_to="bench@example.org",
                to=["bench@example.org"],
                message_id="<bench@example.org>",
            )
            size = len(composed.message.as_bytes())
            seconds = time.perf_counter() - began
            cpu = time.process_time() - cpu
            best[partner_id] = min(seconds, best.get(partner_id, seconds))
            figures = digest.directions
            print(
                f"  {partner_id:<8} {seconds:6.2f} s wall {cpu:6.2f} s CPU  from: "
                f"{figures['originating'].totals.messages:>9,} msgs "
                f"{figures['originating'].totals.unique_ips:>6,} IPs  to: "
                f"{figures['returning'].totals.messages:>9,} msgs "
                f"{figures['returning'].totals.unique_ips:>6,} IPs  "
                f"mail {size / 1e6:.1f} MB{_attached(composed)}",
                flush=True,
            )
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}")
    slowest = max(best.values())
    verdict = "meets" if slowest < 5 else "MISSES"
    print(
        f"slowest digest {slowest:.2f} s (best of {repeat}): {verdict} the target of < 5 s "
        "per digest"
    )


if __name__ == "__main__":
    main()
