"""Responses framed by the sans-IO HTTP/1.1 server, as bytes: Content-Length, chunked added for an
HTTP/1.1 client when no length is known, close-delimited for HTTP/1.0, no body on the wire for HEAD,
204 and 304, a body shorter or longer than announced, heads that cannot be relayed, and the response
phases (a head, body, end, or a cut)."""

from __future__ import annotations

import pytest

from llmrelay.proto.errors import InvalidResponseHead
from llmrelay.proto.h1.head_guard import HeadLimits
from llmrelay.proto.h1.server import ConnectionState, ServerConnection, ServerExchange, finished
from llmrelay.proto.messages import Headers, InvalidPhase, ResponsePhase

AWAITING_HEAD = ConnectionState.AWAITING_HEAD
CLOSED = ConnectionState.CLOSED


def exchange_for(request: bytes) -> tuple[ServerConnection, ServerExchange]:
    conn = ServerConnection(HeadLimits(), "http", ("203.0.113.7", 40000), 100)
    conn.receive_data(request)
    head = conn.next_head()
    assert head is not None
    return conn, ServerExchange(conn, head)


GET11 = b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n"
GET10 = b"GET / HTTP/1.0\r\n\r\n"
HEAD11 = b"HEAD / HTTP/1.1\r\nHost: relay\r\n\r\n"


def test_content_length_response_leaves_in_one_send() -> None:
    conn, exchange = exchange_for(GET11)
    exchange.start_response(200, [(b"content-type", b"text/plain"), (b"content-length", b"2")])
    assert exchange.end_bytes(b"ok") == b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
    assert exchange.phase is ResponsePhase.DONE and finished(exchange)
    assert conn.finish(exchange, closing=False) is AWAITING_HEAD


def test_the_head_waits_for_the_first_body_bytes() -> None:
    conn, exchange = exchange_for(GET11)
    exchange.start_response(200, [(b"content-length", b"5")])
    assert exchange.phase is ResponsePhase.STREAMING and not finished(exchange)
    assert exchange.body_bytes(b"") == b""  # nothing to send yet: the head still waits
    assert exchange.body_bytes(b"he") == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe"
    assert exchange.take_pending() == b""
    assert exchange.body_bytes(b"ll") == b"ll"
    assert exchange.end_bytes(b"o") == b"o"
    assert exchange.sends == 2
    assert conn.finish(exchange, closing=False) is AWAITING_HEAD


def test_a_flushed_head_is_not_sent_again() -> None:
    _, exchange = exchange_for(GET11)
    exchange.start_response(200, [(b"content-type", b"text/event-stream")])
    assert exchange.take_pending() == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    assert exchange.take_pending() == b""
    assert exchange.body_bytes(b"data: 1\n\n") == b"9\r\ndata: 1\n\n\r\n"
    assert exchange.end_bytes() == b"0\r\n\r\n"


def test_chunked_is_added_for_http11_without_a_length() -> None:
    conn, exchange = exchange_for(GET11)
    exchange.start_response(200, [(b"content-type", b"text/event-stream")])
    sent = exchange.body_bytes(b"hello") + exchange.body_bytes(b"") + exchange.body_bytes(b"x" * 26)
    sent += exchange.end_bytes(b"!")
    assert sent == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1a\r\n" + b"x" * 26 + b"\r\n1\r\n!\r\n0\r\n\r\n"
    )
    assert not exchange.close_after
    assert conn.finish(exchange, closing=False) is AWAITING_HEAD


def test_an_empty_chunked_response_is_the_head_and_the_last_chunk() -> None:
    _, exchange = exchange_for(GET11)
    exchange.start_response(200, [])
    assert exchange.end_bytes() == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"


def test_a_chunked_response_given_its_own_header_is_chunked_once() -> None:
    _, exchange = exchange_for(GET11)
    exchange.start_response(200, [(b"transfer-encoding", b"chunked")])
    assert exchange.end_bytes(b"ab") == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"


def test_http10_without_a_length_is_close_delimited() -> None:
    conn, exchange = exchange_for(GET10)
    exchange.start_response(200, [(b"content-type", b"text/event-stream")])
    sent = exchange.body_bytes(b"data: 1\n\n") + exchange.end_bytes(b"data: 2\n\n")
    assert sent == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        b"data: 1\n\ndata: 2\n\n"
    )
    assert exchange.close_after
    assert conn.finish(exchange, closing=False) is CLOSED


