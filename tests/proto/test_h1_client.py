"""The sans-IO HTTP/1.1 client (upstream side), driven with byte strings: no sockets, no trio.

Response heads in one piece or many, informational heads skipped, 101 refused, Content-Length,
chunked and close-delimited bodies, HEAD / 204 / 304 without a body, keep-alive and `reusable()`,
an upstream that closes early, bare LF and oversized heads, and the one framing rule judging a
response exactly as the server judges a request.
"""

from __future__ import annotations

import pytest

from llmrelay.proto.errors import RequestRejected
from llmrelay.proto.h1.client import (
    MAX_RESPONSE_HEAD,
    ClientProtocol,
    ResponseClosed,
    ResponseError,
    ResponseHead,
    parse_response_head,
    request_head,
)
from llmrelay.proto.h1.framing import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE
from llmrelay.proto.h1.head_guard import HeadLimits
from llmrelay.proto.h1.server import ServerConnection


def client(*data: bytes) -> ClientProtocol:
    protocol = ClientProtocol()
    protocol.start_request()
    for piece in data:
        protocol.receive_data(piece)
    return protocol


def head_of(protocol: ClientProtocol, method: bytes = b"GET") -> ResponseHead:
    head = protocol.next_head(method)
    assert head is not None
    return head


def body_of(protocol: ClientProtocol) -> bytes:
    parts = []
    while not protocol.body_done:
        content = protocol.next_body()
        assert content is not None, "the body is not all here"
        parts.append(content)
    assert protocol.next_body() == b""
    return b"".join(parts)


def test_request_head_bytes() -> None:
    head = request_head(b"POST", b"/v1/chat", [(b"host", b"api.example"), (b"content-length", b"2")])
    assert head == b"POST /v1/chat HTTP/1.1\r\nhost: api.example\r\ncontent-length: 2\r\n\r\n"
    proxied = request_head(b"GET", b"http://api.example/v1/models", [(b"host", b"api.example")])
    assert proxied == b"GET http://api.example/v1/models HTTP/1.1\r\nhost: api.example\r\n\r\n"


