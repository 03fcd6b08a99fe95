"""The stdlib's compat32 parser, without compiling a regular expression per multipart.

``email.feedparser`` compiles a pattern for each multipart's boundary. Boundaries are random
per message, so ``re``'s cache never hits, and compiling took about a third of parsing a typical
spam message. This module runs the stdlib's own ``email.feedparser`` code (a private copy of the
module, the installed source unchanged) with ``re.compile`` answering that one pattern with an
equivalent literal-prefix matcher; every other pattern is compiled as usual. The messages it
builds are the stdlib's, equal to ``email.message_from_bytes(raw, policy=compat32)``'s
(tests/test_mimeparse.py compares them).
"""

from __future__ import annotations

import importlib.util
import re
import types
from email.message import Message
from email.policy import compat32
from typing import Any

# The pattern email.feedparser builds from re.escape(separator), split around the separator.
_HEAD = "(?P<sep>"
_TAIL = r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
_AFTER_SEPARATOR = re.compile(_TAIL[1:])
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)
_BLOCK = 8192  # the block size email.parser.Parser feeds in: the same memory profile


class _BoundaryPattern:
    """``re.compile(_HEAD + re.escape(separator) + _TAIL)``'s ``match``, without compiling."""

    __slots__ = ("separator",)

    def __init__(self, separator: str) -> None:
        self.separator = separator

    def match(self, line: str) -> re.Match[str] | None:
        if line.startswith(self.separator):
            return _AFTER_SEPARATOR.match(line, len(self.separator))
        return None


class _Re(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        return getattr(re, name)

    @staticmethod
    def compile(pattern: Any, flags: Any = 0) -> Any:
        boundary = (
            isinstance(pattern, str) and pattern.startswith(_HEAD) and pattern.endswith(_TAIL)
        )
        if boundary and not flags:
            escaped = pattern[len(_HEAD) : -len(_TAIL)]
            separator = _ESCAPED.sub(r"\1", escaped)
            if re.escape(separator) == escaped:
                return _BoundaryPattern(separator)
        return re.compile(pattern, flags)


def _feedparser_module() -> Any:
    spec = importlib.util.find_spec("email.feedparser")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    setattr(module, "re", _Re("re"))  # noqa: B010 (mypy: a module built at run time)
    return module


_feedparser = _feedparser_module()


def message_from_bytes(raw: bytes) -> Message:
    """``email.message_from_bytes(raw, policy=compat32)``, faster on multipart messages."""
    parser = _feedparser.FeedParser(policy=compat32)
    text = raw.decode("ascii", "surrogateescape")  # as email.parser.BytesParser does
    for start in range(0, len(text), _BLOCK):
        parser.feed(text[start : start + _BLOCK])
    message: Message = parser.close()
    return message
