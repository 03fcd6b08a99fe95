"""feeds.mimescan reads well-formed messages as compat32 would: parse_message gives the same
essentials whether the scan or the compat32 parser read the message, for the generated corpus,
the hostile and malformed sets, and thousands of mutations of them."""

from __future__ import annotations

import random
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

from test_hostile_messages import MALFORMED, base64_bomb, big, many_parts, nested
from test_mimeparse import ODD_BOUNDARIES

from feeds.generator import generate
from feeds.messages import (
    _READ,
    DEFAULT_LIMITS,
    MessageLimits,
    parse_message,
    parse_message_compat32,
    url_host,
)
from feeds.mimescan import _boundary, scan_parts

SMALL = MessageLimits(
    max_message_bytes=1 << 20, max_parts=12, max_depth=3, max_part_decoded_bytes=4000
)

EDGE_CASES = [
    b"",
    b"Subject: only headers",
    b"Subject: x\r\n\r\n",
    b"\r\nbody without headers http://a.example.net/",
    b"From sender@example.com Mon Jan  1 00:00:00 2026\r\nSubject: mbox\r\n\r\nhttp://m.example/",
    b"  folded first line\r\nSubject: x\r\n\r\nhttp://f.example/",
    b": no name\r\nSubject: x\r\n\r\nhttp://n.example/",
    b"Subject: x\r\nnot a header line\r\n\r\nhttp://s.example/",
    b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nhttp://inner.example/",
    b"Content-Type: multipart/digest; boundary=d\r\n\r\n"
    b"--d\r\n\r\nSubject: in\r\n\r\nx\r\n--d--\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"--b\r\n\r\nhttp://cte.example/\r\n--b--\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b--\r\n--b\r\n\r\nx\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\n--b--\r\n\r\nafter close\r\n--b--\r\n",
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
    b"begin 644 a.txt\r\n5:'1T<#HO+W5U+F5X86UP;&4O\r\n`\r\nend\r\n",
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: BASE64 \r\n\r\n"
    b"aHR0cDovL3guZXhhbXBsZS8=\r\n",
    b"Content-Type: text/plain; charset*=utf-8''%E2%82\r\n\r\n"
    b"http://2231.example/ \xe2\x82\xac\r\n",
    b'Content-Type: text/plain; charset="utf-16"\r\n\r\n\xff\xfeh\x00t\x00t\x00p\x00',
    b"Content-type: text/html\r\nCONTENT-TYPE: text/plain\r\n\r\n<a href=http://first.example/>",
    b"Content-Type : text/html\r\n\r\n<a href=http://spaced.example/>",
    b'Content-Type: multipart/alternative; boundary="a b"\r\n\r\n--a b\r\n'
    b"Content-Type: text/plain\r\nContent-Language: en, ja\r\n\r\nhttp://q.example/\r\n--a b--",
    b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n"
    b"Content-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\n\r\nhttp://i.example/\r\n"
    b"--o\r\n\r\nouter before inner closed\r\n--o--\r\n",
    nested(2),
    nested(4),
    many_parts(11),
    many_parts(13),
    base64_bomb(900),
    base64_bomb(2000),
    big(20_000),
]


def mutations(raw: bytes, rng: random.Random) -> list[bytes]:
    """Damage a message the ways spam and its senders do."""
    lines = raw.splitlines(keepends=True)
    out = [
        raw[: rng.randrange(len(raw) + 1)],
        raw.replace(b"\r\n", b"\n"),
        raw.replace(b"\r\n", b"\r"),
    ]
    if len(lines) > 2:
        at = rng.randrange(len(lines))
        out.append(b"".join(lines[:at] + lines[at + 1 :]))  # a line lost
        for extra in (lines[at], b"\xe9\xff 8-bit \x00 line\r\n", b"\r\n"):  # doubled, 8-bit, blank
            out.append(b"".join([*lines[:at], extra, *lines[at:]]))
    flipped = bytearray(raw)
    for _ in range(3):
        if flipped:
            flipped[rng.randrange(len(flipped))] = rng.choice(b'-:\r\n \t\xff=;"')
    out.append(bytes(flipped))
    return out


def test_the_scan_and_compat32_give_the_same_essentials(tmp_path: Path) -> None:
    data = generate(tmp_path / "spool", tmp_path / "mmdb", 600, inline_every=0)
    corpus = [path.read_bytes() for path in sorted((data.spool / "raw").glob("*.eml"))]
    assert len(corpus) > 400
    scanned = sum(
        scan_parts(raw, _READ, max_parts=1000, max_depth=20) is not None for raw in corpus
    )
    assert scanned > 0.8 * len(corpus)  # the scan reads most spam, not only the easy cases

    rng = random.Random(4)
    messages = corpus + EDGE_CASES + MALFORMED + ODD_BOUNDARIES + [nested(30), many_parts(200)]
    damaged = [m for raw in rng.sample(corpus, 300) + EDGE_CASES for m in mutations(raw, rng)]
    took_scan = 0
    for raw in messages + damaged:
        for limits in (DEFAULT_LIMITS, SMALL):
            expected = parse_message_compat32(raw, limits)
            assert parse_message(raw, limits) == expected, raw[:300]
        took_scan += scan_parts(raw, _READ, max_parts=1000, max_depth=20) is not None
    assert took_scan < len(messages + damaged)  # the fallback was exercised too


def test_plain_boundaries_and_urls_are_read_as_the_stdlib_reads_them() -> None:
    rng = random.Random(7)
    content_types = [
        'multipart/mixed; boundary="----=_Part_12_34.56"',
        "multipart/mixed; BOUNDARY = x ",
        'multipart/mixed; boundary="<abc>"',
        "multipart/related; type=text/html; boundary=x",
    ]
    content_types += random_texts(
        rng, ["multipart/mixed; boundary=", "a/b ;Boundary= "], "ab \t\"=;<>\\'()+_,./:?-", 8
    )
    for value in content_types:
        alone = Message()
        alone["Content-Type"] = value
        assert _boundary(value) == alone.get_boundary(), value

    urls = [
        "http://User:pw@Host.EXAMPLE.:80/p",
        "http://%41B.example/",
        "http://[::1]/",
        "http://é.jp/",
    ]
    urls += random_texts(rng, ["http://", "HTTPS://", "h:"], "aZ09.-:@%/?#[]\t\n +é", 14)
    for url in urls:
        try:
            host = urlsplit(url).hostname
        except ValueError:
            host = None
        assert url_host(url) == ((host.rstrip(".") or None) if host else None), url


def random_texts(rng: random.Random, starts: list[str], alphabet: str, longest: int) -> list[str]:
    """5,000 strings: one of ``starts``, then up to ``longest`` characters of ``alphabet``."""
    return [
        rng.choice(starts) + "".join(rng.choice(alphabet) for _ in range(rng.randrange(longest)))
        for _ in range(5000)
    ]
