"""Load benchmark: 50 partner pollers against ``spampots serve`` while batches are published.

    .venv/bin/python bench/load_bench.py --work /tmp/load-bench --keep --prefill-only
    flock /tmp/team/bench.lock .venv/bin/python bench/load_bench.py --work /tmp/load-bench --keep

1. ``--objects`` generated feed objects (bench/taxii_data.py) in one collection of a
   PostgreSQL schema (or SQLite), loaded once and kept with ``--keep``;
2. ``spampots serve`` under gunicorn (``--workers`` processes, 4 threads each), an argon2id
   account at the production cost (the remembered check carries the walks);
3. for ``--seconds``, ``--pollers`` taxii2-client pollers (Basic auth, 1,000-object pages) in
   ``--processes`` processes, while a publisher adds a batch of ``--batch`` new objects every
   ``--publish-every`` seconds through ``add_objects`` (the publisher's write path). Half the
   pollers follow ``next`` from where they start, half ask again with ``added_after`` = the
   previous page's ``X-TAXII-Date-Added-Last``; a quarter of each kind start near the end of the
   collection, so that they reach it and keep polling for what is published meanwhile, the
   others at a random place. A walk that ends (no ``more``) goes on with ``added_after``.

Exactly once, checked after the run against the store: for each poller, the ids it received,
in order, are exactly the ids of the collection's objects whose ``date_added`` lies between the
first and the last ``date_added`` it saw (the headers of its first and last pages), in
``date_added`` order: no duplicate, no gap, nothing out of order, objects published during the
run included. (The bench's batches hold new objects only; a real batch also adds the producer's
identity and markings again, which move to their new ``date_added`` as TAXII says and are seen
again by a walker that reaches them.) Any HTTP error or exception is an error.

Reported: errors, pages, objects, the per-page latency (p50, p99, max over every request), the
server's RSS (master plus workers, sampled every 0.5 s) and CPU-seconds, the pollers'
CPU-seconds, and the load average before and after.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from taxii2client.v21 import Collection

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from taxii_data import generate_objects  # noqa: E402
from taxii_walk import PASSWORD, children, load, partners_file, rss_mb, wait_until_up  # noqa: E402

from feeds.home import engine_for, init_home  # noqa: E402
from feeds.settings import load_settings  # noqa: E402
from feeds.store import write_transaction  # noqa: E402
from taxii_server.objects import add_objects, format_us, object_counts, taxii_objects  # noqa: E402

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SCHEMA = "bench_faults"
PAGE = 1000
USER = "twcert"


@dataclass
class Poll:
    """One poller's walk: what it saw, folded into a digest of the ids in order."""

    number: int
    kind: str  # next or added_after
    start: str | None  # the added_after it began with
    first_us: str | None = None  # X-TAXII-Date-Added-First of its first non-empty page
    last_us: str | None = None  # X-TAXII-Date-Added-Last of its last non-empty page
    objects: int = 0
    pages: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ids_sha256: str = ""


def _poll(
    number: int, kind: str, start: str | None, base: str, collection_id: str, until: float
) -> Poll:
    poll = Poll(number, kind, start)
    collection = Collection(
        f"{base}/feeds/collections/{collection_id}/", user=USER, password=PASSWORD
    )
    headers: dict[str, str] = {}

    def keep_headers(response: Any, *args: Any, **kwargs: Any) -> None:
        headers.clear()
        headers.update(response.headers)

    collection._conn.session.hooks["response"].append(keep_headers)
    digest = hashlib.sha256()
    added_after = start
    token = ""
    while time.monotonic() < until:
        query: dict[str, Any] = {"limit": PAGE}
        if kind == "next" and token:
            query["next"] = token
        elif added_after:
            query["added_after"] = added_after
        began = time.perf_counter()
        try:
            envelope = collection.get_objects(**query)
        except Exception as error:  # every failure is counted, none stops the run
            poll.errors.append(f"{type(error).__name__}: {error}"[:300])
            time.sleep(0.5)
            continue
        poll.latencies.append(time.perf_counter() - began)
        poll.pages += 1
        objects = envelope.get("objects", [])
        if objects:
            first, last = headers["X-TAXII-Date-Added-First"], headers["X-TAXII-Date-Added-Last"]
            if poll.first_us is None:
                poll.first_us = first
            poll.last_us = last
            for obj in objects:
                digest.update(obj["id"].encode() + b"\n")
            poll.objects += len(objects)
            added_after = last
        token = envelope.get("next", "") if envelope.get("more") else ""
        if not objects:
            time.sleep(0.5)  # at the end: poll again for what is published
    poll.ids_sha256 = digest.hexdigest()
    return poll


