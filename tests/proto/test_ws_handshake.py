"""The WebSocket opening handshake helpers (`llmrelay.proto.ws_handshake`), byte by byte."""

from __future__ import annotations

import base64

from llmrelay.proto.ws_handshake import (
    accept_for,
    client_answer_headers,
    client_key,
    new_key,
    upgrade_problem,
    upgrade_request_headers,
    valid_key,
)

RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's example
RFC_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_accept_value_of_the_rfc_example() -> None:
    assert accept_for(RFC_KEY) == RFC_ACCEPT


def test_a_new_key_is_16_bytes_in_base64() -> None:
    key = new_key(bytes(range(16)))
    assert valid_key(key)
    assert base64.b64decode(key) == bytes(range(16))


def test_key_validity() -> None:
    assert valid_key(RFC_KEY)
    assert not valid_key(b"")
    assert not valid_key(base64.b64encode(b"x" * 15))
    assert not valid_key(base64.b64encode(b"x" * 17))
    assert not valid_key(b"dGhlIHNhbXBsZSBub25jZQ!!")


def test_the_client_key_must_be_one_and_valid() -> None:
    assert client_key([(b"sec-websocket-key", RFC_KEY)]) == RFC_KEY
    assert client_key([]) is None
    assert client_key([(b"sec-websocket-key", RFC_KEY), (b"sec-websocket-key", RFC_KEY)]) is None
    assert client_key([(b"sec-websocket-key", b"short")]) is None


def test_the_upstream_request_becomes_an_upgrade_with_the_given_key() -> None:
    rewritten = [
        (b"host", b"upstream.test"),
        (b"sec-websocket-key", b"client-key-ignored"),
        (b"sec-websocket-protocol", b"chat, superchat"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"content-length", b"0"),
        (b"x-request-id", b"r1"),
    ]
    out = upgrade_request_headers(rewritten, RFC_KEY)
    assert out == [
        (b"host", b"upstream.test"),
        (b"sec-websocket-protocol", b"chat, superchat"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"x-request-id", b"r1"),
        (b"connection", b"Upgrade"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", RFC_KEY),
        (b"sec-websocket-version", b"13"),
    ]


def test_the_clients_version_is_kept() -> None:
    out = upgrade_request_headers([(b"sec-websocket-version", b"8")], RFC_KEY)
    assert (b"sec-websocket-version", b"8") in out
    assert [name for name, _ in out].count(b"sec-websocket-version") == 1


GOOD_101 = [
    (b"upgrade", b"WebSocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-accept", RFC_ACCEPT),
]


def test_a_101_that_completes_the_handshake() -> None:
    assert upgrade_problem(GOOD_101, RFC_KEY) is None
    assert upgrade_problem([(b"upgrade", b"websocket"), (b"connection", b"keep-alive, upgrade"), GOOD_101[2]], RFC_KEY) is None


def test_a_101_that_does_not() -> None:
    assert upgrade_problem(GOOD_101, new_key(b"\x00" * 16)) is not None  # another key's accept
    assert upgrade_problem(GOOD_101[1:], RFC_KEY) is not None  # no Upgrade
    assert upgrade_problem([(b"upgrade", b"h2c"), *GOOD_101[1:]], RFC_KEY) is not None
    assert upgrade_problem([GOOD_101[0], GOOD_101[2]], RFC_KEY) is not None  # no Connection: upgrade
    assert upgrade_problem(GOOD_101[:2], RFC_KEY) is not None  # no accept
    assert upgrade_problem([*GOOD_101, GOOD_101[2]], RFC_KEY) is not None  # two accepts


UPSTREAM_101 = [
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade, X-Hop"),
    (b"x-hop", b"1"),
    (b"keep-alive", b"timeout=5"),
    (b"sec-websocket-accept", RFC_ACCEPT),
    (b"sec-websocket-protocol", b"chat"),
    (b"sec-websocket-extensions", b"permessage-deflate"),
    (b"content-length", b"0"),
    (b"proxy-authenticate", b"Basic"),
    (b"x-request-id", b"r1"),
]


def test_the_http1_answer_carries_the_handshake_and_no_hop_by_hop_field() -> None:
    assert client_answer_headers(UPSTREAM_101, http2=False) == [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", RFC_ACCEPT),
        (b"sec-websocket-protocol", b"chat"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"x-request-id", b"r1"),
    ]


def test_the_http2_answer_has_no_accept_and_no_connection_field() -> None:
    assert client_answer_headers(UPSTREAM_101, http2=True) == [
        (b"sec-websocket-protocol", b"chat"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"x-request-id", b"r1"),
    ]
