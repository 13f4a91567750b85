"""The HTTP/1.1 server side: serves the requests of one client connection, in order.

Each request head is read up to its blank line under the header deadline and parsed strictly
(`head_guard`); the body is framed by `wire.BodyDecoder`; the relay gets an `Exchange`. Responses are
serialised here: the head waits to leave with the first body bytes (one send for a whole small
response), a body without a Content-Length goes chunked to HTTP/1.1 clients and close-delimited to
HTTP/1.0 ones.

Costs are kept per connection, not per request: one cancel scope per connection (timeouts and a
departed client cancel it, and any of them ends the connection), one `Timer` re-armed for each wait,
and no task per request. A request still in flight after `WATCH_AFTER` seconds gets a watcher task that
waits for the client socket to turn readable: end of stream cancels the exchange at once, so a client
that leaves closes the upstream request (the provider stops generating), while quick requests never
pay for a watcher, nor do streams whose events keep flowing (a departed client makes their sends fail).
"""

from __future__ import annotations

import logging
import socket

import msgspec
import trio

from llmrelay.http.errors import ClientDisconnected, InvalidResponseHead, RequestRejected
from llmrelay.http.exchange import (
    TRANSITIONS,
    ErrorFormat,
    Headers,
    Refusal,
    RequestHandler,
    RequestHead,
    ResponseEvent,
    ResponsePhase,
    advance,
)
from llmrelay.http.head_guard import HeadLimits, find_head_end, parse_request_head, request_line_parts
from llmrelay.http.wire import (
    CHUNKED,
    LAST_CHUNK,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    BodyDecoder,
    FramingError,
    content_length,
    encode_chunk,
    serialize_head,
)
from llmrelay.io.logsafe import describe
from llmrelay.io.timers import Timer, TimerReason, TimerWheel
from llmrelay.io.transport import BrokenTransport, SocketTransport

log = logging.getLogger("llmrelay.http")

# Global reads on the hot path rather than enum attribute lookups.
_HEADER, _BODY, _IDLE, _WRITE, _WATCH = (
    TimerReason.HEADER,
    TimerReason.BODY,
    TimerReason.IDLE,
    TimerReason.WRITE,
    TimerReason.WATCH,
)

WATCH_AFTER = 0.05
DISCARD_LIMIT = 1024 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
REASONS = {
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Content Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Content",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
    529: b"Overloaded",
}
_STATUS_LINES = {status: b"HTTP/1.1 %d %s" % (status, reason) for status, reason in REASONS.items()}
_BODY_AFTER = {phase: TRANSITIONS.get((phase, ResponseEvent.BODY)) for phase in ResponsePhase}


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
    """What every connection of a worker shares: the drain flag, idle connections, counters, and the
    nursery that owns watcher tasks."""

    def __init__(self, watchers: trio.Nursery | None = None) -> None:
        self.draining = False
        self.close_idle = False
        self.idle: set[Http1Connection] = set()  # waiting for a next request; a full stop closes them
        self.watchers = watchers
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
            for connection in list(self.idle):
                connection.stop_idle()


def plain_error(status: int, message: str) -> tuple[Headers, bytes]:
    """An error in the generic shape, for a request whose route is not known (yet)."""
    body = msgspec.json.encode({"error": {"message": message, "type": "invalid_request_error", "code": status}})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
    ]
    return headers, body


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 200 <= status <= 999:
            raise InvalidResponseHead(f"status {status} cannot be relayed")
        line = b"HTTP/1.1 %d " % status
    return line


