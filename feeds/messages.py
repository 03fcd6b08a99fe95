"""Raw message -> the parsed essentials and the URLs it carries.

Spam is hostile input: made-up charsets, broken MIME, 8-bit headers, ``Message-Id: <>``,
truncated bodies. The stdlib parser with the compat32 policy reads all of it without raising
(``policy.default`` raises on several of these and is ten times slower); every decoding step
below falls back instead of failing, so a message is always stored with what could be read.

The work per message is bounded by :class:`MessageLimits` (settings ``max_message_bytes``,
``max_mime_parts``, ``max_mime_depth``, ``max_part_decoded_bytes``): a 50 MB message, 10,000
parts, multiparts nested a thousand deep or a huge base64 part cost no more than the limits
allow. Each limit reached is named in ``ParsedMessage.limits`` and counted as a defect; the raw
message itself is always kept whole.
"""

from __future__ import annotations

import codecs
import email
import email.header
import email.parser
import functools
import html
import quopri
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email._encoded_words import decode_b  # type: ignore[import-not-found]  # get_payload's own
from email.message import Message
from email.policy import compat32
from typing import Any
from urllib.parse import urlsplit

from publicsuffixlist import PublicSuffixList

from feeds.mimeparse import message_from_bytes
from feeds.mimescan import ScannedPart, Unusual, content_type_of, scan_parts

MAX_TEXT_SCANNED = 1 << 20  # characters of one decoded part searched for URLs
MAX_URLS = 200  # per message: a list page of a million links is not a million indicators
MAX_URL_LENGTH = 2048
MAX_HEADER_LENGTH = 2000

_URL = re.compile(r"""(?i)\bhttps?://[^\s<>"'`{}|\\^\[\]]+""")
_URL_TAIL = ".,;:!?)'\""
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class MessageLimits:
    max_message_bytes: int = 8 << 20
    max_parts: int = 1000
    max_depth: int = 20
    max_part_decoded_bytes: int = 2 << 20

    @classmethod
    def from_settings(cls, settings: Any) -> MessageLimits:
        return cls(
            settings.max_message_bytes,
            settings.max_mime_parts,
            settings.max_mime_depth,
            settings.max_part_decoded_bytes,
        )


DEFAULT_LIMITS = MessageLimits()


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    header_from: str | None
    subject: str | None
    header_date: str | None
    message_id: str | None
    content_types: tuple[str, ...]
    charsets: tuple[str, ...]
    languages: tuple[str, ...]
    urls: tuple[str, ...]
    defects: int
    limits: tuple[str, ...] = ()  # the limits reached: bytes, depth, parts, decoded


def parse_message(raw: bytes, limits: MessageLimits = DEFAULT_LIMITS) -> ParsedMessage:
    """The essentials of ``raw``, within ``limits``; never raises on malformed content.

    Well-formed messages are read by feeds.mimescan; anything it leaves, and any part whose
    decoding needs compat32's own rules, goes through the compat32 parser.
    """
    if len(raw) <= limits.max_message_bytes:
        scanned = scan_parts(raw, _READ, max_parts=limits.max_parts, max_depth=limits.max_depth)
        if scanned is not None:
            try:
                return _essentials(
                    ((p.headers, p, 0) for p in scanned), scanned[0].headers, limits, {}
                )
            except Unusual:
                pass
    return parse_message_compat32(raw, limits)


def parse_message_compat32(raw: bytes, limits: MessageLimits = DEFAULT_LIMITS) -> ParsedMessage:
    """:func:`parse_message` through the compat32 parser alone, whatever the message."""
    reached: dict[str, None] = {}
    if len(raw) > limits.max_message_bytes:
        raw = raw[: limits.max_message_bytes]
        reached["bytes"] = None
    try:
        message = message_from_bytes(raw)
    except RecursionError:  # the stdlib parser recurses once per nested multipart
        message = email.parser.BytesHeaderParser(policy=compat32).parsebytes(raw)
        reached["depth"] = None
    top = _first_headers(message)
    parts = (
        (top if part is message else _first_headers(part), part, len(part.defects))
        for part in _walk(message, limits, reached)
    )
    return _essentials(parts, top, limits, reached)


_Part = tuple[dict[str, Any], Message | ScannedPart, int]  # headers read, the part, its defects


