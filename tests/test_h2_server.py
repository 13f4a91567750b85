"""The HTTP/2 driver in process, over real loopback sockets: httpx with HTTP/2, and an h2 client
that shows every frame (concurrency, flow control, resets, drain, trailers, tunnels, timeouts)."""

from __future__ import annotations

import hashlib
import logging
import resource
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from time import monotonic

import h2.events as ev
import httpx
import trio
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hpack import Decoder
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

from llmrelay.config.limits import ClientLimits
from llmrelay.config.schema import Http2Section
from llmrelay.io.timers import TimerReason, wheel
from llmrelay.io.transport import SocketTransport
from llmrelay.proto.errors import RequestRejected
from llmrelay.proto.h1.head_guard import HeadLimits
from llmrelay.server.exchange import Exchange, Refusal
import llmrelay.server.h2 as h2_driver
from llmrelay.server.h2 import Http2Connection
from llmrelay.server.state import ServerState

LIMITS = ClientLimits(
    header_timeout=5.0, body_idle_timeout=5.0, keepalive_timeout=30.0, write_timeout=5.0, max_requests=1000, head=HeadLimits()
)


class Handler:
    """A small relay stand-in: what each path does, and what it saw."""

    def __init__(self) -> None:
        self.started: list[bytes] = []
        self.finished: list[bytes] = []
        self.cancelled: list[bytes] = []
        self.refusals: list[Refusal] = []
        self.timed_out: list[TimerReason | None] = []
        self.release = trio.Event()
        self.held_max = 0  # the most request-body bytes the connection held unread (flow control)

    def refused(self, refusal: Refusal) -> None:
        self.refusals.append(refusal)

    async def __call__(self, exchange: Exchange) -> None:
        path = exchange.head.target
        self.started.append(path)
        try:
            await self._serve(exchange, path)
        except trio.Cancelled:
            self.cancelled.append(path)
            self.timed_out.append(exchange.timed_out)
            raise
        self.finished.append(path)

    async def _serve(self, exchange: Exchange, path: bytes) -> None:
        if path.startswith(b"/echo"):
            digest = hashlib.sha256()
            size = 0
            core = exchange._connection.core  # type: ignore[attr-defined]
            while True:
                chunk = await exchange.receive_body()
                held = sum(stream.unread for stream in core.streams.values())
                self.held_max = max(self.held_max, held)
                digest.update(chunk)
                size += len(chunk)
                if path == b"/echo/slow":
                    await trio.sleep(0.001)
                if exchange.body_complete:
                    break
            body = b"%d %s" % (size, digest.hexdigest().encode())
            await exchange.send_head(200, [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))])
            await exchange.end(body)
        elif path == b"/stall":
            await trio.sleep_forever()
        elif path == b"/wait":
            await self.release.wait()
            await exchange.send_head(200, [])
            await exchange.end(b"done")
        elif path == b"/trailers":
            await exchange.send_head(200, [(b"content-type", b"text/plain")])
            await exchange.send_body(b"part ")
            await exchange.end(b"end", trailers=[(b"x-usage", b"42")])
        elif path == b"/sse":
            await exchange.send_head(200, [(b"content-type", b"text/event-stream")])
            await exchange.flush()
            for index in range(3):
                await exchange.send_body(b"data: %d\n\n" % index)
                await trio.sleep(0.3)
            await exchange.end()
        elif path == b"/big":
            await exchange.send_head(200, [])
            await exchange.end(b"z" * 1_000_000)
        elif path == b"/boom":
            raise RuntimeError("the handler broke")
        elif path == b"/reject":
            raise RequestRejected(413, "too large")
        elif path == b"/noend":
            await exchange.send_head(200, [])
            await exchange.send_body(b"half")
        elif exchange.head.method == b"CONNECT":
            tunnel = await exchange.open_tunnel(101, [(b"sec-websocket-protocol", b"chat")])
            while True:
                data = await tunnel.receive()
                if not data:
                    break
                await tunnel.send(data)
            await tunnel.send_eof()
        else:
            body = exchange.head.method + b" " + path
            await exchange.send_head(200, [(b"content-length", b"%d" % len(body))])
            await exchange.end(body)


