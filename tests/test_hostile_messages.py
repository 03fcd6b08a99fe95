"""Message fuzzing: hostile MIME costs no more than the limits allow (settings
max_message_bytes, max_mime_parts, max_mime_depth, max_part_decoded_bytes), is stored with
what could be read and is never dropped. Memory is measured with tracemalloc (an allocation
figure, not a clock)."""

from __future__ import annotations

import base64
import hashlib
import tracemalloc
from pathlib import Path

import orjson
import sqlalchemy as sa

from feeds.home import open_store
from feeds.ingest import ingest_run
from feeds.messages import MessageLimits, parse_message
from feeds.rawstore import read_raw
from feeds.settings import load_settings
from feeds.store.captures import message_domains, messages

MB = 1 << 20


def nested(depth: int) -> bytes:
    head, tail = b"", b""
    for level in range(depth):
        head += b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level)
        tail = b"\r\n--b%d--\r\n" % level + tail
    body = b"Content-Type: text/plain\r\n\r\nhttp://deep.example.net/\r\n"
    return b"Subject: deep\r\nFrom: a@example.com\r\n" + head + body + tail


def many_parts(count: int) -> bytes:
    parts = b"".join(
        b"--B\r\nContent-Type: text/plain\r\n\r\nhttp://p%d.example.net/\r\n" % n
        for n in range(count)
    )
    return (
        b"Subject: many\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n" + parts + b"--B--\r\n"
    )


def base64_bomb(decoded_bytes: int) -> bytes:
    """One text part whose base64 decodes to ``decoded_bytes``: a URL, then zeros."""
    content = b"http://bomb.example.net/ " + b"\0" * decoded_bytes
    return (
        b"Subject: bomb\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(content)
    )


