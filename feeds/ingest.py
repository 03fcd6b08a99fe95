"""The ingest stage: spool batches -> checked, parsed, enriched rows in the store.

How it stays exact under crashes: a batch is identified by the SHA-256 of its file; its row in
``ingest_batches`` records how many lines are in the store (``lines_done``), and every chunk of
lines is written in ONE transaction together with that progress. Killed at any moment, the next
run resumes after the last committed chunk, so nothing is lost or counted twice; a batch marked
done is only moved to ``done/`` (again). Rows are also unique per sensor and session id
(sessions) and per sensor, session and raw digest (messages), so a batch sent twice under
another name adds nothing either.

How it goes fast: worker processes check, parse, enrich and keep raw messages; the main process
only writes, with executemany, one transaction per chunk. Writers are serialised (SQLite's
write lock; an advisory lock on PostgreSQL), which also keeps ``messages.id`` in commit order:
the watermark later stages keep.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime as dt
import functools
import hashlib
import multiprocessing.util
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from feeds.batches import (
    BatchReadError,
    MessageRecord,
    RecordError,
    SessionRecord,
    batch_digest,
    check_digest,
    decode_inline,
    find_batches,
    ingest_batches,
    is_batch_name,
    parse_record,
    quarantine,
    read_lines,
    verbatim,
)
from feeds.enrich import NO_ANSWER, Answer, Enricher, EnrichmentConfig, SourceIds, ip_key
from feeds.errors import StoreError, UsageError
from feeds.gc_pace import bulk_pace_for_good, fewer_collections
from feeds.messages import (
    DEFAULT_LIMITS,
    MessageLimits,
    ParsedMessage,
    clean_text,
    domain_key,
    parse_message,
    recipient_domain,
    registrable_domain,
    url_host,
)
from feeds.partners import PartnersConfig
from feeds.rawstore import RawPacks
from feeds.store import bulk_insert, write_transaction
from feeds.store.captures import message_domains, message_urls, messages, sessions, urls

CHUNK_LINES = 1000
_PG_INGEST_LOCK = 0x5350_4D49  # "SPMI": serialises ingest writers on PostgreSQL


# -- preparing a chunk (in a worker process) ----------------------------------------------


@dataclass
class PreparedMessage:
    row: dict[str, Any]
    domains: dict[str, int]
    urls: list[tuple[str, str, str, str]]  # sha256, url, host, registrable domain


@dataclass
class Prepared:
    """One chunk of lines, checked and turned into rows; nothing written to the store yet."""

    last_line: int
    sessions: list[dict[str, Any]] = field(default_factory=list)
    messages: list[PreparedMessage] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # line, reason, record


@dataclass
class _WorkerState:
    enricher: Enricher
    spool_raw: Path
    packs: RawPacks
    parsed: collections.OrderedDict[str, ParsedMessage]
    limits: MessageLimits = DEFAULT_LIMITS


_state: _WorkerState | None = None


def _init_worker(
    config: EnrichmentConfig,
    spool_raw: Path,
    raw_dir: Path,
    limits: MessageLimits = DEFAULT_LIMITS,
) -> None:
    global _state
    if _state is not None:
        _state.packs.close()
    packs = RawPacks(raw_dir)
    _state = _WorkerState(Enricher(config), spool_raw, packs, collections.OrderedDict(), limits)


def _init_pool_worker(*args: Any) -> None:
    bulk_pace_for_good()
    _init_worker(*args)
    assert _state is not None
    # A pool's worker ends through multiprocessing's exit handlers, not the interpreter's.
    multiprocessing.util.Finalize(_state.packs, _state.packs.close, exitpriority=10)


def _close_worker() -> None:
    global _state
    if _state is not None:
        _state.packs.close()
        _state = None


def prepare_chunk(lines: list[tuple[int, bytes]], last_line: int) -> Prepared:
    """Check, parse and enrich ``lines``; raw messages are kept in the data folder."""
    assert _state is not None, "_init_worker first"
    prepared = Prepared(last_line)
    raws: dict[str, bytes] = {}
    pending = 0
    for number, line in lines:
        try:
            record = parse_record(line)
            if isinstance(record, SessionRecord):
                prepared.sessions.append(_session_row(record, number))
            else:
                raw = _raw_of(record, _state)
                prepared.messages.append(_message_row(record, raw, number, _state))
                if record.raw_sha256 not in raws:
                    raws[record.raw_sha256] = raw
                    pending += len(raw)
                    if pending > _PENDING_RAW_BYTES:
                        _keep(raws, _state)
                        raws, pending = {}, 0
        except RecordError as error:
            prepared.rejected.append((number, error.reason, verbatim(line)))
    _keep(raws, _state)  # before the rows that name them can be committed
    return prepared


_PENDING_RAW_BYTES = 32 << 20  # a chunk of huge messages is kept in parts, memory stays flat


def _keep(raws: dict[str, bytes], state: _WorkerState) -> None:
    try:
        state.packs.keep(raws)
    except (OSError, sqlite3.Error) as error:
        raise StoreError(
            f"cannot keep raw messages in {state.packs.raw_dir}: {error}",
            hint="check the free space and permissions of the data folder, then ingest again",
        ) from None


def _one_line(text: str) -> str:
    """No CR or LF: an envelope address never carries a header into a later use of it."""
    return text.replace("\r", " ").replace("\n", " ")


@functools.lru_cache(maxsize=65536)
def _stored_domain(domain: str) -> str:
    """A recipient domain as stored (recipients of one message share a few domains)."""
    return _one_line(clean_text(domain))[:255]


def _session_row(record: SessionRecord, line: int) -> dict[str, Any]:
    assert _state is not None
    answer = _state.enricher.lookup(record.src_ip)
    return {
        "sensor": record.sensor,
        "session_id": record.session_id,
        "ts": record.ts,
        "src_ip": record.src_ip,
        "src_port": record.src_port,
        "src_cc": answer.cc,
        "src_asn": answer.asn,
        "service": record.service,
        "listen_port": record.listen_port,
        "dst_host": record.dst_host,
        "dst_port": record.dst_port,
        "result": record.result,
        "error": clean_text(record.error) if record.error else record.error,
        "line": line,
    }


def _raw_of(record: MessageRecord, state: _WorkerState) -> bytes:
    if record.raw_b64 is not None:
        return decode_inline(record)
    try:
        with open(f"{state.spool_raw}/{record.raw_sha256}.eml", "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise RecordError(
            f"field 'raw_sha256': raw message raw/{record.raw_sha256}.eml is not in the spool"
        ) from None
    except OSError as error:  # unreadable (permissions, a folder): staff fix it, then retry
        raise RecordError(
            f"field 'raw_sha256': cannot read raw/{record.raw_sha256}.eml: {error.strerror}"
        ) from None
    check_digest(record, raw, f"raw/{record.raw_sha256}.eml")
    return raw


def _parsed(raw: bytes, digest: str, state: _WorkerState) -> ParsedMessage:
    cached = state.parsed.get(digest)
    if cached is None:
        cached = state.parsed[digest] = parse_message(raw, state.limits)
        if len(state.parsed) > 2000:
            state.parsed.popitem(last=False)
    return cached


def _message_row(
    record: MessageRecord, raw: bytes, line: int, state: _WorkerState
) -> PreparedMessage:
    parsed = _parsed(raw, record.raw_sha256, state)
    src = state.enricher.lookup(record.src_ip)
    dst: Answer = state.enricher.lookup(record.dst_ip) if record.dst_ip else NO_ANSWER
    dst_host = record.dst_host.lower().rstrip(".") if record.dst_host else None
    domains: dict[str, int] = {}
    for address in record.rcpt_to:
        domain = _stored_domain(recipient_domain(address))
        if domain:
            domains[domain] = domains.get(domain, 0) + 1
    found_urls = []
    for url in parsed.urls:
        host = url_host(url) or ""
        found_urls.append(
            (
                hashlib.sha256(url.encode()).hexdigest(),
                url,
                host[:255],
                registrable_domain(host)[:255],
            )
        )
    row = {
        "sensor": record.sensor,
        "session_id": record.session_id,
        "ts": record.ts,
        "src_ip": record.src_ip,
        "src_ip_key": ip_key(record.src_ip),
        "src_cc": src.cc,
        "src_asn": src.asn,
        "src_as_name": src.as_name,
        "src_cc_source": src.cc_source,
        "src_asn_source": src.asn_source,
        "dst_host": dst_host,
        "dst_host_rev": domain_key(dst_host) if dst_host else None,
        "dst_ip": record.dst_ip,
        "dst_ip_key": ip_key(record.dst_ip) if record.dst_ip else None,
        "dst_cc": dst.cc,
        "dst_asn": dst.asn,
        "dst_as_name": dst.as_name,
        "dst_cc_source": dst.cc_source,
        "dst_asn_source": dst.asn_source,
        "dst_port": record.dst_port,
        "mail_from": _one_line(clean_text(record.mail_from)),
        "rcpt_count": len(record.rcpt_to),
        "rcpt_to": orjson.dumps(record.rcpt_to).decode(),
        "raw_sha256": record.raw_sha256,
        "raw_size": len(raw),
        "truncated": record.truncated,
        "header_from": parsed.header_from,
        "subject": parsed.subject,
        "header_date": parsed.header_date,
        "message_id": parsed.message_id,
        "content_types": ",".join(parsed.content_types),
        "charsets": ",".join(parsed.charsets),
        "languages": ",".join(parsed.languages),
        "defects": parsed.defects,
        "line": line,
    }
    return PreparedMessage(row, domains, found_urls)


# -- writing a chunk (in the main process) ------------------------------------------------


@dataclass
class ChunkCounts:
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0


class _Writer:
    """Writes prepared chunks; remembers enrichment source ids and URL ids between chunks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sources = SourceIds()
        self.url_ids: dict[str, int] = {}

    def transaction(self) -> contextlib.AbstractContextManager[Connection]:
        return ingest_transaction(self.engine)

    def store(self, connection: Connection, batch_id: int, prepared: Prepared) -> ChunkCounts:
        """Insert the chunk's sessions and messages; returns accepted and duplicate counts."""
        counts = ChunkCounts(accepted=len(prepared.sessions) + len(prepared.messages))
        if prepared.sessions:
            first = _next_id(connection, sessions)
            rows = [
                {**row, "id": first + i, "batch_id": batch_id}
                for i, row in enumerate(prepared.sessions)
            ]
            bulk_insert(connection, sessions, rows, ignore=True)
            counts.duplicates += len(rows) - _count_from(connection, sessions, first)
        if prepared.messages:
            counts.duplicates += self._store_messages(connection, batch_id, prepared.messages)
        return counts

    def _store_messages(
        self, connection: Connection, batch_id: int, prepared: list[PreparedMessage]
    ) -> int:
        first = _next_id(connection, messages)
        rows = []
        for i, message in enumerate(prepared):
            row = dict(message.row, id=first + i, batch_id=batch_id)
            for column in ("src_cc_source", "src_asn_source", "dst_cc_source", "dst_asn_source"):
                row[column] = self.sources.id_for(connection, row[column])
            rows.append(row)
        bulk_insert(connection, messages, rows, ignore=True)
        stored = set(
            connection.execute(sa.select(messages.c.id).where(messages.c.id >= first)).scalars()
        )
        domain_rows: list[dict[str, Any]] = []
        url_links: list[tuple[int, tuple[str, str, str, str]]] = []
        for i, message in enumerate(prepared):
            message_id = first + i
            if message_id not in stored:
                continue
            domain_rows.extend(
                {
                    "message_id": message_id,
                    "domain": domain,
                    "domain_rev": domain_key(domain),
                    "recipients": count,
                }
                for domain, count in message.domains.items()
            )
            url_links.extend((message_id, url) for url in message.urls)
        if domain_rows:
            bulk_insert(connection, message_domains, domain_rows)
        if url_links:
            self._store_urls(connection, url_links)
        return len(prepared) - len(stored)

    def _store_urls(
        self, connection: Connection, links: list[tuple[int, tuple[str, str, str, str]]]
    ) -> None:
        wanted = {url[0] for _, url in links if url[0] not in self.url_ids}
        for part in _slices(sorted(wanted), 500):
            found = connection.execute(
                sa.select(urls.c.sha256, urls.c.id).where(urls.c.sha256.in_(part))
            )
            self.url_ids.update({sha: int(url_id) for sha, url_id in found})
        next_id = _next_id(connection, urls)
        new_rows = []
        link_rows = {}
        for message_id, (sha, url, host, domain) in links:
            url_id = self.url_ids.get(sha)
            if url_id is None:
                url_id = self.url_ids[sha] = next_id
                next_id += 1
                new_rows.append(
                    {
                        "id": url_id,
                        "sha256": sha,
                        "url": url,
                        "host": host,
                        "domain": domain,
                        "first_message_id": message_id,
                    }
                )
            link_rows[(message_id, url_id)] = {
                "message_id": message_id,
                "url_id": url_id,
                "domain": domain,
            }
        if new_rows:
            bulk_insert(connection, urls, new_rows)
        bulk_insert(connection, message_urls, list(link_rows.values()))
        if len(self.url_ids) > 500_000:
            self.url_ids.clear()

    def forget(self) -> None:
        """Ids cached from a transaction that rolled back may not exist."""
        self.sources.forget()
        self.url_ids.clear()


