"""The HTTP/1.1 adapter: trio glue around h11 that serves one client connection.

Each request head is read up to its blank line under the header deadline, checked strictly
(`head_guard`), then handed to a fresh `h11.Connection` for parsing and body framing; the relay gets an
`Exchange`. A fresh h11 state machine per request keeps our own byte buffer authoritative, so every
pipelined head passes the same checks. Once the request body is complete a watcher task reads ahead:
bytes go to a bounded buffer for the next pipelined request, and EOF cancels the exchange at once, so
a client that leaves mid-stream closes the upstream request within milliseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import h11
import msgspec
import trio

from llmrelay.http.errors import ClientDisconnected, InvalidResponseHead, RequestRejected
from llmrelay.http.exchange import Headers, RequestHead, ResponsePhase, advance
from llmrelay.http.head_guard import HeadLimits, check_request_head, find_head_end

log = logging.getLogger("llmrelay.http")

READ_SIZE = 65536
READ_AHEAD_LIMIT = 65536
DISCARD_LIMIT = 1024 * 1024
REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


class ConnectionSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The limits of one client connection (their defaults live in the config schema)."""

    header_timeout: float
    body_idle_timeout: float
    keepalive_timeout: float
    write_timeout: float
    max_requests: int
    max_request_line: int
    max_header_bytes: int
    max_header_count: int


class ServerState:
    """What every connection of a worker shares: the drain flag and the idle connections."""

    def __init__(self) -> None:
        self.draining = False
        self.close_idle = False
        self.idle_scopes: set[trio.CancelScope] = set()  # waits for a next request, cancelled by a full stop
        self.connections = 0
        self.requests_in_flight = 0
        self.requests_total = 0
        self._all_closed = trio.Event()

    def connection_opened(self) -> None:
        self.connections += 1

    def connection_closed(self) -> None:
        self.connections -= 1
        if self.connections == 0:
            self._all_closed.set()
            self._all_closed = trio.Event()

    async def wait_all_closed(self) -> None:
        """Return once no connection is open (at once when none is)."""
        if self.connections:
            await self._all_closed.wait()

    def start_draining(self, close_idle: bool) -> None:
        self.draining = True
        self.close_idle = self.close_idle or close_idle
        if self.close_idle:
            for scope in list(self.idle_scopes):
                scope.cancel()


Handler = Callable[["H11Exchange"], Awaitable[None]]


def _plain_error(status: int, message: str) -> tuple[Headers, bytes]:
    body = msgspec.json.encode({"error": {"message": message, "type": "invalid_request_error", "code": status}})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return headers, body