def poller_process(
    plan: list[tuple[int, str, str | None]], base: str, collection_id: str, until_wall: float
) -> tuple[list[Poll], float]:
    """Runs its share of the pollers in threads; returns their walks and its CPU-seconds."""
    until = time.monotonic() + (until_wall - time.time())
    results: list[Poll] = []
    lock = threading.Lock()

    def run(number: int, kind: str, start: str | None) -> None:
        poll = _poll(number, kind, start, base, collection_id, until)
        with lock:
            results.append(poll)

    threads = [threading.Thread(target=run, args=item) for item in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return results, usage.ru_utime + usage.ru_stime


class Publisher(threading.Thread):
    """Adds a batch of new objects every ``every`` seconds, each batch one transaction."""

    def __init__(self, url: str, collection_id: str, batch: int, every: float, until: float):
        super().__init__(daemon=True)
        self.url, self.collection_id, self.batch = url, collection_id, batch
        self.every, self.until = every, until
        self.added = 0
        self.batches = 0
        self.errors: list[str] = []

    def run(self) -> None:
        engine = engine_for(self.url)
        objects = generate_objects(10_000_000, seed=99, batch=self.batch, first_source=5_000_000)
        while time.monotonic() < self.until:
            began = time.monotonic()
            items = [item for _, item in zip(range(self.batch), objects, strict=False)]
            try:
                with write_transaction(engine) as connection:
                    add_objects(connection, self.collection_id, items)
            except Exception as error:
                self.errors.append(f"{type(error).__name__}: {error}"[:300])
            else:
                self.added += len(items)
                self.batches += 1
            time.sleep(max(0.0, self.every - (time.monotonic() - began)))


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


class ServerWatch(threading.Thread):
    """The server's RSS (master plus workers) every 0.5 s, and each process's CPU-seconds."""

    def __init__(self, master: int) -> None:
        super().__init__(daemon=True)
        self.master = master
        self.running = True
        self.rss: list[float] = []
        self.worker_rss: list[float] = []
        self.cpu: dict[int, float] = {}

    def sample(self) -> None:
        pids = [self.master, *children(self.master)]
        sizes = []
        for pid in pids:
            try:
                sizes.append(rss_mb(pid))
                self.cpu[pid] = process_cpu(pid)
            except OSError:
                continue
        self.rss.append(sum(sizes))
        self.worker_rss.append(max(sizes[1:], default=0.0))

    def run(self) -> None:
        while self.running:
            self.sample()
            time.sleep(0.5)


def store_url(args: argparse.Namespace, work: Path) -> str:
    if args.store == "sqlite":
        return f"sqlite:///{work}/store.db"
    admin = sa.create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        if not (args.keep and (work / "var").exists()):
            connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    admin.dispose()
    return f"{args.postgres_url}?options=-csearch_path%3D{SCHEMA}"


def drop_schema(args: argparse.Namespace) -> None:
    if args.store != "postgresql":
        return
    admin = sa.create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
    admin.dispose()


def prepare(args: argparse.Namespace, work: Path, url: str) -> tuple[dict[str, str], str]:
    partners = work / "partners.yaml"
    if not partners.exists():
        partners_file(partners)
    env = {
        "SPAMPOTS_HOME": str(work / "var"),
        "SPAMPOTS_DATABASE_URL": url,
        "SPAMPOTS_PARTNERS": str(partners),
        "SPAMPOTS_MAX_PAGE_SIZE": str(PAGE),
        "SPAMPOTS_LOG_LEVEL": "WARNING",
    }
    settings = load_settings(env)
    init_home(settings)
    from feeds.partners import load_partners

    collection = load_partners(partners).collection("twcert-originating")
    assert collection is not None
    engine = engine_for(url)
    with engine.connect() as connection:
        count = object_counts(connection).get(collection.id, 0)
    if count < args.objects:
        if count:
            raise SystemExit(f"the kept store holds {count:,} objects: remove {work} first")
        began = time.perf_counter()
        rate = load(engine, collection.id, args.objects, seed=1)
        print(
            f"loaded {args.objects:,} objects at {rate:,.0f} objects/s "
            f"({time.perf_counter() - began:.0f} s)"
        )
    engine.dispose()
    return env, collection.id


def dates(url: str, collection_id: str) -> list[int]:
    """date_added of every current object in the collection, in order."""
    t = taxii_objects.c
    engine = engine_for(url)
    with engine.connect() as connection:
        found = list(
            connection.execute(
                sa.select(t.date_added_us)
                .where(t.collection_id == collection_id, t.is_last == sa.true())
                .order_by(t.date_added_us)
            ).scalars()
        )
    engine.dispose()
    return found


def plan_pollers(args: argparse.Namespace, known: list[int]) -> list[tuple[int, str, str | None]]:
    """(number, kind, added_after to start with); a quarter of each kind near the end."""
    rng = random.Random(args.seed)
    plan = []
    tail = max(1, len(known) - args.tail_objects)
    for number in range(args.pollers):
        kind = "next" if number % 2 == 0 else "added_after"
        near_end = (number // 2) % 4 == 0
        position = rng.randrange(tail, len(known)) if near_end else rng.randrange(len(known))
        start = format_us(known[position - 1]) if position > 0 else None
        plan.append((number, kind, start))
    return plan


def check(url: str, collection_id: str, polls: list[Poll]) -> list[str]:
    """The exactly-once check (module docstring); one line per poller that fails it."""
    from taxii_server.objects import parse_timestamp

    t = taxii_objects.c
    engine = engine_for(url)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(t.date_added_us, t.object_id)
            .where(t.collection_id == collection_id, t.is_last == sa.true())
            .order_by(t.date_added_us)
        ).all()
    engine.dispose()
    keys = [row[0] for row in rows]
    ids = [row[1] for row in rows]
    problems = []
    for poll in polls:
        if poll.first_us is None or poll.last_us is None:
            problems.append(f"poller {poll.number} saw no object")
            continue
        low = bisect.bisect_left(keys, parse_timestamp(poll.first_us))
        high = bisect.bisect_right(keys, parse_timestamp(poll.last_us))
        expected = hashlib.sha256("".join(i + "\n" for i in ids[low:high]).encode()).hexdigest()
        if high - low != poll.objects or expected != poll.ids_sha256:
            problems.append(
                f"poller {poll.number} ({poll.kind}): {poll.objects:,} objects received, the "
                f"store holds {high - low:,} in {poll.first_us}..{poll.last_us}"
                + ("" if high - low != poll.objects else ", other ids or another order")
            )
    return problems


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(args: argparse.Namespace, work: Path, url: str) -> int:
    env, collection_id = prepare(args, work, url)
    if args.prefill_only:
        return 0
    known = dates(url, collection_id)
    plan = plan_pollers(args, known)
    server_log = (work / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "feeds.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
            "--workers",
            str(args.workers),
        ],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SPAMPOTS_")}, **env},
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{args.port}"
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    try:
        wait_until_up(base, process)
        watch = ServerWatch(process.pid)
        watch.sample()
        cpu_before = sum(watch.cpu.values())
        watch.start()
        until_wall = time.time() + args.seconds
        publisher = Publisher(
            url, collection_id, args.batch, args.publish_every, time.monotonic() + args.seconds
        )
        began = time.perf_counter()
        publisher.start()
        shares = [plan[i :: args.processes] for i in range(args.processes)]
        context = multiprocessing.get_context("fork")
        with context.Pool(args.processes) as pool:
            outputs = pool.starmap(
                poller_process, [(share, base, collection_id, until_wall) for share in shares]
            )
        wall = time.perf_counter() - began
        publisher.join()
        watch.running = False
        watch.join()
        watch.sample()
        server_cpu = sum(watch.cpu.values()) - cpu_before
        load_after = Path("/proc/loadavg").read_text().split()[:3]
    finally:
        process.terminate()
        process.communicate(timeout=30)
    polls = [poll for share, _ in outputs for poll in share]
    client_cpu = sum(cpu for _, cpu in outputs)
    latencies = [seconds for poll in polls for seconds in poll.latencies]
    errors = [f"poller {p.number}: {e}" for p in polls for e in p.errors] + publisher.errors
    problems = check(url, collection_id, polls)
    objects = sum(p.objects for p in polls)
    pages = sum(p.pages for p in polls)
    new_seen = sum(1 for p in polls if p.last_us and p.last_us > format_us(known[-1]))
    print(
        f"collection: {len(known):,} objects at the start, {publisher.added:,} published "
        f"during the run in {publisher.batches} batches of {args.batch}"
    )
    print(
        f"{args.pollers} pollers in {args.processes} processes, {args.seconds:.0f} s "
        f"(wall {wall:.1f} s), server: {args.workers} gunicorn workers x 4 threads"
    )
    print(f"errors: {len(errors)}")
    for line in errors[:10]:
        print("  " + line)
    print(
        f"pages: {pages:,}, objects: {objects:,} ({objects / wall:,.0f} objects/s), "
        f"pollers that reached objects published during the run: {new_seen}"
    )
    print(
        f"page latency: p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    print(f"exactly once: {'yes, every poller' if not problems else 'NO'}")
    for line in problems[:10]:
        print("  " + line)
    print(
        f"server RSS (master + workers): max {max(watch.rss):.0f} MB; largest worker "
        f"{max(watch.worker_rss):.0f} MB"
    )
    print(
        f"CPU-seconds: server {server_cpu:.1f} ({objects / max(server_cpu, 1e-9):,.0f} "
        f"objects per server CPU-second), pollers {client_cpu:.1f}"
    )
    print(f"load average: {' '.join(load_before)} before, {' '.join(load_after)} after")
    return 1 if errors or problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--batch", type=int, default=1000, help="objects per published batch")
    parser.add_argument("--publish-every", type=float, default=2.0)
    parser.add_argument(
        "--tail-objects",
        type=int,
        default=20_000,
        help="pollers 'near the end' start within this many of the last object",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=6299)
    parser.add_argument("--work", help="work folder (default: a temporary one, removed)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work folder and schema, to rerun without loading again",
    )
    parser.add_argument("--prefill-only", action="store_true")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="load-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    url = store_url(args, work)
    try:
        code = run(args, work, url)
    finally:
        if not args.keep:
            drop_schema(args)
            if not args.work:
                shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
