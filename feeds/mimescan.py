"""What parse_message reads of a well-formed message, without building compat32 Messages.

compat32's feedparser makes a ``Message`` per part, keeps every header and asks each part its
content type several times; for the essentials that is most of ingest's work. Most spam is
plain, well-formed MIME. For such a message :func:`scan_parts` follows the feedparser's own
grammar line by line (its header and boundary patterns, its line ends, its rules for the blank
line after the headers, for repeated boundaries and for the newline before a boundary) and
returns, in ``Message.walk`` order, each part's first value of the headers parse_message reads
and its body as compat32 keeps it.

It returns None whenever the feedparser would note a defect or do anything else: a header line
that is not one, no start or close boundary, no boundary parameter, ``message/*`` and
``multipart/digest`` parts, 8-bit values of the headers read, ``From `` lines, or more parts or
deeper nesting than the limits allow. The caller then parses with compat32 as before (and also
when decoding a part would need compat32's own rules: uuencode, a text part too large to decode
whole). tests/test_mimescan.py checks that both give the same
essentials for the generated corpus, the hostile and malformed sets, and mutations of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

# email.feedparser's headerRE, NLCRE_eol and the tail of its boundary pattern, over bytes:
# the parser runs them over the message decoded as ASCII with surrogateescape, where every
# byte above 0x7f is a character none of these classes holds.
_HEADER = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")
_AFTER_SEPARATOR = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n)?$")
_NEWLINE_AT_END = re.compile(rb"(?:\r\n|\r|\n)\Z")
_NEWLINE = (b"\r", b"\n")
_FOLDED = (b" ", b"\t")
_PLAIN_MULTIPART_ENCODINGS = ("7bit", "8bit", "binary")


@dataclass(slots=True)
class ScannedPart:
    headers: dict[str, str]  # lowercased name -> the first such header's value
    content_type: str  # as Message.get_content_type() answers
    multipart: bool
    body: bytes = b""  # a leaf's payload, as the bytes compat32 would decode


class Unusual(Exception):
    """Something the feedparser would treat specially: leave the message to it."""


def scan_parts(
    raw: bytes,
    names: frozenset[str],
    *,
    max_parts: int,
    max_depth: int,
) -> list[ScannedPart] | None:
    """The parts of ``raw`` in walk order with the ``names`` headers, or None (see above)."""
    scan = _Scan(raw.splitlines(keepends=True), frozenset(n.encode() for n in names))
    scan.max_parts, scan.max_depth = max_parts, max_depth
    try:
        scan.part(0)
    except Unusual:
        return None
    return scan.parts


class _Scan:
    max_parts: int
    max_depth: int

    def __init__(self, lines: list[bytes], names: frozenset[bytes]) -> None:
        self.lines = lines
        self.names = names
        self.pos = 0
        self.parts: list[ScannedPart] = []
        self.separators: list[bytes] = []  # the enclosing multiparts': each ends a part

    def part(self, depth: int) -> ScannedPart:
        headers, content_type = self._headers()
        main = content_type.partition("/")[0]
        if main == "message" or content_type == "multipart/digest":
            raise Unusual  # a nested message, or parts whose default type changes
        part = ScannedPart(headers, content_type, main == "multipart")
        self.parts.append(part)
        if len(self.parts) > self.max_parts:
            raise Unusual
        if part.multipart:
            self._multipart(part, depth)
        else:
            start = self.pos
            self._skip_to_separator()
            part.body = b"".join(self.lines[start : self.pos])
        return part

    def _headers(self) -> tuple[dict[str, str], str]:
        lines, end, names, separators = self.lines, len(self.lines), self.names, self.separators
        headers: dict[str, str] = {}
        name = b""
        value: list[bytes] | None = None  # the lines of a header parse_message reads
        while self.pos < end:
            line = lines[self.pos]
            if separators and line[:2] == b"--" and self._at_separator(line):
                break
            if not _HEADER.match(line):
                if line[:1] not in _NEWLINE:
                    raise Unusual  # MissingHeaderBodySeparatorDefect
                self.pos += 1
                break
            self.pos += 1
            if line[:1] in _FOLDED:
                if not name:
                    raise Unusual  # FirstHeaderLineIsContinuationDefect
                if value is not None:
                    value.append(line)
                continue
            if value is not None:
                _keep(headers, name, value)
            colon = line.find(b":")
            if colon == 0 or line.startswith(b"From "):
                raise Unusual  # a nameless header; a Unix "From " line
            name = line[:colon].lower()
            value = [line] if name in names else None
        if value is not None:
            _keep(headers, name, value)
        header = headers.get("content-type")
        return headers, "text/plain" if header is None else content_type_of(header)

    def _multipart(self, part: ScannedPart, depth: int) -> None:
        boundary = _boundary(part.headers["content-type"])
        encoding = part.headers.get("content-transfer-encoding", "8bit").lower()
        if boundary is None or encoding not in _PLAIN_MULTIPART_ENCODINGS:
            raise Unusual  # NoBoundaryInMultipart-, InvalidMultipartContentTransferEncodingDefect
        if depth >= self.max_depth:
            raise Unusual  # parse_message's depth limit
        separator = b"--" + boundary.encode("ascii", "surrogateescape")
        lines, end = self.lines, len(self.lines)
        in_preamble = True
        while self.pos < end:
            line = lines[self.pos]
            if self._at_separator(line):
                raise Unusual  # an enclosing boundary before this one closed
            self.pos += 1
            found = _separator_match(line, separator)
            if found is None:
                if not in_preamble:
                    raise Unusual
                continue
            if found.group(1):  # the close boundary: the rest, up to the enclosing one, is epilogue
                if in_preamble:
                    raise Unusual  # StartBoundaryNotFoundDefect
                self._skip_to_separator()
                return
            in_preamble = False
            while True:  # boundary lines right after a boundary open no part
                if self.pos >= end or self._at_separator(lines[self.pos]):
                    raise Unusual
                if _separator_match(lines[self.pos], separator) is None:
                    break
                self.pos += 1
            self.separators.append(separator)
            child = self.part(depth + 1)
            self.separators.pop()
            if not child.multipart:  # the newline before a boundary belongs to the boundary
                trailing = _NEWLINE_AT_END.search(child.body)
                if trailing:
                    child.body = child.body[: trailing.start()]
        raise Unusual  # no close boundary (or no start boundary) before the end

    def _at_separator(self, line: bytes) -> bool:
        """Whether ``line`` ends the current part: an enclosing multipart's boundary line."""
        if not self.separators or line[:2] != b"--":
            return False
        return any(_separator_match(line, sep) is not None for sep in self.separators)

    def _skip_to_separator(self) -> None:
        lines, end = self.lines, len(self.lines)
        if not self.separators:
            self.pos = end
            return
        while self.pos < end and not self._at_separator(lines[self.pos]):
            self.pos += 1


