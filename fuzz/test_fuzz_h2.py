"""The HTTP/2 driver fed arbitrary frame sequences over a socket pair: it never crashes, never leaks
a stream (every handler task ends, the counters return to zero, the connection closes), and what it
sends back parses as frames in which every stream a handler started was answered or reset, or the
connection was ended with GOAWAY."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

import trio
from hpack import Encoder
from hypothesis import example, given
from hypothesis import strategies as st
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_h2_server import FrameLog  # noqa: E402

from llmrelay.config.limits import ClientLimits  # noqa: E402
from llmrelay.config.schema import Http2Section  # noqa: E402
from llmrelay.io.timers import wheel  # noqa: E402
from llmrelay.io.transport import SocketTransport  # noqa: E402
from llmrelay.proto.h1.head_guard import HeadLimits  # noqa: E402
from llmrelay.server.exchange import Exchange, Refusal  # noqa: E402
from llmrelay.server.h2 import Http2Connection  # noqa: E402
from llmrelay.server.state import ServerState  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LIMITS = ClientLimits(
    header_timeout=2.0, body_idle_timeout=0.3, keepalive_timeout=5.0, write_timeout=1.0, max_requests=100, head=HeadLimits()
)
HTTP2 = Http2Section(max_concurrent_streams=8)
PROBE = b"fuzzdone"


class Answering:
    """Answers at once (some paths read the body first, some open a tunnel), counting its tasks."""

    def __init__(self) -> None:
        self.running = 0
        self.started: list[int] = []

    def refused(self, refusal: Refusal) -> None:
        pass

    async def __call__(self, exchange: Exchange) -> None:
        self.running += 1
        self.started.append(exchange.stream_id)  # type: ignore[attr-defined]
        try:
            target = exchange.head.target
            if exchange.head.method == b"CONNECT":
                tunnel = await exchange.open_tunnel(200, [])
                await tunnel.send(await tunnel.receive())
                await tunnel.send_eof()
                return
            if target.startswith(b"/read"):
                while not exchange.body_complete:
                    if not await exchange.receive_body() and not exchange.body_complete:
                        break
            await exchange.send_head(200, [(b"content-type", b"text/plain")])
            if target.startswith(b"/stream"):
                await exchange.send_body(b"one")
                await exchange.end(b"two", trailers=[(b"x-t", b"1")])
            else:
                await exchange.end(b"ok")
        finally:
            self.running -= 1


STREAM_IDS = st.sampled_from([0, 1, 3, 5, 7, 9, 2, 2**31 - 1])
NAMES = st.sampled_from([b":method", b":path", b":scheme", b":authority", b":protocol", b"host", b"content-length", b"te", b"connection", b"x-a", b"X-Up", b"cookie"])
VALUES = st.sampled_from([b"GET", b"POST", b"CONNECT", b"/", b"/read", b"/stream", b"http", b"relay.test", b"websocket", b"0", b"5", b"trailers", b"", b" x", b"a\r\nb"])
REQUESTS = st.sampled_from(
    [
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")],
        [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/read"), (b":authority", b"a")],
        [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/stream"), (b":authority", b"a"), (b"content-length", b"3")],
        [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"), (b":path", b"/ws"), (b":authority", b"a")],
    ]
)
FLAGS = st.sets(st.sampled_from(["END_STREAM", "END_HEADERS"]))


@st.composite
def frames(draw: st.DrawFn, encoder: Encoder) -> bytes:
    kind = draw(st.integers(0, 10))
    stream_id = draw(STREAM_IDS)
    if kind <= 6:
        stream_id = stream_id or 1  # (hyperframe builds none on stream 0; raw bytes below may)
    if kind <= 2:
        if draw(st.booleans()):
            fields = draw(REQUESTS)
        else:
            fields = draw(st.lists(st.tuples(NAMES, VALUES), max_size=6))
        return HeadersFrame(stream_id, data=encoder.encode(fields), flags=draw(FLAGS) | {"END_HEADERS"} if kind < 2 else draw(FLAGS)).serialize()
    if kind == 3:
        return ContinuationFrame(stream_id, data=draw(st.binary(max_size=20)), flags=draw(st.sets(st.just("END_HEADERS")))).serialize()
    if kind in (4, 5):
        return DataFrame(stream_id, data=draw(st.binary(max_size=300)), flags=draw(st.sets(st.just("END_STREAM")))).serialize()
    if kind == 6:
        return RstStreamFrame(stream_id, error_code=draw(st.integers(0, 13))).serialize()
    if kind == 7:
        settings = draw(st.dictionaries(st.integers(1, 9), st.integers(0, 2**31), max_size=3))
        return SettingsFrame(0, settings=settings).serialize()
    if kind == 8:
        return WindowUpdateFrame(stream_id, window_increment=draw(st.integers(0, 2**31 - 1))).serialize()
    if kind == 9:
        return draw(st.sampled_from([PingFrame(0, opaque_data=b"12345678").serialize(), PriorityFrame(stream_id or 1, depends_on=0).serialize(), GoAwayFrame(0, last_stream_id=0).serialize()]))
    return draw(st.binary(max_size=30))


@st.composite
def sequences(draw: st.DrawFn) -> bytes:
    encoder = Encoder()
    parts = draw(st.lists(frames(encoder), max_size=25))
    return b"".join(parts)


class Errors(logging.Handler):
    """The driver logs its internal errors instead of raising them: here they fail the property."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def exercise(payload: bytes) -> None:
    errors = Errors()
    logging.getLogger("llmrelay").addHandler(errors)
    try:
        await _exercise(payload)
    finally:
        logging.getLogger("llmrelay").removeHandler(errors)
    assert not errors.records, [record.getMessage() for record in errors.records]