def big(size: int) -> bytes:
    line = b"x" * 998 + b"\r\n"
    head = b"Subject: big\r\nContent-Type: text/plain\r\n\r\nhttp://big.example.net/\r\n"
    return head + line * (size // len(line))


def test_nesting_deeper_than_the_parser_recurses_is_read_as_headers() -> None:
    parsed = parse_message(nested(3000))
    assert parsed.subject == "deep"
    assert parsed.header_from == "a@example.com"
    assert "depth" in parsed.limits
    assert parsed.defects >= 1


def test_nesting_is_read_down_to_the_depth_limit() -> None:
    shallow = parse_message(nested(10))
    assert shallow.limits == ()
    assert shallow.urls == ("http://deep.example.net/",)
    deep = parse_message(nested(300), MessageLimits(max_depth=20))
    assert deep.limits == ("depth",)
    assert deep.urls == ()  # the text part lies below the limit
    assert deep.content_types == ("multipart/mixed",)


def test_ten_thousand_parts_are_read_up_to_the_part_limit() -> None:
    parsed = parse_message(many_parts(10_000), MessageLimits(max_parts=100))
    assert parsed.limits == ("parts",)
    assert parsed.urls[0] == "http://p0.example.net/"
    assert len(parsed.urls) == 99  # the first of the 100 parts read is the multipart itself
    unlimited = parse_message(many_parts(150))
    assert unlimited.limits == () and len(unlimited.urls) == 150


def test_a_50_mb_message_is_parsed_up_to_the_byte_limit_in_bounded_memory() -> None:
    raw = big(50 * MB)
    limits = MessageLimits(max_message_bytes=MB)
    tracemalloc.start()
    try:
        parsed = parse_message(raw, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed.limits == ("bytes",)
    assert parsed.subject == "big" and parsed.urls == ("http://big.example.net/",)
    assert peak < 16 * MB  # proportional to the 1 MB limit, not to the 50 MB message


def test_a_base64_bomb_is_decoded_up_to_the_part_limit_in_bounded_memory() -> None:
    raw = base64_bomb(24 * MB)  # 32 MB of base64 text in one part
    limits = MessageLimits(max_message_bytes=4 * MB, max_part_decoded_bytes=MB)
    tracemalloc.start()
    try:
        parsed = parse_message(raw, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed.limits == ("bytes", "decoded")
    assert parsed.urls == ("http://bomb.example.net/",)
    # The stdlib parser holds several copies of what it parses (about 8x); the decoded part
    # adds at most its own limit.
    assert peak < 12 * limits.max_message_bytes


MALFORMED = [
    b"Subject: =?x-nonsense?B?////?= and =?utf-8?Q?=ZZ=?=\r\n\r\nhttp://a.example.net/",
    b"Content-Type: text/plain; charset=utf-7\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"****not*base64****\r\nhttp://b.example.net/",
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"=\r\n=G1=\xff\xfe http://c.example.net/=",
    b"Content-Type: multipart/alternative; boundary=\r\n\r\n--\r\n--\r\n",
    b"Content-Type: text/html; charset=\"\xff\xfe\"\r\n\r\n<a href='http://d.example.net/'>",
    b"From: \xff\xfe\x00\x01 <x@example.com>\r\nSubject: \x00\x1b[31mred\r\n\r\n",
]


def test_malformed_encodings_never_raise_and_store_only_clean_text() -> None:
    for raw in MALFORMED:
        parsed = parse_message(raw)
        for text in (parsed.subject, parsed.header_from):
            assert text is None or not any(c in text for c in "\x00\x1b\r\n")
            assert text is None or "\udcff" not in text


def _spool_message(spool: Path, raw: bytes, number: int, **fields: object) -> bytes:
    digest = hashlib.sha256(raw).hexdigest()
    (spool / "raw").mkdir(parents=True, exist_ok=True)
    (spool / "raw" / f"{digest}.eml").write_bytes(raw)
    record = {
        "schema": "spampots-ingest/1",
        "type": "message",
        "session_id": f"s-{number}",
        "sensor": "br-isp1-a",
        "ts": "2026-12-01T10:00:00Z",
        "src_ip": "203.0.113.9",
        "mail_from": "a@example.com",
        "rcpt_to": ["b@example.jp"],
        "raw_sha256": digest,
        **fields,
    }
    return orjson.dumps(record)


def test_hostile_messages_are_all_stored_with_what_could_be_read(
    environ: dict[str, str], initialised: object
) -> None:
    settings = load_settings(
        {
            **environ,
            "SPAMPOTS_MAX_MESSAGE_BYTES": str(2 * MB),
            "SPAMPOTS_MAX_MIME_PARTS": "50",
            "SPAMPOTS_MAX_MIME_DEPTH": "10",
            "SPAMPOTS_MAX_PART_DECODED_BYTES": str(MB),
        }
    )
    spool = Path(settings.spool)
    hostile = {
        "deep": nested(3000),
        "parts": many_parts(10_000),
        "big": big(50 * MB),
        "bomb": base64_bomb(int(1.4 * MB)),
        **{f"malformed-{n}": raw for n, raw in enumerate(MALFORMED)},
    }
    injected = "x@example.com\r\nBcc: victim@example.org"
    lines = [
        _spool_message(spool, raw, n, mail_from=injected, rcpt_to=[injected, "c@ex.jp\nX: y"])
        for n, raw in enumerate(hostile.values())
    ]
    incoming = spool / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / "hostile.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    (report,) = ingest_run(settings, workers=1).run()

    assert (report.read, report.accepted, report.quarantined) == (len(hostile),) * 2 + (0,)
    with open_store(settings).connect() as connection:
        rows = {r.raw_sha256: r for r in connection.execute(sa.select(messages)).all()}
        domains = connection.execute(sa.select(message_domains.c.domain)).scalars().all()
    for name, raw in hostile.items():
        row = rows[hashlib.sha256(raw).hexdigest()]
        assert row.raw_size == len(raw), name
        assert read_raw(Path(settings.raw_dir), row.raw_sha256) == raw, name  # kept whole
        assert "\r" not in row.mail_from and "\n" not in row.mail_from
        assert len(row.content_types) <= 50 * 101
    for name in ("deep", "parts", "big", "bomb"):
        assert rows[hashlib.sha256(hostile[name]).hexdigest()].defects >= 1, name
    assert rows[hashlib.sha256(hostile["big"]).hexdigest()].subject == "big"
    assert domains and not any("\r" in d or "\n" in d for d in domains)
