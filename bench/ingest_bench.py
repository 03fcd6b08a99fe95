"""Ingest benchmark: generated spool -> committed SQLite store, end to end.

    .venv/bin/python bench/ingest_bench.py [--messages 1000000] [--workers 1,2]

Generates the data once (deterministic, seed 1: about one seed-day at 1,000,000 messages),
then for each worker count ingests it into a fresh store and data folder and prints
messages/s, CPU seconds and peak RSS. Beside it, the ceiling: the stdlib compat32 parser alone
over the same raw messages (read from disk outside the timer), and the ratio of the two.
Targets (issue 4): >= 2,500 messages/s with one worker, >= 1.7x that with two, RSS < 500 MB.

On a shared machine, split it so that each measured step holds the bench lock briefly:

    nice -n 10 .venv/bin/python bench/ingest_bench.py --generate-only
    flock $LOCK .venv/bin/python bench/ingest_bench.py --reuse --workers ""
    flock $LOCK .venv/bin/python bench/ingest_bench.py --reuse --no-ceiling --workers 1
    flock $LOCK .venv/bin/python bench/ingest_bench.py --reuse --no-ceiling --workers 2

(``LOCK=/tmp/team/bench.lock``). ``--reuse`` takes the data (and the last ceiling) that a run
before left in ``--dir``.
"""

from __future__ import annotations

import argparse
import base64
import email
import gzip
import json
import resource
import shutil
import subprocess
import sys
import time
from email.policy import compat32
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from feeds.generator import generate  # noqa: E402
from feeds.home import init_home  # noqa: E402
from feeds.ingest import ingest_run  # noqa: E402
from feeds.settings import load_settings  # noqa: E402


def raw_messages(spool: Path, batches: list[Path]):  # type: ignore[no-untyped-def]
    """Each message record's raw bytes, as ingest will read them."""
    for batch in batches:
        opener = gzip.open if batch.name.endswith(".gz") else open
        with opener(batch, "rb") as handle:
            for line in handle:
                record = orjson.loads(line)
                if record.get("type") != "message":
                    continue
                if "raw_b64" in record:
                    yield base64.b64decode(record["raw_b64"])
                else:
                    yield (spool / "raw" / f"{record['raw_sha256']}.eml").read_bytes()


def ceiling(spool: Path, batches: list[Path]) -> tuple[int, float, float]:
    """Messages, wall seconds and CPU seconds of compat32 parsing alone (reading excluded)."""
    count, elapsed, cpu = 0, 0.0, 0.0
    for raw in raw_messages(spool, batches):
        start, cpu_start = time.perf_counter(), time.process_time()
        email.message_from_bytes(raw, policy=compat32)
        elapsed += time.perf_counter() - start
        cpu += time.process_time() - cpu_start
        count += 1
    return count, elapsed, cpu


