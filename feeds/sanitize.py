"""Samples shared with a partner are sanitized before they become an ``artifact``.

- The sensors' ids, addresses and host names (partners.yaml ``sensors``) are scrubbed from the
  headers and the body, including text parts in base64 or quoted-printable (an id shows where
  a sensor writes it into a message, e.g. in its own ``Received:`` line).
- Recipient addresses are replaced by a placeholder, in the address headers and wherever an
  envelope recipient appears in the body; a partner with ``keep_own_recipients: true`` keeps
  the addresses under its own domains.

The artifact is the sanitized message, and its hashes are of that.
"""

from __future__ import annotations

import base64
import quopri
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email import policy
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from io import BytesIO

from feeds.partners import Partner, Sensor

REDACTED_HOST = b"sensor.invalid"
REDACTED_IPV4 = b"0.0.0.0"
REDACTED_IPV6 = b"::"
REDACTED_RECIPIENT = b"recipient@redacted.invalid"
ADDRESS_HEADERS = (
    b"to",
    b"cc",
    b"bcc",
    b"delivered-to",
    b"x-original-to",
    b"envelope-to",
    b"x-envelope-to",
    b"apparently-to",
    b"resent-to",
    b"resent-cc",
)
_EMAIL = re.compile(rb"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_FIELD = re.compile(rb"^([!-9;-~]+):(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)
_POLICY = policy.compat32.clone(max_line_length=0)


def _literal(value: str, *, host: bool) -> re.Pattern[bytes]:
    escaped = re.escape(value.encode("utf-8"))
    if host:
        return re.compile(rb"(?<![A-Za-z0-9-])" + escaped + rb"(?![A-Za-z0-9-])", re.IGNORECASE)
    if ":" in value:
        return re.compile(rb"(?<![0-9A-Fa-f:])" + escaped + rb"(?![0-9A-Fa-f:])", re.IGNORECASE)
    return re.compile(rb"(?<![0-9.])" + escaped + rb"(?![0-9])")


@dataclass(frozen=True)
class SampleScrubber:
    """What to scrub for one partner: the sensors' identities and which recipients stay."""

    sensor_patterns: tuple[tuple[re.Pattern[bytes], bytes], ...]
    own_domains: tuple[str, ...]
    keep_own_recipients: bool

    def keeps(self, address: str) -> bool:
        if not self.keep_own_recipients:
            return False
        domain = address.rpartition("@")[2].lower().rstrip(".")
        return any(domain == own or domain.endswith("." + own) for own in self.own_domains)

    def scrub_sensors(self, data: bytes) -> bytes:
        for pattern, placeholder in self.sensor_patterns:
            data = pattern.sub(placeholder, data)
        return data


def scrubber_for(sensors: Iterable[Sensor], partner: Partner) -> SampleScrubber:
    patterns: list[tuple[re.Pattern[bytes], bytes]] = []
    for sensor in sensors:
        # Longest first, so that a host name is not half-replaced by a shorter one.
        for hostname in sorted({*sensor.hostnames, sensor.id}, key=len, reverse=True):
            patterns.append((_literal(hostname, host=True), REDACTED_HOST))
        for address in sensor.addresses:
            placeholder = REDACTED_IPV6 if ":" in address else REDACTED_IPV4
            patterns.append((_literal(address, host=False), placeholder))
    return SampleScrubber(
        tuple(patterns),
        tuple(d.lower() for d in partner.networks.domains),
        partner.keep_own_recipients,
    )


def sanitize(raw: bytes, recipients: Sequence[str], scrubber: SampleScrubber) -> bytes:
    """The message as it may be shared with the scrubber's partner."""
    hidden = [
        r for r in dict.fromkeys(r.strip() for r in recipients) if r and not scrubber.keeps(r)
    ]
    # Longest first, so that one address is never half-replaced as the tail of another.
    alternatives = b"|".join(
        re.escape(r.encode("utf-8")) for r in sorted(hidden, key=len, reverse=True)
    )
    recipients_pattern = (
        re.compile(
            rb"(?<![A-Za-z0-9.!#$%&'*+/=?^_`{|}~-])(?:" + alternatives + rb")(?![A-Za-z0-9-])",
            re.IGNORECASE,
        )
        if hidden
        else None
    )

    def scrub_text(data: bytes) -> bytes:
        data = scrubber.scrub_sensors(data)
        if recipients_pattern is not None:
            data = recipients_pattern.sub(REDACTED_RECIPIENT, data)
        return data

    data = _scrub_encoded_parts(raw, scrub_text)
    split = _HEADER_END.search(data)
    head, body = (data[: split.start()], data[split.start() :]) if split else (data, b"")
    return _scrub_address_headers(scrub_text(head), scrubber) + scrub_text(body)


def _scrub_address_headers(head: bytes, scrubber: SampleScrubber) -> bytes:
    def replace_field(field: re.Match[bytes]) -> bytes:
        if field.group(1).lower() not in ADDRESS_HEADERS:
            return field.group(0)
        value = _EMAIL.sub(
            lambda m: (
                m.group(0)
                if scrubber.keeps(m.group(0).decode("utf-8", "replace"))
                else REDACTED_RECIPIENT
            ),
            field.group(2),
        )
        return field.group(1) + b":" + value

    return _HEADER_FIELD.sub(replace_field, head)


def _scrub_encoded_parts(raw: bytes, scrub_text: Callable[[bytes], bytes]) -> bytes:
    """Decode, scrub and re-encode base64 and quoted-printable text parts."""
    if b"base64" not in raw.lower() and b"quoted-printable" not in raw.lower():
        return raw
    message = BytesParser(policy=_POLICY).parsebytes(raw)
    changed = False
    for part in message.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if encoding not in {"base64", "quoted-printable"}:
            continue
        decoded = part.get_payload(decode=True)
        if not isinstance(decoded, bytes):
            continue
        scrubbed = scrub_text(decoded)
        if scrubbed != decoded:
            _set_encoded(part, scrubbed, encoding)
            changed = True
    if not changed:
        return raw
    output = BytesIO()
    BytesGenerator(output, mangle_from_=False, policy=_POLICY).flatten(message)
    return output.getvalue()


def _set_encoded(part: Message, payload: bytes, encoding: str) -> None:
    if encoding == "base64":
        part.set_payload(base64.encodebytes(payload).decode("ascii"))
    else:
        part.set_payload(quopri.encodestring(payload).decode("ascii"))
