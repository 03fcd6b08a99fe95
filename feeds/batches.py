"""The spool and its batches: finding complete batches, reading their lines, checking each
record against the sensors' contract (``spampots-ingest/1``), and the quarantine that keeps
what breaks it.

A record that breaks the contract raises :class:`RecordError` with a reason that names the
field; the ingest stage stores the record verbatim in :data:`quarantine` with its batch and line.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import gzip
import hashlib
import ipaddress
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from feeds.store import metadata

SCHEMA = "spampots-ingest/1"
BATCH_SUFFIXES = (".jsonl", ".jsonl.gz")
SERVICES = frozenset({"socks4", "socks5", "http-connect", "http-get", "http-post", "smtp-relay"})
RESULTS = frozenset({"connect", "get", "error"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LIMITS = {"sensor": 64, "session_id": 200, "dst_host": 255}

ingest_batches = sa.Table(
    "ingest_batches",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.String(8), nullable=False),  # running | done
    sa.Column("lines_done", sa.Integer, nullable=False),
    sa.Column("records_read", sa.Integer, nullable=False),
    sa.Column("accepted", sa.Integer, nullable=False),
    sa.Column("quarantined", sa.Integer, nullable=False),
    sa.Column("duplicates", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)

quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("batch_id", sa.Integer, sa.ForeignKey("ingest_batches.id"), nullable=False),
    sa.Column("line", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("status", sa.String(8), nullable=False),  # held | released
    sa.Column("held_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("released_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("batch_id", "line"),
)


class RecordError(ValueError):
    """A record breaks the contract; ``reason`` says which field and how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class SessionRecord:
    sensor: str
    session_id: str
    ts: dt.datetime
    src_ip: str
    src_port: int | None
    service: str
    listen_port: int
    dst_host: str | None
    dst_port: int | None
    result: str
    error: str | None


@dataclass(slots=True)
class MessageRecord:
    sensor: str
    session_id: str
    ts: dt.datetime
    src_ip: str
    dst_host: str | None
    dst_ip: str | None
    dst_port: int | None
    mail_from: str
    rcpt_to: list[str]
    raw_sha256: str
    raw_size: int | None
    raw_b64: str | None
    truncated: bool


Record = SessionRecord | MessageRecord