def test_http10_with_a_length_is_sent_as_is_then_closed() -> None:
    conn, exchange = exchange_for(GET10)
    exchange.start_response(200, [(b"content-length", b"2")])
    assert exchange.end_bytes(b"ok") == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    assert conn.finish(exchange, closing=False) is CLOSED


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"content-length", b"5")], b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
        ([], b"HTTP/1.1 200 OK\r\n\r\n"),  # no chunked added: there is no body
    ],
)
def test_a_head_response_has_no_body_on_the_wire(headers: Headers, expected: bytes) -> None:
    conn, exchange = exchange_for(HEAD11)
    exchange.start_response(200, headers)
    assert exchange.body_bytes(b"hel") == expected
    assert exchange.body_bytes(b"lo") == b""
    assert exchange.end_bytes(b"!!!") == b""
    assert not exchange.close_after
    assert conn.finish(exchange, closing=False) is AWAITING_HEAD


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body_on_the_wire(status: int) -> None:
    conn, exchange = exchange_for(GET11)
    exchange.start_response(status, [(b"etag", b'"x"')])
    reason = {204: b"No Content", 304: b"Not Modified"}[status]
    assert exchange.end_bytes(b"ignored") == b"HTTP/1.1 %d %b\r\netag: \"x\"\r\n\r\n" % (status, reason)
    assert conn.finish(exchange, closing=False) is AWAITING_HEAD


def test_a_status_without_a_known_reason_has_an_empty_one() -> None:
    _, exchange = exchange_for(GET11)
    exchange.start_response(299, [(b"content-length", b"0")])
    assert exchange.end_bytes() == b"HTTP/1.1 299 \r\ncontent-length: 0\r\n\r\n"


def test_a_body_shorter_than_announced_closes_the_connection() -> None:
    conn, exchange = exchange_for(GET11)
    exchange.start_response(200, [(b"content-length", b"5")])
    assert exchange.body_bytes(b"ab") == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab"
    assert exchange.end_bytes() == b""
    assert exchange.close_after  # the client must not read the next response from the rest
    assert conn.finish(exchange, closing=False) is CLOSED


def test_a_body_exactly_as_announced_keeps_the_connection() -> None:
    conn, exchange = exchange_for(GET11)
    exchange.start_response(200, [(b"content-length", b"4")])
    exchange.body_bytes(b"ab")
    assert exchange.end_bytes(b"cd") == b"cd" and not exchange.close_after
    assert conn.finish(exchange, closing=False) is AWAITING_HEAD


def test_a_body_longer_than_announced_is_refused() -> None:
    _, exchange = exchange_for(GET11)
    exchange.start_response(200, [(b"content-length", b"2")])
    with pytest.raises(InvalidResponseHead):
        exchange.body_bytes(b"abc")
    _, exchange = exchange_for(GET11)
    exchange.start_response(200, [(b"content-length", b"2")])
    assert exchange.body_bytes(b"ab") == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nab"
    with pytest.raises(InvalidResponseHead):
        exchange.body_bytes(b"c")
    with pytest.raises(InvalidResponseHead):
        exchange.end_bytes(b"c")


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (200, [(b"content-length", b"2"), (b"transfer-encoding", b"chunked")]),
        (200, [(b"content-length", b"2, 2")]),
        (200, [(b"content-length", b"2"), (b"content-length", b"2")]),
        (200, [(b"content-length", b"-1")]),
        (200, [(b"transfer-encoding", b"gzip")]),
        (200, [(b"transfer-encoding", b"gzip, chunked")]),
        (204, [(b"content-length", b"0"), (b"transfer-encoding", b"chunked")]),  # refused before "no body"
        (100, []),
        (101, [(b"upgrade", b"websocket")]),
        (103, []),
        (1000, []),
    ],
)
def test_a_head_that_cannot_be_relayed_is_refused_before_anything_is_sent(status: int, headers: Headers) -> None:
    conn, exchange = exchange_for(GET11)
    with pytest.raises(InvalidResponseHead):
        exchange.start_response(status, headers)
    assert exchange.phase is ResponsePhase.PENDING and exchange.take_pending() == b""
    # the relay's own error can still be sent, and closes the connection
    sent = exchange.error_bytes(502, [(b"content-length", b"3")], b"bad")
    assert sent == b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbad"
    assert conn.finish(exchange, closing=False) is CLOSED