def test_a_response_in_one_piece() -> None:
    protocol = client(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    head = head_of(protocol)
    assert (head.status, head.framing, head.length, head.keep_alive) == (200, LENGTH, 2, True)
    assert head.headers == [(b"content-type", b"application/json"), (b"content-length", b"2")]
    assert body_of(protocol) == b"{}"
    assert protocol.reusable()


def test_a_response_byte_by_byte() -> None:
    data = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Id: 7\r\n\r\nhello"
    protocol = client()
    assert protocol.next_head(b"POST") is None
    for position in range(len(data)):
        protocol.receive_data(data[position : position + 1])
        head = protocol.next_head(b"POST")
        if head is not None:
            break
    assert head is not None and position == len(data) - 6  # taken once its blank line was whole
    position += 1
    assert (head.status, head.headers) == (201, [(b"content-length", b"5"), (b"x-id", b"7")])
    body = b""
    for byte in data[position:]:
        assert protocol.next_body() is None
        protocol.receive_data(bytes([byte]))
        content = protocol.next_body()
        assert content is not None
        body += content
    assert body == b"hello" and protocol.body_done and protocol.reusable()


def test_a_status_line_without_a_reason() -> None:
    head = head_of(client(b"HTTP/1.1 204\r\n\r\n"))
    assert (head.status, head.framing) == (204, NO_BODY)


@pytest.mark.parametrize(
    "informational",
    [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"],
)
def test_informational_heads_are_skipped(informational: bytes) -> None:
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    protocol = client(informational + informational + final)
    head = head_of(protocol)
    assert head.status == 200 and body_of(protocol) == b"ok"
    # and when the final head comes later
    protocol = client(informational)
    assert protocol.next_head(b"GET") is None
    assert protocol.buffer == b""
    protocol.receive_data(final[:10])
    assert protocol.next_head(b"GET") is None
    protocol.receive_data(final[10:])
    assert head_of(protocol).status == 200 and body_of(protocol) == b"ok"


def test_a_protocol_switch_is_refused() -> None:
    with pytest.raises(ResponseError, match="switched protocols"):
        client(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n").next_head(
            b"GET"
        )


def test_a_chunked_body_in_pieces() -> None:
    body = b"5;a=b\r\nhello\r\n1\r\n \r\nb\r\nhello world\r\n0\r\nTrailer: x\r\n\r\n"
    protocol = client(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body[:3])
    head = head_of(protocol)
    assert (head.framing, head.keep_alive) == (CHUNKED, True)
    parts = []
    for position in range(3, len(body), 4):
        part = protocol.next_body()
        if part:
            parts.append(part)
        protocol.receive_data(body[position : position + 4])
    parts.append(body_of(protocol))
    assert b"".join(parts) == b"hello hello world"
    assert protocol.reusable()


def test_an_event_stream_one_chunk_per_read() -> None:
    protocol = client(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    head_of(protocol)
    assert protocol.next_body() is None
    for event in (b"data: 1\n\n", b"data: 2\n\n"):
        protocol.receive_data(b"%x\r\n%b\r\n" % (len(event), event))
        assert protocol.next_body() == event
    protocol.receive_data(b"0\r\n\r\n")
    assert protocol.next_body() == b"" and protocol.body_done and protocol.reusable()


def test_a_close_delimited_body() -> None:
    protocol = client(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome")
    head = head_of(protocol)
    assert (head.framing, head.keep_alive) == (UNTIL_CLOSE, False)
    assert protocol.next_body() == b"some" and not protocol.body_done
    assert protocol.next_body() is None
    protocol.receive_data(b" more")
    assert protocol.next_body() == b" more"
    protocol.end_of_stream()
    assert protocol.body_done and protocol.next_body() == b""
    assert not protocol.reusable()


def test_an_http10_response_is_not_kept_alive() -> None:
    protocol = client(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
    head = head_of(protocol)
    assert not head.keep_alive
    assert body_of(protocol) == b"ok" and not protocol.reusable()


@pytest.mark.parametrize("value", [b"close", b"CLOSE", b"keep-alive, close"])
def test_connection_close_is_not_reused(value: bytes) -> None:
    protocol = client(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: %b\r\n\r\nok" % value)
    assert not head_of(protocol).keep_alive
    assert body_of(protocol) == b"ok" and not protocol.reusable()


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\n\r\n"),
        (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"),
    ],
)
def test_responses_without_a_body(method: bytes, answer: bytes) -> None:
    protocol = client(answer)
    head = head_of(protocol, method)
    assert (head.framing, head.length, head.keep_alive) == (NO_BODY, 0, True)
    assert protocol.body_done and protocol.next_body() == b""
    assert protocol.reusable()


def test_bytes_after_the_response_make_the_connection_unusable() -> None:
    for answer in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokX",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nX",
        b"HTTP/1.1 204 No Content\r\n\r\nX",
    ):
        protocol = client(answer)
        head_of(protocol)
        body_of(protocol)
        assert not protocol.reusable(), answer


def test_an_unfinished_body_is_not_reusable() -> None:
    protocol = client(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    head_of(protocol)
    assert protocol.next_body() == b"ab"
    assert not protocol.body_done and not protocol.reusable()


def test_reusable_only_after_a_head() -> None:
    protocol = client()
    assert not protocol.reusable()
    protocol.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert not protocol.reusable()  # not read yet
    head_of(protocol)
    assert protocol.reusable()


def test_a_connection_carries_requests_one_after_another() -> None:
    protocol = ClientProtocol()
    for number in range(3):
        protocol.start_request()
        assert not protocol.received and protocol.decoder is None
        protocol.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % number)
        assert protocol.received
        head_of(protocol)
        assert body_of(protocol) == b"%d" % number
        assert protocol.reusable()


def test_the_upstream_closing_early_is_an_error() -> None:
    protocol = client()
    with pytest.raises(ResponseClosed, match="without answering"):
        protocol.end_of_stream()
    protocol = client(b"HTTP/1.1 200 OK\r\nContent-")
    assert protocol.next_head(b"GET") is None
    with pytest.raises(ResponseClosed, match="inside the head"):
        protocol.end_of_stream()
    for answer in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",  # no last chunk
    ):
        protocol = client(answer)
        head_of(protocol)
        protocol.next_body()
        with pytest.raises(ResponseClosed, match="mid-body"):
            protocol.end_of_stream()
        assert not protocol.keep_alive and not protocol.reusable()
    assert issubclass(ResponseClosed, ResponseError)


def test_closing_after_a_whole_body_is_fine() -> None:
    protocol = client(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    head_of(protocol)
    assert body_of(protocol) == b"ok"
    protocol.end_of_stream()
    assert not protocol.reusable()  # the connection is gone


@pytest.mark.parametrize(
    "body",
    [b"zz\r\n", b"2\r\nabX\r\n", b"2\nab\r\n", b"0\r\nbad trailer\r\n\r\n"],
)
def test_a_malformed_chunked_body_is_an_error(body: bytes) -> None:
    protocol = client(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    head_of(protocol)
    with pytest.raises(ResponseError):
        body_of(protocol)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok",  # one bare LF, then a proper end
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\n\r\nok",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",  # bare LFs only: a lenient parser's whole response
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\nok",
    ],
)
def test_a_bare_lf_in_the_head_is_refused(answer: bytes) -> None:
    with pytest.raises(ResponseError, match="bare LF"):
        client(answer).next_head(b"GET")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",  # bare CR
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",  # obs-fold
        b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\n\r\n",
        b"http/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
    ],
)
def test_a_malformed_head_is_refused(answer: bytes) -> None:
    with pytest.raises(ResponseError):
        client(answer).next_head(b"GET")


def test_an_oversized_head_is_refused_in_pieces() -> None:
    protocol = client(b"HTTP/1.1 200 OK\r\nX: ")
    while len(protocol.buffer) <= MAX_RESPONSE_HEAD:
        assert protocol.next_head(b"GET") is None
        protocol.receive_data(b"a" * 8192)
    with pytest.raises(ResponseError, match="head too large"):
        protocol.next_head(b"GET")


def test_an_oversized_head_is_refused_in_one_piece() -> None:
    start = b"HTTP/1.1 200 OK\r\nX: "
    fits = start + b"a" * (MAX_RESPONSE_HEAD - len(start) - 4) + b"\r\n\r\n"
    assert len(fits) == MAX_RESPONSE_HEAD
    protocol = client(fits)
    assert head_of(protocol).status == 200
    with pytest.raises(ResponseError, match="head too large"):
        client(start + b"a" * (MAX_RESPONSE_HEAD - len(start) - 3) + b"\r\n\r\n").next_head(b"GET")
    with pytest.raises(ResponseError, match="head too large"):
        client(start + b"a" * (2 * MAX_RESPONSE_HEAD) + b"\r\n\r\nbody").next_head(b"GET")


# -- one framing rule, both sides -----------------------------------------------------------------

# Framing fields a response must not carry and a request is refused for (with the request's status).
AMBIGUOUS = [
    (b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", 400),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n", 400),
    (b"Content-Length: 2, 2\r\n", 400),
    (b"Content-Length: 2\r\nContent-Length: 2\r\n", 400),
    (b"Content-Length: 0x2\r\n", 400),
    (b"Content-Length: \r\n", 400),
    (b"Transfer-Encoding: gzip\r\n", 501),
    (b"Transfer-Encoding: gzip, chunked\r\n", 400),
    (b"Transfer-Encoding: chunked, gzip\r\n", 400),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 400),
    (b"Transfer-Encoding: identity\r\n", 501),
]