def parse_record(line: bytes) -> Record:
    """One line of a batch as a record, or :class:`RecordError` naming what is wrong."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise RecordError(f"not a JSON object: {error}") from None
    if not isinstance(data, dict):
        raise RecordError(f"not a JSON object but a JSON {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise RecordError(f"field 'schema': expected {SCHEMA!r}, got {data.get('schema')!r}")
    kind = data.get("type")
    if kind == "session":
        return _session(data)
    if kind == "message":
        return _message(data)
    raise RecordError(f"field 'type': expected 'session' or 'message', got {kind!r}")


def _session(data: dict[str, Any]) -> SessionRecord:
    result = _choice(data, "result", RESULTS)
    return SessionRecord(
        sensor=_text(data, "sensor"),
        session_id=_text(data, "session_id"),
        ts=_timestamp(data, "ts"),
        src_ip=_address(data, "src_ip"),
        src_port=_port(data, "src_port", required=False),
        service=_choice(data, "service", SERVICES),
        listen_port=_port(data, "listen_port"),
        dst_host=_text(data, "dst_host", required=False),
        dst_port=_port(data, "dst_port", required=False),
        result=result,
        error=_text(data, "error", required=False, empty_ok=True),
    )


def _message(data: dict[str, Any]) -> MessageRecord:
    rcpt_to = data.get("rcpt_to")
    if not isinstance(rcpt_to, list) or not rcpt_to:
        raise RecordError("field 'rcpt_to': expected a non-empty list of addresses")
    if not all(isinstance(item, str) for item in rcpt_to):
        raise RecordError("field 'rcpt_to': every recipient must be a string")
    mail_from = data.get("mail_from")
    if not isinstance(mail_from, str):
        raise RecordError("field 'mail_from': expected a string ('' for the null sender)")
    digest = data.get("raw_sha256")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise RecordError("field 'raw_sha256': expected 64 lowercase hex digits")
    raw_b64 = data.get("raw_b64")
    if raw_b64 is not None and not isinstance(raw_b64, str):
        raise RecordError("field 'raw_b64': expected standard base64 text")
    truncated = data.get("truncated", False)
    if not isinstance(truncated, bool):
        raise RecordError("field 'truncated': expected true or false")
    raw_size = _integer(data, "raw_size", 0, 2**31 - 1, required=False)
    dst_ip = data.get("dst_ip")
    return MessageRecord(
        sensor=_text(data, "sensor"),
        session_id=_text(data, "session_id"),
        ts=_timestamp(data, "ts"),
        src_ip=_address(data, "src_ip"),
        dst_host=_text(data, "dst_host", required=False),
        dst_ip=_address(data, "dst_ip") if dst_ip is not None else None,
        dst_port=_port(data, "dst_port", required=False),
        mail_from=mail_from,
        rcpt_to=rcpt_to,
        raw_sha256=digest,
        raw_size=raw_size,
        raw_b64=raw_b64,
        truncated=truncated,
    )


def decode_inline(record: MessageRecord) -> bytes:
    """The inline ``raw_b64`` message, checked against ``raw_sha256``."""
    assert record.raw_b64 is not None
    try:
        raw = base64.b64decode(record.raw_b64, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError("field 'raw_b64': not standard base64") from None
    check_digest(record, raw, "raw_b64")
    return raw


def check_digest(record: MessageRecord, raw: bytes, where: str) -> None:
    actual = hashlib.sha256(raw).hexdigest()
    if actual != record.raw_sha256:
        raise RecordError(
            f"field 'raw_sha256': {where} has SHA-256 {actual}, not {record.raw_sha256}"
        )


def _text(data: dict[str, Any], name: str, *, required: bool = True, empty_ok: bool = False) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise RecordError(f"field {name!r}: missing")
        return None
    if not isinstance(value, str) or (not value and not empty_ok):
        raise RecordError(f"field {name!r}: expected a non-empty string, got {value!r:.80}")
    limit = _LIMITS.get(name)
    if limit and len(value) > limit:
        raise RecordError(f"field {name!r}: longer than {limit} characters")
    if "\x00" in value:
        raise RecordError(f"field {name!r}: contains a NUL character")
    return value


def _choice(data: dict[str, Any], name: str, options: frozenset[str]) -> str:
    value = data.get(name)
    if not isinstance(value, str) or value not in options:  # a list or object is unhashable
        raise RecordError(
            f"field {name!r}: expected one of {', '.join(sorted(options))}, got {value!r:.80}"
        )
    return str(value)


def _integer(data: dict[str, Any], name: str, low: int, high: int, *, required: bool = True) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise RecordError(f"field {name!r}: missing")
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RecordError(f"field {name!r}: expected an integer {low}-{high}, got {value!r:.80}")
    return value


def _port(data: dict[str, Any], name: str, *, required: bool = True) -> Any:
    return _integer(data, name, 0, 65535, required=required)


def _address(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if isinstance(value, str) and value in _normal_addresses:
        return _normal_addresses[value]
    if not isinstance(value, str):
        raise RecordError(f"field {name!r}: expected an IPv4 or IPv6 address, got {value!r:.80}")
    try:
        normal = str(ipaddress.ip_address(value))
    except ValueError:
        raise RecordError(f"field {name!r}: not an IPv4 or IPv6 address: {value!r:.80}") from None
    if len(_normal_addresses) > 100_000:
        _normal_addresses.clear()
    _normal_addresses[value] = normal
    return normal


_normal_addresses: dict[str, str] = {}  # the same abusers and servers recur all day


def _timestamp(data: dict[str, Any], name: str) -> dt.datetime:
    value = data.get(name)
    if not isinstance(value, str) or len(value) < 20 or value[10] not in "Tt ":
        raise RecordError(f"field {name!r}: expected an RFC 3339 timestamp, got {value!r:.80}")
    try:
        parsed = dt.datetime.fromisoformat(value.upper())
    except ValueError:
        raise RecordError(f"field {name!r}: not an RFC 3339 timestamp: {value!r:.80}") from None
    if parsed.tzinfo is None:
        raise RecordError(f"field {name!r}: RFC 3339 needs 'Z' or an offset: {value!r:.80}")
    return parsed.astimezone(dt.UTC)


# -- the spool ---------------------------------------------------------------------------


def is_batch_name(path: Path) -> bool:
    return path.name.endswith(BATCH_SUFFIXES) and not path.name.startswith(".")


def find_batches(incoming: Path) -> list[Path]:
    """Every complete batch under ``incoming/`` (renamed into place), oldest name first."""
    if not incoming.is_dir():
        return []
    found = [p for p in incoming.rglob("*") if p.is_file() and is_batch_name(p)]
    return sorted(found, key=lambda p: p.relative_to(incoming).as_posix())


def batch_digest(path: Path) -> str:
    """SHA-256 of the batch file: its identity, so a batch copied again is seen as known."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class BatchReadError(Exception):
    """The batch file itself cannot be read on (a broken gzip stream, an I/O error)."""


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` of each non-blank line, numbered from 1 as in an editor."""
    opener = gzip.open if path.name.endswith(".gz") else Path.open
    try:
        with opener(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line.rstrip(b"\r\n")
    except (OSError, EOFError, zlib.error) as error:
        raise BatchReadError(f"{path}: cannot read on: {error}") from None


def verbatim(line: bytes) -> str:
    """The line as text any database keeps: invalid UTF-8 and NULs escaped, nothing lost."""
    return line.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
