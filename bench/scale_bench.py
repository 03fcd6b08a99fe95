"""Scale benchmark (issue 8): PostgreSQL with 10x the history answers as fast as with 1x.

    # 1. prefill, outside the bench lock (nice): PostgreSQL schemas bench_partition_<name>
    nice -n 10 .venv/bin/python bench/scale_bench.py prefill --name m10 --objects 1000000 \
        --objects-only          # the 1M-object collection, meanwhile
    nice -n 10 .venv/bin/python bench/scale_bench.py prefill --name m1 \
        --messages 1000000 --objects 100000
    nice -n 10 .venv/bin/python bench/scale_bench.py prefill --name m10 --objects 1000000 \
        --copy-of m1 --weeks 10
    # 2. measure, under the lock; 3. compare; 4. drop the schemas and work folders
    flock /tmp/team/bench.lock .venv/bin/python bench/scale_bench.py measure --name m1
    flock /tmp/team/bench.lock .venv/bin/python bench/scale_bench.py measure --name m10
    .venv/bin/python bench/scale_bench.py compare --name m1 --name m10
    .venv/bin/python bench/scale_bench.py drop --name m1 --name m10

``prefill`` loads a TAXII collection of ``--objects`` feed objects (bench/taxii_data.py), then
writes ``--messages`` captures of 2026-W47 straight into the ingest tables (bench/seedweek.py's
writer and world: the seed's shapes, raw messages in the raw store) and sums the digests'
rollups as ingest would; or, with ``--copy-of``, takes that store's week as the newest and
repeats it as the ``--weeks`` - 1 weeks before it, by copies inside PostgreSQL (ids keep
following time; the rollups cover the newest week, as in a store whose rollups were rebuilt
over its newest history). So both stores hold the same captures per week and differ in
history only. ``measure`` then times, on that store:

- a TAXII walk of the whole collection with taxii2-client (1,000-object pages, one ``serve``
  worker process);
- one digest (twcert, the newest week: figures, chart, CSVs, the MIME message);
- publishing one partner-day: twcert's collections from a watermark one day's messages before
  the newest (select, build, sanitize samples, sign, store);
- a real ingest of ``--ingest`` generated messages (the spool is generated before the timer)
  into the prefilled store: its captures are of a week after the newest, a partition the store
  does not have yet, made on demand.

Each figure is printed with wall and CPU seconds (this process; the TAXII server's worker for
the walk; PostgreSQL's own CPU is in neither) and the load average, and kept in the work folder
for ``compare``, which prints the 10x store's figures beside the 1x ones and their ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from taxii2client.v21 import Collection

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from digest_bench import generate  # noqa: E402
from seedweek import WEEK, World  # noqa: E402
from taxii_walk import PASSWORD, children, load, wait_until_up, walk  # noqa: E402

from feeds import rollups  # noqa: E402
from feeds.digest import Week, build_digest  # noqa: E402
from feeds.generator import generate as generate_spool  # noqa: E402
from feeds.home import engine_for, init_home  # noqa: E402
from feeds.ingest import ingest_run  # noqa: E402
from feeds.mail import compose  # noqa: E402
from feeds.partners import load_partners  # noqa: E402
from feeds.publish import feed_watermarks, publish  # noqa: E402
from feeds.settings import Settings, load_settings  # noqa: E402
from feeds.store import write_transaction  # noqa: E402
from feeds.store.partitions import ensure_weeks, week_start  # noqa: E402
from taxii_server.objects import object_counts  # noqa: E402

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PARTNER = "twcert"
WALKED = "twcert-originating"


def work_of(name: str) -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"scale-bench-{name}"


def schema_of(name: str) -> str:
    return f"bench_partition_{name}"


def environ_of(name: str) -> dict[str, str]:
    work = work_of(name)
    return {
        "SPAMPOTS_HOME": str(work / "var"),
        "SPAMPOTS_DATABASE_URL": f"{POSTGRES_URL}?options=-csearch_path%3D{schema_of(name)}",
        "SPAMPOTS_PARTNERS": str(work / "partners.yaml"),
        "SPAMPOTS_SPOOL": str(work / "spool"),
        "SPAMPOTS_COUNTRY_MMDB": str(work / "mmdb" / "country-maxmind.mmdb"),
        "SPAMPOTS_ASN_MMDB": str(work / "mmdb" / "asn-maxmind.mmdb"),
        "SPAMPOTS_MAX_PAGE_SIZE": "1000",
        "SPAMPOTS_LOG_LEVEL": "ERROR",
    }


def settings_of(name: str) -> Settings:
    return load_settings(environ_of(name))


def partners_file(path: Path) -> None:
    """The repository's partners, twcert with a password the walk knows."""
    text = (REPO / "partners.yaml").read_text()
    digest = PasswordHasher().hash(PASSWORD)
    text = re.sub(
        r'(taxii: \{username: twcert, password_hash: ")[^"]*"', rf'\g<1>{digest}"', text, count=1
    )
    path.write_text(text)


