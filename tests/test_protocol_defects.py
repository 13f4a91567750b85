"""Protocol defects found in review, each pinned by a test that failed before its fix.

Sans-IO checks of the head guard, the framing rules and the response phase table; in-process checks of
the HTTP/1.1 server (log lines of an internal error, refusals reported for the access log) and of the
upstream pool's liveness check past 1,024 descriptors; real `llmrelay serve` processes with raw sockets
for what a client and an upstream see: escaped access-log lines, refused requests logged, errors in the
route's provider shape, WebSocket upgrades refused with 501, Host validation, and upstream responses
whose framing is ambiguous (both Content-Length and Transfer-Encoding, a Content-Length list).
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import trio

from llmrelay.config.values import ENDPOINT_NAME
from llmrelay.config.secrets import is_command
from llmrelay.proto.errors import RequestRejected
from llmrelay.proto.messages import TRANSITIONS, InvalidPhase, RequestHead, ResponseEvent, ResponsePhase, advance
from llmrelay.server.exchange import Refusal
from llmrelay.io.transport import SocketTransport
from llmrelay.server.h1 import Http1Connection
from llmrelay.server.state import ServerState
from llmrelay.config.limits import ClientLimits
from llmrelay.proto.h1.server import ServerConnection, ServerExchange
from llmrelay.proto.h1.fields import is_token
from llmrelay.proto.h1.head_guard import HeadLimits, _field_problem, _unusual_request_line, parse_request_head, valid_host
from llmrelay.proto.h1.framing import CHUNKED, LENGTH, REQUEST, FramingError, body_framing, content_length
from llmrelay.io.logsafe import describe, field
from llmrelay.io.timers import wheel
from llmrelay.relay.accesslog import AccessRecord
from llmrelay.relay.headers import request_id_for
from llmrelay.upstream import pool as pool_module
from llmrelay.proto.h1.client import parse_response_head
from mock_providers import MockProvider
from relaytest import endpoint_config
from test_http_server import raw
from test_upstream_pool import fetch, make_pool, request

LIMITS = HeadLimits()
ACCESS_LINE = re.compile(
    r'.* llmrelay\.access: (?P<client>\S+) "(?P<method>\S+) (?P<path>\S+)" endpoint=(?P<endpoint>\S+) '
    r"attempts=\d+ upstream=\S+ status=(?P<status>\d+) in=\d+ out=\d+ duration_ms=[0-9.]+ ttfb_ms=(?:-|[0-9.]+) streamed=(?:yes|no) "
    r"outcome=(?P<outcome>\S+) rid=(?P<rid>\S+)"
)


def head_of(data: bytes) -> RequestHead:
    return parse_request_head(data, LIMITS, "http", ("127.0.0.1", 1))


def rejection(data: bytes) -> int:
    with pytest.raises(RequestRejected) as info:
        head_of(data)
    return info.value.status


# -- 19: anchored regexes no longer accept a trailing newline -------------------------------------------


def test_token_and_length_checks_refuse_a_trailing_newline() -> None:
    assert is_token(b"chunked") and not is_token(b"chunked\n")
    assert content_length([b"5"]) == 5
    with pytest.raises(FramingError):
        content_length([b"5\n"])
    assert body_framing(REQUEST, b"POST", 0, [], [b"chunked"]) == (CHUNKED, 0)
    with pytest.raises(FramingError) as info:
        body_framing(REQUEST, b"POST", 0, [], [b"gzip\n"])  # not a token: malformed (400), not an unknown coding (501)
    assert info.value.status == 400
    with pytest.raises(RequestRejected) as rejected:
        _unusual_request_line(b"GET / HTTP/1.1\n")  # `$` matched before the newline
    assert rejected.value.status == 400
    with pytest.raises(RequestRejected):
        _unusual_request_line(b"G\nT / HTTP/1.1")
    assert _field_problem(b"Name\n: value") == "malformed header field name"


def test_checks_of_client_ids_and_config_names_refuse_a_trailing_newline() -> None:
    assert request_id_for([(b"x-request-id", b"abc-1")]) == "abc-1"
    assert request_id_for([(b"x-request-id", b"abc-1\n")]) != "abc-1\n"  # a fresh id instead
    assert ENDPOINT_NAME.fullmatch("openai") and not ENDPOINT_NAME.fullmatch("openai\n")
    assert is_command("$(cat key)") and not is_command("$(cat key)\nx")


# -- 16 and 15: one framing decision, refused the same way in both directions ----------------------------


@pytest.mark.parametrize(
    "fields",
    [
        b"Content-Length: 5, 5\r\n",
        b"Content-Length: 5,5\r\n",
        b"Content-Length: 5\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ],
)
def test_ambiguous_lengths_are_refused_by_requests_and_responses_alike(fields: bytes) -> None:
    assert rejection(b"POST / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n") == 400
    with pytest.raises(FramingError):
        parse_response_head(b"HTTP/1.1 200 OK\r\n" + fields.rstrip(b"\r\n"), b"GET")


def test_one_length_and_chunked_alone_are_framed_alike_in_both_directions() -> None:
    assert head_of(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").body_length == 5
    assert head_of(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").body_length is None
    response = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5", b"GET")
    assert (response.framing, response.length, response.keep_alive) == (LENGTH, 5, True)
    response = parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", b"GET")
    assert (response.framing, response.keep_alive) == (CHUNKED, True)


# -- 17: Host is uri-host [ ":" port ] -----------------------------------------------------------------


@pytest.mark.parametrize(
    "host", [b"evil@a", b"a b", b"a/b", b"a:99999", b"a:x", b"a:", b"[::1", b"[zz::1]", b"a?b", b"a\x80"]
)
def test_malformed_host_is_refused_with_400(host: bytes) -> None:
    assert not valid_host(host)
    assert rejection(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n") == 400


@pytest.mark.parametrize(
    "host", [b"", b"a", b"api.openai.com", b"a:0", b"a:65535", b"127.0.0.1:8811", b"[::1]", b"[::1]:443", b"a%41b"]
)
def test_well_formed_host_is_accepted(host: bytes) -> None:
    assert valid_host(host)
    head_of(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")


# -- 14: a WebSocket upgrade is recognised (the relay answers it 501) ------------------------------------


@pytest.mark.parametrize(
    ("fields", "websocket"),
    [
        (b"Upgrade: websocket\r\nConnection: Upgrade\r\n", True),
        (b"Upgrade: WebSocket/13, foo\r\nConnection: keep-alive, upgrade\r\n", True),
        (b"Upgrade: websocket\r\n", False),  # not named by Connection: not an upgrade request
        (b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n", False),
    ],
)
def test_websocket_upgrade_requests_are_recognised(fields: bytes, websocket: bool) -> None:
    assert head_of(b"GET /ws HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n").websocket is websocket
    assert head_of(b"GET /ws HTTP/1.0\r\n" + fields + b"\r\n").websocket is False  # ignored in HTTP/1.0


# -- 20: the phase table is the only authority -----------------------------------------------------------

LEGAL = {
    (ResponsePhase.PENDING, ResponseEvent.HEAD): ResponsePhase.STREAMING,
    (ResponsePhase.PENDING, ResponseEvent.ABORT): ResponsePhase.ABORTED,
    (ResponsePhase.STREAMING, ResponseEvent.BODY): ResponsePhase.STREAMING,
    (ResponsePhase.STREAMING, ResponseEvent.END): ResponsePhase.DONE,
    (ResponsePhase.STREAMING, ResponseEvent.ABORT): ResponsePhase.ABORTED,
    (ResponsePhase.DONE, ResponseEvent.ABORT): ResponsePhase.DONE,
    (ResponsePhase.ABORTED, ResponseEvent.ABORT): ResponsePhase.ABORTED,
}


def test_every_illegal_transition_raises() -> None:
    assert TRANSITIONS == LEGAL
    for phase in ResponsePhase:
        for event in ResponseEvent:
            if (phase, event) in LEGAL:
                assert advance(phase, event) is LEGAL[phase, event]
            else:
                with pytest.raises(InvalidPhase):
                    advance(phase, event)


def _exchange() -> ServerExchange:
    connection = ServerConnection(HeadLimits(), "http", ("127.0.0.1", 1), 100)
    connection.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = connection.next_head()
    assert head is not None
    return ServerExchange(connection, head)


def test_a_second_head_and_every_illegal_send_raise() -> None:
    exchange = _exchange()
    with pytest.raises(InvalidPhase):
        exchange.body_bytes(b"x")  # a body before the head
    with pytest.raises(InvalidPhase):
        exchange.end_bytes(b"x")  # an end without a head
    exchange.start_response(200, [(b"content-length", b"2")])
    with pytest.raises(InvalidPhase):
        exchange.start_response(500, [(b"content-length", b"0")])  # was accepted: a head after a head
    sent = exchange.body_bytes(b"o") + exchange.end_bytes(b"k")
    assert exchange.phase is ResponsePhase.DONE
    for attempt in (lambda: exchange.body_bytes(b"x"), exchange.end_bytes, lambda: exchange.start_response(200, [])):
        with pytest.raises(InvalidPhase):
            attempt()
    assert not exchange.cut()  # after a clean end: changes nothing
    assert exchange.phase is ResponsePhase.DONE
    assert sent.endswith(b"\r\n\r\nok")

    exchange = _exchange()
    exchange.start_response(200, [])
    assert exchange.cut()  # the connection must close now
    assert not exchange.cut()
    assert exchange.phase is ResponsePhase.ABORTED
    with pytest.raises(InvalidPhase):
        exchange.body_bytes(b"x")


def test_a_response_head_with_ambiguous_length_is_refused_before_sending() -> None:
    from llmrelay.proto.errors import InvalidResponseHead

    for headers in (
        [(b"content-length", b"5"), (b"content-length", b"5")],
        [(b"content-length", b"5, 5")],
        [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
    ):
        exchange = _exchange()
        with pytest.raises(InvalidResponseHead):
            exchange.start_response(200, headers)
        assert exchange.phase is ResponsePhase.PENDING and not exchange.take_pending()


# -- 9: escaped access-log lines, one-line internal errors -----------------------------------------------


def test_access_line_fields_cannot_be_forged() -> None:
    record = AccessRecord('G"ET', '/x"%20status=200 \\ é\n\x00', "rid", "1.2.3.4", 0.0)
    record.status = 404
    record.endpoint = "a b"
    record.outcome = 'ok" x=1'
    line = record.line()
    assert "\n" not in line and "\x00" not in line
    match = ACCESS_LINE.fullmatch("t INFO [1] llmrelay.access: " + line)
    assert match is not None, line
    assert match["path"] == '/x\\"%20status=200\\x20\\\\\\x20\\xe9\\x0a\\x00'
    assert (match["method"], match["status"], match["endpoint"]) == ('G\\"ET', "404", "a\\x20b")
    assert match["outcome"] == 'ok\\"\\x20x=1'
    assert field("/v1/chat/completions") == "/v1/chat/completions"
    assert describe(ValueError("two\nlines")) == "ValueError: two\\x0alines"


SETTINGS = ClientLimits(
    header_timeout=5.0,
    body_idle_timeout=5.0,
    keepalive_timeout=5.0,
    write_timeout=5.0,
    max_requests=100,
    head=HeadLimits(),
)


class _RecordingHandler:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.refusals: list[Refusal] = []
        self.served = 0

    async def __call__(self, exchange: object) -> None:
        self.served += 1
        if self.error is not None:
            raise self.error

    def refused(self, refusal: Refusal) -> None:
        self.refusals.append(refusal)


async def _serve_one(handler: _RecordingHandler, data: bytes) -> bytes:
    """Serve one client connection that sends `data`; return everything it received."""
    ours, theirs = socket.socketpair()
    connection = Http1Connection(SocketTransport(ours), ("127.0.0.1", 1), handler, SETTINGS, ServerState(), wheel())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        client = trio.socket.from_stdlib_socket(theirs)
        await client.send(data)
        received = b""
        with trio.fail_after(5):
            while chunk := await client.recv(65536):
                received += chunk
        client.close()
    return received


async def test_an_internal_error_is_one_error_line_and_a_debug_traceback(caplog: pytest.LogCaptureFixture) -> None:
    handler = _RecordingHandler(RuntimeError("boom\nforged second line"))
    with caplog.at_level(logging.DEBUG, logger="llmrelay.http"):
        answer = await _serve_one(handler, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 ")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "\n" not in message and "RuntimeError: boom\\x0aforged second line" in message
    assert errors[0].exc_info is None  # the traceback is not at error level...
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert [r.levelno for r in tracebacks] == [logging.DEBUG]  # ...only at debug level


async def test_a_refused_head_is_reported_for_the_access_log() -> None:
    handler = _RecordingHandler()
    answer = await _serve_one(handler, b"GET /anthropic/v1/messages HTTP/2.0\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 505 ")
    assert handler.served == 0
    # (a socketpair has no peer address: the connection calls its client "unknown")
    assert handler.refusals == [Refusal(("127.0.0.1", 1), b"GET", b"/anthropic/v1/messages", 505, "rejected", 0.0)]


# -- 18: the liveness check of a pooled connection works past descriptor 1023 ----------------------------


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Hold 1,100 more open descriptors, so the next socket's number is above 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_pooled_connection_above_fd_1024_is_checked_and_reused(
    mock: MockProvider, many_descriptors: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "FRESH_CONNECTION", 0.0)  # every reuse goes through the check
    pool = make_pool(mock)
    try:
        await fetch(pool, request(mock, stream=False))
        (idle,) = pool.slots._idle
        assert idle.transport.fileno() >= 1024  # select() raised ValueError for it
        assert idle.looks_alive()
        await fetch(pool, request(mock, stream=False))
        await fetch(pool, request(mock, stream=False))
    finally:
        await pool.aclose()
    peers = {r.peer for r in mock.requests}
    assert len(mock.requests) == 3 and len(peers) == 1, peers  # one connection, checked and reused


# -- real processes: what clients, upstreams and the operator see ----------------------------------------


@pytest.fixture
def relay(mock: MockProvider, start_relay):  # type: ignore[no-untyped-def]
    config = (
        "[server]\nheader_timeout = 1.0\nbody_idle_timeout = 1.0\n"
        + endpoint_config("claude", mock, "anthropic", "", max_body_size=1000)
        + endpoint_config("gem", mock, "gemini", "", max_body_size=1000)
        + endpoint_config("small", mock, "openai", "/v1", max_body_size=1000)
    )
    return start_relay(config)


def access_lines(relay, count: int = 1, timeout: float = 5.0) -> list[re.Match[str]]:  # type: ignore[no-untyped-def]
    """Every access-log line so far but those of /health (at least `count` of them), each parsed whole."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in relay.logs().splitlines() if " llmrelay.access: " in line and '"GET /health"' not in line]
        if len(lines) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    matches = [ACCESS_LINE.fullmatch(line) for line in lines]
    assert all(matches), lines  # no line has a forged or broken field
    return [m for m in matches if m is not None]


