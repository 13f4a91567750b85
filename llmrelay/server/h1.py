"""The HTTP/1.1 driver: runs the sans-IO server (`llmrelay.proto.h1.server`) on one client socket.

It does only what needs I/O: waiting for bytes under the header, body, keep-alive and write deadlines,
sending what the state machine framed, answering refusals, and running the relay for each request.
A response head waits to leave with the first body bytes (one send for a whole small response).

Costs are kept per connection, not per request: one cancel scope per connection (timeouts and a
departed client cancel it, and any of them ends the connection), one `Timer` re-armed for each wait,
no task per request, and a departure watcher only for requests that take a while (`departure`).
"""

from __future__ import annotations

import logging
import socket

import trio

from llmrelay.config.limits import ClientLimits
from llmrelay.io.logsafe import describe
from llmrelay.io.timers import Timer, TimerReason, TimerWheel
from llmrelay.io.transport import BrokenTransport, SocketTransport, Transport
from llmrelay.proto.errors import ClientDisconnected, RequestRejected
from llmrelay.proto.h1.framing import CHUNKED, LAST_CHUNK
from llmrelay.proto.h1.server import CONTINUE, ConnectionState, ServerConnection, ServerExchange
from llmrelay.proto.messages import Headers, RequestHead, ResponsePhase
from llmrelay.server.departure import DepartureWatcher
from llmrelay.server.exchange import ErrorFormat, Refusal, RequestHandler, Tunnel, plain_error
from llmrelay.server.state import ServerState

log = logging.getLogger("llmrelay.http")

# Global reads on the hot path rather than enum attribute lookups.
_HEADER, _BODY, _IDLE, _WRITE = TimerReason.HEADER, TimerReason.BODY, TimerReason.IDLE, TimerReason.WRITE
_PENDING, _STREAMING = ResponsePhase.PENDING, ResponsePhase.STREAMING
_CHUNKED = CHUNKED
_AWAITING_HEAD = ConnectionState.AWAITING_HEAD
_DISCARDING = ConnectionState.DISCARDING


class Http1Exchange(ServerExchange):
    """One request on an HTTP/1.1 connection (implements `llmrelay.server.exchange.Exchange`)."""

    __slots__ = ("_driver", "error_format", "timed_out")

    def __init__(self, driver: Http1Connection, head: RequestHead, close_after: bool) -> None:
        super().__init__(driver.protocol, head, close_after)
        self._driver = driver
        self.error_format: ErrorFormat = plain_error
        self.timed_out: TimerReason | None = None

    async def receive_body(self) -> bytes:
        if self.body_complete:
            return b""
        driver = self._driver
        while True:
            content = self.next_body()
            if content is not None:
                if self.body_complete:
                    driver.watcher.watch_soon(self)
                return content
            if self.continue_due():
                await driver.send_bytes(CONTINUE)
            data = await driver.receive(driver.settings.body_idle_timeout, _BODY)
            if not data:
                self.client_gone = True
                raise ClientDisconnected("client closed the connection mid-body")
            self.connection.receive_data(data)

    async def send_head(self, status: int, headers: Headers) -> None:
        self.start_response(status, headers)

    async def flush(self) -> None:
        """Send a response head still waiting for body bytes (a stream's first event may be far off)."""
        pending = self.take_pending()
        if pending:
            await self._driver.send_bytes(pending)

    async def send_body(self, data: bytes) -> None:
        if data and self._framing == _CHUNKED and self.phase is _STREAMING and not self._pending:
            # A stream's next event (once per event): framed here without the general path's checks.
            payload = b"%x\r\n%b\r\n" % (len(data), data)
            self.sends += 1
        else:
            payload = self.body_bytes(data)
        if payload:
            driver = self._driver  # (send_bytes, inlined: this runs once per streamed event)
            try:
                await driver.transport.send_all(payload, driver.timer, driver.settings.write_timeout)
            except BrokenTransport:
                raise ClientDisconnected("client connection broke while sending") from None

    async def end(self, data: bytes = b"", trailers: Headers | None = None) -> None:
        payload = self.end_bytes(data)
        if trailers and self._framing == _CHUNKED and payload.endswith(LAST_CHUNK):
            payload = payload[: -len(LAST_CHUNK)] + self.trailer_bytes(trailers)
        if payload:
            await self._driver.send_bytes(payload)

    async def open_tunnel(self, status: int, headers: Headers) -> Tunnel:
        """Send the head that opens the tunnel; the connection's bytes are the tunnel's from now on."""
        driver = self._driver
        watcher = driver.watcher  # the tunnel's bytes are no longer a next request to watch for
        if watcher.running:
            await watcher.stop()  # (waits: a TLS read of the watcher must not meet the tunnel's first)
        else:
            watcher.cancel()
        await driver.send_bytes(self.tunnel_head(status, headers))
        return Http1Tunnel(driver)

    async def abort(self) -> None:
        if self.cut():
            self._driver.transport.close()

    async def send_error(self, status: int, message: str) -> None:
        """An error answered by the driver itself, in the shape the relay chose (`error_format`)."""
        headers, body = self.error_format(status, message)
        await self._driver.send_bytes(self.error_bytes(status, headers, body))