CAPTURES = ("sessions", "messages", "message_domains", "message_urls")
ID_COLUMN = {"sessions": "id", "messages": "id", "message_domains": "message_id"}
ID_COLUMN["message_urls"] = "message_id"
COPIED_AS_THEY_ARE = (
    "ingest_batches",
    "enrichment_sources",
    "urls",
    rollups.rollup_state.name,
    *(table.name for table in rollups.ROLLUP_TABLES),
)


def prefill(args: argparse.Namespace) -> None:
    work = work_of(args.name)
    work.mkdir(parents=True, exist_ok=True)
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema_of(args.name)}"'))
    admin.dispose()
    if not (work / "partners.yaml").exists():
        partners_file(work / "partners.yaml")
    settings = settings_of(args.name)
    init_home(settings)
    engine = engine_for(settings.database_url)
    config = load_partners(settings.partners)
    began = time.perf_counter()
    collection = config.collection(WALKED)
    assert collection is not None
    with engine.connect() as connection:
        have = object_counts(connection).get(collection.id, 0)
    if have == 0:
        rate = load(engine, collection.id, args.objects, seed=1)
        print(f"loaded {args.objects:,} objects at {rate:,.0f} objects/s", flush=True)
    elif have != args.objects:
        raise SystemExit(f"the collection holds {have:,} objects, not {args.objects:,}")
    if args.objects_only:
        return
    if args.copy_of:
        weeks = repeat_history(engine, args.copy_of, args.weeks)
        raw_of_source = work_of(args.copy_of) / "var" / "raw"
        shutil.copytree(raw_of_source, settings.raw_dir, dirs_exist_ok=True)
    else:
        weeks = 1
        world = World(random.Random(args.seed), args.messages)
        world.store_bodies(Path(settings.raw_dir))
        writing, summing = generate(engine, world, args.messages, config, args.messages)
        print(f"wrote {args.messages:,} messages of {WEEK.label} in {writing:.0f} s")
        print(f"rollups summed in {summing:.0f} s", flush=True)
    with engine.begin() as connection:  # rows written or copied with explicit ids
        for table in ("ingest_batches", "enrichment_sources"):
            connection.execute(
                sa.text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                    f"(SELECT coalesce(max(id), 1) FROM {table}))"
                )
            )
        connection.execute(sa.text("ANALYZE"))
        messages = connection.execute(sa.text("SELECT count(*) FROM messages")).scalar_one()
    meta = {"messages": messages, "weeks": weeks, "objects": args.objects}
    (work / "prefill.json").write_text(json.dumps(meta))
    print(f"prefilled {args.name} ({meta}) in {time.perf_counter() - began:.0f} s")
    engine.dispose()


