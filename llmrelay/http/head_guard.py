"""Strict checks of a raw HTTP/1.x request head, before h11 sees it.

h11 is lenient where a relay must not be: it accepts Content-Length together with Transfer-Encoding,
obs-fold continuation lines, bare LF line endings, `HTTP/2.0` in a request line, and header blocks
larger than its buffer when they arrive in one read. A front end and a back end that read such a
request differently is how requests are smuggled, so anything ambiguous is refused here with the status
it deserves, and the connection is closed. Pure functions on bytes: no I/O, easy to fuzz.
"""

from __future__ import annotations

import re

from llmrelay.http.errors import RequestRejected

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_REQUEST_LINE = re.compile(rb"^(?P<method>[^ ]+) (?P<target>[^ ]+) HTTP/(?P<major>[0-9])\.(?P<minor>[0-9])$")
_FIELD_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET_BAD = re.compile(rb"[\x00-\x20\x7f-\xff]")  # a target is ASCII; others are percent-encoded
_DIGITS = re.compile(rb"^[0-9]{1,18}$")


class HeadLimits:
    """Size limits of a request head (from `[server]`)."""

    __slots__ = ("max_request_line", "max_header_bytes", "max_header_count")

    def __init__(self, max_request_line: int = 8192, max_header_bytes: int = 32768, max_header_count: int = 100):
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_header_count = max_header_count


def find_head_end(buffer: bytes | bytearray, limits: HeadLimits) -> int:
    """Index just past the head's blank line, or -1 if more bytes are needed.

    Raises RequestRejected when the bytes so far already break a size limit (414 / 431) or use bare
    LF line endings.
    """
    end = buffer.find(b"\r\n\r\n")
    bare = buffer.find(b"\n\n")
    if bare != -1 and (end == -1 or bare < end + 2):
        raise RequestRejected(400, "bare LF line ending in request head")
    if end == -1:
        # Only a prefix so far: refuse it once even its complete form could not fit the limits.
        line_end = buffer.find(b"\n")
        if line_end == -1 and len(buffer) > limits.max_request_line + 1:  # + its CR
            raise RequestRejected(414, "request line too long")
        if len(buffer) > limits.max_request_line + limits.max_header_bytes + 4:
            raise RequestRejected(431, "request header block too large")
        return -1
    return end + 4


def check_request_head(head: bytes, limits: HeadLimits) -> None:
    """Raise RequestRejected unless `head` (ending in CRLFCRLF) is an unambiguous HTTP/1.x request."""
    body = head[:-4] if head.endswith(b"\r\n\r\n") else head
    lines = body.split(b"\r\n")
    for line in lines:
        if b"\n" in line or b"\r" in line:
            raise RequestRejected(400, "bare CR or LF in request head")
    request_line, fields = lines[0], lines[1:]
    if len(request_line) > limits.max_request_line:
        raise RequestRejected(414, "request line too long")
    match = _REQUEST_LINE.match(request_line)
    if match is None:
        raise RequestRejected(400, "malformed request line")
    if match.group("major") != b"1":
        raise RequestRejected(505, "only HTTP/1.x is served on this connection")
    http10 = match.group("minor") == b"0"
    method, target = match.group("method"), match.group("target")
    if not _TOKEN.match(method):
        raise RequestRejected(400, "malformed method")
    if method == b"CONNECT":
        raise RequestRejected(405, "CONNECT is not supported")
    if _TARGET_BAD.search(target):
        raise RequestRejected(400, "malformed request target")
    if not (target.startswith(b"/") or (target == b"*" and method == b"OPTIONS")):
        raise RequestRejected(400, "only origin-form request targets are accepted")
    if len(fields) > limits.max_header_count:
        raise RequestRejected(431, "too many header fields")
    if len(body) - len(request_line) > limits.max_header_bytes:
        raise RequestRejected(431, "request header block too large")
    _check_fields(fields, http10)


def _check_fields(fields: list[bytes], http10: bool) -> None:
    hosts = 0
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for line in fields:
        if not line:
            raise RequestRejected(400, "empty header line")
        if line[:1] in (b" ", b"\t"):
            raise RequestRejected(400, "obsolete line folding in header")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise RequestRejected(400, "malformed header field name")
        value = value.strip(b" \t")
        if _FIELD_VALUE_BAD.search(value):
            raise RequestRejected(400, "control character in header value")
        lname = name.lower()
        if lname == b"host":
            hosts += 1
        elif lname == b"content-length":
            lengths.append(value)
        elif lname == b"transfer-encoding":
            codings.extend(part.strip(b" \t").lower() for part in value.split(b","))
    if hosts > 1:
        raise RequestRejected(400, "more than one Host header")
    if hosts == 0 and not http10:
        raise RequestRejected(400, "missing Host header")
    if codings:
        if http10:
            raise RequestRejected(400, "Transfer-Encoding on an HTTP/1.0 request")
        if lengths:
            raise RequestRejected(400, "both Content-Length and Transfer-Encoding")
        if codings != [b"chunked"]:
            if all(_TOKEN.match(c) for c in codings) and b"chunked" not in codings:
                raise RequestRejected(501, "unsupported transfer coding")
            raise RequestRejected(400, "malformed or repeated Transfer-Encoding")
    if len(lengths) > 1:
        raise RequestRejected(400, "more than one Content-Length")
    if lengths and not _DIGITS.match(lengths[0]):
        raise RequestRejected(400, "malformed Content-Length")
