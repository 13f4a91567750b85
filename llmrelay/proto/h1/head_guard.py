"""The strict parser of a raw HTTP/1.x request head.

Lenient parsers (h11 among them) accept Content-Length together with Transfer-Encoding, obs-fold
continuation lines, bare LF line endings, `HTTP/2.0` in a request line, or header blocks larger than
their buffer when they arrive in one read. A front end and a back end that read such a request
differently is how requests are smuggled, so anything ambiguous is refused here with the status it
deserves, and the connection is closed. Targets are in origin form, except `CONNECT host:port` (a
strict authority, no body), which goes on to the relay: it opens tunnels or answers 405. Pure
functions on bytes: no I/O, easy to fuzz; `fuzz/` checks that h11 and httptools read every head
accepted here the same way (method, target, fields, body framing).
"""

from __future__ import annotations

import ipaddress
import re

import msgspec

from llmrelay.proto.authority import AuthorityError, parse_authority
from llmrelay.proto.errors import RequestRejected
from llmrelay.proto.h1.fields import FIELD_LINE, connection_close_requested, htab_after_value, is_token
from llmrelay.proto.h1.framing import LENGTH, REQUEST, FramingError, body_framing
from llmrelay.proto.messages import Headers, RequestHead

_REQUEST_LINE = re.compile(rb"(?P<method>[^ ]+) (?P<target>[^ ]+) HTTP/(?P<major>[0-9])\.(?P<minor>[0-9])")
# method SP origin-form target SP HTTP/1.x: what nearly every request line is
_USUAL_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[\x21-\x7e]*) HTTP/1\.([0-9])")
_WATCHED = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"})
_TARGET_BAD = re.compile(rb"[\x00-\x20\x7f-\xff]")  # a target is ASCII; others are percent-encoded
# Host = uri-host [ ":" port ] (RFC 9110 section 7.2, RFC 3986 section 3.2.2): an IP-literal in brackets
# (checked further below), or a reg-name (an IPv4 address is one too), then an optional port.
_HOST = re.compile(
    rb"(?:\[(?P<literal>[0-9A-Fa-f:.]+|[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\]"
    rb"|(?:[A-Za-z0-9\-._~!$&'()*+,;=]+|%[0-9A-Fa-f]{2})*)"
    rb"(?::(?P<port>[0-9]{1,5}))?"
)


class HeadLimits(msgspec.Struct, frozen=True):
    """Size limits of a request head (from `[server]`)."""

    max_request_line: int = 8192
    max_header_bytes: int = 32768
    max_header_count: int = 100


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
    if method == b"CONNECT" and usual is not None:
        raise RequestRejected(400, "a CONNECT target is host:port")
    if method == b"PRI":  # the start of the HTTP/2 preface (RFC 9113 section 3.4), never a request
        raise RequestRejected(400, "PRI is the HTTP/2 connection preface, not a request method")
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
    host: bytes | None = None
    hosts = 0
    lengths: list[bytes] = []
    codings: list[bytes] = []
    connection: list[bytes] = []
    upgrade: list[bytes] = []
    close = http10  # HTTP/1.0 connections are not kept alive
    expect_continue = False
    for name, value in headers:
        if name not in _WATCHED:  # most fields: one set lookup instead of six comparisons
            continue
        if name == b"host":
            hosts += 1
            host = value
        elif name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.append(value)
        elif name == b"connection":
            close = close or connection_close_requested(value)
            connection.append(value)
        elif name == b"upgrade":
            upgrade.append(value)
        elif name == b"expect":
            expect_continue = not http10 and value.lower() == b"100-continue"
    if hosts > 1:
        raise RequestRejected(400, "more than one Host header")
    if host is None:
        if not http10:
            raise RequestRejected(400, "missing Host header")
    elif host not in _valid_hosts and not valid_host(host):
        raise RequestRejected(400, "malformed Host header")
    if codings and http10:
        raise RequestRejected(400, "Transfer-Encoding on an HTTP/1.0 request")
    if codings and any(htab_after_value(line) for line in fields if line[:18].lower() == b"transfer-encoding:"):
        raise RequestRejected(400, "HTAB after the Transfer-Encoding value")
    body_length: int | None = 0
    if lengths or codings:
        try:
            framing, length = body_framing(REQUEST, method, 0, lengths, codings)
        except FramingError as exc:
            raise RequestRejected(exc.status, str(exc)) from None
        body_length = length if framing == LENGTH else None
        if method == b"CONNECT" and body_length != 0:
            # What follows a CONNECT head is the tunnel's bytes: a body would make them ambiguous.
            raise RequestRejected(400, "a CONNECT request has a body")
        if upgrade and body_length != 0 and b"upgrade" in _options(connection):
            # llhttp passes every byte after such a head to the new protocol; h11 (and RFC 9110) read
            # the body first. Nothing the relay serves upgrades with a body: refused.
            raise RequestRejected(400, "a request asking to switch protocols has a body")
    return RequestHead(
        method=method,
        target=target,
        headers=headers,
        http_version=b"1.0" if http10 else b"1.1",
        scheme=scheme,
        client=client,
        body_length=body_length,
        has_body=body_length is None or body_length > 0,
        keep_alive=not close,
        expect_continue=expect_continue,
        websocket=bool(upgrade) and not http10 and _asks_websocket(upgrade, connection),
    )