def repeat_history(engine: sa.Engine, source: str, weeks: int) -> int:
    """The one generated week of store ``source`` as the newest of ``weeks``, the weeks before
    it copies of it: a long history made by copies inside PostgreSQL rather than generated
    again. Ids keep following time (ingest order). Its rollups come along; the older weeks are
    left out of them, as in a store whose rollups were rebuilt over its newest history."""
    began = time.perf_counter()
    with engine.connect() as connection:
        for table in COPIED_AS_THEY_ARE:
            copy_table(connection, source, table, {})
        per_week = {  # the writer's week, not what a measured ingest added after it
            table: int(
                connection.execute(
                    sa.text(f'SELECT max(id) FROM "{schema_of(source)}".{table} WHERE ts < :end'),  # noqa: S608
                    {"end": WEEK.end},
                ).scalar_one()
            )
            for table in ("messages", "sessions")
        }
        shift = {"messages": per_week["messages"] * (weeks - 1)}
        shift["sessions"] = per_week["sessions"] * (weeks - 1)
        shift["message_domains"] = shift["message_urls"] = shift["messages"]
        for table in CAPTURES:
            ensure_weeks(connection, table, [WEEK.start])
            size = per_week["sessions" if table == "sessions" else "messages"]
            copy_table(connection, source, table, {ID_COLUMN[table]: shift[table]}, upto=size)
        connection.execute(
            rollups.rollup_state.update().values(
                messages_done=per_week["messages"] * weeks,
                sessions_done=per_week["sessions"] * weeks,
                # a digest compares with the week before: as at 1M, none of it was summed
                covers_from=f"{WEEK.previous().start:%Y-%m-%d}",
            )
        )
        connection.commit()
    print(f"copied {source}'s week in {time.perf_counter() - began:.0f} s", flush=True)
    for week in range(1, weeks):
        began = time.perf_counter()
        with engine.connect() as connection:
            for table in CAPTURES:
                ensure_weeks(connection, table, [WEEK.start - dt.timedelta(weeks=week)])
                repeat_week(connection, table, week, per_week, weeks)
            connection.commit()
        print(f"  week {week + 1} of {weeks} in {time.perf_counter() - began:.0f} s", flush=True)
    return weeks


def _columns(connection: sa.Connection, table: str) -> list[str]:
    return list(connection.execute(sa.text(f"SELECT * FROM {table} LIMIT 0")).keys())  # noqa: S608


def copy_table(
    connection: sa.Connection,
    source: str,
    table: str,
    shift: dict[str, int],
    upto: int | None = None,
) -> None:
    """Rows of ``table`` from store ``source``, ids shifted; with ``upto``, the rows whose id
    is at most that."""
    columns = _columns(connection, table)
    picked = ", ".join(f"{c} + {shift[c]}" if c in shift else c for c in columns)
    where = f" WHERE {ID_COLUMN[table]} <= {upto}" if upto is not None else ""
    connection.execute(
        sa.text(
            f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608
            f'SELECT {picked} FROM "{schema_of(source)}".{table}{where}'
        )
    )


def repeat_week(
    connection: sa.Connection, table: str, week: int, per_week: dict[str, int], weeks: int
) -> None:
    """The newest week's rows of ``table`` again, ``week`` weeks earlier, under the ids of
    that week (every week has as many captures)."""
    size = per_week["sessions" if table == "sessions" else "messages"]
    key = ID_COLUMN[table]
    changed = {
        key: f"{key} - {week * size}",
        "session_id": f"session_id || '-{week}'",
        "ts": f"ts - interval '{week} weeks'",
    }
    columns = _columns(connection, table)
    picked = ", ".join(changed.get(c, c) for c in columns)
    connection.execute(
        sa.text(
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT {picked} FROM {table} "  # noqa: S608
            f"WHERE {key} > {(weeks - 1) * size}"
        )
    )


def digest_week() -> Week:
    """The writer's week: the newest the prefill wrote (a measured ingest adds later ones)."""
    return WEEK


def timed(label: str, what: Callable[[], int], unit: str) -> dict[str, Any]:
    load_before = Path("/proc/loadavg").read_text().split()[0]
    began, cpu_began = time.perf_counter(), cpu_seconds()
    count = what()
    wall, cpu = time.perf_counter() - began, cpu_seconds() - cpu_began
    result = {"what": label, "count": count, "unit": unit, "wall_s": wall, "cpu_s": cpu}
    result["load"] = f"{load_before}->{Path('/proc/loadavg').read_text().split()[0]}"
    print(
        f"  {label:<22} {count:>9,} {unit} in {wall:7.2f} s wall, {cpu:7.2f} s CPU: "
        f"{count / wall:>9,.0f} {unit}/s, {count / max(cpu, 1e-9):>9,.0f} per CPU-s "
        f"(load {result['load']})",
        flush=True,
    )
    return result