class H11Exchange:
    """One request on an HTTP/1.1 connection (implements `llmrelay.http.exchange.Exchange`)."""

    def __init__(self, connection: H11Connection, parser: h11.Connection, head: RequestHead, close_after: bool):
        self._connection = connection
        self._parser = parser
        self.head = head
        self.phase = ResponsePhase.PENDING
        self.close_after = close_after
        self.body_complete = False
        self.client_gone = False
        self.read_ahead = bytearray()
        self.cancel_scope = trio.CancelScope()
        self._watcher_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None

    def close_when_done(self) -> None:
        self.close_after = True

    # -- request body ---------------------------------------------------------------------------
    async def receive_body(self) -> bytes:
        if self.body_complete:
            return b""
        while True:
            try:
                event = self._parser.next_event()
            except h11.RemoteProtocolError as exc:
                raise RequestRejected(400, f"malformed request body: {exc}") from None
            if event is h11.NEED_DATA:
                if self._parser.they_are_waiting_for_100_continue:
                    await self._connection.send_bytes(
                        self._parser.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                data = await self._connection.receive_body_bytes()
                self._parser.receive_data(data)
                if not data:
                    self.client_gone = True
                    raise ClientDisconnected("client closed the connection mid-body")
                continue
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                self._mark_body_complete()
                return b""
            raise RequestRejected(400, f"unexpected event in request body: {type(event).__name__}")

    def _mark_body_complete(self) -> None:
        self.body_complete = True
        if self._nursery is not None:
            self._nursery.start_soon(self._watch_client)

    async def _watch_client(self) -> None:
        with self._watcher_scope:
            while len(self.read_ahead) < READ_AHEAD_LIMIT:
                try:
                    data = await self._connection.stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    if self.phase is not ResponsePhase.DONE:
                        self.client_gone = True
                        self.cancel_scope.cancel()
                    return
                self.read_ahead += data

    # -- response ---------------------------------------------------------------------------------
    async def send_head(self, status: int, headers: Headers) -> None:
        if self.close_after:
            headers = [*headers, (b"connection", b"close")]
        try:
            event = h11.Response(status_code=status, headers=headers, reason=REASONS.get(status, b""))
        except h11.LocalProtocolError as exc:
            raise InvalidResponseHead(f"response head cannot be sent: {exc}") from None
        self.phase = advance(self.phase, ResponsePhase.STREAMING)
        await self._connection.send_bytes(self._parser.send(event))

    async def send_body(self, data: bytes) -> None:
        if data:
            await self._connection.send_bytes(self._parser.send(h11.Data(data=data)))

    async def end(self) -> None:
        self.phase = advance(self.phase, ResponsePhase.DONE)
        await self._connection.send_bytes(self._parser.send(h11.EndOfMessage()))

    async def abort(self) -> None:
        if self.phase in (ResponsePhase.DONE, ResponsePhase.ABORTED):
            return
        self.phase = ResponsePhase.ABORTED
        await self._connection.close_hard()

    async def send_error(self, status: int, message: str) -> None:
        headers, body = _plain_error(status, message)
        self.close_after = False  # already in headers
        await self.send_head(status, headers)
        await self.send_body(body)
        await self.end()


class H11Connection:
    """Serves the requests of one client connection, in order."""

    def __init__(
        self,
        stream: trio.SocketStream,
        handler: Handler,
        settings: ConnectionSettings,
        state: ServerState,
        scheme: str = "http",
    ) -> None:
        self.stream = stream
        self._handler = handler
        self._settings = settings
        self._state = state
        self._scheme = scheme
        self._limits = HeadLimits(settings.max_request_line, settings.max_header_bytes, settings.max_header_count)
        self._buffer = bytearray()
        self._closed = False
        try:
            host, port, *_ = stream.socket.getpeername()
            self._client = (str(host), int(port))
        except (OSError, ValueError):
            self._client = ("unknown", 0)

    async def run(self) -> None:
        self._state.connection_opened()
        try:
            served = 0
            while not self._closed:
                try:
                    head_end = await self._read_head(first=served == 0)
                except RequestRejected as exc:
                    await self._reject(exc)
                    return
                if head_end < 0:
                    return
                served += 1
                keep_alive = await self._serve_one(head_end, last=served >= self._settings.max_requests)
                if not keep_alive:
                    return
        except ClientDisconnected:
            pass
        finally:
            self._state.connection_closed()
            await self.close_hard()

    async def _read_head(self, first: bool) -> int:
        """Wait for a whole request head; return its end offset, or -1 when the client left or idled out."""
        while self._buffer[:2] == b"\r\n":
            del self._buffer[:2]
        if not self._buffer:
            if self._state.draining and self._state.close_idle:
                return -1
            idle_limit = self._settings.header_timeout if first else self._settings.keepalive_timeout
            with trio.move_on_after(idle_limit) as idle_scope:
                self._state.idle_scopes.add(idle_scope)
                try:
                    data = await self._receive()
                finally:
                    self._state.idle_scopes.discard(idle_scope)
            if idle_scope.cancelled_caught or not data:
                return -1
            self._buffer += data
        with trio.move_on_after(self._settings.header_timeout) as scope:
            while True:
                while self._buffer[:2] == b"\r\n":
                    del self._buffer[:2]
                end = find_head_end(self._buffer, self._limits)
                if end >= 0:
                    return end
                data = await self._receive()
                if not data:
                    return -1
                self._buffer += data
        assert scope.cancelled_caught
        raise RequestRejected(408, "request head not received in time")

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def receive_body_bytes(self) -> bytes:
        with trio.move_on_after(self._settings.body_idle_timeout):
            return await self._receive()
        raise RequestRejected(408, "request body stalled")

    async def send_bytes(self, data: bytes | None) -> None:
        if not data:
            return
        with trio.move_on_after(self._settings.write_timeout):
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ClientDisconnected("client connection broke while sending") from None
            return
        raise ClientDisconnected(f"client did not read for {self._settings.write_timeout:g} s")

    async def close_hard(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self.stream.aclose()

    async def _reject(self, exc: RequestRejected) -> None:
        log.info("rejected request from %s: %d %s", self._client[0], exc.status, exc.message)
        headers, body = _plain_error(exc.status, exc.message)
        # No state machine saw a valid request here, so the response is written by hand.
        lines = [b"HTTP/1.1 %d %s\r\n" % (exc.status, REASONS.get(exc.status, b"Error"))]
        lines += [name + b": " + value + b"\r\n" for name, value in headers]
        try:
            await self.send_bytes(b"".join(lines) + b"\r\n" + body)
        except ClientDisconnected:
            pass

    def _parse(self, head_end: int) -> tuple[h11.Connection, RequestHead]:
        check_request_head(bytes(self._buffer[:head_end]), self._limits)
        parser = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self._settings.max_request_line + self._settings.max_header_bytes
        )
        parser.receive_data(bytes(self._buffer))
        self._buffer.clear()
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            raise RequestRejected(exc.error_status_hint, f"malformed request: {exc}") from None
        if not isinstance(event, h11.Request):
            raise RequestRejected(400, "malformed request")
        length: int | None = None
        chunked = False
        for name, value in event.headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        head = RequestHead(
            method=event.method,
            target=event.target,
            headers=list(event.headers),
            http_version=event.http_version,
            scheme=self._scheme,
            client=self._client,
            body_length=length,
            has_body=chunked or bool(length),
        )
        return parser, head

    async def _serve_one(self, head_end: int, last: bool) -> bool:
        try:
            parser, head = self._parse(head_end)
        except RequestRejected as exc:
            await self._reject(exc)
            return False
        exchange = H11Exchange(self, parser, head, close_after=last or self._state.draining)
        self._state.requests_in_flight += 1
        self._state.requests_total += 1
        try:
            async with trio.open_nursery() as nursery:
                exchange._nursery = nursery
                if not head.has_body:
                    await exchange.receive_body()  # consumes EndOfMessage, starts the watcher
                with exchange.cancel_scope:
                    await self._run_handler(exchange)
                exchange._watcher_scope.cancel()
        finally:
            self._state.requests_in_flight -= 1
        return await self._finish_cycle(exchange, parser)

    async def _run_handler(self, exchange: H11Exchange) -> None:
        try:
            await self._handler(exchange)
        except ClientDisconnected:
            exchange.client_gone = True
        except RequestRejected as exc:
            if exchange.phase is ResponsePhase.PENDING:
                exchange.close_after = True
                try:
                    await exchange.send_error(exc.status, exc.message)
                except ClientDisconnected:
                    exchange.client_gone = True
            else:
                await exchange.abort()
        except Exception:
            log.exception("internal error while serving %s %s", exchange.head.method.decode(), "request")
            if exchange.phase is ResponsePhase.PENDING:
                exchange.close_after = True
                try:
                    await exchange.send_error(500, "internal error in the relay")
                except ClientDisconnected:
                    exchange.client_gone = True
            else:
                await exchange.abort()

    async def _finish_cycle(self, exchange: H11Exchange, parser: h11.Connection) -> bool:
        """After a response: decide whether the connection can carry another request."""
        if exchange.client_gone or exchange.phase is not ResponsePhase.DONE or self._closed:
            return False
        if parser.our_state is not h11.DONE:
            return False
        if parser.their_state is h11.SEND_BODY and not await self._discard_body(exchange):
            return False
        if parser.their_state is not h11.DONE:
            return False
        leftover, _closed = parser.trailing_data
        self._buffer = bytearray(leftover) + exchange.read_ahead
        return not exchange.close_after and not (self._state.draining and self._state.close_idle)

    async def _discard_body(self, exchange: H11Exchange) -> bool:
        """Read and drop an unread request body (bounded), so the connection stays usable."""
        discarded = 0
        with trio.move_on_after(min(self._settings.body_idle_timeout, 5.0)):
            try:
                while discarded <= DISCARD_LIMIT:
                    chunk = await exchange.receive_body()
                    if not chunk:
                        return True
                    discarded += len(chunk)
            except (RequestRejected, ClientDisconnected):
                return False
        return False