def _essentials(
    parts: Iterable[_Part], top: dict[str, Any], limits: MessageLimits, reached: dict[str, None]
) -> ParsedMessage:
    content_types: list[str] = []
    charsets: list[str] = []
    languages: list[str] = []
    urls: dict[str, None] = {}
    defects = 0
    for headers, part, part_defects in parts:
        defects += part_defects
        content_type = _safe_content_type(part, headers.get("content-type"))
        _add_unique(content_types, content_type)
        language = headers.get("content-language")
        if language:
            for tag in clean_text(str(language)).split(","):
                if tag.strip():
                    _add_unique(languages, tag.strip().lower()[:35])
        if _is_multipart(part):
            continue
        charset = _safe_charset(part, headers.get("content-type"))
        if charset:
            _add_unique(charsets, charset)
        if content_type.startswith("text/") and len(urls) < MAX_URLS:
            encoding = headers.get("content-transfer-encoding", "")
            limit = limits.max_part_decoded_bytes
            if isinstance(part, Message):
                text = _decoded_text(part, encoding, charset, limit, reached)
            else:
                text = _scanned_text(part, encoding, charset, limit)
            for url in extract_urls(text, is_html=content_type == "text/html"):
                urls.setdefault(url, None)
    return ParsedMessage(
        header_from=_header(top.get("from")),
        subject=_header(top.get("subject")),
        header_date=_header(top.get("date")),
        message_id=_header(top.get("message-id")),
        content_types=tuple(content_types),
        charsets=tuple(charsets),
        languages=tuple(languages),
        urls=tuple(urls)[:MAX_URLS],
        defects=defects + len(reached),
        limits=tuple(reached),
    )


def _is_multipart(part: Message | ScannedPart) -> bool:
    return part.is_multipart() if isinstance(part, Message) else part.multipart


def _walk(message: Message, limits: MessageLimits, reached: dict[str, None]) -> Iterator[Message]:
    """The parts depth first, like ``Message.walk`` but iterative and within ``limits``."""
    stack = [(message, 0)]
    count = 0
    while stack:
        part, depth = stack.pop()
        count += 1
        if count > limits.max_parts:
            reached["parts"] = None
            return
        yield part
        children = part.get_payload() if part.is_multipart() else None
        if isinstance(children, list):
            if depth >= limits.max_depth:
                reached["depth"] = None
                continue
            stack.extend(
                (child, depth + 1) for child in reversed(children) if isinstance(child, Message)
            )


def clean_text(text: str) -> str:
    """Text any database stores: undecodable bytes become U+FFFD, control characters go."""
    if not text.isascii():
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _CONTROL.sub("", text)


def extract_urls(text: str, *, is_html: bool = False) -> list[str]:
    """http(s) URLs in plain text or HTML (hrefs included), in order of first appearance."""
    found: list[str] = []
    for match in _URL.finditer(text[:MAX_TEXT_SCANNED]):
        url = match.group(0)
        if is_html and "&" in url:
            url = html.unescape(url)
        url = url.rstrip(_URL_TAIL)
        if len(url) <= MAX_URL_LENGTH and url_host(url):
            found.append(url)
    return found


# An ASCII URL whose netloc urlsplit() finds without any of its special cases (characters it
# strips or removes, brackets): group 1 is that netloc.
_PLAIN_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#\t\r\n\[\]]*)[^\t\r\n\[\]]*\Z")


@functools.lru_cache(maxsize=100_000)
def url_host(url: str) -> str | None:
    """The host of ``url``, lowercased, or None when it has none or cannot be split."""
    plain = _PLAIN_URL.match(url) if url.isascii() else None
    if plain:
        host = _hostname(plain.group(1))
    else:
        try:
            host = urlsplit(url).hostname
        except ValueError:
            return None
    return host.rstrip(".") or None if host else None


def _hostname(netloc: str) -> str | None:
    """``SplitResult.hostname`` of a netloc without brackets."""
    hostname = netloc.rpartition("@")[2].partition(":")[0]
    if not hostname:
        return None
    name, percent, zone = hostname.partition("%")
    return name.lower() + percent + zone


@functools.lru_cache(maxsize=1)
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the list bundled with the package: no network


@functools.lru_cache(maxsize=100_000)
def registrable_domain(host: str) -> str:
    """The registrable domain of ``host`` (``www.shop.example.co.jp`` -> ``example.co.jp``).

    A host that has none (an IP literal, an unknown or bare suffix) is its own domain.
    """
    host = host.lower().rstrip(".")
    if not host or host[0] == "[" or host.replace(".", "").isdigit():
        return host
    private = _public_suffixes().privatesuffix(host)
    return str(private) if private else host


@functools.lru_cache(maxsize=65536)  # recipient domains and servers recur all day
def domain_key(domain: str) -> str:
    """A sortable key for "at or under this domain" range queries.

    Labels reversed and dot-terminated: ``mx1.example.jp`` -> ``jp.example.mx1.``; a host is
    at or under ``example.jp`` when its key starts with ``jp.example.`` (see
    :func:`domain_key_range`).
    """
    labels = domain.lower().strip().rstrip(".").split(".")
    return ".".join(reversed(labels)) + "."


def domain_key_range(domain: str) -> tuple[str, str]:
    """``(low, high)``: a key k is at or under ``domain`` when ``low <= k < high``."""
    low = domain_key(domain)
    return low, low[:-1] + "/"  # "/" sorts right after "."


def recipient_domain(address: str) -> str:
    """The domain part of an envelope recipient, lowercased; "" when it has none."""
    address = address.strip().strip("<>")
    _, at, domain = address.rpartition("@")
    return domain.lower().rstrip(".") if at else ""