# The few Host values a relay sees again and again, once found valid (bounded: a client sending ever
# new ones only pays for the full check).
_valid_hosts: set[bytes] = set()
_VALID_HOSTS_KEPT = 256


def valid_host(value: bytes) -> bool:
    """Whether a Host value is `uri-host [ ":" port ]`: a reg-name, IPv4 address or bracketed IP
    literal, and a port of 0-65535. Userinfo (`a@b`), paths, spaces, empty or other ports are not."""
    if not _check_host(value):
        return False
    if len(_valid_hosts) < _VALID_HOSTS_KEPT:
        _valid_hosts.add(value)
    return True


def _check_host(value: bytes) -> bool:
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    port = match.group("port")
    if port is not None and int(port) > 65535:
        return False
    literal = match.group("literal")
    if literal is not None and literal[:1] not in (b"v", b"V"):
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            return False
    return True


def _asks_websocket(upgrade: list[bytes], connection: list[bytes]) -> bool:
    """`Upgrade: websocket` (any version, any case), named by `Connection: upgrade` (RFC 9110 7.8)."""
    protocols = {part.strip(b" \t").partition(b"/")[0].lower() for value in upgrade for part in value.split(b",")}
    return b"websocket" in protocols and b"upgrade" in _options(connection)


def _options(connection: list[bytes]) -> set[bytes]:
    """The options listed by a request's Connection fields, lower-cased."""
    return {part.strip(b" \t").lower() for value in connection for part in value.split(b",")}


def _unusual_request_line(request_line: bytes) -> tuple[bytes, bytes, bool]:
    """The request line checked step by step, for the precise reason it is refused (or accepted:
    `OPTIONS *`)."""
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        raise RequestRejected(400, "malformed request line")
    method, target, major, minor = match.groups()
    if major != b"1":
        raise RequestRejected(505, "only HTTP/1.x is served on this connection")
    if not is_token(method):
        raise RequestRejected(400, "malformed method")
    if _TARGET_BAD.search(target):
        raise RequestRejected(400, "malformed request target")
    if method == b"CONNECT":
        # Authority form, and only for CONNECT: the relay decides whether it opens tunnels (405 if not).
        try:
            parse_authority(target)
        except AuthorityError as exc:
            raise RequestRejected(400, f"malformed CONNECT target: {exc}") from None
        return method, target, minor == b"0"
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
    if not colon or not is_token(name):
        return "malformed header field name"
    return "control character in header value"


def request_line_parts(buffer: bytes) -> tuple[bytes, bytes]:
    """The method and target of a head that was refused or did not arrive whole, for its log line:
    (b"", b"") when not even the method is there. Nothing here is trusted: the log escapes it."""
    line = buffer[:1024].split(b"\n", 1)[0].rstrip(b"\r")
    method, _, rest = line.partition(b" ")
    if not method or (not rest and len(line) == len(buffer)):  # the method may not be complete yet
        return b"", b""
    return method[:32], rest.partition(b" ")[0]