def json_body(answer: bytes) -> dict:  # type: ignore[type-arg]
    head, _, body = answer.partition(b"\r\n\r\n")
    return json.loads(body)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_a_forged_target_stays_inside_its_field(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    answer = raw(relay.port, b'GET /small/x"%20status=200%20outcome=ok HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n')
    (line,) = access_lines(relay)
    assert line["path"] == '/small/x\\"%20status=200%20outcome=ok'
    assert int(line["status"]) == status_of(answer) == 404
    assert line["outcome"] == "ok" and line["endpoint"] == "small"


@pytest.mark.parametrize(
    ("request_bytes", "status", "method", "path"),
    [
        (b"GET /claude/v1/messages HTTP/2.0\r\nHost: r\r\n\r\n", 505, "GET", "/claude/v1/messages"),
        (b'GET /a\x80"b HTTP/1.1\r\nHost: r\r\n\r\n', 400, "GET", '/a\\x80\\"b'),
        (b"GET /small/v1/models HTTP/1.1\r\nHost: evil@a\r\n\r\n", 400, "GET", "/small/v1/models"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: r\r\n\r\n", 414, "GET", "/" + "a" * 255),
        (b"\x01\x02\r\n\r\n", 400, "\\x01\\x02", "-"),  # (what arrived, escaped; no target)
    ],
)
def test_requests_refused_by_the_head_parser_get_an_access_line(  # type: ignore[no-untyped-def]
    relay, mock: MockProvider, request_bytes: bytes, status: int, method: str, path: str
) -> None:
    answer = raw(relay.port, request_bytes)
    assert status_of(answer) == status
    (line,) = access_lines(relay)
    assert (line["status"], line["outcome"], line["endpoint"]) == (str(status), "rejected", "-")
    assert (line["method"], line["path"], line["client"]) == (method, path, "127.0.0.1")
    assert not mock.requests


@pytest.mark.parametrize(("sent", "method", "path"), [(b"GET /claude/x HTTP/1.1\r\nHost: r\r\n", "GET", "/claude/x"), (b"GE", "-", "-")])
def test_a_head_that_never_completes_gets_408_and_an_access_line(relay, sent: bytes, method: str, path: str) -> None:  # type: ignore[no-untyped-def]
    answer = raw(relay.port, sent, timeout=5)
    assert status_of(answer) == 408
    (line,) = access_lines(relay)
    assert (line["status"], line["outcome"], line["method"], line["path"]) == ("408", "header_timeout", method, path)


def _assert_shape(provider: str, body: dict, status: int) -> None:  # type: ignore[type-arg]
    if provider == "anthropic":
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    elif provider == "gemini":
        assert body["error"]["code"] == status and "status" in body["error"], body
    else:
        assert isinstance(body["error"]["code"], str) and body["error"]["param"] is None, body


ROUTES = [("claude", "anthropic", "/claude/v1/messages"), ("gem", "gemini", "/gem/v1beta/models/m:generateContent"), ("small", "openai", "/small/v1/chat/completions")]


@pytest.mark.parametrize(("name", "provider", "path"), ROUTES)
def test_a_chunked_body_over_the_limit_gets_413_in_the_route_shape(relay, name: str, provider: str, path: str) -> None:  # type: ignore[no-untyped-def]
    chunk = b"x" * 1500
    answer = raw(
        relay.port,
        b"POST %s HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (path.encode(), len(chunk), chunk),
    )
    assert status_of(answer) == 413
    body = json_body(answer)
    _assert_shape(provider, body, 413)
    if provider == "anthropic":
        assert body["error"]["type"] == "request_too_large"
    (line,) = access_lines(relay)
    assert (line["status"], line["outcome"], line["endpoint"]) == ("413", "rejected", name)


def test_a_malformed_chunked_body_gets_400_in_the_route_shape(relay) -> None:  # type: ignore[no-untyped-def]
    answer = raw(relay.port, b"POST /claude/v1/messages HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert status_of(answer) == 400
    body = json_body(answer)
    _assert_shape("anthropic", body, 400)
    assert body["error"]["type"] == "invalid_request_error"


def test_a_body_that_stops_arriving_gets_408_in_the_route_shape(relay) -> None:  # type: ignore[no-untyped-def]
    answer = raw(relay.port, b"POST /claude/v1/messages HTTP/1.1\r\nHost: r\r\nContent-Length: 10\r\n\r\nabc", timeout=5)
    assert status_of(answer) == 408
    body = json_body(answer)
    _assert_shape("anthropic", body, 408)
    assert body["error"]["type"] == "timeout_error"
    (line,) = access_lines(relay)
    assert (line["status"], line["outcome"], line["endpoint"]) == ("408", "body_timeout", "claude")


WEBSOCKET = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


@pytest.mark.parametrize(("name", "provider", "path"), ROUTES)
def test_a_websocket_upgrade_is_relayed_never_downgraded(  # type: ignore[no-untyped-def]
    relay, mock: MockProvider, name: str, provider: str, path: str
) -> None:
    """The upgrade goes upstream as an upgrade; the mock (no WebSocket there) refuses it, and that
    answer comes back as it is, on a connection that closes (a pipelined request is not served)."""
    answer = raw(relay.port, b"GET %s HTTP/1.1\r\nHost: r\r\n%s\r\n" % (path.encode(), WEBSOCKET) + b"GET /small/v1/models HTTP/1.1\r\nHost: r\r\n\r\n")
    assert answer.count(b"HTTP/1.1 ") == 1
    status = status_of(answer)
    assert status != 101 and status >= 400
    assert b"connection: close" in answer.lower()
    seen = mock.last()
    assert seen.headers["upgrade"].lower() == "websocket" and seen.headers["sec-websocket-key"]
    (line,) = access_lines(relay)
    assert (line["status"], line["outcome"], line["endpoint"]) == (str(status), "upgrade_refused", name)


def test_an_h2c_upgrade_is_still_ignored(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    answer = raw(relay.port, b"GET /small/v1/models HTTP/1.1\r\nHost: r\r\nUpgrade: h2c\r\nConnection: Upgrade, close\r\n\r\n")
    assert status_of(answer) == 200
    assert "upgrade" not in mock.last().headers


@pytest.mark.parametrize("host", [b"evil@a", b"a b", b"a/b", b"a:99999", b"a:x"])
def test_a_malformed_host_is_refused_and_never_forwarded(relay, mock: MockProvider, host: bytes) -> None:  # type: ignore[no-untyped-def]
    answer = raw(relay.port, b"GET /small/v1/models HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert status_of(answer) == 400
    assert not mock.requests
    assert httpx.get(relay.url("/small/v1/models"), headers={"host": "[::1]:8811"}, timeout=5).status_code == 200
    assert mock.last().headers["x-forwarded-host"] == "[::1]:8811"


class RawUpstream:
    """An upstream that answers every request with the same bytes, then closes the connection."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests += 1
                conn.sendall(self.answer)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize(
    "answer",
    [
        # 15: both framings; was decoded as chunked while `content-length: 3` went to the client
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        # 16: two equal fields; were both passed to the client
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        # 16: a list; was accepted here, then refused when the head was re-sent
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5, 5\r\n\r\nhello",
    ],
)
def test_an_upstream_response_with_ambiguous_framing_is_a_502(start_relay, answer: bytes) -> None:  # type: ignore[no-untyped-def]
    upstream = RawUpstream(answer)
    try:
        relay = start_relay(f'[endpoints.raw]\ntarget_base = "http://127.0.0.1:{upstream.port}"\nprovider = "anthropic"\n')
        response = httpx.get(relay.url("/raw/v1/models"), timeout=5)
        assert response.status_code == 502
        assert response.headers.get_list("content-length") == [str(len(response.content))]
        assert "transfer-encoding" not in response.headers
        body = response.json()
        assert body["type"] == "error" and "malformed upstream response" in body["error"]["message"]
        assert upstream.requests == 1
        assert "reason=bad_response" in relay.logs()
    finally:
        upstream.close()


def test_a_request_with_a_content_length_list_is_a_400(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    answer = raw(relay.port, b"POST /small/v1/echo HTTP/1.1\r\nHost: r\r\nContent-Length: 5, 5\r\n\r\nhello")
    assert status_of(answer) == 400 and b"Content-Length with a list of values" in answer
    assert not mock.requests
