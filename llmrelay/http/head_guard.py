"""The strict parser of a raw HTTP/1.x request head.

Lenient parsers (h11 among them) accept Content-Length together with Transfer-Encoding, obs-fold
continuation lines, bare LF line endings, `HTTP/2.0` in a request line, or header blocks larger than
their buffer when they arrive in one read. A front end and a back end that read such a request
differently is how requests are smuggled, so anything ambiguous is refused here with the status it
deserves, and the connection is closed. Pure functions on bytes: no I/O, easy to fuzz; `fuzz/` checks
that h11 reads every head accepted here the same way (method, target, fields, body framing).
"""

from __future__ import annotations

import re

from llmrelay.http.errors import RequestRejected
from llmrelay.http.exchange import Headers, RequestHead
from llmrelay.http.wire import FIELD_LINE, connection_close_requested

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_REQUEST_LINE = re.compile(rb"^(?P<method>[^ ]+) (?P<target>[^ ]+) HTTP/(?P<major>[0-9])\.(?P<minor>[0-9])$")
# method SP origin-form target SP HTTP/1.x: what nearly every request line is
_USUAL_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[\x21-\x7e]*) HTTP/1\.([0-9])")
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
    parse_request_head(head, limits, "http", ("", 0))


def parse_request_head(head: bytes, limits: HeadLimits, scheme: str, client: tuple[str, int]) -> RequestHead:
    """Check `head` (ending in CRLFCRLF) strictly and parse it; raise RequestRejected when it is not
    an unambiguous HTTP/1.x request.

    Header names come out lower-cased and values without surrounding whitespace, in order.
    """
    body = head[:-4] if head.endswith(b"\r\n\r\n") else head
    pairs = body.count(b"\r\n")
    if body.count(b"\r") != pairs or body.count(b"\n") != pairs:
        raise RequestRejected(400, "bare CR or LF in request head")
    lines = body.split(b"\r\n")
    request_line, fields = lines[0], lines[1:]
    if len(request_line) > limits.max_request_line:
        raise RequestRejected(414, "request line too long")
    usual = _USUAL_REQUEST_LINE.fullmatch(request_line)  # one regex for the common case
    if usual is not None:
        method, target, minor = usual.groups()
        http10 = minor == b"0"
    else:
        method, target, http10 = _unusual_request_line(request_line)
    if method == b"CONNECT":
        raise RequestRejected(405, "CONNECT is not supported")
    if len(fields) > limits.max_header_count:
        raise RequestRejected(431, "too many header fields")
    if len(body) - len(request_line) > limits.max_header_bytes:
        raise RequestRejected(431, "request header block too large")
    headers: Headers = []
    match_field = FIELD_LINE.fullmatch
    for line in fields:
        field = match_field(line)
        if field is None:
            raise RequestRejected(400, _field_problem(line))
        name, value = field.groups()
        headers.append((name.lower(), value))
    hosts = 0
    lengths: list[bytes] = []
    codings: list[bytes] = []
    close = http10  # HTTP/1.0 connections are not kept alive
    expect_continue = False
    for name, value in headers:
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.extend(part.strip(b" \t").lower() for part in value.split(b","))
        elif name == b"connection":
            close = close or connection_close_requested(value)
        elif name == b"expect":
            expect_continue = not http10 and value.lower() == b"100-continue"
    if hosts > 1:
        raise RequestRejected(400, "more than one Host header")
    if hosts == 0 and not http10:
        raise RequestRejected(400, "missing Host header")
    length: int | None = None
    if codings:
        if http10:
            raise RequestRejected(400, "Transfer-Encoding on an HTTP/1.0 request")
        if lengths:
            raise RequestRejected(400, "both Content-Length and Transfer-Encoding")
        if codings != [b"chunked"]:
            if all(_TOKEN.match(c) for c in codings) and b"chunked" not in codings:
                raise RequestRejected(501, "unsupported transfer coding")
            raise RequestRejected(400, "malformed or repeated Transfer-Encoding")
    elif lengths:
        if len(lengths) > 1:
            raise RequestRejected(400, "more than one Content-Length")
        if not _DIGITS.match(lengths[0]):
            raise RequestRejected(400, "malformed Content-Length")
        length = int(lengths[0])
    else:
        length = 0
    return RequestHead(
        method=method,
        target=target,
        headers=headers,
        http_version=b"1.0" if http10 else b"1.1",
        scheme=scheme,
        client=client,
        body_length=length,
        has_body=length is None or length > 0,
        keep_alive=not close,
        expect_continue=expect_continue,
    )


def _unusual_request_line(request_line: bytes) -> tuple[bytes, bytes, bool]:
    """The request line checked step by step, for the precise reason it is refused (or accepted:
    `OPTIONS *`)."""
    match = _REQUEST_LINE.match(request_line)
    if match is None:
        raise RequestRejected(400, "malformed request line")
    method, target, major, minor = match.groups()
    if major != b"1":
        raise RequestRejected(505, "only HTTP/1.x is served on this connection")
    if not _TOKEN.match(method):
        raise RequestRejected(400, "malformed method")
    if method == b"CONNECT":
        raise RequestRejected(405, "CONNECT is not supported")
    if _TARGET_BAD.search(target):
        raise RequestRejected(400, "malformed request target")
    if not (target[:1] == b"/" or (target == b"*" and method == b"OPTIONS")):
        raise RequestRejected(400, "only origin-form request targets are accepted")
    return method, target, minor == b"0"


def _field_problem(line: bytes) -> str:
    """Why a header line did not parse (for the error message)."""
    if not line:
        return "empty header line"
    if line[:1] in (b" ", b"\t"):
        return "obsolete line folding in header"
    name, colon, _ = line.partition(b":")
    if not colon or not _TOKEN.match(name):
        return "malformed header field name"
    return "control character in header value"
