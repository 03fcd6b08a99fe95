"""Samples shared with a partner: sensors scrubbed, recipients replaced unless kept."""

from __future__ import annotations

import base64
import email
import ipaddress
import re
from email import policy

from feeds.partners import Networks, Partner, Sensor
from feeds.sanitize import REDACTED_RECIPIENT, sanitize, scrubber_for

SENSORS = [
    Sensor("br-1", ("192.0.2.10",), ("proxy1.example.net",)),
    Sensor("br-3", ("192.0.2.30", "2001:db8::30"), ("relay3.example.net",)),
]


def partner(keep_own: bool) -> Partner:
    return Partner(
        "jpcert",
        "JPCERT/CC",
        "JP",
        Networks((), (ipaddress.ip_network("198.51.100.64/26"),), ("jp",)),
        ("originating", "returning"),
        ("ips", "urls", "samples"),
        "amber",
        None,
        None,
        keep_own_recipients=keep_own,
    )


RAW = (
    b"Received: from spammer (unknown [203.0.113.7]) by PROXY1.example.net ([192.0.2.10])\r\n"
    b"\twith SMTP id 1; Fri, 19 Jun 2009 12:00:00 +0000\r\n"
    b"Received: from relay3.example.net ([2001:db8::30]) by mx.example.com\r\n"
    b"From: Promo <promo@example.com>\r\n"
    b'To: a@example.jp, "B" <b@example.com.br>\r\n'
    b"Cc: c@sub.example.jp\r\n"
    b"Subject: hello 192.0.2.100\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="xx"\r\n'
    b"\r\n"
    b"--xx\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Dear a@example.jp and b@example.com.br, visit http://proxy1.example.net/x\r\n"
    b"--xx\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    + base64.encodebytes(b"<p>b@example.com.br via 192.0.2.30 relay3.example.net</p>")
    + b"--xx--\r\n"
)


def texts(data: bytes) -> str:
    message = email.message_from_bytes(data, policy=policy.compat32)
    parts = [str(message.items())]
    for part in message.walk():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            parts.append(payload.decode("utf-8"))
    return "\n".join(parts)


def test_sensors_and_other_recipients_are_scrubbed_everywhere() -> None:
    clean = sanitize(
        RAW, ["a@example.jp", "b@example.com.br"], scrubber_for(SENSORS, partner(False))
    )
    seen = texts(clean).lower()
    for secret in (
        "proxy1.example.net",
        "relay3.example.net",
        "192.0.2.10",
        "192.0.2.30",
        "2001:db8::30",
        "a@example.jp",
        "b@example.com.br",
        "c@sub.example.jp",
    ):
        assert not re.search(re.escape(secret) + r"(?![0-9])", seen), secret
    assert "192.0.2.100" in seen  # another address that merely starts alike stays
    assert "203.0.113.7" in seen and "promo@example.com" in seen
    assert REDACTED_RECIPIENT.decode() in seen


def test_a_partner_may_keep_its_own_recipients() -> None:
    clean = sanitize(
        RAW, ["a@example.jp", "b@example.com.br"], scrubber_for(SENSORS, partner(True))
    )
    seen = texts(clean)
    assert "a@example.jp" in seen and "c@sub.example.jp" in seen
    assert "b@example.com.br" not in seen
    assert "proxy1.example.net" not in seen.lower()


def test_a_message_without_sensors_or_recipients_is_unchanged() -> None:
    raw = b"From: x@example.org\r\nSubject: s\r\n\r\nnothing to hide\r\n"
    assert sanitize(raw, ["z@example.org"], scrubber_for(SENSORS, partner(False))) == raw