def _add_unique(items: list[str], item: str) -> None:
    if item not in items and len(items) < 50:
        items.append(item)


_READ = frozenset(
    {"content-type", "content-language", "content-transfer-encoding"}
    | {"from", "subject", "date", "message-id"}
)


def _first_headers(part: Message) -> dict[str, Any]:
    """``part.get(name)`` for each header name parse_message reads, in one pass."""
    found: dict[str, Any] = {}
    for name, value in part.raw_items():
        key = name.lower()
        if key in _READ and key not in found:
            found[key] = value
    for key, value in found.items():
        if not (isinstance(value, str) and value.isascii()):
            found[key] = part.get(key)  # the policy's own answer for 8-bit values
    return found


def _safe_content_type(part: Message | ScannedPart, header: Any) -> str:
    """``part.get_content_type()``, ``header`` being its Content-Type."""
    if isinstance(part, ScannedPart):
        return clean_text(part.content_type)[:100]
    if isinstance(header, str):
        return clean_text(content_type_of(header))[:100]
    try:
        return clean_text(part.get_content_type())[:100]
    except Exception:  # a header the parser kept as an object it cannot render
        return "text/plain"


def _safe_charset(part: Message | ScannedPart, header: Any) -> str | None:
    """``part.get_content_charset()``, ``header`` being its Content-Type."""
    if header is None:
        return None
    if isinstance(header, str):
        return _charset_of(header)
    assert isinstance(part, Message)  # a scanned part's headers are all text
    return _charset_from(part)


@functools.lru_cache(maxsize=4096)
def _charset_of(content_type: str) -> str | None:
    """The charset of a Content-Type value (they recur: ``text/html; charset="utf-8"``)."""
    if "charset" not in content_type.lower():
        return None
    alone = Message()
    alone["Content-Type"] = content_type
    return _charset_from(alone)


def _charset_from(part: Message) -> str | None:
    try:
        charset = part.get_content_charset()
    except Exception:
        return None
    return clean_text(str(charset)).lower()[:40] if charset else None


@functools.lru_cache(maxsize=256)
def _codec_for(charset: str | None) -> str:
    if charset:
        try:
            return codecs.lookup(charset).name
        except (LookupError, ValueError):
            pass
    return "latin-1"  # every byte decodes: URLs are ASCII anyway


def _decoded_text(
    part: Message, encoding_header: Any, charset: str | None, limit: int, reached: dict[str, None]
) -> str:
    try:
        encoded = part.get_payload()
    except Exception:  # an 8-bit body whose charset is an RFC 2231 tuple: a TypeError
        encoded = None
    if isinstance(encoded, str):
        # Cut before decoding: base64 takes 4/3 of its output plus line breaks, QP up to 3x.
        encoding = str(encoding_header).strip().lower()
        cut = limit * {"base64": 2, "quoted-printable": 3}.get(encoding, 1)
        if len(encoded) > cut:
            kept = encoded[:cut]
            if encoding == "base64":  # whole lines (or 4-character groups) still decode
                kept = kept.rpartition("\n")[0] or kept[: cut - cut % 4]
            part.set_payload(kept)
            reached["decoded"] = None
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if not isinstance(payload, bytes):
        return encoded[:limit] if isinstance(encoded, str) else ""
    if len(payload) > limit:
        payload = payload[:limit]
        reached["decoded"] = None
    return _text(payload, charset)


def _text(payload: bytes, charset: str | None) -> str:
    try:
        return payload.decode(_codec_for(charset), "replace")
    except Exception:  # some codecs raise other errors than UnicodeDecodeError
        return payload.decode("latin-1")


_UUENCODE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})


def _scanned_text(part: ScannedPart, encoding_header: str, charset: str | None, limit: int) -> str:
    """:func:`_decoded_text` of a scanned part: what ``get_payload(decode=True)`` gives.

    A part that would need cutting (a text part of more than ``limit``/4 bytes: no codec
    yields four characters a byte) or uudecoding raises Unusual: compat32 decides those.
    """
    encoding = encoding_header.lower()  # as get_payload reads it: not stripped
    if len(part.body) > limit // 4 or encoding in _UUENCODE:
        raise Unusual
    if encoding == "quoted-printable":
        payload = quopri.decodestring(part.body)
    elif encoding == "base64":
        payload = decode_b(b"".join(part.body.splitlines()))[0]
    else:
        payload = part.body
    return _text(payload, charset)


def _header(value: Any) -> str | None:
    if value is None:
        return None
    text = _decode_header(str(value) if not isinstance(value, str) else value)
    text = " ".join(text.split())[:MAX_HEADER_LENGTH]
    return text or None


def _decode_header(value: str) -> str:
    if "=?" not in value:
        return clean_text(value)
    try:
        chunks = email.header.decode_header(value)
    except Exception:
        return clean_text(value)
    parts: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            parts.append(chunk)
            continue
        try:
            parts.append(chunk.decode(_codec_for(charset), "replace"))
        except Exception:
            parts.append(chunk.decode("latin-1"))
    return clean_text("".join(parts))