async def _exercise(payload: bytes) -> None:
    server_sock, client_sock = socket.socketpair()
    client = trio.socket.from_stdlib_socket(client_sock)
    state = ServerState()
    handler = Answering()
    connection = Http2Connection(SocketTransport(server_sock), ("fuzz", 1), handler, LIMITS, HTTP2, state, wheel(), "http")
    log = FrameLog()
    ended = trio.Event()

    async def serve() -> None:
        await connection.run()
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with trio.fail_after(10):
            try:
                await client.send(PREFACE + SettingsFrame(0).serialize() + payload + PingFrame(0, opaque_data=PROBE).serialize())
            except OSError:
                pass
            # every frame was read when the probe's ACK comes back (or the connection ended; or the
            # probe became part of a frame the sequence left unfinished)
            with trio.move_on_after(0.3):
                while not any(isinstance(f, PingFrame) and f.opaque_data == PROBE for f in log.frames):
                    try:
                        data = await client.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        break
                    log.feed(data)
            with trio.move_on_after(1.0):  # (a tunnel waits for the client: the close below ends it)
                while handler.running:
                    await trio.sleep(0.01)
            await trio.sleep(0.01)
            client.shutdown(socket.SHUT_WR)
            while True:
                try:
                    data = await client.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                log.feed(data)
            await ended.wait()
    client.close()
    assert handler.running == 0
    assert state.connections == 0 and state.requests_in_flight == 0
    assert state.requests_total == len(handler.started)
    assert not connection._exchanges
    goaway = any(isinstance(f, GoAwayFrame) for f in log.frames)
    answered = {f.stream_id for f in log.frames if isinstance(f, (HeadersFrame, RstStreamFrame))}
    assert goaway or set(handler.started) <= answered


@given(sequences())
# A request, then the client's graceful GOAWAY in the same read: the request is still answered.
@example(payload=b"\x00\x00\x06\x01\x04\x00\x00\x00\x01\x82\x86\x84A\x81\x1f\x00\x00\x08\x07" + bytes(12))
def test_arbitrary_frames_never_crash_or_leak(payload: bytes) -> None:
    trio.run(exercise, payload)


@given(st.lists(REQUESTS, min_size=1, max_size=8), st.binary(max_size=2000))
def test_valid_requests_are_all_answered(requests: list[list[tuple[bytes, bytes]]], body: bytes) -> None:
    encoder = Encoder()
    payload = b""
    for index, fields in enumerate(requests):
        stream_id = 1 + 2 * index
        payload += HeadersFrame(stream_id, data=encoder.encode(fields), flags=["END_HEADERS"]).serialize()
        content = body[:3] if (b"content-length", b"3") in fields else body
        if len(content) == 3 or (b"content-length", b"3") not in fields:
            payload += DataFrame(stream_id, data=content, flags=["END_STREAM"]).serialize()
        else:
            payload += DataFrame(stream_id, data=b"abc", flags=["END_STREAM"]).serialize()
    trio.run(exercise, payload)
