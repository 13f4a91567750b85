"""HTTP/1.1 field syntax: tokens, field lines, Connection options, status lines, head serialisation."""

from __future__ import annotations

import re

from llmrelay.proto.errors import InvalidResponseHead
from llmrelay.proto.messages import Headers

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A field line: a token name, a colon, a value without control characters (OWS around it dropped).
_FIELD = rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x08\x0a-\x1f\x7f \t])?)[ \t]*"
FIELD_LINE = re.compile(_FIELD)

REASONS = {
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Content Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Content",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
    529: b"Overloaded",
}
_STATUS_LINES = {status: b"HTTP/1.1 %d %s" % (status, reason) for status, reason in REASONS.items()}


def is_token(value: bytes) -> bool:
    """Whether `value` is an RFC 9110 token (a method, a field name, a transfer coding)."""
    return _TOKEN.fullmatch(value) is not None


def htab_after_value(line: bytes) -> bool:
    """Whether HTAB is in the whitespace after a field line's value. RFC 9110 allows it (OWS), but llhttp
    reads `Transfer-Encoding: chunked<HTAB>` as another coding (it refuses such a request and reads
    such a response until the connection closes): the relay refuses that field with it."""
    return b"\t" in line[len(line.rstrip(b" \t")) :]


def connection_close_requested(value: bytes) -> bool:
    """Whether a Connection header value lists `close`."""
    return any(token.strip().lower() == b"close" for token in value.split(b","))


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <status> <reason>` (without its CRLF); InvalidResponseHead for a status that cannot be
    relayed (informational ones included: they are never forwarded)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 200 <= status <= 999:
            raise InvalidResponseHead(f"status {status} cannot be relayed")
        line = b"HTTP/1.1 %d " % status
    return line


def serialize_head(start_line: bytes, headers: Headers) -> bytes:
    """A message head; header names and values must already be valid (checked where they came from).
    (Every field line is made by C code: `b": ".join` of each pair, mapped, then joined.)"""
    if not headers:
        return start_line + b"\r\n\r\n"
    return b"".join((start_line, b"\r\n", b"\r\n".join(map(_FIELD_SEPARATOR, headers)), b"\r\n\r\n"))


_FIELD_SEPARATOR = b": ".join