class Http1Tunnel:
    """The client's side of a tunnel on an HTTP/1.1 connection: the connection's raw bytes (bytes
    that came after the request head are handed out first)."""

    __slots__ = ("_driver",)

    def __init__(self, driver: Http1Connection) -> None:
        self._driver = driver

    async def receive(self) -> bytes:
        protocol = self._driver.protocol
        if protocol.buffer:
            data, protocol.buffer = protocol.buffer, b""
            return data
        return await self._driver.transport.receive()

    async def send(self, data: bytes) -> None:
        await self._driver.send_bytes(data)

    async def send_eof(self) -> None:
        transport = self._driver.transport
        if isinstance(transport, SocketTransport) and not transport.closed:
            try:
                transport.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        # (TLS: a close_notify would end the whole stream; the tunnel ends with the connection)

    def close(self) -> None:
        self._driver.transport.close()


class Http1Connection:
    """Serves the requests of one client connection, in order."""

    def __init__(
        self,
        transport: Transport,
        client: tuple[str, int],
        handler: RequestHandler,
        settings: ClientLimits,
        state: ServerState,
        wheel: TimerWheel,
        scheme: str = "http",
        initial: bytes = b"",
    ) -> None:
        """`initial`: the connection's first bytes, already read by whoever chose this protocol."""
        self.transport = transport
        self.settings = settings
        self._handler = handler
        self._state = state
        self._client = client
        self.protocol = ServerConnection(settings.head, scheme, client, settings.max_requests)
        if initial:
            self.protocol.receive_data(initial)
        self._scope = trio.CancelScope()
        self.timer: Timer = wheel.timer(self._timed_out)
        self.watcher = DepartureWatcher(wheel, transport, state.watchers, self._client_left, self.protocol.receive_data)
        self._exchange: Http1Exchange | None = None

    # -- cancellation -----------------------------------------------------------------------------
    def _timed_out(self, reason: TimerReason) -> None:
        if self._exchange is not None:
            self._exchange.timed_out = reason
        self._scope.cancel()

    def _client_left(self, _exchange: ServerExchange) -> None:
        self._scope.cancel()

    def stop_idle(self) -> None:
        """A full stop: close this connection while it waits for a next request."""
        self.timer.fired = _IDLE
        self._scope.cancel()

    # -- bytes ------------------------------------------------------------------------------------
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
            self.watcher.cancel()
            state.connection_closed()
            self.transport.close()

    async def _after_cancel(self) -> None:
        """The connection's scope was cancelled: a timeout, a departed client, or a full stop."""
        reason = self.timer.fired
        exchange = self._exchange
        if reason is _HEADER:
            timeout = self.settings.header_timeout
            await self._refuse(RequestRejected(408, "request head not received in time"), "header_timeout", timeout)
        elif reason is _BODY and exchange is not None and exchange.phase is _PENDING:
            # The relay saw this request (and logged it); the answer takes its route's error shape.
            await self._send_refusal(RequestRejected(408, "request body not received in time"), exchange.error_format)
        elif reason is _WRITE:
            log.info("closing connection from %s: it did not read for %g s", self._client[0], self.settings.write_timeout)

    async def _serve(self) -> None:
        protocol = self.protocol
        state = self._state
        while True:
            try:
                head = await self._read_head(first=protocol.served == 0)
            except RequestRejected as exc:
                await self._refuse(exc, "rejected", 0.0)
                return
            if head is None:
                return
            exchange = Http1Exchange(self, head, close_after=state.draining)
            self._exchange = exchange
            if exchange.body_complete:
                self.watcher.watch_soon(exchange)
            state.requests_in_flight += 1
            state.requests_total += 1
            try:
                await self._run_handler(exchange)
            finally:
                state.requests_in_flight -= 1
            watcher = self.watcher
            if watcher.running:
                await watcher.stop()
            else:
                watcher.cancel()  # (only a timer to disarm: no await on the usual path)
            after = protocol.finish(exchange, self.transport.closed or state.closing_idle)
            if after is _DISCARDING:
                after = protocol.discarded(await self._discard_body(exchange) and not state.closing_idle)
            if after is not _AWAITING_HEAD:
                return
            self._exchange = None

    async def _read_head(self, first: bool) -> RequestHead | None:
        """Wait for a whole request head; None when the client left or idled."""
        protocol = self.protocol
        settings = self.settings
        state = self._state
        if not protocol.has_input():
            if state.closing_idle:
                return None
            state.idle.add(self)
            try:
                data = await self.receive(settings.header_timeout if first else settings.keepalive_timeout, _IDLE)
            finally:
                state.idle.discard(self)
            if not data:
                return None
            protocol.receive_data(data)
        head = protocol.next_head()
        if head is not None:  # the usual case: the whole head came in one read
            return head
        timer = self.timer
        timer.arm(settings.header_timeout, _HEADER)
        try:
            while head is None:
                data = await self.transport.receive()
                if not data:
                    return None
                protocol.receive_data(data)
                head = protocol.next_head()
            return head
        finally:
            timer.disarm()

    async def _refuse(self, exc: RequestRejected, outcome: str, duration: float) -> None:
        """Refuse a request before it became an exchange: log it, report it to the handler (for the
        access log), answer in the generic error shape (no route is known), and close."""
        log.info("rejected request from %s: %d %s", self._client[0], exc.status, exc.message)
        method, target = self.protocol.last_request_line()
        self._handler.refused(Refusal(self._client, method, target, exc.status, outcome, duration))
        await self._send_refusal(exc, plain_error)

    async def _send_refusal(self, exc: RequestRejected, error_format: ErrorFormat) -> None:
        headers, body = error_format(exc.status, exc.message)
        payload = self.protocol.refusal(exc.status, headers, body)
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
            await self._answer_failure(exchange, exc.status, exc.message)
        except Exception as exc:
            # One line at error level (type and message); the traceback only for whoever debugs.
            log.error("internal error while serving a request from %s: %s", self._client[0], describe(exc))
            log.debug("traceback of that internal error", exc_info=True)
            await self._answer_failure(exchange, 500, "internal error in the relay")

    async def _answer_failure(self, exchange: Http1Exchange, status: int, message: str) -> None:
        """An error status while nothing was sent yet; otherwise the response is cut."""
        if exchange.phase is not _PENDING:
            await exchange.abort()
            return
        try:
            await exchange.send_error(status, message)
        except ClientDisconnected:
            exchange.client_gone = True

    async def _discard_body(self, exchange: Http1Exchange) -> bool:
        """Read and drop an unread request body (bounded), so the connection stays usable."""
        protocol = self.protocol
        try:
            while True:
                complete = exchange.discard_body()
                if complete is not None:
                    return complete
                data = await self.receive(self.settings.body_idle_timeout, _BODY)
                if not data:
                    return False
                protocol.receive_data(data)
        except RequestRejected:
            return False
