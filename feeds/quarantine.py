"""Staff's view of quarantined records: list them, and retry them once the cause is fixed
(a late raw message, a corrected sensor). A record that now passes goes into the store and
its batch's counts move from quarantined to accepted, so read = accepted + quarantined holds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from feeds.batches import ingest_batches, quarantine
from feeds.ingest import Chunk, IngestRun, Prepared, _Writer


@dataclass(frozen=True)
class HeldRecord:
    id: int
    batch: str
    line: int
    reason: str
    record: str
    held_at: dt.datetime


def list_quarantined(run: IngestRun, *, limit: int | None = None) -> list[HeldRecord]:
    query = (
        sa.select(
            quarantine.c.id,
            ingest_batches.c.name,
            quarantine.c.line,
            quarantine.c.reason,
            quarantine.c.record,
            quarantine.c.held_at,
        )
        .join(ingest_batches, ingest_batches.c.id == quarantine.c.batch_id)
        .where(quarantine.c.status == "held")
        .order_by(quarantine.c.id)
        .limit(limit)
    )
    with run.engine.connect() as connection:
        return [HeldRecord(*row) for row in connection.execute(query)]


@dataclass
class RetryReport:
    retried: int = 0
    released: int = 0
    still_held: int = 0


def retry_quarantined(run: IngestRun, ids: Sequence[int] = ()) -> RetryReport:
    """Run held records (all, or those with ``ids``) through ingest again."""
    query = sa.select(
        quarantine.c.id, quarantine.c.batch_id, quarantine.c.line, quarantine.c.record
    ).where(quarantine.c.status == "held")
    if ids:
        query = query.where(quarantine.c.id.in_(list(ids)))
    with run.engine.connect() as connection:
        held = list(connection.execute(query.order_by(quarantine.c.batch_id, quarantine.c.line)))
    report = RetryReport()
    writer = _Writer(run.engine)
    with run._preparer() as prepare:
        by_batch: dict[int, list[tuple[int, int, str]]] = {}
        for row in held:
            by_batch.setdefault(row.batch_id, []).append((row.id, row.line, row.record))
        for batch_id, rows in by_batch.items():
            for start in range(0, len(rows), run.chunk_lines):
                part = rows[start : start + run.chunk_lines]
                lines = [
                    (line, record.encode("utf-8", "surrogateescape")) for _, line, record in part
                ]
                for _, prepared in prepare([Chunk(lines, lines[-1][0])]):
                    assert prepared is not None
                    _write_retry(writer, batch_id, part, prepared, report)
    return report


def _write_retry(
    writer: _Writer,
    batch_id: int,
    part: list[tuple[int, int, str]],
    prepared: Prepared,
    report: RetryReport,
) -> None:
    id_of_line = {line: held_id for held_id, line, _ in part}
    reasons = {line: reason for line, reason, _ in prepared.rejected}
    released = [id_of_line[line] for line in id_of_line if line not in reasons]
    try:
        with writer.transaction() as connection:
            still_held = connection.execute(
                sa.select(sa.func.count())
                .select_from(quarantine)
                .where(
                    quarantine.c.id.in_(list(id_of_line.values())), quarantine.c.status == "held"
                )
            ).scalar_one()
            if still_held != len(part):
                return  # another retry took these meanwhile
            counts = writer.store(connection, batch_id, prepared)
            now = dt.datetime.now(dt.UTC)
            if released:
                connection.execute(
                    quarantine.update()
                    .where(quarantine.c.id.in_(released))
                    .values(status="released", released_at=now)
                )
            for line, reason in reasons.items():
                connection.execute(
                    quarantine.update()
                    .where(quarantine.c.id == id_of_line[line])
                    .values(reason=reason)
                )
            table = ingest_batches
            connection.execute(
                table.update()
                .where(table.c.id == batch_id)
                .values(
                    accepted=table.c.accepted + counts.accepted,
                    quarantined=table.c.quarantined - counts.accepted,
                    duplicates=table.c.duplicates + counts.duplicates,
                )
            )
    except BaseException:
        writer.forget()
        raise
    report.retried += len(part)
    report.released += len(released)
    report.still_held += len(reasons)