def cpu_seconds() -> float:
    """This process's CPU and its finished children's (ingest's parsing workers)."""
    mine, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_walk(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    config = load_partners(settings.partners)
    collection = config.collection(WALKED)
    assert collection is not None
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPAMPOTS_")}
    environ |= environ_of(args.name)
    command = [sys.executable, "-m", "feeds.cli", "serve", "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--port", str(args.port), "--workers", "1"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        wait_until_up(base, process)
        worker = children(process.pid)[0]
        client = Collection(
            f"{base}/feeds/collections/{collection.id}/", user=PARTNER, password=PASSWORD
        )
        client.get_objects(limit=1)  # warm: the account's password check
        server_cpu = process_cpu(worker)
        result = timed("TAXII walk", lambda: walk(client)[0], "objects")
        result["server_cpu_s"] = process_cpu(worker) - server_cpu
        print(f"  {'':<22} the server's worker used {result['server_cpu_s']:.2f} s CPU")
    finally:
        process.terminate()
        process.communicate(timeout=30)
    return result


def measure_digest(settings: Settings) -> dict[str, Any]:
    engine = engine_for(settings.database_url)
    config = load_partners(settings.partners)
    week = digest_week()

    def one() -> int:
        digest = build_digest(engine, config, PARTNER, week)
        message = compose(
            digest,
            mail_from="bench@example.org",
            reply_to="bench@example.org",
            to=["bench@example.org"],
            message_id="<bench@example.org>",
        )
        message.message.as_bytes()
        return 1

    return timed(f"digest ({PARTNER}, {week.label})", one, "digests")


def measure_publish(settings: Settings, meta: dict[str, Any]) -> dict[str, Any]:
    engine = engine_for(settings.database_url)
    config = load_partners(settings.partners)
    per_day = meta["messages"] // (meta["weeks"] * 7)
    with engine.connect() as connection:
        newest = int(
            connection.execute(
                sa.text("SELECT max(id) FROM messages WHERE ts < :end"), {"end": WEEK.end}
            ).scalar_one()
        )
    with write_transaction(engine) as connection:
        forget_published(connection, config, meta)
        for feed in ("originating", "returning"):
            collection = config.collection(f"{PARTNER}-{feed}")
            assert collection is not None
            t = feed_watermarks
            connection.execute(t.delete().where(t.c.collection_id == collection.id))
            connection.execute(
                t.insert().values(
                    collection_id=collection.id,
                    last_message_id=newest - per_day,
                    updated_at=WEEK.end,
                )
            )
    print(f"  publishing ids {newest - per_day + 1:,}..{newest:,} (one day of captures)")
    return timed(
        "publish one partner-day",
        lambda: publish(settings, PARTNER, engine=engine, config=config).objects,
        "objects",
    )


def forget_published(connection: sa.Connection, config: Any, meta: dict[str, Any]) -> None:
    """What an earlier measured run published, so that every run publishes alike: all of the
    publisher's state, and every object but the collection the walk reads as prefilled."""
    walked = config.collection(WALKED)
    assert walked is not None
    for table in ("feed_batches", "feed_watermarks", "feed_indicators", "feed_object_versions"):
        connection.execute(sa.text(f"DELETE FROM {table}"))  # noqa: S608 - fixed names
    first_extra = connection.execute(
        sa.text(
            "SELECT row_id FROM taxii_objects WHERE collection_id = :walked "
            "ORDER BY row_id OFFSET :objects LIMIT 1"
        ),
        {"walked": walked.id, "objects": meta["objects"]},
    ).scalar()
    connection.execute(
        sa.text("DELETE FROM taxii_objects WHERE collection_id <> :walked OR row_id >= :first"),
        {"walked": walked.id, "first": first_extra or 2**62},
    )
    connection.execute(
        sa.text("DELETE FROM taxii_collection_state WHERE collection_id <> :walked"),
        {"walked": walked.id},
    )
    connection.execute(
        sa.text(
            "UPDATE taxii_collection_state SET object_count = :objects, last_added_us = "
            "(SELECT max(date_added_us) FROM taxii_objects WHERE collection_id = :walked) "
            "WHERE collection_id = :walked"
        ),
        {"walked": walked.id, "objects": meta["objects"]},
    )


def forget_ingested(connection: sa.Connection) -> None:
    """What an earlier measured run ingested after the writer's week, so that every run
    publishes the same messages (publishing runs up to the newest)."""
    ends = {
        table: connection.execute(
            sa.text(f"SELECT coalesce(max(id), 0) FROM {table} WHERE ts < :end"),  # noqa: S608
            {"end": WEEK.end},
        ).scalar_one()
        for table in ("messages", "sessions")
    }
    for child in ("message_domains", "message_urls"):
        connection.execute(
            sa.text(f"DELETE FROM {child} WHERE message_id > :last"),  # noqa: S608
            {"last": ends["messages"]},
        )
    for table, last in ends.items():
        connection.execute(sa.text(f"DELETE FROM {table} WHERE id > :last"), {"last": last})  # noqa: S608


def measure_ingest(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    spool = Path(settings.spool)
    shutil.rmtree(spool, ignore_errors=True)
    engine = engine_for(settings.database_url)
    with engine.connect() as connection:
        newest = connection.execute(sa.text("SELECT max(ts) FROM messages")).scalar_one()
    generated = generate_spool(
        spool,
        Path(settings.country_mmdb).parent,
        args.ingest,
        seed=int(time.time()),
        start=week_start(newest) + dt.timedelta(weeks=1),  # a week the store has no partition of
    )
    print(f"  generated {generated.expected.emails:,} messages to ingest (not timed)")

    def ingest() -> int:
        reports = ingest_run(settings).run()
        assert all(r.status != "failed" for r in reports), [r.error for r in reports]
        return int(generated.expected.emails)

    return timed("ingest", ingest, "messages")


def measure(args: argparse.Namespace) -> None:
    work = work_of(args.name)
    meta = json.loads((work / "prefill.json").read_text())
    settings = settings_of(args.name)
    print(
        f"{args.name}: {meta['messages']:,} messages over {meta['weeks']} weeks, "
        f"a collection of {meta['objects']:,} objects; {os.cpu_count()} CPUs"
    )
    init_home(settings)  # migrations added since the prefill
    engine = engine_for(settings.database_url)
    with write_transaction(engine) as connection:
        forget_published(connection, load_partners(settings.partners), meta)
        forget_ingested(connection)
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "walk": lambda: measure_walk(settings, args),
        "digest": lambda: measure_digest(settings),
        "publish": lambda: measure_publish(settings, meta),
        "ingest": lambda: measure_ingest(settings, args),
    }
    kept = work / "results.json"
    results = json.loads(kept.read_text())["results"] if kept.exists() else {}
    if isinstance(results, list):  # an older run's, in the order of the steps
        results = dict(zip(steps, results, strict=False))
    for step in args.steps.split(","):
        results[step] = steps[step]()
    kept.write_text(json.dumps({"meta": meta, "results": results}, indent=1))


def compare(args: argparse.Namespace) -> None:
    small, big = (json.loads((work_of(n) / "results.json").read_text()) for n in args.name)
    print(f"{'':<24} {small['meta']['messages']:>14,} msgs {big['meta']['messages']:>14,} msgs")
    for step in ("walk", "digest", "publish", "ingest"):
        one, ten = small["results"][step], big["results"][step]
        rate_one, rate_ten = one["count"] / one["wall_s"], ten["count"] / ten["wall_s"]
        cpu_one, cpu_ten = one["count"] / one["cpu_s"], ten["count"] / ten["cpu_s"]
        print(
            f"{one['what']:<24} {rate_one:>12,.0f}/s {rate_ten:>12,.0f}/s  "
            f"slower by {rate_one / rate_ten:.2f}x wall, {cpu_one / cpu_ten:.2f}x CPU "
            f"(target <= 1.5x)"
        )


def drop(args: argparse.Namespace) -> None:
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for name in args.name:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema_of(name)}" CASCADE'))
            shutil.rmtree(work_of(name), ignore_errors=True)
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fill = commands.add_parser("prefill")
    fill.add_argument("--name", required=True)
    fill.add_argument("--messages", type=int, default=1_000_000)
    fill.add_argument("--weeks", type=int, default=1)
    fill.add_argument("--objects", type=int, default=100_000)
    fill.add_argument("--seed", type=int, default=1)
    fill.add_argument("--copy-of", help="a prefilled one-week store whose week is repeated")
    fill.add_argument("--objects-only", action="store_true", help="load the collection only")
    timing = commands.add_parser("measure")
    timing.add_argument("--name", required=True)
    timing.add_argument("--ingest", type=int, default=30_000, help="messages ingested")
    timing.add_argument("--port", type=int, default=18_987)
    timing.add_argument("--steps", default="walk,digest,publish,ingest", help="which to time")
    for name in ("compare", "drop"):
        commands.add_parser(name).add_argument("--name", action="append", required=True)
    args = parser.parse_args()
    {"prefill": prefill, "measure": measure, "compare": compare, "drop": drop}[args.command](args)


if __name__ == "__main__":
    main()