@contextlib.contextmanager
def ingest_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction holding ingest's lock: captures have one writer at a time (on
    SQLite the write lock does it; on PostgreSQL an advisory lock of the transaction)."""
    with write_transaction(engine) as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_INGEST_LOCK}
            )
        yield connection


def _next_id(connection: Connection, table: sa.Table) -> int:
    current = connection.execute(sa.select(sa.func.max(table.c.id))).scalar()
    return int(current or 0) + 1


def _count_from(connection: Connection, table: sa.Table, first: int) -> int:
    query = sa.select(sa.func.count()).select_from(table).where(table.c.id >= first)
    return int(connection.execute(query).scalar_one())


def _slices(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- the stage ----------------------------------------------------------------------------


@dataclass
class BatchReport:
    name: str
    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    status: str = "ingested"  # ingested | already ingested | failed
    error: str = ""

    def line(self) -> str:
        if self.status == "failed":
            return f"{self.name}: FAILED after {self.read} records: {self.error}"
        note = " (already ingested: nothing added)" if self.status == "already ingested" else ""
        dupes = f", {self.duplicates} already in the store" if self.duplicates else ""
        return (
            f"{self.name}: read {self.read}, accepted {self.accepted}, "
            f"quarantined {self.quarantined}{dupes}{note}"
        )


@dataclass
class IngestRun:
    engine: Engine
    spool: Path
    raw_dir: Path
    enrichment: EnrichmentConfig
    workers: int = 1
    chunk_lines: int = CHUNK_LINES
    on_chunk: Callable[[str, int], None] | None = None  # tests and progress output
    message_limits: MessageLimits = DEFAULT_LIMITS

    def run(self, paths: Iterable[Path] | None = None) -> list[BatchReport]:
        batches = list(paths) if paths is not None else find_batches(self.spool / "incoming")
        writer = _Writer(self.engine)
        reports = []
        with fewer_collections(), self._preparer() as prepare:
            # One stream of chunks over all the batches: the workers read and prepare the next
            # batch's first chunks while this one's last are written, never waiting at its end.
            for chunk, prepared in prepare(self._batch_chunks(batches)):
                batch: _BatchInRun = chunk.tag
                if prepared is not None:
                    assert batch.batch_id is not None, "a batch's chunks come after its claim"
                    self._write(writer, batch.batch_id, prepared)
                    if self.on_chunk:
                        self.on_chunk(batch.report.name, prepared.last_line)
                else:
                    reports.append(self._end_batch(batch))
        return reports

    def _preparer(self) -> Any:
        spool_raw = self.spool / "raw"
        if self.workers <= 1:
            _init_worker(self.enrichment, spool_raw, self.raw_dir, self.message_limits)
            return _InProcess()
        return _Pool(self.workers, (self.enrichment, spool_raw, self.raw_dir, self.message_limits))

    def _name(self, path: Path) -> str:
        try:
            return path.resolve().relative_to((self.spool / "incoming").resolve()).as_posix()
        except ValueError:
            return str(path)

    def _batch_chunks(self, paths: Iterable[Path]) -> Iterator[Chunk]:
        """Each batch's chunks still to write, then a chunk without lines that ends it."""
        for path in paths:
            batch = _BatchInRun(path, BatchReport(self._name(path)))
            try:
                digest = batch_digest(path)
            except OSError as error:
                batch.report.status, batch.report.error = "failed", f"cannot read the file: {error}"
                yield Chunk(None, 0, batch)
                continue
            batch.batch_id, status, lines_done = self._claim(batch.report.name, digest)
            if status == "done":
                batch.report.status = "already ingested"
            else:
                try:
                    for lines, last in self._chunks(path, lines_done):
                        yield Chunk(lines, last, batch)
                except BatchReadError as error:
                    batch.report.status, batch.report.error = "failed", str(error)
            yield Chunk(None, 0, batch)

    def _end_batch(self, batch: _BatchInRun) -> BatchReport:
        report = batch.report
        if batch.batch_id is None:
            return report
        if report.status == "ingested":
            self._finish(batch.batch_id)
        self._fill_counts(report, batch.batch_id)
        if report.status != "failed":
            self._move_to_done(batch.path)
        return report

    def _claim(self, name: str, digest: str) -> tuple[int, str, int]:
        with ingest_transaction(self.engine) as connection:
            row = connection.execute(
                sa.select(
                    ingest_batches.c.id, ingest_batches.c.status, ingest_batches.c.lines_done
                ).where(ingest_batches.c.digest == digest)
            ).first()
            if row is not None:
                return int(row.id), str(row.status), int(row.lines_done)
            connection.execute(
                ingest_batches.insert().values(
                    digest=digest,
                    name=name,
                    status="running",
                    lines_done=0,
                    records_read=0,
                    accepted=0,
                    quarantined=0,
                    duplicates=0,
                    started_at=_now(),
                )
            )
            batch_id = connection.execute(
                sa.select(ingest_batches.c.id).where(ingest_batches.c.digest == digest)
            ).scalar_one()
            return int(batch_id), "running", 0

    def _chunks(self, path: Path, lines_done: int) -> Iterator[tuple[list[tuple[int, bytes]], int]]:
        chunk: list[tuple[int, bytes]] = []
        for number, line in read_lines(path):
            if number <= lines_done:
                continue
            chunk.append((number, line))
            if len(chunk) >= self.chunk_lines:
                yield chunk, number
                chunk = []
        if chunk:
            yield chunk, chunk[-1][0]

    def _write(self, writer: _Writer, batch_id: int, prepared: Prepared) -> None:
        try:
            with writer.transaction() as connection:
                done = connection.execute(
                    sa.select(ingest_batches.c.lines_done).where(ingest_batches.c.id == batch_id)
                ).scalar_one()
                if done >= prepared.last_line:
                    return  # another ingest run wrote this chunk meanwhile
                counts = writer.store(connection, batch_id, prepared)
                if prepared.rejected:
                    held_at = _now()
                    bulk_insert(
                        connection,
                        quarantine,
                        [
                            {
                                "batch_id": batch_id,
                                "line": line,
                                "reason": reason,
                                "record": record,
                                "status": "held",
                                "held_at": held_at,
                            }
                            for line, reason, record in prepared.rejected
                        ],
                        ignore=True,
                    )
                counts.quarantined = len(prepared.rejected)
                table = ingest_batches
                connection.execute(
                    table.update()
                    .where(table.c.id == batch_id)
                    .values(
                        lines_done=prepared.last_line,
                        records_read=table.c.records_read + counts.accepted + counts.quarantined,
                        accepted=table.c.accepted + counts.accepted,
                        quarantined=table.c.quarantined + counts.quarantined,
                        duplicates=table.c.duplicates + counts.duplicates,
                    )
                )
        except BaseException:
            writer.forget()
            raise

    def _finish(self, batch_id: int) -> None:
        with ingest_transaction(self.engine) as connection:
            connection.execute(
                ingest_batches.update()
                .where(ingest_batches.c.id == batch_id)
                .values(status="done", finished_at=_now())
            )

    def _fill_counts(self, report: BatchReport, batch_id: int) -> None:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(ingest_batches).where(ingest_batches.c.id == batch_id)
            ).one()
        report.read, report.accepted = row.records_read, row.accepted
        report.quarantined, report.duplicates = row.quarantined, row.duplicates

    def _move_to_done(self, path: Path) -> None:
        incoming = (self.spool / "incoming").resolve()
        try:
            relative = path.resolve().relative_to(incoming)
        except ValueError:
            return  # a file named on the command line outside the spool stays where it is
        target = self.spool / "done" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target = target.with_name(f"{_now():%Y%m%dT%H%M%S%f}-{target.name}")
        path.replace(target)


