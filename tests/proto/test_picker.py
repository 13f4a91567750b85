"""The protocol picker: the wire protocol of a new connection, from its first bytes (sans-IO)."""

from __future__ import annotations

import pytest

from llmrelay.server.picker import H2_PREFACE, Wire, sniff

# The first bytes of a real TLS 1.2/1.3 ClientHello: a handshake record (0x16), legacy version 3.1,
# a length, then the handshake header (0x01: ClientHello).
CLIENT_HELLO = bytes.fromhex("16030100f8010000f40303") + bytes(32)


@pytest.mark.parametrize(
    "first", [CLIENT_HELLO, CLIENT_HELLO[:1], CLIENT_HELLO[:2], CLIENT_HELLO[:5], b"\x16\x03\x03\x00\x10"]
)
def test_a_tls_client_hello_is_tls(first: bytes) -> None:
    assert sniff(first) is Wire.TLS


@pytest.mark.parametrize("first", [b"\x16\x04\x01", b"\x16 HTTP", b"\x15\x03\x01\x00\x02"])
def test_other_binary_openings_are_not_tls(first: bytes) -> None:
    assert sniff(first) is Wire.HTTP1


def test_the_h2_preface_whole_and_with_frames_after_it() -> None:
    assert H2_PREFACE == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    assert sniff(H2_PREFACE) is Wire.HTTP2_PRIOR_KNOWLEDGE
    settings_frame = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    assert sniff(H2_PREFACE + settings_frame) is Wire.HTTP2_PRIOR_KNOWLEDGE


@pytest.mark.parametrize("length", range(3, len(H2_PREFACE)))
def test_a_partial_h2_preface_is_h2(length: int) -> None:
    assert sniff(H2_PREFACE[:length]) is Wire.HTTP2_PRIOR_KNOWLEDGE


@pytest.mark.parametrize(
    "first",
    [
        b"P",
        b"PR",  # too short to tell: HTTP/1.1 (its parser waits for more)
        b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\n",
        b"PRIVATE / HTTP/1.1\r\n",
        b"PRI / HTTP/1.1\r\n",
        b"PRI * HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nXX",  # the preface, wrong after its head
        b"OPTIONS * HTTP/1.1\r\n",
        b"\r\nGET / HTTP/1.1\r\n",
        b"G",
    ],
)
def test_ordinary_request_lines_are_http1(first: bytes) -> None:
    assert sniff(first) is Wire.HTTP1
