"""TAXII walk benchmark: one server process, a taxii2-client walk of a big collection.

    .venv/bin/python bench/taxii_walk.py                      # 1,000,000 objects, both stores
    .venv/bin/python bench/taxii_walk.py --objects 100000 --stores sqlite

For each store (SQLite file, PostgreSQL schema):
1. loads ``--objects`` generated feed objects (bench/taxii_data.py) into one collection with
   ``add_objects`` in batches of 10,000, and 1,000 into another (the "1k" collection);
   (every 10,000th object is a batch's ``report``, as the publisher makes them);
2. starts ``spampots serve --workers 1`` (gunicorn, one worker process) with a default-cost
   argon2id account, and samples the worker's RSS every 0.1 s;
3. times one 1,000-object page (median of ``--samples`` requests) at 1k objects and at the big
   size (first page, and a page from the middle reached by ``added_after``), and the page of
   ``match[type]=report`` (rare objects: an index, not a scan of the collection);
4. walks the whole big collection with taxii2-client ``as_pages`` in 1,000-object pages.
Then the same walk against medallion 3.0.0 with its memory backend on ``--medallion-objects``
objects, in the same run, and the ratio. Targets (issue 3): walk >= 20,000 objects/s, a page at
the big size within 2x of one at 1k, worker RSS < 300 MB through the walk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa
from argon2 import PasswordHasher
from taxii2client.v21 import Collection, as_pages

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from taxii_data import generate_objects  # noqa: E402

from feeds.home import engine_for, init_home  # noqa: E402
from feeds.settings import load_settings  # noqa: E402
from feeds.store import write_transaction  # noqa: E402
from taxii_server.objects import add_objects, format_us, object_counts  # noqa: E402

PASSWORD = "bench-password-1234"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BATCH = 10_000
ANALYZE_EVERY = 100_000
PAGE = 1000


def partners_file(path: Path) -> None:
    digest = PasswordHasher().hash(PASSWORD)  # production cost: the cache must carry the walk
    path.write_text(
        "producer: {name: CERT.br, contact: cert@example.org}\n"
        "partners:\n  twcert:\n    name: TWCERT/CC\n    economy: TW\n"
        f'    taxii: {{username: twcert, password_hash: "{digest}"}}\n'
    )


def load(engine: sa.engine.Engine, collection_id: str, count: int, seed: int) -> float:
    """Objects/s of add_objects, batch by batch, each batch its own transaction."""
    began = time.perf_counter()
    objects = generate_objects(count, seed)
    loaded = 0
    while batch := [item for _, item in zip(range(BATCH), objects, strict=False)]:
        with write_transaction(engine) as connection:
            add_objects(connection, collection_id, batch)
        loaded += len(batch)
        if loaded % ANALYZE_EVERY == 0:
            analyze(engine)
    rate = count / (time.perf_counter() - began)
    analyze(engine)
    return rate


def analyze(engine: sa.engine.Engine) -> None:
    """What autovacuum does on a live PostgreSQL, here at once: a bulk load outruns it, and a
    planner without statistics on a fresh big table chooses scans of the whole collection."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(sa.text("ANALYZE taxii_objects"))
            connection.commit()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(p) for p in text]
    return found


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.running = pid, [], True

    def run(self) -> None:
        while self.running:
            try:
                self.samples.append(rss_mb(self.pid))
            except OSError:
                return
            time.sleep(0.1)


def median_seconds(calls: list[Callable[[], Any]], samples: int) -> list[float]:
    """Median time of each call, taken in turns so that other load on the machine hits all."""
    for call in calls:
        call()  # warm: connection, credentials cache
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(samples):
        for call, spent in zip(calls, times, strict=True):
            began = time.perf_counter()
            call()
            spent.append(time.perf_counter() - began)
    return [statistics.median(spent) for spent in times]


def walk(collection: Collection) -> tuple[int, float]:
    began = time.perf_counter()
    count = 0
    for envelope in as_pages(collection.get_objects, per_request=PAGE):
        count += len(envelope.get("objects", []))
    return count, time.perf_counter() - began


def wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.communicate()[0].decode()}")
        try:
            if requests.get(url + "/healthz", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit("the server did not answer /healthz")


def bench_store(name: str, url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    home = work / name
    home.mkdir(parents=True, exist_ok=True)
    partners = home / "partners.yaml"
    partners_file(partners)
    port = args.port
    env = {
        "SPAMPOTS_HOME": str(home / "var"),
        "SPAMPOTS_DATABASE_URL": url,
        "SPAMPOTS_PARTNERS": str(partners),
        "SPAMPOTS_MAX_PAGE_SIZE": str(PAGE),
        "SPAMPOTS_LOG_LEVEL": "WARNING",
    }
    settings = load_settings(env)
    init_home(settings)
    from feeds.partners import load_partners

    config = load_partners(partners)
    big = config.collection("twcert-originating")
    small = config.collection("twcert-returning")
    assert big is not None and small is not None
    engine = engine_for(url)
    with engine.connect() as connection:
        counts = object_counts(connection)
    if counts.get(big.id, 0) != args.objects:
        rate = load(engine, big.id, args.objects, seed=1)
        print(f"[{name}] loaded {args.objects:,} objects at {rate:,.0f} objects/s")
    if counts.get(small.id, 0) != 1000:
        load(engine, small.id, 1000, seed=2)
    engine.dispose()

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "feeds.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SPAMPOTS_")}, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, process)
        worker = children(process.pid)[0]
        sampler = RssSampler(worker)
        sampler.start()

        def collection(collection_id: str) -> Collection:
            return Collection(
                f"{base}/feeds/collections/{collection_id}/", user="twcert", password=PASSWORD
            )

        big_c, small_c = collection(big.id), collection(small.id)
        middle = big_c.get_manifest(limit=1, added_after=_middle_date(url, big.id))
        middle_after = middle["objects"][0]["date_added"]
        page_1k, page_big, page_mid = median_seconds(
            [
                lambda: small_c.get_objects(limit=PAGE),
                lambda: big_c.get_objects(limit=PAGE),
                lambda: big_c.get_objects(limit=PAGE, added_after=middle_after),
            ],
            args.samples,
        )
        (page_reports,) = median_seconds(
            [lambda: big_c.get_objects(limit=PAGE, type="report")], args.samples
        )
        reports = len(big_c.get_objects(limit=PAGE, type="report").get("objects", []))
        rss_before = rss_mb(worker)
        count, seconds = walk(big_c)
        sampler.running = False
        sampler.join()
    finally:
        process.terminate()
        process.communicate(timeout=30)
    return {
        "store": name,
        "objects": count,
        "walk_s": seconds,
        "rate": count / seconds,
        "page_1k_ms": page_1k * 1000,
        "page_big_ms": page_big * 1000,
        "page_mid_ms": page_mid * 1000,
        "reports_ms": page_reports * 1000,
        "reports": reports,
        "rss_before": rss_before,
        "rss_max": max(sampler.samples),
    }


