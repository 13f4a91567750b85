"""An HTTP/2 request's header list, checked and turned into the `RequestHead` every protocol shares;
and a response head turned into the header list HTTP/2 carries.

RFC 9113 (section 8) calls a request malformed when its pseudo-header fields are missing, repeated,
unknown or placed after a regular field, when a field name has an upper-case letter or a character
outside a token, when a value holds CR, LF or NUL or starts or ends with whitespace, or when it carries
a connection-specific field (Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade; TE
other than `trailers`). A malformed request is a stream error: `MalformedRequest` carries the status to
answer it with (400, 414 or 431), the connection goes on serving its other streams.

The relay then sees what an HTTP/1.1 request would give it: lower-case names, a `host` field (from
`:authority` when the client sent none), the `:path` as target, cookie crumbs joined into one field.
Extended CONNECT (RFC 8441, `:protocol = websocket`) becomes a CONNECT with `websocket` set and the
`:path` as target; a plain CONNECT has its `:authority` as target.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llmrelay.proto.errors import InvalidResponseHead, RequestRejected
from llmrelay.proto.h1.head_guard import HeadLimits, valid_host
from llmrelay.proto.messages import Headers, RequestHead

# What HTTP/2 forbids outright (RFC 9113 section 8.2.2). TE is allowed with the value "trailers" only.
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_RESPONSE_DROPPED = CONNECTION_SPECIFIC | {b"te", b"trailer"}
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority", b":protocol"})
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")  # a token, lower case
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET_BAD = re.compile(rb"[\x00-\x20\x7f-\xff]")
_VALUE_EDGES = (b" ", b"\t")
# The per-field overhead RFC 9113 (section 6.5.2) counts in a header list's size.
FIELD_OVERHEAD = 32
_names_seen: set[bytes] = set()  # names already checked: most requests repeat the same dozen
_NAMES_KEPT = 512
_H2 = b"2"


class MalformedRequest(RequestRejected):
    """A request refused before the relay saw it, with what is known of it (for the access log)."""

    def __init__(self, status: int, message: str, method: bytes = b"", target: bytes = b"") -> None:
        super().__init__(status, message)
        self.method = method
        self.target = target


def decoded_list_limit(limits: HeadLimits) -> int:
    """The largest header list (counted the RFC 9113 way) the HPACK decoder builds: every list within
    `max_header_count` fields and `max_header_bytes` bytes fits; one past it cannot be a request the
    relay serves, so decoding stops there (and the connection ends: the HPACK state is then lost)."""
    return limits.max_header_bytes + limits.max_request_line + FIELD_OVERHEAD * (limits.max_header_count + 5)


def request_head(
    fields: Sequence[tuple[bytes, bytes]],
    end_stream: bool,
    scheme: str,
    client: tuple[str, int],
    limits: HeadLimits,
) -> RequestHead:
    """The request of one HEADERS block; MalformedRequest when it must not be relayed."""
    method = path = authority = protocol = request_scheme = None
    headers: Headers = []
    regular = False
    size = 0
    host: bytes | None = None
    hosts = 0
    lengths: list[bytes] | None = None
    cookies: list[bytes] | None = None
    seen = _names_seen
    for name, value in fields:
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            raise _malformed(400, "a header value holds CR, LF or NUL", method, path)
        if value and (value[:1] in _VALUE_EDGES or value[-1:] in _VALUE_EDGES):
            raise _malformed(400, "a header value starts or ends with whitespace", method, path)
        if name[:1] == b":":
            if regular:
                raise _malformed(400, "a pseudo-header field after a regular one", method, path)
            if name == b":method":
                if method is not None:
                    raise _malformed(400, "repeated :method", method, path)
                method = value
            elif name == b":path":
                if path is not None:
                    raise _malformed(400, "repeated :path", method, path)
                path = value
            elif name == b":authority":
                if authority is not None:
                    raise _malformed(400, "repeated :authority", method, path)
                authority = value
            elif name == b":scheme":
                if request_scheme is not None:
                    raise _malformed(400, "repeated :scheme", method, path)
                request_scheme = value
            elif name == b":protocol":
                if protocol is not None:
                    raise _malformed(400, "repeated :protocol", method, path)
                protocol = value
            else:
                raise _malformed(400, "an unknown pseudo-header field", method, path)
            continue
        regular = True
        if name not in seen:
            if _NAME.fullmatch(name) is None:
                raise _malformed(400, "a malformed header name (HTTP/2 names are lower-case tokens)", method, path)
            if name in CONNECTION_SPECIFIC:
                raise _malformed(400, "a connection-specific header field", method, path)
            if name != b"te" and len(seen) < _NAMES_KEPT:
                seen.add(name)
        size += len(name) + len(value) + 4  # counted as HTTP/1.1 would: `name: value` CRLF
        if name == b"cookie":
            if cookies is None:
                cookies = [value]
                headers.append((name, value))  # (replaced below when crumbs follow)
            else:
                cookies.append(value)
            continue
        if name == b"host":
            hosts += 1
            host = value
        elif name == b"content-length":
            lengths = [value] if lengths is None else [*lengths, value]
        elif name == b"te" and value.lower() != b"trailers":
            raise _malformed(400, "TE other than 'trailers'", method, path)
        headers.append((name, value))
    if method is None:
        raise _malformed(400, "no :method", method, path)
    if _METHOD.fullmatch(method) is None:
        raise _malformed(400, "a malformed :method", None, path)
    if len(headers) > limits.max_header_count:
        raise _malformed(431, "too many header fields", method, path)
    if size > limits.max_header_bytes:
        raise _malformed(431, "request header fields too large", method, path)
    if cookies is not None and len(cookies) > 1:
        joined = b"; ".join(cookies)
        headers = [(name, joined if name == b"cookie" else value) for name, value in headers]
    websocket = False
    if method == b"CONNECT" and protocol is None:
        if authority is None or path is not None or request_scheme is not None:
            raise _malformed(400, "CONNECT takes :authority only", method, path)
        target = authority
    else:
        if request_scheme is None or path is None or not path:
            raise _malformed(400, "no :scheme or :path", method, path)
        if protocol is not None:
            if method != b"CONNECT":
                raise _malformed(400, ":protocol on a request other than CONNECT", method, path)
            if protocol.lower() != b"websocket":
                raise _malformed(400, "an unsupported :protocol", method, path)
            websocket = True
        target = path
        if len(target) > limits.max_request_line:
            raise _malformed(414, "request target too long", method, None)
        if _TARGET_BAD.search(target) or not (target[:1] == b"/" or (target == b"*" and method == b"OPTIONS")):
            raise _malformed(400, "a malformed :path", method, None)
    if hosts > 1:
        raise _malformed(400, "more than one host field", method, target)
    if authority is not None:
        if not valid_host(authority):
            raise _malformed(400, "a malformed :authority", method, target)
        if host is None:
            headers.append((b"host", authority))
        elif host.lower() != authority.lower():
            raise _malformed(400, "host differs from :authority", method, target)
    elif host is None:
        raise _malformed(400, "neither :authority nor host", method, target)
    elif not valid_host(host):
        raise _malformed(400, "a malformed host field", method, target)
    body_length: int | None = None
    if lengths is not None:
        if any(not value.isdigit() or value != lengths[0] for value in lengths) or len(lengths[0]) > 18:
            raise _malformed(400, "a malformed content-length", method, target)
        body_length = int(lengths[0])
    if end_stream:
        if body_length:
            raise _malformed(400, "content-length on a request without a body", method, target)
        body_length = 0
        has_body = False
    else:
        has_body = body_length != 0 or websocket or method == b"CONNECT"
    return RequestHead(
        method=method,
        target=target,
        headers=headers,
        http_version=_H2,
        scheme=scheme,
        client=client,
        body_length=body_length,
        has_body=has_body,
        keep_alive=True,
        websocket=websocket,
    )


def _malformed(status: int, message: str, method: bytes | None, target: bytes | None) -> MalformedRequest:
    # (the method only when it is a token: it reaches the access log)
    if method is not None and _METHOD.fullmatch(method) is None:
        method = None
    if target is not None and _TARGET_BAD.search(target):
        target = None
    return MalformedRequest(status, message, method or b"", target or b"")


def response_fields(status: int, headers: Headers) -> list[tuple[bytes, bytes]]:
    """The header list of a response head; InvalidResponseHead for a status HTTP/2 cannot carry as a
    final response (1xx: 101 has no meaning in HTTP/2, informational ones are not relayed)."""
    if status < 200 or status > 999:
        raise InvalidResponseHead(f"response status {status} cannot be relayed over HTTP/2")
    fields = [(b":status", b"%d" % status)]
    dropped = _RESPONSE_DROPPED
    for name, value in headers:
        name = name.lower()
        if name not in dropped:
            fields.append((name, value))
    return fields


def trailer_fields(headers: Headers) -> list[tuple[bytes, bytes]]:
    """A trailer section: lower-case names, no pseudo-header or connection-specific fields."""
    dropped = _RESPONSE_DROPPED
    return [(name.lower(), value) for name, value in headers if name[:1] != b":" and name.lower() not in dropped]
