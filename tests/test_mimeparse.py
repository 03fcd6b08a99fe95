"""feeds.mimeparse builds exactly the messages the stdlib's compat32 parser builds."""

from __future__ import annotations

import email
import random
from email.message import Message
from email.policy import compat32
from pathlib import Path
from typing import Any

from test_hostile_messages import MALFORMED, base64_bomb, many_parts, nested

from feeds.generator import generate
from feeds.mimeparse import message_from_bytes

ODD_BOUNDARIES = [
    # regex metacharacters, spaces and quotes in the boundary
    b'Content-Type: multipart/mixed; boundary="a.b*c+d?(e)[f]{g}|h^$\\\\ i"\r\n\r\n'
    b"preamble\r\n--a.b*c+d?(e)[f]{g}|h^$\\ i\r\nContent-Type: text/plain\r\n\r\none\r\n"
    b"--a.b*c+d?(e)[f]{g}|h^$\\ i  \t\r\n\r\ntwo\r\n--a.b*c+d?(e)[f]{g}|h^$\\ i--\r\nepilogue",
    # bare LF and bare CR line ends, a boundary that never closes, a doubled boundary
    b"Content-Type: multipart/alternative; boundary=XY\n\n--XY\n\nlf\n--XY\n--XY\n\nx\n",
    b"Content-Type: multipart/alternative; boundary=XY\r\r--XY\r\rcr\r--XY--",
    # a boundary that is a prefix of a body line, and one with 8-bit bytes
    b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\r\n--Bnot\r\n--B--x\r\n",
    b'Content-Type: multipart/mixed; boundary="\xe9\xff"\r\n\r\n'
    b"--\xe9\xff\r\n\r\nb\r\n--\xe9\xff--\r\n",
    # nested multiparts, message/rfc822, no boundary parameter at all
    b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: multipart/related;"
    b" boundary=i\r\n\r\n--i\r\n\r\nin\r\n--i--\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: inner\r\n\r\nbody\r\n--o--\r\n",
    b"Content-Type: multipart/mixed\r\n\r\n--\r\nno boundary\r\n",
]


def shape(message: Message) -> list[Any]:
    """Everything a parse decides: the text, and each part's type, payload and defects."""
    random.seed(0)  # a multipart without a boundary is written out with a random one
    return [message.as_string()] + [
        (
            part.get_content_type(),
            part.get_payload() if not part.is_multipart() else len(part.get_payload()),
            part.preamble,
            part.epilogue,
            [type(defect).__name__ for defect in part.defects],
        )
        for part in message.walk()
    ]


def test_the_same_messages_as_the_stdlib_parser(tmp_path: Path) -> None:
    data = generate(tmp_path / "spool", tmp_path / "mmdb", 300, inline_every=0)
    raws = [path.read_bytes() for path in sorted((data.spool / "raw").glob("*.eml"))]
    hostile = [nested(30), many_parts(200), base64_bomb(20_000)]
    assert len(raws) > 200
    multipart = 0
    for raw in raws + hostile + MALFORMED + ODD_BOUNDARIES:
        ours = message_from_bytes(raw)
        assert shape(ours) == shape(email.message_from_bytes(raw, policy=compat32)), raw[:200]
        multipart += ours.is_multipart()
    assert multipart > 100  # the boundary matching was exercised
