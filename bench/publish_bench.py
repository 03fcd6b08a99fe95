"""Publish benchmark: generated captures for all six partners, end to end.

    .venv/bin/python bench/publish_bench.py --messages 100000

1. generates ``--messages`` messages (feeds.generator, deterministic by ``--seed``) and ingests
   them (not timed here: bench/ingest has its own figures);
2. times ``publish`` for every partner of the shipped partners.yaml: select, build, hash,
   sign and store in the TAXII collections, and prints objects/s;
3. times building the same objects with the ``stix2`` library (``stix2.parse`` of the
   published dicts with ``allow_custom=False``, then ``serialize``), in the same run, on up to
   ``--stix2-sample`` of them, and prints the ratio.

The full size is a seed-week, about 8.4 million messages (``--messages 8400000``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
import stix2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from feeds.generator import generate  # noqa: E402
from feeds.home import engine_for, init_home  # noqa: E402
from feeds.ingest import ingest_run  # noqa: E402
from feeds.publish import publish  # noqa: E402
from feeds.settings import load_settings  # noqa: E402
from taxii_server.objects import taxii_objects  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", help="default: SQLite in the work folder")
    parser.add_argument("--work", help="work folder (default: a temporary one, removed)")
    parser.add_argument("--workers", type=int, default=1, help="ingest workers")
    parser.add_argument("--stix2-sample", type=int, default=20_000)
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="publish-bench-"))
    home = work / "var"
    url = args.database_url or f"sqlite:///{home}/spampots.db"
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=7)
    try:
        began = time.perf_counter()
        generated = generate(
            work / "spool", work / "mmdb", args.messages, seed=args.seed, start=start
        )
        print(
            f"generated {generated.expected.emails:,} messages from "
            f"{len(generated.expected.src_ips):,} addresses in "
            f"{time.perf_counter() - began:.1f} s"
        )
        settings = load_settings(
            {
                "SPAMPOTS_HOME": str(home),
                "SPAMPOTS_DATABASE_URL": url,
                "SPAMPOTS_PARTNERS": str(REPO / "partners.yaml"),
                "SPAMPOTS_SPOOL": str(generated.spool),
                "SPAMPOTS_COUNTRY_MMDB": str(generated.country_mmdb),
                "SPAMPOTS_ASN_MMDB": str(generated.asn_mmdb),
            }
        )
        init_home(settings)
        began = time.perf_counter()
        ingest_run(settings, workers=args.workers).run()
        print(f"ingested in {time.perf_counter() - began:.1f} s")

        began, cpu_began = time.perf_counter(), time.process_time()
        report = publish(settings)
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu_began
        rate = report.objects / elapsed
        print(
            f"published {report.objects:,} objects in {len(report.batches)} batches for six "
            f"partners in {elapsed:.2f} s: {rate:,.0f} objects/s end to end "
            "(select, build, hash, sign, store)"
        )

        print(
            f"  this process used {cpu:.2f} CPU s: {report.objects / cpu:,.0f} objects per CPU "
            "second (less sensitive to other load on the machine; a PostgreSQL server's own "
            "CPU is not in it)"
        )
        engine = engine_for(url)
        with engine.connect() as connection:
            bodies = list(connection.execute(sa.select(taxii_objects.c.body)).scalars())
        import orjson

        chosen = random.Random(args.seed).sample(bodies, min(args.stix2_sample, len(bodies)))
        dicts = [orjson.loads(body) for body in chosen]
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
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
