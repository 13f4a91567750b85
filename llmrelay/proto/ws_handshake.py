"""The WebSocket opening handshake as the relay relays it (RFC 6455 section 4, RFC 8441), sans-IO.

The relay never reads WebSocket frames: it relays the handshake and then the bytes. What it does need:

* the upstream request: the client's `Sec-WebSocket-Key/-Version/-Protocol/-Extensions` kept, with
  `Connection: Upgrade` and `Upgrade: websocket` added back (the header rewriting drops them as
  hop-by-hop). A client on HTTP/2 (extended CONNECT) sends no key: the relay makes one;
* the check of the upstream's 101: `Upgrade: websocket`, `Connection: upgrade` and the
  `Sec-WebSocket-Accept` that proves the upstream read this very request's key;
* the answer to the client: a 101 with the upstream's handshake fields (HTTP/1.1), or a 200 with only
  the subprotocol and extensions (HTTP/2, where Connection and Upgrade do not exist).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from llmrelay.proto.messages import Headers

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VERSION = b"13"

_REPLACED = frozenset({b"sec-websocket-key", b"sec-websocket-version", b"content-length"})
# What a 101 or a 200 opening a tunnel never carries to the client, whatever the upstream sent.
_NOT_RELAYED = frozenset(
    {
        b"connection", b"upgrade", b"keep-alive", b"proxy-connection",
        b"transfer-encoding", b"content-length", b"te", b"trailer",
    }
)


def accept_for(key: bytes) -> bytes:
    """The `Sec-WebSocket-Accept` value that answers `key`."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def new_key(nonce: bytes) -> bytes:
    """A `Sec-WebSocket-Key` from 16 random bytes (the caller draws them: no I/O here)."""
    if len(nonce) != 16:
        raise ValueError("a WebSocket key is made of 16 bytes")
    return base64.b64encode(nonce)


def valid_key(key: bytes) -> bool:
    """Whether `key` is the base64 of 16 bytes, as RFC 6455 section 4.1 requires."""
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


def _tokens(headers: Headers, name: bytes) -> set[bytes]:
    parts = (part.strip(b" \t").lower() for field, value in headers if field == name for part in value.split(b","))
    return {part for part in parts if part}


def upgrade_request_headers(headers: Headers, key: bytes) -> Headers:
    """Rewritten upstream request headers (hop-by-hop already removed) turned into a WebSocket upgrade
    with `key`, which replaces any key the client sent; the client's version is kept (13 when it sent
    none, as on HTTP/2), and a Content-Length goes (an upgrade carries no body)."""
    out: Headers = [field for field in headers if field[0] not in _REPLACED]
    versions = [field for field in headers if field[0] == b"sec-websocket-version"]
    out += [(b"connection", b"Upgrade"), (b"upgrade", b"websocket"), (b"sec-websocket-key", key)]
    out += versions[:1] or [(b"sec-websocket-version", VERSION)]
    return out


def client_key(headers: Headers) -> bytes | None:
    """The one valid `Sec-WebSocket-Key` an HTTP/1.1 client sent, or None."""
    keys = [value for name, value in headers if name == b"sec-websocket-key"]
    if len(keys) != 1 or not valid_key(keys[0]):
        return None
    return keys[0]


def upgrade_problem(headers: Headers, key: bytes) -> str | None:
    """Why a 101 from the upstream does not complete the handshake of `key` (None: it does)."""
    if b"websocket" not in {token.partition(b"/")[0] for token in _tokens(headers, b"upgrade")}:
        return "the upstream switched to a protocol other than websocket"
    if b"upgrade" not in _tokens(headers, b"connection"):
        return "the upstream's 101 has no Connection: upgrade"
    accepts = [value for name, value in headers if name == b"sec-websocket-accept"]
    if accepts != [accept_for(key)]:
        return "the upstream's Sec-WebSocket-Accept does not answer the key it was sent"
    return None


def client_answer_headers(upstream: Headers, http2: bool) -> Headers:
    """The headers of the answer that opens the client's WebSocket, from the upstream's 101.

    HTTP/1.1: `Upgrade: websocket`, `Connection: Upgrade`, then the upstream's other fields
    (the accept value, subprotocol, extensions, request id...) without hop-by-hop or framing ones.
    HTTP/2: no accept value (there is no key), and no connection-specific field at all.
    """
    out: Headers = [] if http2 else [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
    listed = _tokens(upstream, b"connection")
    for field in upstream:
        name = field[0]
        if name in _NOT_RELAYED or name in listed or name.startswith(b"proxy-"):
            continue
        if http2 and name == b"sec-websocket-accept":
            continue
        out.append(field)
    return out

