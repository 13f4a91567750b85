"""The protocol picker: which wire protocol a new connection speaks, from its first bytes.

A plain listener serves HTTP/1.1. A client that opens with a TLS handshake there (an `https://` URL
pointed at a plain port) gets its connection closed with a log line that says so, instead of an HTTP
error it could not read. The HTTP/2 prior-knowledge preface is recognised, so that an h2c driver can
take it; until one exists it goes to the HTTP/1.1 driver, which answers it 505. TLS listeners (ALPN
`h2` / `http/1.1`) plug in here too: the choice is made once per connection, never per request.
"""

from __future__ import annotations

import enum

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_TLS_RECORD = 0x16  # a TLS handshake record: ClientHello opens every TLS connection


class Wire(enum.Enum):
    HTTP1 = "HTTP/1.1"
    HTTP2_PRIOR_KNOWLEDGE = "HTTP/2 (prior knowledge)"
    TLS = "TLS"


def sniff(first: bytes) -> Wire:
    """The protocol of a connection whose first bytes are `first` (at least one byte)."""
    if first[0] == _TLS_RECORD and first[1:2] in (b"", b"\x03"):
        return Wire.TLS
    if first.startswith(H2_PREFACE[: len(first)]) and len(first) >= 3:
        return Wire.HTTP2_PRIOR_KNOWLEDGE
    return Wire.HTTP1
