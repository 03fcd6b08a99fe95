"""The digest's CSV attachments, made to fit the message size mail servers accept.

Many mail servers refuse messages over 10-25 MB, and a big partner's CSVs (every source IP and
URL of a week) run to tens of MB once base64-encoded. So, against ``SPAMPOTS_DIGEST_MAX_BYTES``
for the whole message as sent: the CSVs go as plain attachments when they fit; else as one zip
of the same CSVs; else the zip's CSVs keep the rows with the most messages (rows come ordered
so) and the message says how many were left out. The complete CSVs then stay with the
producer (the outbox, or ``spampots digest --csv-dir``).
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SOURCE_CSV_HEADER = (
    "timestamp",
    "ip",
    "asn",
    "as_name",
    "cc",
    "messages",
    "recipients",
    "first_seen",
    "last_seen",
    "ports",
)
URL_CSV_HEADER = ("timestamp", "url", "host", "domain", "messages")
# A part's MIME headers and boundary, beyond its file name (twice: in two headers).
PART_OVERHEAD = 300
# Deflate levels: fast while the zip fits (a quarter of level 6's time, a quarter larger);
# smallest before any row is left out.
FAST, SMALLEST = 1, 9
# Each round of cutting rows keeps this share of what the last round estimated would fit.
CUT_MARGIN = 0.9


@dataclass(frozen=True)
class CsvTable:
    """One CSV attachment: its rows, most messages first, without the leading timestamp."""

    name: str
    header: tuple[str, ...]
    stamp: str  # the 'timestamp' column: the start of the week
    rows: Sequence[Sequence[Any]]

    def render(self, limit: int | None = None) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(self.header)
        stamp = self.stamp
        rows = self.rows if limit is None else self.rows[:limit]
        writer.writerows([(stamp, *row) for row in rows])
        return out.getvalue().encode("utf-8")


@dataclass(frozen=True)
class Attachment:
    filename: str
    maintype: str
    subtype: str
    content: bytes


@dataclass(frozen=True)
class LeftOut:
    """A CSV that keeps only its first ``kept`` of ``total`` rows."""

    name: str
    kept: int
    total: int

    @property
    def rows_left_out(self) -> int:
        return self.total - self.kept


@dataclass(frozen=True)
class FittedAttachments:
    attachments: list[Attachment]
    max_bytes: int
    zip_name: str | None = None  # the CSVs went zipped, in this file
    left_out: list[LeftOut] = field(default_factory=list)  # only CSVs that lost rows


def attached_size(filename: str, size: int) -> int:
    """Bytes a file of ``size`` bytes adds to the message: base64 in 76-character lines."""
    return math.ceil(size / 57) * 78 + PART_OVERHEAD + 2 * len(filename)


def zip_csvs(
    files: dict[str, bytes], date_time: tuple[int, int, int, int, int, int], level: int
) -> bytes:
    """The CSVs in one zip; each entry dated ``date_time`` so the same digest zips the same."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in files.items():
            entry = zipfile.ZipInfo(name, date_time=date_time)
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, content, compresslevel=level)
    return out.getvalue()


def fit_attachments(
    tables: list[CsvTable],
    zip_name: str,
    date_time: tuple[int, int, int, int, int, int],
    room: int,
    max_bytes: int,
) -> FittedAttachments:
    """The CSVs as attachments taking at most ``room`` bytes of the message (see module doc)."""
    files = {table.name: table.render() for table in tables}
    if sum(attached_size(name, len(content)) for name, content in files.items()) <= room:
        return FittedAttachments(
            [Attachment(name, "text", "csv", content) for name, content in files.items()],
            max_bytes,
        )
    zipped = zip_csvs(files, date_time, FAST)
    needed = attached_size(zip_name, len(zipped))
    if needed > room:
        zipped = zip_csvs(files, date_time, SMALLEST)
        needed = attached_size(zip_name, len(zipped))
    limits = {table.name: len(table.rows) for table in tables}
    share = 1.0
    while needed > room and any(limits.values()):
        # Compressed size follows the rows kept closely enough to aim at once, then retry.
        share *= max(0.0, room / needed) * CUT_MARGIN
        limits = {table.name: int(len(table.rows) * share) for table in tables}
        zipped = zip_csvs(
            {table.name: table.render(limits[table.name]) for table in tables},
            date_time,
            SMALLEST,
        )
        needed = attached_size(zip_name, len(zipped))
    left_out = [
        LeftOut(table.name, limits[table.name], len(table.rows))
        for table in tables
        if limits[table.name] < len(table.rows)
    ]
    return FittedAttachments(
        [Attachment(zip_name, "application", "zip", zipped)], max_bytes, zip_name, left_out
    )