def content_type_of(header: str) -> str:
    """``Message.get_content_type()`` of a part whose Content-Type is ``header``."""
    content_type = header.partition(";")[0].strip().lower()
    return content_type if content_type.count("/") == 1 else "text/plain"


def _keep(headers: dict[str, str], name: bytes, lines: list[bytes]) -> None:
    """compat32's header_source_parse, for the first header of each name read."""
    key = name.decode()
    if key in headers:
        return
    first = lines[0]
    value = first[first.index(b":") + 1 :].lstrip(b" \t") + b"".join(lines[1:])
    if not value.isascii():
        raise Unusual  # compat32 answers 8-bit values with Header objects
    headers[key] = value.rstrip(b"\r\n").decode()


def _separator_match(line: bytes, separator: bytes) -> re.Match[bytes] | None:
    if not line.startswith(separator):
        return None
    return _AFTER_SEPARATOR.match(line, len(separator))


# A Content-Type that is a type and its boundary alone, the boundary of RFC 2046's characters
# but for quotes, "<", ">" and backslashes: get_boundary() unquotes such a value and strips
# its trailing spaces, nothing else.
_ONLY_BOUNDARY = re.compile(
    r"[ \t]*[!#-'*+.0-9A-Z^-~-]+/[!#-'*+.0-9A-Z^-~-]+[ \t]*;[ \t]*[bB][oO][uU][nN][dD][aA][rR][yY]"
    r"[ \t]*=[ \t]*(?:\"([0-9A-Za-z'()+_,./:=? -]*)\"|([0-9A-Za-z'()+_,./:=?-]+))[ \t]*"
)


def _boundary(content_type: str) -> str | None:
    """``Message.get_boundary()`` of a part whose Content-Type is ``content_type``."""
    simple = _ONLY_BOUNDARY.fullmatch(content_type)
    if simple:
        quoted, bare = simple.groups()
        return (bare if quoted is None else quoted).rstrip()
    alone = Message()
    alone["Content-Type"] = content_type
    try:
        return alone.get_boundary()
    except Exception:  # parameters get_boundary cannot read: the feedparser would fail too
        raise Unusual from None