@dataclass
class Chunk:
    """Lines for a worker to prepare (``None``: nothing to prepare), with the caller's tag."""

    lines: list[tuple[int, bytes]] | None
    last_line: int
    tag: Any = None


@dataclass
class _BatchInRun:
    path: Path
    report: BatchReport
    batch_id: int | None = None


Preparer = Callable[[Iterable[Chunk]], Iterator[tuple[Chunk, Prepared | None]]]


class _InProcess:
    def __enter__(self) -> Preparer:
        return lambda chunks: (
            (chunk, None if chunk.lines is None else prepare_chunk(chunk.lines, chunk.last_line))
            for chunk in chunks
        )

    def __exit__(self, *exc: object) -> None:
        _close_worker()


class _Pool:
    """Prepares chunks in worker processes, in order, with a bounded number in flight."""

    def __init__(self, workers: int, initargs: tuple[Any, ...]) -> None:
        self.workers = workers
        self.initargs = initargs

    def __enter__(self) -> Preparer:
        self.executor = concurrent.futures.ProcessPoolExecutor(
            self.workers, initializer=_init_pool_worker, initargs=self.initargs
        )
        return self._prepare

    def _prepare(self, chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, Prepared | None]]:
        pending: collections.deque[tuple[Chunk, concurrent.futures.Future[Prepared] | None]]
        pending = collections.deque()
        in_flight = 0
        for chunk in chunks:
            if chunk.lines is None:
                pending.append((chunk, None))
                continue
            pending.append(
                (chunk, self.executor.submit(prepare_chunk, chunk.lines, chunk.last_line))
            )
            in_flight += 1
            while in_flight >= 4 * self.workers:
                done, future = pending.popleft()
                in_flight -= future is not None
                yield _outcome(done, future)
        for done, future in pending:
            yield _outcome(done, future)

    def __exit__(self, *exc: object) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _outcome(
    chunk: Chunk, future: concurrent.futures.Future[Prepared] | None
) -> tuple[Chunk, Prepared | None]:
    return chunk, None if future is None else future.result()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def batch_paths(arguments: list[str]) -> list[Path]:
    """The batch files named on the command line (a folder stands for the batches in it)."""
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            paths.extend(find_batches(path))
        elif not path.is_file():
            raise UsageError(
                f"no such batch file: {argument}",
                hint="give .jsonl or .jsonl.gz files, or a folder of them",
            )
        elif not is_batch_name(path):
            raise UsageError(
                f"not a batch file: {argument}", hint="batches end in .jsonl or .jsonl.gz"
            )
        else:
            paths.append(path)
    return paths


def ingest_run(
    settings: Any, workers: int | None = None, partners: PartnersConfig | None = None
) -> IngestRun:
    """The stage as configured: the store, the spool, the data folder and the enrichment.

    ``partners``: the configuration already loaded (a running worker's); otherwise the
    partners file is read, if there is one.
    """
    from feeds.home import open_store
    from feeds.partners import load_partners

    if partners is None and Path(settings.partners).is_file():
        partners = load_partners(settings.partners)
    return IngestRun(
        engine=open_store(settings),
        spool=Path(settings.spool),
        raw_dir=Path(settings.raw_dir),
        enrichment=EnrichmentConfig.from_settings(settings, partners),
        workers=workers or settings.ingest_workers,
        chunk_lines=settings.ingest_chunk_lines,
        message_limits=MessageLimits.from_settings(settings),
    )
