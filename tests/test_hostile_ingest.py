"""Property-based tests of the ingest contract (hypothesis): any byte string as a batch line,
any JSON value in any field. Every line read is either accepted or quarantined with a reason;
ingest never crashes and never loses a line (read = accepted + quarantined), on SQLite and on
PostgreSQL (whose text columns refuse NUL characters)."""

from __future__ import annotations

import base64
import hashlib
import itertools
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feeds.batches import ingest_batches, parse_record, quarantine, verbatim
from feeds.home import open_store
from feeds.ingest import ingest_run
from feeds.settings import Settings
from feeds.store.captures import messages, sessions

RAW = b"From: a@example.com\r\nSubject: hi\r\n\r\nvisit http://spam.example.net/x\r\n"
SESSION: dict[str, Any] = {
    "schema": "spampots-ingest/1",
    "type": "session",
    "session_id": "s-1",
    "sensor": "br-isp1-a",
    "ts": "2026-12-01T10:00:00Z",
    "src_ip": "203.0.113.9",
    "src_port": 40000,
    "service": "socks5",
    "listen_port": 1080,
    "dst_host": "mx.example.jp",
    "dst_port": 25,
    "result": "connect",
}
MESSAGE: dict[str, Any] = {
    "schema": "spampots-ingest/1",
    "type": "message",
    "session_id": "s-1",
    "sensor": "br-isp1-a",
    "ts": "2026-12-01T10:00:05Z",
    "src_ip": "203.0.113.9",
    "dst_host": "mx.example.jp",
    "dst_ip": "192.0.2.25",
    "dst_port": 25,
    "mail_from": "a@example.com",
    "rcpt_to": ["b@example.jp"],
    "raw_sha256": hashlib.sha256(RAW).hexdigest(),
    "raw_size": len(RAW),
    "raw_b64": base64.b64encode(RAW).decode(),
    "truncated": False,
}
DELETE = object()

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def mutated_record(draw: st.DrawFn) -> bytes:
    """A valid record with some fields replaced by any JSON value, or removed."""
    record = dict(draw(st.sampled_from([SESSION, MESSAGE])))
    for name in draw(st.lists(st.sampled_from(sorted({*SESSION, *MESSAGE})), max_size=3)):
        value = draw(st.one_of(json_values, st.just(DELETE)))
        if value is DELETE:
            record.pop(name, None)
        else:
            record[name] = value
    return orjson.dumps(record)


@st.composite
def message_of_any_bytes(draw: st.DrawFn) -> bytes:
    """A well-formed record whose inline message is any byte string (checksum correct)."""
    raw = draw(st.binary(max_size=300))
    rcpt = draw(st.lists(text, min_size=1, max_size=3))
    record = {
        **MESSAGE,
        "mail_from": draw(text),
        "rcpt_to": rcpt,
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "raw_size": len(raw),
        "raw_b64": base64.b64encode(raw).decode(),
    }
    return orjson.dumps(record)


lines = st.one_of(st.binary(max_size=200), mutated_record(), message_of_any_bytes(), st.just(b"{}"))
PROFILE = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@given(line=lines)
@settings(max_examples=300, **PROFILE)
def test_a_line_is_a_record_or_one_reason(line: bytes) -> None:
    from feeds.batches import RecordError

    try:
        parse_record(line)
    except RecordError as error:
        assert error.reason.startswith(("field '", "not a JSON object"))
    assert verbatim(line).encode().count(b"\x00") == 0  # quarantine keeps it as text


def _row_counts(settings: Settings) -> tuple[int, int]:
    with open_store(settings).connect() as connection:
        stored = sum(
            connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in (sessions, messages)
        )
        held = connection.execute(sa.select(sa.func.count()).select_from(quarantine)).scalar_one()
    return int(stored), int(held)


def test_any_batch_is_accepted_or_quarantined_never_lost(initialised: Settings) -> None:
    incoming = Path(initialised.spool) / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    numbers = itertools.count()
    stage = ingest_run(initialised, workers=1)

    @given(batch=st.lists(lines, min_size=1, max_size=8))
    @settings(max_examples=20, **PROFILE)
    def ingest_batch(batch: list[bytes]) -> None:
        number = next(numbers)
        # a unique blank line keeps the batch's digest unique, so it is never "already ingested"
        content = b"\n".join([*batch, b" " * (number + 1)]) + b"\n"
        expected = [ln.rstrip(b"\r") for ln in content.split(b"\n") if ln.strip()]
        path = incoming / f"fuzz-{number}.jsonl"
        path.write_bytes(content)
        before = _row_counts(initialised)

        (report,) = stage.run([path])

        assert report.status == "ingested", report.line()
        assert report.read == len(expected) == report.accepted + report.quarantined
        stored, held = _row_counts(initialised)
        assert stored - before[0] == report.accepted - report.duplicates
        assert held - before[1] == report.quarantined
        with open_store(initialised).connect() as connection:
            batch_id = connection.execute(
                sa.select(ingest_batches.c.id).where(ingest_batches.c.name == path.name)
            ).scalar_one()
            kept = connection.execute(
                sa.select(quarantine.c.reason, quarantine.c.record).where(
                    quarantine.c.batch_id == batch_id
                )
            ).all()
        assert all(reason.strip() for reason, _ in kept)
        assert {record for _, record in kept} <= {verbatim(ln) for ln in expected}

    ingest_batch()