class Http1Exchange:
    """One request on an HTTP/1.1 connection (implements `llmrelay.http.exchange.Exchange`)."""

    __slots__ = (
        "_connection",
        "head",
        "phase",
        "close_after",
        "body_complete",
        "client_gone",
        "_decoder",
        "_continue_sent",
        "_pending",
        "_framing",
        "_remaining",
        "sends",
        "error_format",
        "timed_out",
    )

    def __init__(self, connection: Http1Connection, head: RequestHead, close_after: bool) -> None:
        self._connection = connection
        self.head = head
        self.phase = ResponsePhase.PENDING
        self.close_after = close_after or not head.keep_alive
        self.client_gone = False
        if head.body_length is None:
            self._decoder = BodyDecoder(CHUNKED)
        else:
            self._decoder = BodyDecoder(LENGTH, head.body_length)
        self.body_complete = self._decoder.done
        self._continue_sent = False
        self._pending = b""  # the response head, until body bytes can go with it
        self._framing = NO_BODY
        self._remaining = 0
        self.sends = 0  # body sends so far: a response that keeps sending needs no watcher
        self.error_format: ErrorFormat = plain_error
        self.timed_out: TimerReason | None = None

    def close_when_done(self) -> None:
        self.close_after = True

    # -- request body ---------------------------------------------------------------------------
    async def receive_body(self) -> bytes:
        if self.body_complete:
            return b""
        connection = self._connection
        decoder = self._decoder
        while True:
            data = connection.take_buffer()
            if not data:
                if self.head.expect_continue and not self._continue_sent and self.phase is ResponsePhase.PENDING:
                    self._continue_sent = True
                    await connection.send_bytes(CONTINUE)
                data = await connection.receive(connection.settings.body_idle_timeout, _BODY)
                if not data:
                    self.client_gone = True
                    raise ClientDisconnected("client closed the connection mid-body")
            try:
                content = decoder.feed(data)
            except FramingError as exc:
                raise RequestRejected(400, f"malformed request body: {exc}") from None
            if decoder.done:
                connection.put_back(decoder.leftover)
                decoder.leftover = b""
                self.body_complete = True
                connection.watch_soon()
                return content
            if content:
                return content

    # -- response ---------------------------------------------------------------------------------
    async def send_head(self, status: int, headers: Headers) -> None:
        phase = advance(self.phase, ResponseEvent.HEAD)  # raises for a head after a head
        status_line = _status_line(status)
        lengths: list[bytes] | None = None
        chunked = False
        connection = False
        for name, value in headers:
            if name == b"content-length":
                if lengths is None:
                    lengths = [value]
                else:
                    lengths.append(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"connection":
                connection = True
        if lengths is not None:
            if chunked:
                raise InvalidResponseHead("response head with both Content-Length and Transfer-Encoding")
            try:
                length = content_length(lengths)
            except FramingError as exc:
                raise InvalidResponseHead(f"response head: {exc}") from None
        if self.head.method == b"HEAD" or status in (204, 304):
            framing = NO_BODY
        elif chunked:
            framing = CHUNKED
        elif lengths is not None:
            framing = LENGTH
            self._remaining = length
        elif self.head.http_version == b"1.0":
            framing = UNTIL_CLOSE
            self.close_after = True
        else:
            framing = CHUNKED
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        if self.close_after and not connection:
            headers = [*headers, (b"connection", b"close")]
        self._framing = framing
        self.phase = phase
        self._pending = serialize_head(status_line, headers)

    async def flush(self) -> None:
        """Send a response head still waiting for body bytes (a stream's first event may be far off)."""
        if self._pending:
            payload = self._pending
            self._pending = b""
            await self._connection.send_bytes(payload)

    def _frame(self, data: bytes) -> bytes:
        framing = self._framing
        if framing == CHUNKED:
            return encode_chunk(data)
        if framing == LENGTH:
            if len(data) > self._remaining:
                raise InvalidResponseHead("response body longer than its Content-Length")
            self._remaining -= len(data)
            return data
        if framing == UNTIL_CLOSE:
            return data
        return b""  # HEAD, 204, 304: no body on the wire

    async def send_body(self, data: bytes) -> None:
        if _BODY_AFTER[self.phase] is None:  # (the table's answer for BODY, looked up once per phase)
            advance(self.phase, ResponseEvent.BODY)  # raises: a body before the head or after the end
        if not data:
            return
        payload = b"%x\r\n%b\r\n" % (len(data), data) if self._framing == CHUNKED else self._frame(data)
        if self._pending:
            payload = self._pending + payload
            self._pending = b""
        self.sends += 1
        if payload:
            connection = self._connection  # (send_bytes, inlined: this runs once per streamed event)
            try:
                await connection.transport.send_all(payload, connection.timer, connection.settings.write_timeout)
            except BrokenTransport:
                raise ClientDisconnected("client connection broke while sending") from None

    async def end(self, data: bytes = b"") -> None:
        """Finish the response, with `data` as its last body bytes (one send for both)."""
        phase = advance(self.phase, ResponseEvent.END)  # raises before anything is framed or sent
        payload = self._frame(data) if data else b""
        if self._framing == CHUNKED:
            payload += LAST_CHUNK
        elif self._framing == LENGTH and self._remaining:
            self.close_after = True  # shorter than announced: the client must not reuse the connection
        if self._pending:
            payload = self._pending + payload
            self._pending = b""
        self.phase = phase
        if payload:
            await self._connection.send_bytes(payload)

    async def abort(self) -> None:
        phase = advance(self.phase, ResponseEvent.ABORT)
        if phase is not self.phase:  # (aborting a response that already ended changes nothing)
            self.phase = phase
            self._connection.close_hard()

    async def send_error(self, status: int, message: str) -> None:
        """An error answered by the adapter itself, in the shape the relay chose (`error_format`)."""
        headers, body = self.error_format(status, message)
        self.close_after = True  # sent with `connection: close`
        await self.send_head(status, headers)
        await self.end(body)


class Http1Connection:
    """Serves the requests of one client connection, in order."""

    def __init__(
        self,
        sock: socket.socket,
        handler: RequestHandler,
        settings: ConnectionSettings,
        state: ServerState,
        wheel: TimerWheel,
        scheme: str = "http",
    ) -> None:
        self.transport = SocketTransport(sock)
        self.settings = settings
        self._handler = handler
        self._state = state
        self._scheme = scheme
        self._limits = HeadLimits(settings.max_request_line, settings.max_header_bytes, settings.max_header_count)
        self._buffer = b""
        self._scope = trio.CancelScope()
        self.timer: Timer = wheel.timer(self._timed_out)
        self._watch_timer: Timer = wheel.timer(self._start_watcher)
        self._exchange: Http1Exchange | None = None
        self._watcher: trio.CancelScope | None = None
        self._watch_mark = 0
        self._watcher_done: trio.Event | None = None
        try:
            host, port, *_ = sock.getpeername()
            self._client = (str(host), int(port))
        except (OSError, ValueError):
            self._client = ("unknown", 0)

    # -- timers, watcher, idle --------------------------------------------------------------------
    def _timed_out(self, reason: TimerReason) -> None:
        if self._exchange is not None:
            self._exchange.timed_out = reason
        self._scope.cancel()

    def stop_idle(self) -> None:
        """A full stop: close this connection while it waits for a next request."""
        self.timer.fired = _IDLE
        self._scope.cancel()

    def watch_soon(self) -> None:
        """The request is complete; watch for the client leaving if the answer takes a while."""
        self._watch_mark = self._exchange.sends if self._exchange is not None else 0
        self._watch_timer.arm(WATCH_AFTER, _WATCH)

    def _start_watcher(self, _reason: TimerReason) -> None:
        exchange = self._exchange
        watchers = self._state.watchers
        if exchange is None or exchange.phase in (ResponsePhase.DONE, ResponsePhase.ABORTED) or watchers is None:
            return
        if self._watcher is not None or self.transport.closed:
            return
        if exchange.sends != self._watch_mark:
            # Still sending (a stream's events flow): a departed client shows as a failed send
            # soon enough. Look again one period later.
            self._watch_mark = exchange.sends
            self._watch_timer.arm(WATCH_AFTER, _WATCH)
            return
        self._watcher = trio.CancelScope()
        self._watcher_done = trio.Event()
        watchers.start_soon(self._watch, exchange, self._watcher, self._watcher_done)

    async def _watch(self, exchange: Http1Exchange, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                sock = self.transport.sock
                try:
                    await trio.lowlevel.wait_readable(sock)
                    peeked = sock.recv(1, socket.MSG_PEEK)
                except (OSError, trio.ClosedResourceError):
                    peeked = b""
                # Bytes waiting are the next pipelined request: they stay in the kernel for later.
                if not peeked and self._exchange is exchange and exchange.phase is not ResponsePhase.DONE:
                    exchange.client_gone = True
                    self._scope.cancel()
        finally:
            done.set()

    async def _stop_watcher(self) -> None:
        self._watch_timer.disarm()
        if self._watcher is not None and self._watcher_done is not None:
            self._watcher.cancel()
            await self._watcher_done.wait()
        self._watcher = None
        self._watcher_done = None

    # -- bytes ------------------------------------------------------------------------------------
    def take_buffer(self) -> bytes:
        data = self._buffer
        self._buffer = b""
        return data

    def put_back(self, data: bytes) -> None:
        self._buffer = data + self._buffer if self._buffer else data

    async def receive(self, seconds: float, reason: TimerReason) -> bytes:
        timer = self.timer
        timer.arm(seconds, reason)
        data = await self.transport.receive()
        timer.disarm()
        return data

    async def send_bytes(self, data: bytes) -> None:
        try:
            await self.transport.send_all(data, self.timer, self.settings.write_timeout)
        except BrokenTransport:
            raise ClientDisconnected("client connection broke while sending") from None

    def close_hard(self) -> None:
        self.transport.close()

    # -- the connection ---------------------------------------------------------------------------
    async def run(self) -> None:
        state = self._state
        state.connection_opened()
        try:
            with self._scope:
                await self._serve()
            if self._scope.cancelled_caught:
                await self._after_cancel()
        except Exception as exc:  # a bug: this connection ends, the worker and its other connections go on
            log.error("internal error on the connection from %s: %s", self._client[0], describe(exc))
            log.debug("traceback of that internal error", exc_info=True)
        finally:
            state.idle.discard(self)
            self.timer.disarm()
            self._watch_timer.disarm()
            if self._watcher is not None:
                self._watcher.cancel()
            state.connection_closed()
            self.transport.close()

    async def _after_cancel(self) -> None:
        """The connection's scope was cancelled: a timeout, a departed client, or a full stop."""
        reason = self.timer.fired
        exchange = self._exchange
        if reason is _HEADER:
            timeout = self.settings.header_timeout
            await self._refuse(RequestRejected(408, "request head not received in time"), "header_timeout", timeout)
        elif reason is _BODY and exchange is not None and exchange.phase is ResponsePhase.PENDING:
            # The relay saw this request (and logged it); the answer takes its route's error shape.
            await self._send_refusal(RequestRejected(408, "request body not received in time"), exchange.error_format)
        elif reason is _WRITE:
            log.info("closing connection from %s: it did not read for %g s", self._client[0], self.settings.write_timeout)

    async def _serve(self) -> None:
        served = 0
        max_requests = self.settings.max_requests
        state = self._state
        while True:
            try:
                head_end = await self._read_head(first=served == 0)
                if head_end < 0:
                    return
                buffer = self._buffer
                head = parse_request_head(buffer[:head_end], self._limits, self._scheme, self._client)
            except RequestRejected as exc:
                await self._refuse(exc, "rejected", 0.0)
                return
            self._buffer = buffer[head_end:]
            served += 1
            exchange = Http1Exchange(self, head, close_after=served >= max_requests or state.draining)
            self._exchange = exchange
            if exchange.body_complete:
                self.watch_soon()
            state.requests_in_flight += 1
            state.requests_total += 1
            try:
                await self._run_handler(exchange)
            finally:
                state.requests_in_flight -= 1
            self._watch_timer.disarm()
            if self._watcher is not None:
                await self._stop_watcher()
            if not await self._finish_cycle(exchange):
                return
            self._exchange = None

    async def _read_head(self, first: bool) -> int:
        """Wait for a whole request head; return its end offset, or -1 when the client left or idled."""
        buffer = self._buffer.lstrip(b"\r\n") if self._buffer[:1] in (b"\r", b"\n") else self._buffer
        settings = self.settings
        state = self._state
        if not buffer:
            if state.draining and state.close_idle:
                return -1
            state.idle.add(self)
            try:
                data = await self.receive(settings.header_timeout if first else settings.keepalive_timeout, _IDLE)
            finally:
                state.idle.discard(self)
            if not data:
                return -1
            buffer = data
        if buffer[:1] in (b"\r", b"\n"):
            buffer = buffer.lstrip(b"\r\n")
        self._buffer = buffer  # (also what a refusal is logged with)
        end = find_head_end(buffer, self._limits)
        if end >= 0:  # the usual case: the whole head came in one read
            return end
        timer = self.timer
        timer.arm(settings.header_timeout, _HEADER)
        try:
            while True:
                data = await self.transport.receive()
                if not data:
                    return -1
                buffer += data
                if buffer[:1] in (b"\r", b"\n"):
                    buffer = buffer.lstrip(b"\r\n")
                self._buffer = buffer
                end = find_head_end(buffer, self._limits)
                if end >= 0:
                    return end
        finally:
            timer.disarm()

    async def _refuse(self, exc: RequestRejected, outcome: str, duration: float) -> None:
        """Refuse a request before it became an exchange: log it, report it to the handler (for the
        access log), answer in the generic error shape (no route is known), and close."""
        log.info("rejected request from %s: %d %s", self._client[0], exc.status, exc.message)
        method, target = request_line_parts(self._buffer)
        self._handler.refused(Refusal(self._client, method, target, exc.status, outcome, duration))
        await self._send_refusal(exc, plain_error)

    async def _send_refusal(self, exc: RequestRejected, error_format: ErrorFormat) -> None:
        headers, body = error_format(exc.status, exc.message)
        headers = [*headers, (b"connection", b"close")]
        payload = serialize_head(_status_line(exc.status), headers) + body
        with trio.move_on_after(min(self.settings.write_timeout, 5.0)):
            try:
                await self.transport.send_all(payload)
            except BrokenTransport:
                pass

    async def _run_handler(self, exchange: Http1Exchange) -> None:
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
        except Exception as exc:
            # One line at error level (type and message); the traceback only for whoever debugs.
            log.error("internal error while serving a request from %s: %s", self._client[0], describe(exc))
            log.debug("traceback of that internal error", exc_info=True)
            if exchange.phase is ResponsePhase.PENDING:
                exchange.close_after = True
                try:
                    await exchange.send_error(500, "internal error in the relay")
                except ClientDisconnected:
                    exchange.client_gone = True
            else:
                await exchange.abort()

    async def _finish_cycle(self, exchange: Http1Exchange) -> bool:
        """After a response: decide whether the connection can carry another request."""
        if exchange.client_gone or exchange.phase is not ResponsePhase.DONE or self.transport.closed:
            return False
        if exchange.close_after:
            return False
        if not exchange.body_complete and not await self._discard_body(exchange):
            return False
        return not (self._state.draining and self._state.close_idle)

    async def _discard_body(self, exchange: Http1Exchange) -> bool:
        """Read and drop an unread request body (bounded), so the connection stays usable."""
        discarded = 0
        try:
            while discarded <= DISCARD_LIMIT:
                chunk = await exchange.receive_body()
                if exchange.body_complete:
                    return True
                discarded += len(chunk)
        except (RequestRejected, ClientDisconnected):
            return False
        return False