def test_an_error_of_the_server_itself_closes_the_connection() -> None:
    conn, exchange = exchange_for(GET11)
    assert exchange.error_bytes(413, [(b"content-type", b"text/plain"), (b"content-length", b"4")], b"big!") == (
        b"HTTP/1.1 413 Content Too Large\r\ncontent-type: text/plain\r\ncontent-length: 4\r\nconnection: close\r\n"
        b"\r\nbig!"
    )
    assert conn.finish(exchange, closing=False) is CLOSED


def test_response_phases() -> None:
    _, exchange = exchange_for(GET11)
    with pytest.raises(InvalidPhase):
        exchange.body_bytes(b"x")  # a body before the head
    with pytest.raises(InvalidPhase):
        exchange.end_bytes()  # an end without a head
    exchange.start_response(200, [(b"content-length", b"1")])
    with pytest.raises(InvalidPhase):
        exchange.start_response(200, [])  # a second head
    exchange.end_bytes(b"x")
    with pytest.raises(InvalidPhase):
        exchange.body_bytes(b"y")  # a body after the end
    with pytest.raises(InvalidPhase):
        exchange.end_bytes()
    assert exchange.cut() is False  # cutting an ended response changes nothing
    assert exchange.phase is ResponsePhase.DONE and not exchange.close_after


def test_no_error_of_the_server_once_a_head_is_given() -> None:
    _, exchange = exchange_for(GET11)
    exchange.start_response(200, [(b"content-length", b"1")])
    with pytest.raises(InvalidPhase):
        exchange.error_bytes(500, [], b"")
    assert exchange.take_pending() == b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n"


def test_a_cut_response_closes_the_connection() -> None:
    conn, exchange = exchange_for(GET11)
    exchange.start_response(200, [])
    exchange.body_bytes(b"partial")
    assert exchange.cut() is True
    assert exchange.phase is ResponsePhase.ABORTED and finished(exchange) and exchange.close_after
    assert exchange.cut() is False
    with pytest.raises(InvalidPhase):
        exchange.end_bytes()
    assert conn.finish(exchange, closing=False) is CLOSED


def test_a_response_cut_before_its_head_closes_the_connection() -> None:
    conn, exchange = exchange_for(GET11)
    assert exchange.cut() is True
    assert exchange.phase is ResponsePhase.ABORTED
    assert conn.finish(exchange, closing=False) is CLOSED


def test_an_http10_client_never_gets_a_transfer_coding() -> None:
    conn, exchange = exchange_for(GET10)
    exchange.start_response(200, [(b"transfer-encoding", b"chunked"), (b"content-type", b"text/plain")])
    sent = exchange.body_bytes(b"he") + exchange.end_bytes(b"llo")
    assert sent == b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nhello"
    assert conn.finish(exchange, closing=False) is CLOSED


def test_the_handlers_own_connection_close_is_honoured() -> None:
    conn, exchange = exchange_for(GET11)
    exchange.start_response(200, [(b"content-length", b"0"), (b"connection", b"Close")])
    assert exchange.end_bytes() == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: Close\r\n\r\n"
    assert exchange.close_after and conn.finish(exchange, closing=False) is CLOSED


def test_a_keep_alive_the_connection_will_not_honour_becomes_close() -> None:
    conn, exchange = exchange_for(b"GET / HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
    exchange.start_response(200, [(b"connection", b"keep-alive"), (b"content-length", b"0")])
    assert exchange.end_bytes() == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    assert conn.finish(exchange, closing=False) is CLOSED


def test_an_error_after_the_head_changes_nothing() -> None:
    conn, exchange = exchange_for(GET11)
    exchange.start_response(200, [(b"content-length", b"2")])
    with pytest.raises(InvalidPhase):
        exchange.error_bytes(500, [(b"content-length", b"0")], b"")
    assert not exchange.close_after and exchange.phase is ResponsePhase.STREAMING
    assert exchange.end_bytes(b"ok").endswith(b"\r\n\r\nok")
    assert conn.finish(exchange, closing=False) is AWAITING_HEAD
