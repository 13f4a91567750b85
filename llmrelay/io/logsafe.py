"""Text that cannot break a log line: one record is always exactly one line, and its fields cannot be
forged by what a client sent.

`field()` escapes a value for a space-separated, quoted log line (the access log): `"` and `\\` get a
backslash, and every byte that is not printable ASCII (space included) becomes `\\xNN` (values decoded
as latin-1 keep their exact byte). `one_line()` is the lighter form for free text such as an
exception's message: it keeps spaces and quotes and escapes line breaks and other control characters.
`describe()` turns an exception into one such line: its type and its message.
"""

from __future__ import annotations

import re

_FIELD_UNSAFE = re.compile(r'[^\x21\x23-\x5b\x5d-\x7e]')  # all but printable ASCII other than " and \
_LINE_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\\\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char in '"\\':
        return "\\" + char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def needs_escape(text: str) -> bool:
    """Whether `field(text)` would change anything (one search for several fields joined)."""
    return _FIELD_UNSAFE.search(text) is not None


def field(text: str) -> str:
    """`text` as one log field: nothing in it can end the field, the quotes, or the line."""
    if _FIELD_UNSAFE.search(text) is None:  # the usual case: nothing to escape
        return text
    return _FIELD_UNSAFE.sub(_escaped, text)


def one_line(text: str) -> str:
    """`text` with its line breaks and other control characters escaped."""
    if _LINE_UNSAFE.search(text) is None:
        return text
    return _LINE_UNSAFE.sub(_escaped, text)


def describe(exc: BaseException, limit: int = 500) -> str:
    """An exception as one line: `TypeName: message` (the message escaped and bounded)."""
    message = one_line(str(exc)[:limit])
    name = type(exc).__qualname__
    return f"{name}: {message}" if message else name
