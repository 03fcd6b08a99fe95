"""Publish benchmark: a generated seed-week for all six partners, end to end.

    # prefill once (outside the benchmark lock), keep it:
    nice -n 10 .venv/bin/python bench/publish_bench.py --messages 8400000 \\
        --work /tmp/publish-seedweek --prefill-only
    # measure, as often as wanted, on the kept data:
    flock /tmp/team/bench.lock .venv/bin/python bench/publish_bench.py --messages 8400000 \\
        --work /tmp/publish-seedweek

1. writes ``--messages`` captures of one ISO week straight into the ingest tables and the
   distinct raw messages into the raw store (bench/seedweek.py; ingest has its own
   benchmark), unless ``--work`` already holds them for the same ``--messages`` and ``--seed``;
2. clears whatever an earlier run published, then times ``publish`` for every partner of the
   shipped partners.yaml: select, build, hash, sign and store in the TAXII collections, and
   prints objects/s (wall and per CPU-second, with the load average);
3. times building the same objects with the ``stix2`` library (``stix2.parse`` of the
   published dicts with ``allow_custom=False``, then ``serialize``), in the same run, on up to
   ``--stix2-sample`` of them, and prints the ratio.

The full size is a seed-week, about 8.4 million messages (``--messages 8400000``). Without
``--work`` the data lives in a temporary folder removed at the end; on PostgreSQL
(``--database-url``) in the schema ``bench_publish``, dropped at the end unless ``--work``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson
import sqlalchemy as sa
import stix2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from seedweek import World, rows, write_chunk, write_start  # noqa: E402

from feeds.home import engine_for, init_home  # noqa: E402
from feeds.publish import publish  # noqa: E402
from feeds.settings import Settings, load_settings  # noqa: E402
from taxii_server.objects import taxii_objects  # noqa: E402

SCHEMA = "bench_publish"
# What a publish run writes; cleared before each measured run so that every run starts alike.
PUBLISHED_TABLES = (
    "taxii_objects",
    "taxii_collection_state",
    "feed_batches",
    "feed_watermarks",
    "feed_indicators",
    "feed_object_versions",
)


def prefill(settings: Settings, url: str, args: argparse.Namespace) -> None:
    messages = args.messages
    init_home(settings)
    engine = engine_for(url)
    began = time.perf_counter()
    world = World(random.Random(args.seed), messages, args.ips, args.urls)
    world.store_bodies(Path(settings.raw_dir))
    write_start(engine, world)
    written = 0
    for chunk in rows(world, messages, sessions=False):
        write_chunk(engine, chunk)
        written += len(chunk["messages"])
        if written % 1_000_000 < len(chunk["messages"]) or written == messages:
            rate = written / (time.perf_counter() - began)
            print(f"  {written:>10,} messages written ({rate:,.0f}/s)", flush=True)
    print(
        f"prefilled {messages:,} messages from {len(world.sources):,} addresses, "
        f"{len(world.urls):,} URLs and {len(world.bodies):,} distinct raw messages in "
        f"{time.perf_counter() - began:.0f} s"
    )


def clear_published(url: str) -> None:
    with engine_for(url).begin() as connection:
        for table in PUBLISHED_TABLES:
            connection.execute(sa.text(f"DELETE FROM {table}"))  # noqa: S608 - fixed names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ips", type=int, help="source IP pool (default: messages/150, <= 60k)")
    parser.add_argument("--urls", type=int, help="URL pool (default: messages/150, <= 50k)")
    parser.add_argument("--database-url", help="default: SQLite in the work folder")
    parser.add_argument("--work", help="work folder, kept and reused (default: a temporary one)")
    parser.add_argument("--prefill-only", action="store_true", help="write the data and stop")
    parser.add_argument("--stix2-sample", type=int, default=20_000)
    parser.add_argument("--profile", help="write cProfile stats of the publish run here")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="publish-bench-"))
    home = work / "var"
    url = args.database_url or f"sqlite:///{home}/spampots.db"
    admin = None
    if url.startswith("postgresql"):
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{SCHEMA}"
    settings = load_settings(
        {
            # Any other setting can be tried from the environment (SPAMPOTS_PUBLISH_WORKERS=3).
            **{name: value for name, value in os.environ.items() if name.startswith("SPAMPOTS_")},
            "SPAMPOTS_HOME": str(home),
            "SPAMPOTS_DATABASE_URL": url,
            "SPAMPOTS_PARTNERS": str(REPO / "partners.yaml"),
        }
    )
    marker = work / "prefilled.json"
    wanted = {
        "messages": args.messages,
        "seed": args.seed,
        "ips": args.ips,
        "urls": args.urls,
        "store": url,
    }
    try:
        if not marker.exists() or json.loads(marker.read_text()) != wanted:
            if admin is not None:
                with admin.connect() as connection:
                    connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
                    connection.execute(sa.text(f'CREATE SCHEMA "{SCHEMA}"'))
            else:
                shutil.rmtree(home, ignore_errors=True)
            prefill(settings, url, args)
            marker.write_text(json.dumps(wanted))
        else:
            print(f"reusing the {args.messages:,} messages prefilled in {work}")
            init_home(settings)  # migrations added since the prefill
        if args.prefill_only:
            return
        clear_published(url)
        measure(settings, url, args)
    finally:
        engine_for(url).dispose()
        if admin is not None:
            if not args.work:
                with admin.connect() as connection:
                    connection.execute(sa.text(f'DROP SCHEMA "{SCHEMA}" CASCADE'))
            admin.dispose()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def _cpu_with_children() -> float:
    """CPU seconds of this process and of its ended children (the publishing processes)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def measure(settings: Settings, url: str, args: argparse.Namespace) -> None:
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    profiler = cProfile.Profile() if args.profile else None
    began, cpu_began = time.perf_counter(), _cpu_with_children()
    if profiler:
        profiler.enable()
    report = publish(settings, now=dt.datetime.now(dt.UTC))
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - began
    cpu = _cpu_with_children() - cpu_began
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    rate = report.objects / elapsed
    print(
        f"published {report.objects:,} objects in {len(report.batches)} batches for six "
        f"partners in {elapsed:.2f} s: {rate:,.0f} objects/s end to end "
        "(select, build, hash, sign, store)"
    )
    print(
        f"  {settings.publish_workers} publishing processes used {cpu:.2f} CPU s: "
        f"{report.objects / cpu:,.0f} objects per CPU second (less sensitive to other load on "
        "the machine; a PostgreSQL server's own CPU is not in it)"
    )
    print(f"  load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    if profiler:
        profiler.dump_stats(args.profile)
        pstats.Stats(args.profile).sort_stats("cumulative").print_stats(40)

    engine = engine_for(url)
    with engine.connect() as connection:
        t = taxii_objects.c
        low, high = connection.execute(
            sa.select(sa.func.min(t.row_id), sa.func.max(t.row_id))
        ).one()
        stored = range(low or 0, (high or -1) + 1)
        picks = random.Random(args.seed).sample(stored, k=min(args.stix2_sample, len(stored)))
        bodies = list(connection.execute(sa.select(t.body).where(t.row_id.in_(picks))).scalars())
    dicts = [orjson.loads(body) for body in bodies]
    began, cpu_began = time.perf_counter(), time.process_time()
    for obj in dicts:
        stix2.parse(obj, allow_custom=False).serialize()
    stix2_elapsed = time.perf_counter() - began
    stix2_cpu = time.process_time() - cpu_began
    stix2_rate = len(dicts) / stix2_elapsed
    print(
        f"stix2 library: built and serialised {len(dicts):,} of the same objects in "
        f"{stix2_elapsed:.2f} s: {stix2_rate:,.0f} objects/s (building only)"
    )
    print(
        f"  stix2: {len(dicts) / stix2_cpu:,.0f} objects per CPU second; ratio by CPU time "
        f"{(report.objects / cpu) / (len(dicts) / stix2_cpu):.1f}x"
    )
    print(
        f"ratio: end-to-end publishing is {rate / stix2_rate:.1f}x the stix2 library's "
        "building alone"
    )
    print(f"machine: {os.cpu_count()} CPUs; store {url.split(':', 1)[0]}")


if __name__ == "__main__":
    main()