class Server:
    def __init__(self, port: int, state: ServerState) -> None:
        self.port = port
        self.state = state
        self.connections: list[Http2Connection] = []
        self.url = f"http://127.0.0.1:{port}"


@asynccontextmanager
async def h2_server(handler: Handler, limits: ClientLimits = LIMITS, http2: Http2Section = Http2Section()) -> AsyncIterator[Server]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    server = Server(listener.getsockname()[1], ServerState())
    async with trio.open_nursery() as nursery:

        async def accept() -> None:
            while True:
                await trio.lowlevel.wait_readable(listener)
                try:
                    sock, address = listener.accept()
                except BlockingIOError:
                    continue
                connection = Http2Connection(
                    SocketTransport(sock), address, handler, limits, http2, server.state, wheel(), "http"
                )
                server.connections.append(connection)
                nursery.start_soon(connection.run)

        nursery.start_soon(accept)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
            listener.close()


class FrameLog:
    """The server's frames as they came, parsed on their own (hyperframe, HPACK): what the client saw
    even where h2's client state machine gives up (it stops after a GOAWAY)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.frames: list[Frame] = []
        self.decoder = Decoder()
        self.decoder.max_header_list_size = 1 << 30
        self.decoder.max_allowed_table_size = 1 << 31  # (whatever SETTINGS the fuzzed client sent)
        self.heads: dict[int, list[list[tuple[bytes, bytes]]]] = {}
        self._block: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            if len(self.buffer) < 9 + length:
                return
            frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
            self.buffer = self.buffer[9 + length :]
            self.frames.append(frame)
            if isinstance(frame, (HeadersFrame, ContinuationFrame)):
                self._block.append(frame.data)
                if "END_HEADERS" in frame.flags:
                    fields = self.decoder.decode(b"".join(self._block), raw=True)
                    self._block = []
                    self.heads.setdefault(frame.stream_id, []).append(fields)


class RawClient:
    """An h2 client on a trio stream; what the server sent is read from the frames themselves."""

    def __init__(self, stream: trio.SocketStream, validate: bool = True) -> None:
        self.stream = stream
        self.h2 = H2Connection(
            H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=validate, normalize_outbound_headers=validate)
        )
        self.events: list[ev.Event] = []
        self.log = FrameLog()
        self.closed = False
        self.gave_up = False  # h2's client state machine refused a frame (after a GOAWAY): it sends no more

    @classmethod
    async def open(cls, port: int, validate: bool = True, settings: dict[int, int] | None = None) -> RawClient:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port), validate)
        if settings:
            client.h2.local_settings.update(settings)  # (announced in the preface's SETTINGS)
            client.h2.local_settings.acknowledge()
        client.h2.initiate_connection()
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.gave_up:
            await self.stream.send_all(data)

    async def request(self, stream_id: int, path: bytes, method: bytes = b"GET", body: bytes | None = None, extra=()) -> None:  # type: ignore[no-untyped-def]
        headers = [(b":method", method), (b":scheme", b"http"), (b":path", path), (b":authority", b"relay.test"), *extra]
        self.h2.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            self.h2.send_data(stream_id, body, end_stream=True)
        await self.flush()

    async def until(self, done: Callable[[list[ev.Event]], bool], timeout: float = 5.0) -> list[ev.Event]:
        """Read until `done(all events so far)` or the connection closes; TooSlowError on timeout."""
        with trio.fail_after(timeout):
            while not done(self.events) and not self.closed:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    self.closed = True
                    break
                self.log.feed(data)
                try:
                    self.events.extend(self.h2.receive_data(data))
                except ProtocolError:
                    self.gave_up = True  # (h2's client refuses frames after a GOAWAY; the frame log has them)
                try:
                    await self.flush()  # (acks, window updates)
                except trio.BrokenResourceError:
                    pass
        return self.events

    def body(self, stream_id: int) -> bytes:
        return b"".join(f.data for f in self.log.frames if isinstance(f, DataFrame) and f.stream_id == stream_id)

    def status(self, stream_id: int) -> int | None:
        heads = self.log.heads.get(stream_id)
        return int(dict(heads[0])[b":status"]) if heads else None

    def trailers(self, stream_id: int) -> list[tuple[bytes, bytes]] | None:
        heads = self.log.heads.get(stream_id, [])
        return heads[1] if len(heads) > 1 else None

    def ended(self, stream_id: int) -> bool:
        return any(
            isinstance(f, (DataFrame, HeadersFrame)) and f.stream_id == stream_id and "END_STREAM" in f.flags for f in self.log.frames
        )

    def reset(self, stream_id: int) -> int | None:
        for frame in self.log.frames:
            if isinstance(frame, RstStreamFrame) and frame.stream_id == stream_id:
                return int(frame.error_code)
        return None

    def goaway(self) -> GoAwayFrame | None:
        for frame in self.log.frames:
            if isinstance(frame, GoAwayFrame):
                return frame
        return None

    async def aclose(self) -> None:
        await self.stream.aclose()


async def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


# -- httpx with HTTP/2 ---------------------------------------------------------------------------


async def test_httpx_requests_over_h2c() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            response = await client.get(server.url + "/hello?x=1")
            assert response.http_version == "HTTP/2"
            assert response.status_code == 200 and response.text == "GET /hello?x=1"
            posted = await client.post(server.url + "/echo", content=b"abc" * 1000)
            assert posted.text == "3000 " + hashlib.sha256(b"abc" * 1000).hexdigest()
        assert len(server.connections) == 1
        await wait_for(lambda: server.state.connections == 0)
        assert server.state.requests_total == 2 and server.state.requests_in_flight == 0


async def test_a_20_mib_upload_is_flow_controlled_with_bounded_memory() -> None:
    handler = Handler()
    size = 20 * 1024 * 1024
    piece = b"0123456789abcdef" * 4096  # 64 KiB

    async def content() -> AsyncIterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    expected = hashlib.sha256(piece * (size // len(piece))).hexdigest()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    async with h2_server(handler) as server:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=60) as client:
            response = await client.post(server.url + "/echo/slow", content=content())
    assert response.text == f"{size} {expected}"
    # never more than the connection window held unread, whatever the client would send
    assert 0 < handler.held_max <= Http2Section().connection_window_size
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 40 * 1024


async def test_sse_events_leave_one_by_one() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            async with client.stream("GET", server.url + "/sse") as response:
                start = monotonic()
                arrivals = []
                async for chunk in response.aiter_bytes():
                    arrivals.append((monotonic() - start, chunk))
    assert [chunk for _, chunk in arrivals] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    assert arrivals[0][0] < 0.2  # the first event did not wait for the next


# -- many streams on one connection --------------------------------------------------------------


async def test_100_concurrent_streams_and_a_stalled_one_blocks_none() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        client = await RawClient.open(server.port)
        await client.request(1, b"/stall")
        ids = list(range(3, 201, 2))
        assert len(ids) == 99
        for stream_id in ids:
            await client.request(stream_id, b"/echo", b"POST", b"x" * stream_id)
        await client.until(lambda events: all(client.ended(i) for i in ids))
        for stream_id in ids:
            assert client.status(stream_id) == 200
            assert client.body(stream_id).startswith(b"%d " % stream_id)
        assert not client.ended(1) and b"/stall" in handler.started
        assert server.state.requests_in_flight == 1
        client.h2.reset_stream(1, 8)
        await client.flush()
        await wait_for(lambda: b"/stall" in handler.cancelled)
        await wait_for(lambda: server.state.requests_in_flight == 0)
        await client.aclose()


async def test_a_client_reset_cancels_its_stream_at_once() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        client = await RawClient.open(server.port)
        await client.request(1, b"/stall")
        await client.request(3, b"/wait")
        await wait_for(lambda: len(handler.started) == 2)
        started = monotonic()
        client.h2.reset_stream(1, 8)  # CANCEL
        await client.flush()
        await wait_for(lambda: handler.cancelled == [b"/stall"])
        assert monotonic() - started < 1.0
        handler.release.set()
        await client.until(lambda events: client.ended(3))
        assert client.body(3) == b"done"  # the other stream went on
        await client.aclose()


async def test_a_departed_client_cancels_every_stream() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        client = await RawClient.open(server.port)
        for stream_id in (1, 3, 5):
            await client.request(stream_id, b"/stall")
        await wait_for(lambda: len(handler.started) == 3)
        await client.aclose()
        await wait_for(lambda: len(handler.cancelled) == 3)
        await wait_for(lambda: server.state.connections == 0 and server.state.requests_in_flight == 0)


# -- responses -----------------------------------------------------------------------------------


async def test_trailers_follow_the_body() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        client = await RawClient.open(server.port)
        await client.request(1, b"/trailers")
        await client.until(lambda events: client.ended(1))
        assert client.body(1) == b"part end"
        assert client.trailers(1) == [(b"x-usage", b"42")]
        await client.aclose()


async def test_a_response_waits_for_the_client_window() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        client = await RawClient.open(server.port, settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000})
        await client.request(1, b"/big")
        await client.until(lambda events: len(client.body(1)) >= 1000, timeout=2)
        with trio.move_on_after(0.3):
            await client.until(lambda events: False)
        assert len(client.body(1)) == 1000 and not client.ended(1)  # nothing past the window
        # reading (and so opening the window) lets the rest follow
        acked = 0
        with trio.fail_after(10):
            while not client.ended(1):
                for event in client.events[acked:]:
                    if isinstance(event, ev.DataReceived) and event.flow_controlled_length:
                        client.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                acked = len(client.events)
                await client.flush()
                count = len(client.events)
                await client.until(lambda events: len(events) > count)
        assert len(client.body(1)) == 1_000_000
        assert server.state.requests_in_flight == 0
        await client.aclose()


async def test_handler_failures_become_answers_or_resets() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        client = await RawClient.open(server.port)
        await client.request(1, b"/boom")
        await client.request(3, b"/reject")
        await client.request(5, b"/noend")
        await client.until(lambda events: client.ended(1) and client.ended(3) and client.reset(5) is not None)
        assert client.status(1) == 500 and b"internal error" in client.body(1)
        assert client.status(3) == 413 and b"too large" in client.body(3)
        assert client.status(5) == 200 and client.reset(5) == 2  # INTERNAL_ERROR: never a clean end
        await client.aclose()


async def test_a_malformed_request_is_refused_with_400_and_reported() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        client = await RawClient.open(server.port, validate=False)
        secret = b"Bearer sk-secret-value"
        await client.request(1, b"/x", extra=[(b"authorization", secret), (b"Upper", b"1")])
        await client.request(3, b"/ok")
        await client.until(lambda events: client.ended(1) and client.ended(3))
        assert client.status(1) == 400 and client.status(3) == 200
        assert handler.started == [b"/ok"]
        assert [(r.status, r.outcome, r.target) for r in handler.refusals] == [(400, "rejected", b"/x")]
        await client.aclose()


async def test_log_lines_never_hold_credential_values(caplog) -> None:  # type: ignore[no-untyped-def]
    handler = Handler()
    caplog.set_level(logging.DEBUG)
    async with h2_server(handler) as server:
        client = await RawClient.open(server.port, validate=False)
        for index, name in enumerate((b"authorization", b"x-api-key", b"x-goog-api-key", b"proxy-authorization")):
            await client.request(1 + 4 * index, b"/boom", extra=[(name, b"sk-secret-" + name)])
            await client.request(3 + 4 * index, b"/x", extra=[(name, b"sk-secret-bad\x00" + name)])
        await client.until(lambda events: all(client.ended(i) for i in range(1, 17, 2)))
        await client.aclose()
    assert "internal error" in caplog.text and "rejected HTTP/2 request" in caplog.text
    assert "sk-secret" not in caplog.text


# -- tunnels -------------------------------------------------------------------------------------


async def test_extended_connect_opens_a_tunnel_that_echoes() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        client = await RawClient.open(server.port, validate=False)
        await client.until(lambda events: any(isinstance(e, ev.RemoteSettingsChanged) for e in events))
        assert client.h2.remote_settings[SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
        headers = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"), (b":path", b"/ws"), (b":authority", b"relay.test")]
        client.h2.send_headers(1, headers)
        await client.flush()
        await client.until(lambda events: client.status(1) is not None)
        assert client.status(1) == 200  # HTTP/2 has no 101
        for word in (b"hello", b"world"):
            client.h2.send_data(1, word)
            await client.flush()
            await client.until(lambda events: client.body(1).endswith(word))
        client.h2.end_stream(1)
        await client.flush()
        await client.until(lambda events: client.ended(1))
        assert client.body(1) == b"helloworld"
        assert handler.finished == [b"/ws"]
        await client.aclose()


# -- drain ---------------------------------------------------------------------------------------


async def test_a_busy_draining_connection_gets_its_goaway_at_its_first_quiet_moment() -> None:
    """Some clients (httpcore) fail every stream in flight when any GOAWAY arrives: while streams are
    open, a draining connection keeps serving (even new streams) and says GOAWAY once it is quiet."""
    handler = Handler()
    async with h2_server(handler) as server:
        client = await RawClient.open(server.port)
        await client.request(1, b"/wait")
        await client.request(3, b"/wait")
        await wait_for(lambda: len(handler.started) == 2)
        server.state.start_draining(close_idle=False)
        await client.request(5, b"/late")  # no GOAWAY yet: served like the others
        await client.until(lambda events: client.ended(5))
        assert client.goaway() is None
        handler.release.set()
        await client.until(lambda events: client.closed, timeout=5)
        assert client.body(1) == b"done" and client.body(3) == b"done"
        goaway = client.goaway()
        assert goaway is not None and goaway.last_stream_id == 5 and goaway.error_code == 0
        await wait_for(lambda: server.state.connections == 0)


async def test_a_connection_busy_past_the_drain_grace_gets_goaway_with_streams_open(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(h2_driver, "DRAIN_GOAWAY_AFTER", 0.3)
    handler = Handler()
    async with h2_server(handler) as server:
        client = await RawClient.open(server.port)
        await client.request(1, b"/wait")
        await client.request(3, b"/wait")
        await wait_for(lambda: len(handler.started) == 2)
        server.state.start_draining(close_idle=False)
        await trio.sleep(0.8)  # the GOAWAY is on its way (not read yet: this client still sends)
        await client.request(5, b"/late")  # crosses it: refused, never processed
        await client.until(lambda events: client.goaway() is not None, timeout=3)
        goaway = client.goaway()
        assert goaway is not None and goaway.last_stream_id == 3 and goaway.error_code == 0
        with trio.move_on_after(0.2):
            await client.until(lambda events: False)
        assert client.reset(5) is None and client.status(5) is None  # ignored: the GOAWAY says "retry it"
        handler.release.set()
        await client.until(lambda events: client.closed, timeout=5)
        assert client.body(1) == b"done" and client.body(3) == b"done"
        assert b"/late" not in handler.started
        await wait_for(lambda: server.state.connections == 0)


async def test_drain_closes_a_connection_without_streams() -> None:
    handler = Handler()
    async with h2_server(handler) as server:
        client = await RawClient.open(server.port)
        await client.request(1, b"/hi")
        await client.until(lambda events: client.ended(1))
        server.state.start_draining(close_idle=True)
        await client.until(lambda events: client.closed)
        goaway = client.goaway()
        assert goaway is not None and goaway.last_stream_id == 1 and goaway.error_code == 0


# -- timeouts ------------------------------------------------------------------------------------


async def test_a_stalled_request_body_gets_408() -> None:
    handler = Handler()
    limits = ClientLimits(header_timeout=5, body_idle_timeout=0.3, keepalive_timeout=30, write_timeout=5, max_requests=1000, head=HeadLimits())
    async with h2_server(handler, limits) as server:
        client = await RawClient.open(server.port)
        client.h2.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/echo"), (b":authority", b"a")])
        client.h2.send_data(1, b"some")
        await client.flush()
        await client.until(lambda events: client.ended(1) or client.reset(1) is not None)
        assert client.status(1) == 408
        assert handler.timed_out == [TimerReason.BODY]
        await client.aclose()


async def test_an_idle_connection_gets_goaway_then_closes() -> None:
    handler = Handler()
    limits = ClientLimits(header_timeout=5, body_idle_timeout=5, keepalive_timeout=0.3, write_timeout=5, max_requests=1000, head=HeadLimits())
    async with h2_server(handler, limits) as server:
        client = await RawClient.open(server.port)
        await client.request(1, b"/hi")
        started = monotonic()
        await client.until(lambda events: client.closed, timeout=3)
        assert monotonic() - started < 2.0
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == 0 and goaway.last_stream_id == 1
        assert client.body(1) == b"GET /hi"


async def test_no_preface_within_the_header_timeout_closes() -> None:
    handler = Handler()
    limits = ClientLimits(header_timeout=0.3, body_idle_timeout=5, keepalive_timeout=30, write_timeout=5, max_requests=1000, head=HeadLimits())
    async with h2_server(handler, limits) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        with trio.fail_after(2):
            while await stream.receive_some(1000):
                pass  # (our SETTINGS, then the close)
        await wait_for(lambda: server.state.connections == 0)


async def test_a_shut_window_resets_the_stream_after_the_write_timeout() -> None:
    handler = Handler()
    limits = ClientLimits(header_timeout=5, body_idle_timeout=5, keepalive_timeout=30, write_timeout=0.3, max_requests=1000, head=HeadLimits())
    async with h2_server(handler, limits) as server:
        client = await RawClient.open(server.port, settings={SettingCodes.INITIAL_WINDOW_SIZE: 10})
        await client.request(1, b"/big")
        await client.until(lambda events: client.reset(1) is not None, timeout=3)
        assert handler.timed_out == [TimerReason.WRITE]
        await client.request(3, b"/hi")  # the connection still serves (within its windows)
        await client.until(lambda events: len(client.body(3)) == 7)
        await client.aclose()


# -- a real worker process -----------------------------------------------------------------------


def test_a_relay_process_serves_h2c_requests_and_streams(mock, start_relay) -> None:  # type: ignore[no-untyped-def]
    from relaytest import CHAT_STREAM, endpoint_config

    relay = start_relay("[server]\n" + endpoint_config("oai", mock, "openai", "/v1", api_key="sk-upstream"))
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        url = relay.url("/oai/v1/chat/completions")
        answer = client.post(url, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.http_version == "HTTP/2" and answer.status_code == 200
        assert answer.json()["choices"]
        assert mock.last().key == "sk-upstream"
        with client.stream("POST", url, json=CHAT_STREAM, headers={"x-mock-events": "3"}) as streamed:
            lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert streamed.status_code == 200 and lines[-1] == "data: [DONE]" and len(lines) >= 3
        health = client.get(relay.url("/health"))
        assert health.status_code == 200 and health.http_version == "HTTP/2"
        # an upload larger than the windows, through the relay to the provider
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 3_000_000}]}
        assert client.post(url, json=big).status_code == 200
        assert len(mock.last().body) > 3_000_000