def reset(work: Path) -> None:
    """A fresh store and data folder; the spool's batches back in incoming/."""
    home = work / "home"
    for path in (home / "spampots.db", home / "spampots.db-wal", home / "spampots.db-shm"):
        path.unlink(missing_ok=True)
    shutil.rmtree(home / "raw", ignore_errors=True)
    done = home / "spool" / "done"
    if done.is_dir():
        for batch in sorted(done.rglob("*.jsonl*")):
            target = home / "spool" / "incoming" / batch.relative_to(done)
            target.parent.mkdir(parents=True, exist_ok=True)
            batch.replace(target)
        shutil.rmtree(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/spampots-ingest-bench"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--generate-only", action="store_true", help="make the data, stop")
    parser.add_argument("--reuse", action="store_true", help="the data a run before left in --dir")
    parser.add_argument("--no-ceiling", action="store_true", help="the last ceiling measured")
    parser.add_argument("--ingest-only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest_only:
        ingest_only(args.dir, args.ingest_only)
        return

    work = args.dir
    saved = work / "bench.json"
    if args.reuse and saved.is_file():
        state = json.loads(saved.read_text())
        reset(work)
        print(f"reusing {state['emails']:,} generated messages in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
        start = time.perf_counter()
        data = generate(
            work / "home" / "spool", work / "mmdb", args.messages, seed=args.seed, batch_lines=5000
        )
        print(
            f"generated {data.expected.emails:,} messages, {data.expected.sessions:,} sessions "
            f"in {len(data.batches)} batches ({time.perf_counter() - start:.0f} s)"
        )
        state = {"emails": data.expected.emails, "distinct_raw": len(data.expected.raw_messages)}
        saved.write_text(json.dumps(state))
    if args.generate_only:
        return
    spool = work / "home" / "spool"
    batches = sorted((spool / "incoming").rglob("*.jsonl*"))
    emails = int(state["emails"])
    print(f"load average {_load()}")

    if not args.no_ceiling or "ceiling" not in state:
        count, parse_seconds, parse_cpu = ceiling(spool, batches)
        state["ceiling"] = {"rate": count / parse_seconds, "per_cpu": count / parse_cpu}
        saved.write_text(json.dumps(state))
        print(
            f"ceiling: compat32 parse alone {count / parse_seconds:,.0f} messages/s, "
            f"{count / parse_cpu:,.0f} per CPU-second ({count:,} messages, "
            f"{parse_cpu:.1f} CPU-s; load average after: {_load()})"
        )
    parse_rate = state["ceiling"]["rate"]

    rates: dict[int, float] = {}
    for workers in [int(w) for w in args.workers.split(",") if w]:
        reset(work)
        # Each run in its own process, so that its peak RSS is its own.
        result = subprocess.run(
            [sys.executable, __file__, "--ingest-only", str(workers), "--dir", str(work)],
            capture_output=True,
            text=True,
            check=True,
        )
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        rate = emails / figures["seconds"]
        rates[workers] = rate
        print(
            f"workers={workers}: {rate:,.0f} messages/s end to end "
            f"({figures['seconds']:.1f} s wall, {figures['cpu']:.1f} s CPU, "
            f"{emails / figures['cpu']:,.0f} messages per CPU-second, "
            f"{figures['accepted']:,} records accepted; the writer wrote "
            f"{figures['written'] / emails / 1024:.1f} KB per message to disk); "
            f"peak RSS main "
            f"{figures['rss_main']:.0f} MB, largest worker {figures['rss_worker']:.0f} MB; "
            f"ratio to the parse ceiling {rate / parse_rate:.2f} "
            f"(per CPU-second {emails / figures['cpu'] / state['ceiling']['per_cpu']:.2f}); "
            f"load average after: {_load()}"
        )
        state[f"workers_{workers}"] = {"rate": rate, **figures}
        saved.write_text(json.dumps(state))
    one = rates.get(1) or state.get("workers_1", {}).get("rate")
    for workers, rate in rates.items():
        if workers != 1 and one:
            print(
                f"speed-up with {workers} workers: {rate / one:.2f}x (over the last 1-worker run)"
            )


def ingest_only(work: Path, workers: int) -> None:
    env = {
        "SPAMPOTS_HOME": str(work / "home"),
        "SPAMPOTS_DATABASE_URL": f"sqlite:///{work}/home/spampots.db",
        "SPAMPOTS_PARTNERS": str(REPO / "partners.yaml"),
        "SPAMPOTS_COUNTRY_MMDB": str(work / "mmdb" / "country-maxmind.mmdb"),
        "SPAMPOTS_ASN_MMDB": str(work / "mmdb" / "asn-maxmind.mmdb"),
    }
    settings = load_settings(env)
    init_home(settings)
    run = ingest_run(settings, workers=workers)
    cpu_before, written_before = _cpu(), _written()
    start = time.perf_counter()
    reports = run.run()
    elapsed = time.perf_counter() - start
    figures = {
        "seconds": elapsed,
        "cpu": _cpu() - cpu_before,
        "written": _written() - written_before,
        "accepted": sum(r.accepted for r in reports),
        "rss_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    print(json.dumps(figures))


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _written() -> int:
    """Bytes this process has had written to the disk (Linux; 0 where unknown)."""
    try:
        io = Path("/proc/self/io").read_text()
    except OSError:
        return 0
    return next(
        (int(line.split()[1]) for line in io.splitlines() if line.startswith("write_bytes")), 0
    )


if __name__ == "__main__":
    main()