@pytest.mark.parametrize(("fields", "status"), AMBIGUOUS)
def test_the_same_framing_rule_judges_requests_and_responses(fields: bytes, status: int) -> None:
    server = ServerConnection(HeadLimits(), "http", ("203.0.113.7", 1), 100)
    server.receive_data(b"POST / HTTP/1.1\r\nHost: relay\r\n" + fields + b"\r\n")
    with pytest.raises(RequestRejected) as refused:
        server.next_head()
    assert refused.value.status == status
    for method, answer in (
        (b"GET", b"HTTP/1.1 200 OK\r\n"),
        (b"HEAD", b"HTTP/1.1 200 OK\r\n"),
        (b"GET", b"HTTP/1.1 204 No Content\r\n"),
    ):
        with pytest.raises(ResponseError):  # before "this response has no body"
            client(answer + fields + b"\r\n").next_head(method)


def test_one_length_or_chunked_alone_frames_both_sides_alike() -> None:
    for fields, framing, length in (
        (b"Content-Length: 7\r\n", LENGTH, 7),
        (b"Transfer-Encoding: Chunked\r\n", CHUNKED, 0),
        (b"Transfer-Encoding:  chunked \r\n", CHUNKED, 0),
    ):
        server = ServerConnection(HeadLimits(), "http", ("203.0.113.7", 1), 100)
        server.receive_data(b"POST / HTTP/1.1\r\nHost: relay\r\n" + fields + b"\r\n")
        request = server.next_head()
        assert request is not None and request.body_length == (length if framing == LENGTH else None)
        response = parse_response_head(b"HTTP/1.1 200 OK\r\n" + fields.rstrip(b"\r\n"), b"GET")
        assert (response.framing, response.length) == (framing, length)


def test_an_http10_response_with_a_transfer_coding_is_refused() -> None:
    """RFC 9112 section 6.1: its framing is faulty, whatever else it says."""
    for answer in (
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
    ):
        with pytest.raises(ResponseError, match="HTTP/1.0"):
            client(answer).next_head(b"GET")
