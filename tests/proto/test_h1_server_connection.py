"""The sans-IO HTTP/1.1 server connection, driven with byte strings: no sockets, no trio.

Keep-alive, pipelining (in one read, split at every byte boundary, byte by byte), HTTP/1.0 and
`Connection: close`, `max_requests`, 100-continue, request bodies (Content-Length and chunked) and the
bytes after them, unread bodies discarded (and given up past DISCARD_LIMIT), every refusal of the head
guard with its closing bytes, and the connection state table. Response framing is in
`test_h1_server_response.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from llmrelay.proto.errors import RequestRejected
from llmrelay.proto.h1.head_guard import HeadLimits
from llmrelay.proto.h1.server import (
    CONNECTION_TRANSITIONS,
    CONTINUE,
    DISCARD_LIMIT,
    ConnectionEvent,
    ConnectionState,
    InvalidTransition,
    ServerConnection,
    ServerExchange,
)
from llmrelay.proto.messages import RequestHead

AWAITING_HEAD = ConnectionState.AWAITING_HEAD
EXCHANGE = ConnectionState.EXCHANGE
DISCARDING = ConnectionState.DISCARDING
CLOSED = ConnectionState.CLOSED
CLIENT = ("203.0.113.7", 40000)


def connection(max_requests: int = 100, limits: HeadLimits | None = None) -> ServerConnection:
    return ServerConnection(limits or HeadLimits(), "http", CLIENT, max_requests)


def ok(body: bytes, *extra: bytes) -> bytes:
    """The bytes of a 200 with a Content-Length (and `extra` header lines before the blank line)."""
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (len(body), b"".join(extra), body)


def answer(exchange: ServerExchange, body: bytes) -> bytes:
    exchange.start_response(200, [(b"content-length", b"%d" % len(body))])
    return exchange.end_bytes(body)


def read_body(exchange: ServerExchange) -> bytes:
    """The whole request body, from bytes already received (fails when more are needed)."""
    parts = []
    while not exchange.body_complete:
        content = exchange.next_body()
        assert content is not None, "the body is not all here"
        parts.append(content)
    return b"".join(parts)


def drive(
    conn: ServerConnection, pieces: Iterable[bytes], respond: Callable[[RequestHead, bytes], bytes] | None = None
) -> tuple[list[tuple[bytes, bytes, bytes]], bytes]:
    """Serve requests the way the trio driver does, feeding `pieces` one at a time whenever the
    protocol needs more bytes. Returns (method, target, body) per request served, and every byte sent.
    The default answer is a 200 whose body is `target:body`."""
    feed = iter(pieces)
    served: list[tuple[bytes, bytes, bytes]] = []
    sent: list[bytes] = []

    def more() -> bool:
        piece = next(feed, None)
        if piece is None:
            return False
        conn.receive_data(piece)
        return True

    while conn.state is AWAITING_HEAD:
        head = conn.next_head()
        if head is None:
            if not more():
                break
            continue
        exchange = ServerExchange(conn, head)
        parts = []
        while not exchange.body_complete:
            content = exchange.next_body()
            if content is None:
                if exchange.continue_due():
                    sent.append(CONTINUE)
                assert more(), "the bytes ended inside a request body"
                continue
            parts.append(content)
        body = b"".join(parts)
        served.append((head.method, head.target, body))
        if respond is None:
            sent.append(answer(exchange, head.target + b":" + body))
        else:
            sent.append(respond(head, body))
        conn.finish(exchange, closing=False)
    assert next(feed, None) is None, "pieces left unfed"
    return served, b"".join(sent)


# -- keep-alive -----------------------------------------------------------------------------------


def test_keep_alive_serves_requests_one_after_another() -> None:
    conn = connection()
    assert conn.next_head() is None and conn.state is AWAITING_HEAD
    for number in range(1, 4):
        conn.receive_data(b"GET /%d HTTP/1.1\r\nHost: relay\r\n\r\n" % number)
        head = conn.next_head()
        assert head is not None
        assert (head.method, head.target, head.http_version, head.keep_alive) == (b"GET", b"/%d" % number, b"1.1", True)
        assert head.headers == [(b"host", b"relay")]
        assert (head.body_length, head.has_body, head.client, head.scheme) == (0, False, CLIENT, "http")
        assert conn.state is EXCHANGE and conn.served == number
        exchange = ServerExchange(conn, head)
        assert exchange.body_complete and exchange.next_body() == b""
        assert not exchange.close_after
        assert answer(exchange, b"ok") == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        assert conn.finish(exchange, closing=False) is AWAITING_HEAD
        assert conn.buffer == b"" and not conn.has_input()
    assert conn.next_head() is None


def test_a_head_is_taken_only_once_whole() -> None:
    conn = connection()
    data = b"GET /x HTTP/1.1\r\nHost: relay\r\nAccept: */*\r\n\r\n"
    for byte in range(len(data) - 1):
        conn.receive_data(data[byte : byte + 1])
        assert conn.next_head() is None
        assert conn.state is AWAITING_HEAD and conn.served == 0
    conn.receive_data(data[-1:])
    head = conn.next_head()
    assert head is not None and head.headers == [(b"host", b"relay"), (b"accept", b"*/*")]
    assert conn.buffer == b""


def test_blank_lines_between_requests_are_not_input() -> None:
    conn = connection()
    conn.receive_data(b"\r\n\r\n")
    assert not conn.has_input() and conn.buffer == b""
    conn.receive_data(b"\r\nGET / HTTP/1.1\r\nHost: relay\r\n\r\n")
    assert conn.has_input()
    head = conn.next_head()
    assert head is not None and head.target == b"/"


def test_a_draining_server_closes_after_the_exchange() -> None:
    conn = connection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
    head = conn.next_head()
    assert head is not None
    exchange = ServerExchange(conn, head, close_after=True)
    assert answer(exchange, b"ok") == ok(b"ok", b"connection: close\r\n")
    assert conn.finish(exchange, closing=False) is CLOSED


def test_a_full_stop_closes_a_kept_alive_connection() -> None:
    conn = connection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
    head = conn.next_head()
    assert head is not None
    exchange = ServerExchange(conn, head)
    assert answer(exchange, b"ok") == ok(b"ok")
    assert conn.finish(exchange, closing=True) is CLOSED


# -- pipelining -----------------------------------------------------------------------------------

PIPELINE = (
    b"GET /a HTTP/1.1\r\nHost: relay\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nTrailer-Field: x\r\n\r\n"
    b"\r\n"  # a blank line between requests, which a server ignores
    b"POST /c HTTP/1.1\r\nHost: relay\r\nContent-Length: 3\r\n\r\nxyz"
    b"GET /d HTTP/1.1\r\nHost: relay\r\n\r\n"
)
PIPELINE_SERVED = [(b"GET", b"/a", b""), (b"POST", b"/b", b"hello"), (b"POST", b"/c", b"xyz"), (b"GET", b"/d", b"")]
PIPELINE_SENT = ok(b"/a:") + ok(b"/b:hello") + ok(b"/c:xyz") + ok(b"/d:")


def test_pipelined_requests_in_one_read_are_answered_in_order() -> None:
    conn = connection()
    assert drive(conn, [PIPELINE]) == (PIPELINE_SERVED, PIPELINE_SENT)
    assert conn.state is AWAITING_HEAD and conn.served == 4 and conn.buffer == b""


def test_pipelined_requests_split_at_every_byte_boundary() -> None:
    for split in range(1, len(PIPELINE)):
        conn = connection()
        result = drive(conn, [PIPELINE[:split], PIPELINE[split:]])
        assert result == (PIPELINE_SERVED, PIPELINE_SENT), split
        assert conn.state is AWAITING_HEAD and conn.buffer == b""


def test_pipelined_requests_fed_byte_by_byte() -> None:
    conn = connection()
    pieces = [PIPELINE[i : i + 1] for i in range(len(PIPELINE))]
    assert drive(conn, pieces) == (PIPELINE_SERVED, PIPELINE_SENT)


@pytest.mark.parametrize("sizes", [(7, 13), (2, 3, 5), (31, 1, 17), (64,)])
def test_pipelined_requests_in_odd_sized_pieces(sizes: tuple[int, ...]) -> None:
    pieces = []
    position = 0
    turn = 0
    while position < len(PIPELINE):
        size = sizes[turn % len(sizes)]
        pieces.append(PIPELINE[position : position + size])
        position += size
        turn += 1
    assert drive(connection(), pieces) == (PIPELINE_SERVED, PIPELINE_SENT)


def test_a_pipelined_request_waits_while_the_one_before_is_served() -> None:
    conn = connection()
    conn.receive_data(b"GET /1 HTTP/1.1\r\nHost: relay\r\n\r\nGET /2 HTTP/1.1\r\nHo")
    first = conn.next_head()
    assert first is not None and first.target == b"/1"
    assert conn.buffer == b"GET /2 HTTP/1.1\r\nHo"
    exchange = ServerExchange(conn, first)
    assert conn.next_head() is None  # not whole yet: nothing taken, nothing moved
    assert conn.buffer == b"GET /2 HTTP/1.1\r\nHo" and conn.served == 1 and conn.state is EXCHANGE
    assert answer(exchange, b"1") == ok(b"1")
    assert conn.finish(exchange, closing=False) is AWAITING_HEAD
    assert conn.next_head() is None
    conn.receive_data(b"st: relay\r\n\r\n")
    second = conn.next_head()
    assert second is not None and second.target == b"/2"


# -- closing --------------------------------------------------------------------------------------


def test_http10_is_answered_then_closed() -> None:
    conn = connection()
    conn.receive_data(b"GET /old HTTP/1.0\r\n\r\nGET /next HTTP/1.0\r\n\r\n")
    head = conn.next_head()
    assert head is not None
    assert (head.http_version, head.keep_alive, head.headers) == (b"1.0", False, [])
    exchange = ServerExchange(conn, head)
    assert exchange.close_after
    assert answer(exchange, b"ok") == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    assert conn.finish(exchange, closing=False) is CLOSED
    assert conn.buffer == b"GET /next HTTP/1.0\r\n\r\n"  # never served


def test_http10_keep_alive_is_not_offered() -> None:
    conn = connection()
    conn.receive_data(b"GET / HTTP/1.0\r\nHost: relay\r\nConnection: keep-alive\r\n\r\n")
    head = conn.next_head()
    assert head is not None and not head.keep_alive
    assert ServerExchange(conn, head).close_after


@pytest.mark.parametrize("value", [b"close", b"Close", b"keep-alive, close", b"foo ,  CLOSE"])
def test_connection_close_is_answered_then_closed(value: bytes) -> None:
    conn = connection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: relay\r\nConnection: %b\r\n\r\nGET /never HTTP/1.1\r\n" % value)
    head = conn.next_head()
    assert head is not None and not head.keep_alive
    exchange = ServerExchange(conn, head)
    assert answer(exchange, b"ok") == ok(b"ok", b"connection: close\r\n")
    assert conn.finish(exchange, closing=False) is CLOSED


def test_a_connection_header_of_the_response_is_not_repeated() -> None:
    conn = connection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
    head = conn.next_head()
    assert head is not None
    exchange = ServerExchange(conn, head)
    exchange.start_response(200, [(b"connection", b"close"), (b"content-length", b"0")])
    assert exchange.end_bytes() == b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


def test_max_requests_closes_after_the_last_one() -> None:
    conn = connection(max_requests=2)
    conn.receive_data(b"GET /1 HTTP/1.1\r\nHost: relay\r\n\r\n" * 3)
    served, sent = drive(conn, [])
    assert [target for _, target, _ in served] == [b"/1", b"/1"]
    assert sent == ok(b"/1:") + ok(b"/1:", b"connection: close\r\n")
    assert conn.state is CLOSED and conn.served == 2
    assert conn.buffer == b"GET /1 HTTP/1.1\r\nHost: relay\r\n\r\n"  # the third is not served


def test_max_requests_of_one_closes_the_first() -> None:
    conn = connection(max_requests=1)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
    head = conn.next_head()
    assert head is not None
    exchange = ServerExchange(conn, head)
    assert exchange.close_after
    assert answer(exchange, b"") == ok(b"", b"connection: close\r\n")
    assert conn.finish(exchange, closing=False) is CLOSED


# -- 100-continue ---------------------------------------------------------------------------------

EXPECTING = b"POST /up HTTP/1.1\r\nHost: relay\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"


def test_100_continue_is_owed_once_while_the_body_is_wanted() -> None:
    conn = connection()
    conn.receive_data(EXPECTING)
    head = conn.next_head()
    assert head is not None and head.expect_continue
    exchange = ServerExchange(conn, head)
    assert exchange.next_body() is None
    assert exchange.continue_due()
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert not exchange.continue_due()  # once
    conn.receive_data(b"hel")
    assert exchange.next_body() == b"hel"
    assert not exchange.continue_due()
    conn.receive_data(b"lo")
    assert exchange.next_body() == b"lo" and exchange.body_complete
    assert answer(exchange, b"ok") == ok(b"ok")
    assert conn.finish(exchange, closing=False) is AWAITING_HEAD


def test_100_continue_in_the_driven_order() -> None:
    served, sent = drive(connection(), [EXPECTING, b"hello"])
    assert served == [(b"POST", b"/up", b"hello")]
    assert sent == b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"/up:hello")


def test_100_continue_is_not_owed_once_a_response_began() -> None:
    conn = connection()
    conn.receive_data(EXPECTING)
    head = conn.next_head()
    assert head is not None
    exchange = ServerExchange(conn, head)
    exchange.start_response(401, [(b"content-length", b"0")])
    assert not exchange.continue_due()
    assert exchange.end_bytes() == b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"
    assert not exchange.continue_due()
    assert conn.finish(exchange, closing=False) is DISCARDING  # the body, if it comes, is dropped


def test_100_continue_is_not_owed_without_the_expectation() -> None:
    for request in (
        b"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: 5\r\nExpect: something-else\r\n\r\n",
        b"POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",  # not in HTTP/1.0
    ):
        conn = connection()
        conn.receive_data(request)
        head = conn.next_head()
        assert head is not None and not head.expect_continue
        exchange = ServerExchange(conn, head)
        assert exchange.next_body() is None
        assert not exchange.continue_due()


# -- request bodies -------------------------------------------------------------------------------


def test_a_content_length_body_split_across_reads_keeps_the_next_request() -> None:
    conn = connection()
    conn.receive_data(b"POST /a HTTP/1.1\r\nHost: relay\r\nContent-Length: 11\r\n\r\nhello")
    head = conn.next_head()
    assert head is not None and (head.body_length, head.has_body) == (11, True)
    exchange = ServerExchange(conn, head)
    assert exchange.next_body() == b"hello" and not exchange.body_complete
    assert exchange.next_body() is None
    conn.receive_data(b" w")
    assert exchange.next_body() == b" w"
    conn.receive_data(b"orldGET /b HTTP/1.1\r\nHost: relay\r\n\r\n")
    assert exchange.next_body() == b"orld" and exchange.body_complete
    assert exchange.next_body() == b""
    assert conn.buffer == b"GET /b HTTP/1.1\r\nHost: relay\r\n\r\n"
    assert answer(exchange, b"ok") == ok(b"ok")
    assert conn.finish(exchange, closing=False) is AWAITING_HEAD
    head = conn.next_head()
    assert head is not None and head.target == b"/b"


def test_a_chunked_body_byte_by_byte_keeps_the_next_request() -> None:
    body = b"4;name=value\r\nwiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n"
    following = b"GET /next HTTP/1.1\r\nHost: relay\r\n\r\n"
    conn = connection()
    conn.receive_data(b"POST /a HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n")
    head = conn.next_head()
    assert head is not None and (head.body_length, head.has_body) == (None, True)
    exchange = ServerExchange(conn, head)
    data = body + following
    content = []
    for position in range(len(data)):
        conn.receive_data(data[position : position + 1])
        part = exchange.next_body()
        if part:
            content.append(part)
        if exchange.body_complete:
            assert position == len(body) - 1
            break
    assert b"".join(content) == b"wikipedia in\r\n\r\nchunks."
    conn.receive_data(data[len(body) :])
    assert conn.buffer == following


def test_a_chunked_body_in_one_read_with_the_next_request() -> None:
    conn = connection()
    conn.receive_data(
        b"POST /a HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: relay\r\n\r\n"
    )
    head = conn.next_head()
    assert head is not None
    exchange = ServerExchange(conn, head)
    assert read_body(exchange) == b"hello"
    assert conn.buffer == b"GET /b HTTP/1.1\r\nHost: relay\r\n\r\n"


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nhello\r\nX",  # chunk data not followed by CRLF
        b"zz\r\n",  # not a size
        b"5\nhello\r\n",  # bare LF after the size
        b"-1\r\n",
    ],
)
def test_a_malformed_chunked_body_is_a_400(body: bytes) -> None:
    conn = connection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"\r\n")
    head = conn.next_head()
    assert head is not None
    exchange = ServerExchange(conn, head)
    with pytest.raises(RequestRejected) as refused:
        read_body(exchange)
    assert refused.value.status == 400
    assert refused.value.message.startswith("malformed request body: ")
    # still inside the exchange: the refusal is answered from there, and the connection closes
    assert conn.refusal(400, [(b"content-length", b"0")], b"") == (
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    assert conn.state is CLOSED


# -- unread bodies --------------------------------------------------------------------------------


def test_an_unread_body_is_discarded_and_the_next_request_served() -> None:
    conn = connection()
    conn.receive_data(b"POST /a HTTP/1.1\r\nHost: relay\r\nContent-Length: 10\r\n\r\n0123")
    head = conn.next_head()
    assert head is not None
    exchange = ServerExchange(conn, head)
    assert answer(exchange, b"no") == ok(b"no")  # answered without reading the body
    assert conn.finish(exchange, closing=False) is DISCARDING
    assert exchange.discard_body() is None  # 4 bytes dropped, 6 to come
    assert exchange.discarded == 4
    conn.receive_data(b"456")
    assert exchange.discard_body() is None
    conn.receive_data(b"789GET /b HTTP/1.1\r\nHost: relay\r\n\r\n")
    assert exchange.discard_body() is True
    assert conn.discarded(True) is AWAITING_HEAD
    head = conn.next_head()
    assert head is not None and head.target == b"/b"


def test_an_unread_chunked_body_is_discarded() -> None:
    conn = connection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    head = conn.next_head()
    assert head is not None
    exchange = ServerExchange(conn, head)
    assert answer(exchange, b"") == ok(b"")
    assert conn.finish(exchange, closing=False) is DISCARDING
    assert exchange.discard_body() is None
    conn.receive_data(b"0\r\n\r\n")
    assert exchange.discard_body() is True
    assert conn.discarded(True) is AWAITING_HEAD and conn.buffer == b""


def test_a_malformed_unread_body_is_refused_while_discarding() -> None:
    conn = connection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n")
    head = conn.next_head()
    assert head is not None
    exchange = ServerExchange(conn, head)
    answer(exchange, b"")
    assert conn.finish(exchange, closing=False) is DISCARDING
    conn.receive_data(b"nope\r\n")
    with pytest.raises(RequestRejected):
        exchange.discard_body()
    assert conn.discarded(False) is CLOSED  # what the driver does with that refusal


def test_an_unread_body_over_the_discard_limit_closes() -> None:
    conn = connection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: %d\r\n\r\n" % (2 * DISCARD_LIMIT))
    head = conn.next_head()
    assert head is not None
    exchange = ServerExchange(conn, head)
    answer(exchange, b"")
    assert conn.finish(exchange, closing=False) is DISCARDING
    conn.receive_data(b"x" * DISCARD_LIMIT)
    assert exchange.discard_body() is None  # exactly the limit: still worth reading
    conn.receive_data(b"x")
    assert exchange.discard_body() is False
    assert conn.discarded(False) is CLOSED


def test_a_whole_unread_body_is_discarded_whatever_its_size() -> None:
    size = DISCARD_LIMIT + 100
    conn = connection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
    head = conn.next_head()
    assert head is not None
    exchange = ServerExchange(conn, head)
    answer(exchange, b"")
    assert conn.finish(exchange, closing=False) is DISCARDING
    assert exchange.discard_body() is True  # all here already: nothing more to read
    assert conn.discarded(True) is AWAITING_HEAD


# -- refusals -------------------------------------------------------------------------------------

SMALL = HeadLimits(max_request_line=64, max_header_bytes=256, max_header_count=4)
REFUSALS = [
    # (name, bytes received, status)
    ("bare LF blank line", b"GET / HTTP/1.1\nHost: relay\n\n", 400),
    ("bare LF inside", b"GET / HTTP/1.1\r\nHost: relay\nAccept: */*\r\n\r\n", 400),
    ("bare CR inside", b"GET / HTTP/1.1\r\nHost: relay\rAccept: */*\r\n\r\n", 400),
    ("CL and TE", b"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("CL list", b"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: 5, 5\r\n\r\n", 400),
    ("two CL", b"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
    ("CL not a number", b"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: +5\r\n\r\n", 400),
    ("unknown coding", b"POST / HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ("coding before chunked", b"POST / HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
    ("chunked twice", b"POST / HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
    ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("request line too long", b"GET /" + b"a" * 60 + b" HTTP/1.1\r\nHost: relay\r\n\r\n", 414),
    ("request line too long, unfinished", b"GET /" + b"a" * 61, 414),
    ("too many fields", b"GET / HTTP/1.1\r\nHost: relay\r\n" + b"A: b\r\n" * 4 + b"\r\n", 431),
    ("field block too large", b"GET / HTTP/1.1\r\nHost: relay\r\nA: " + b"b" * 250 + b"\r\n\r\n", 431),
    ("field block too large, unfinished", b"GET / HTTP/1.1\r\nHost: relay\r\nA: " + b"b" * 300, 431),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: relay\r\n\r\n", 505),
    ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("HTTP/3.1", b"GET / HTTP/3.1\r\nHost: relay\r\n\r\n", 505),
    ("CONNECT origin-form", b"CONNECT /x HTTP/1.1\r\nHost: relay\r\n\r\n", 400),
    ("missing Host", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    ("two Host", b"GET / HTTP/1.1\r\nHost: relay\r\nHost: other\r\n\r\n", 400),
    ("malformed Host", b"GET / HTTP/1.1\r\nHost: user@relay\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: relay\r\nX: a\r\n b\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : relay\r\n\r\n", 400),
    ("absolute-form target", b"GET http://relay/ HTTP/1.1\r\nHost: relay\r\n\r\n", 400),
    ("malformed request line", b"GET  / HTTP/1.1\r\nHost: relay\r\n\r\n", 400),
]
REASONS = {400: b"Bad Request", 405: b"Method Not Allowed", 414: b"URI Too Long",
           431: b"Request Header Fields Too Large", 501: b"Not Implemented", 505: b"HTTP Version Not Supported"}


@pytest.mark.parametrize(("data", "status"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS])
def test_a_refused_head_gets_its_status_and_the_connection_closes(data: bytes, status: int) -> None:
    conn = connection(limits=SMALL)
    conn.receive_data(data)
    with pytest.raises(RequestRejected) as refused:
        conn.next_head()
    assert refused.value.status == status
    assert conn.state is AWAITING_HEAD and conn.served == 0
    body = refused.value.message.encode()
    sent = conn.refusal(status, [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))], body)
    expected = b"HTTP/1.1 %d %b\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%b"
    assert sent == expected % (status, REASONS[status], len(body), body)
    assert conn.state is CLOSED


@pytest.mark.parametrize(("data", "status"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS])
def test_a_refused_head_fed_byte_by_byte_is_refused_too(data: bytes, status: int) -> None:
    conn = connection(limits=SMALL)
    with pytest.raises(RequestRejected) as refused:
        for position in range(len(data)):
            conn.receive_data(data[position : position + 1])
            conn.next_head()
    assert refused.value.status == status


def test_a_bare_lf_blank_line_is_refused_as_soon_as_it_arrives() -> None:
    conn = connection()
    conn.receive_data(b"GET / HTTP/1.1\nHost: relay\n")
    assert conn.next_head() is None  # a lone bare LF: judged once the head is whole
    conn.receive_data(b"\n")  # what a lenient parser takes as the end of the head
    with pytest.raises(RequestRejected) as refused:
        conn.next_head()
    assert refused.value.status == 400


def test_an_unfinished_request_line_is_refused_once_it_cannot_fit() -> None:
    conn = connection(limits=SMALL)
    conn.receive_data(b"GET /" + b"a" * 60)  # 65 bytes: with its CR, it could still be 64 + CR
    assert conn.next_head() is None
    conn.receive_data(b"a")
    with pytest.raises(RequestRejected) as refused:
        conn.next_head()
    assert refused.value.status == 414


def test_heads_at_the_limits_are_accepted_and_one_byte_more_is_not() -> None:
    line = b"GET /" + b"a" * 50 + b" HTTP/1.1"
    assert len(line) == SMALL.max_request_line
    fields = b"\r\nHost: relay\r\nA: b\r\nA: b\r\nX: " + b"x" * 226
    assert len(fields) == SMALL.max_header_bytes  # (the CRLF after the request line counts)
    for byte_by_byte in (False, True):
        conn = connection(limits=SMALL)
        head = None
        data = line + fields + b"\r\n\r\n"
        for piece in [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]:
            conn.receive_data(piece)
            head = conn.next_head()
        assert head is not None and len(head.headers) == SMALL.max_header_count
    for longer, status in ((line.replace(b"/", b"/a", 1) + fields, 414), (line + fields + b"x", 431)):
        conn = connection(limits=SMALL)
        conn.receive_data(longer + b"\r\n\r\n")
        with pytest.raises(RequestRejected) as refused:
            conn.next_head()
        assert refused.value.status == status


def test_http10_without_host_is_accepted() -> None:
    conn = connection()
    conn.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    head = conn.next_head()
    assert head is not None and head.header(b"host") is None


def test_a_refused_head_after_a_served_one() -> None:
    conn = connection()
    conn.receive_data(b"GET /ok HTTP/1.1\r\nHost: relay\r\n\r\nGET /bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    head = conn.next_head()
    assert head is not None
    exchange = ServerExchange(conn, head)
    assert answer(exchange, b"ok") == ok(b"ok")
    assert conn.finish(exchange, closing=False) is AWAITING_HEAD
    with pytest.raises(RequestRejected) as refused:
        conn.next_head()
    assert refused.value.status == 400
    assert conn.last_request_line() == (b"GET", b"/bad")
    assert conn.refusal(400, [], b"") == b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n"
    assert conn.state is CLOSED


# -- the connection state table -------------------------------------------------------------------

LEGAL = {
    (AWAITING_HEAD, ConnectionEvent.HEAD): EXCHANGE,
    (AWAITING_HEAD, ConnectionEvent.CLOSE): CLOSED,
    (EXCHANGE, ConnectionEvent.REUSE): AWAITING_HEAD,
    (EXCHANGE, ConnectionEvent.DISCARD): DISCARDING,
    (EXCHANGE, ConnectionEvent.CLOSE): CLOSED,
    (DISCARDING, ConnectionEvent.DISCARDED): AWAITING_HEAD,
    (DISCARDING, ConnectionEvent.CLOSE): CLOSED,
    (CLOSED, ConnectionEvent.CLOSE): CLOSED,
}


def test_the_transition_table_is_exactly_the_legal_moves() -> None:
    assert CONNECTION_TRANSITIONS == LEGAL


@pytest.mark.parametrize("state", list(ConnectionState))
@pytest.mark.parametrize("event", list(ConnectionEvent))
def test_every_move_is_taken_or_refused_by_the_table(state: ConnectionState, event: ConnectionEvent) -> None:
    conn = connection()
    conn.state = state
    if (state, event) in LEGAL:
        assert conn._move(event) is LEGAL[state, event]
        assert conn.state is LEGAL[state, event]
    else:
        with pytest.raises(InvalidTransition, match=f"cannot take {event.name} while {state.name}"):
            conn._move(event)
        assert conn.state is state


def served_head(conn: ServerConnection, request: bytes = b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n") -> ServerExchange:
    conn.receive_data(request)
    head = conn.next_head()
    assert head is not None
    return ServerExchange(conn, head)


def test_the_moves_as_the_driver_makes_them() -> None:
    # AWAITING_HEAD -HEAD-> EXCHANGE -REUSE-> AWAITING_HEAD
    conn = connection()
    exchange = served_head(conn)
    assert conn.state is EXCHANGE
    answer(exchange, b"")
    assert conn.finish(exchange, closing=False) is AWAITING_HEAD
    # EXCHANGE -DISCARD-> DISCARDING -DISCARDED-> AWAITING_HEAD
    exchange = served_head(conn, b"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: 1\r\n\r\n")
    answer(exchange, b"")
    assert conn.finish(exchange, closing=False) is DISCARDING
    assert conn.discarded(True) is AWAITING_HEAD
    # EXCHANGE -DISCARD-> DISCARDING -CLOSE-> CLOSED
    exchange = served_head(conn, b"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: 1\r\n\r\n")
    answer(exchange, b"")
    assert conn.finish(exchange, closing=False) is DISCARDING
    assert conn.discarded(False) is CLOSED
    # CLOSED -CLOSE-> CLOSED
    conn.close()
    assert conn.state is CLOSED
    # AWAITING_HEAD -CLOSE-> CLOSED (an idle connection at a full stop)
    conn = connection()
    conn.close()
    assert conn.state is CLOSED


@pytest.mark.parametrize("why", ["closing", "client gone", "close after", "never answered", "cut"])
def test_an_exchange_that_did_not_end_cleanly_closes(why: str) -> None:
    conn = connection()
    exchange = served_head(conn)
    if why != "never answered":
        exchange.start_response(200, [])
        exchange.body_bytes(b"x")
    if why == "cut":
        assert exchange.cut()
    elif why != "never answered":
        exchange.end_bytes()
    if why == "client gone":
        exchange.client_gone = True
    elif why == "close after":
        exchange.close_when_done()
    assert conn.finish(exchange, closing=why == "closing") is CLOSED


def test_illegal_calls_raise_and_change_nothing() -> None:
    conn = connection()
    exchange = served_head(conn, b"GET / HTTP/1.1\r\nHost: relay\r\n\r\nGET /2 HTTP/1.1\r\nHost: relay\r\n\r\n")
    with pytest.raises(InvalidTransition):
        conn.discarded(True)  # DISCARDED while EXCHANGE
    with pytest.raises(InvalidTransition):
        conn.next_head()  # HEAD while EXCHANGE
    assert conn.state is EXCHANGE and conn.served == 1
    assert conn.buffer == b"GET /2 HTTP/1.1\r\nHost: relay\r\n\r\n"
    answer(exchange, b"")
    assert conn.finish(exchange, closing=False) is AWAITING_HEAD
    with pytest.raises(InvalidTransition):
        conn.finish(exchange, closing=False)  # REUSE while AWAITING_HEAD
    with pytest.raises(InvalidTransition):
        conn.discarded(True)  # DISCARDED while AWAITING_HEAD
    conn.close()
    with pytest.raises(InvalidTransition):
        conn.next_head()  # HEAD while CLOSED
    assert conn.state is CLOSED and conn.buffer == b"GET /2 HTTP/1.1\r\nHost: relay\r\n\r\n"