def _middle_date(url: str, collection_id: str) -> str:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        low, high = connection.execute(
            sa.text(
                "SELECT min(date_added_us), max(date_added_us) FROM taxii_objects "
                "WHERE collection_id = :c"
            ),
            {"c": collection_id},
        ).one()
    engine.dispose()
    return format_us((low + high) // 2)


def medallion_walk(count: int, work: Path, port: int) -> tuple[int, float]:
    """The same client walk against medallion 3.0.0's memory backend."""
    objects = [obj for obj, _ in generate_objects(count, seed=3)]
    now = time.time()
    manifest = [
        {
            "id": o["id"],
            "date_added": format_us(to_us_from_epoch(now) + i),
            "version": o.get("modified", format_us(to_us_from_epoch(now) + i)),
            "media_type": "application/stix+json;version=2.1",
        }
        for i, o in enumerate(objects)
    ]
    for obj, entry in zip(objects, manifest, strict=True):
        if "modified" not in obj:
            obj["_date_added"] = entry["date_added"]
    collection_id = "91a7b528-80eb-42ed-a74d-c6fbd5a26116"
    data = {
        "/discovery": {
            "title": "bench",
            "default": f"http://127.0.0.1:{port}/api1/",
            "api_roots": [f"http://127.0.0.1:{port}/api1/"],
        },
        "api1": {
            "information": {
                "title": "bench",
                "versions": ["application/taxii+json;version=2.1"],
                "max_content_length": 10_000_000,
            },
            "status": [],
            "collections": [
                {
                    "id": collection_id,
                    "title": "bench",
                    "can_read": True,
                    "can_write": True,
                    "media_types": ["application/stix+json;version=2.1"],
                    "objects": objects,
                    "manifest": manifest,
                }
            ],
        },
    }
    data_file = work / "medallion-data.json"
    data_file.write_text(json.dumps(data))
    config = work / "medallion.json"
    config.write_text(
        json.dumps(
            {
                "backend": {
                    "module": "medallion.backends.memory_backend",
                    "module_class": "MemoryBackend",
                    "filename": str(data_file),
                    "session_timeout": 600,
                },
                "users": {"bench": "bench"},
                "taxii": {"max_page_size": PAGE},
            }
        )
    )
    script = (
        "import sys; from medallion import load_app; "
        "load_app(sys.argv[1]).run(host='127.0.0.1', port=int(sys.argv[2]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(config), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                requests.get(f"http://127.0.0.1:{port}/taxii2/", timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        collection = Collection(
            f"http://127.0.0.1:{port}/api1/collections/{collection_id}/",
            user="bench",
            password="bench",
        )
        return walk(collection)
    finally:
        process.terminate()
        process.communicate(timeout=30)


def to_us_from_epoch(seconds: float) -> int:
    return int(seconds * 1_000_000)


def stores(args: argparse.Namespace, work: Path) -> Iterator[tuple[str, str]]:
    for name in args.stores.split(","):
        if name == "sqlite":
            yield name, f"sqlite:///{work}/sqlite/store.db"
        elif name == "postgresql":
            schema = "bench_taxii_walk"
            admin = sa.create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                if not args.keep or not (work / name / "var").exists():
                    connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
                connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
            admin.dispose()
            yield name, f"{args.postgres_url}?options=-csearch_path%3D{schema}"
        else:
            raise SystemExit(f"unknown store {name!r}: use sqlite, postgresql")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--medallion-objects", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=31, help="requests per page median")
    parser.add_argument("--port", type=int, default=6199)
    parser.add_argument("--work", help="work folder (default: a temporary one, removed)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work folder and PostgreSQL schema to rerun without loading again",
    )
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="taxii-walk-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for name, url in stores(args, work):
            result = bench_store(name, url, work, args)
            results.append(result)
            print(
                f"[{name}] walk of {result['objects']:,} objects in {result['walk_s']:.1f} s"
                f" = {result['rate']:,.0f} objects/s (target >= 20,000)"
            )
            print(
                f"[{name}] one {PAGE}-object page: {result['page_1k_ms']:.1f} ms at 1k "
                f"objects, {result['page_big_ms']:.1f} ms (first page) and "
                f"{result['page_mid_ms']:.1f} ms (middle page) at {args.objects:,}: "
                f"{max(result['page_big_ms'], result['page_mid_ms']) / result['page_1k_ms']:.2f}"
                "x (target <= 2x)"
            )
            print(
                f"[{name}] match[type]=report (one object in {BATCH:,}): {result['reports']} "
                f"objects in {result['reports_ms']:.1f} ms"
            )
            print(
                f"[{name}] server worker RSS {result['rss_before']:.0f} MB before the walk, "
                f"max {result['rss_max']:.0f} MB during it (target < 300 MB)"
            )
        m_count, m_seconds = medallion_walk(args.medallion_objects, work, args.port + 1)
        m_rate = m_count / m_seconds
        print(
            f"[medallion memory] walk of {m_count:,} objects in {m_seconds:.1f} s = "
            f"{m_rate:,.0f} objects/s"
        )
        for result in results:
            print(
                f"[{result['store']}] {result['rate'] / m_rate:,.0f}x medallion's memory "
                f"backend rate (its rate at {m_count:,} objects, ours at "
                f"{result['objects']:,})"
            )
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
