"""The HTTP/2 driver: runs the sans-IO server (`llmrelay.proto.h2.connection`) on one client connection.

One task reads: it feeds the bytes to the protocol, hands each stream what arrived for it (a new
request, body bytes, a reset, a window opening) and sends what the protocol queued (SETTINGS and PING
acknowledgements, WINDOW_UPDATE). Each request runs the relay in its own task, in a nursery the
connection owns, inside the stream's own cancel scope (`h2_stream`): a stalled stream never holds up
another, a reset stream is cancelled at once (which closes its upstream request), and a client that
leaves cancels them all.

Sending is shared: whichever task has frames to send takes the connection's turn and sends everything
queued so far in one write, so the frames of several streams leave together. A write is shielded from
its stream's cancellation, since half a frame would break the whole connection; the write timer, or
the connection's end, closes the transport to interrupt it.

Ends: the client leaves (every stream is cancelled); a protocol error or a spent abuse budget (GOAWAY
with its code, then close); no stream for `keepalive_timeout` (GOAWAY, close); the worker drains
(GOAWAY naming the last stream accepted, the open streams finish, then close).

When a draining worker sends that GOAWAY matters: some clients fail every stream still in flight
when any GOAWAY arrives, whatever its last-stream-id (httpx's transport, httpcore, does), so a GOAWAY
sent while a response streams would cost those clients their answers. A draining connection sends
it once no stream has been open for `DRAIN_QUIET` (a client that sends its requests in bursts is
between two; streams that cross the GOAWAY on the wire are refused, never processed, and such clients
retry them on a new connection), and at the latest `DRAIN_GOAWAY_AFTER`
seconds into the drain, so that a connection that is never idle still moves off the old worker. A timeout on one
stream (`body_idle_timeout`, `write_timeout` on its window) ends that stream only; `write_timeout` on
the connection's own writes ends the connection.
"""

from __future__ import annotations

import logging
import socket
from time import monotonic

import trio

from llmrelay.config.limits import ClientLimits
from llmrelay.config.schema import Http2Section
from llmrelay.io.logsafe import describe, one_line
from llmrelay.io.timers import TimerReason, TimerWheel
from llmrelay.io.tls_transport import TlsTransport
from llmrelay.io.transport import BrokenTransport, SocketTransport, Transport
from llmrelay.proto.errors import ClientDisconnected, RequestRejected
from llmrelay.proto.h2.connection import (
    ConnectionFailed,
    Opened,
    PeerGoingAway,
    Readable,
    Refused,
    Reset,
    ServerConnection,
    StreamEvent,
    Writable,
)
from llmrelay.proto.h2.request import response_fields
from llmrelay.proto.messages import ResponsePhase
from llmrelay.server.exchange import Refusal, RequestHandler, plain_error
from llmrelay.server.h2_stream import Http2Exchange
from llmrelay.server.state import ServerState

log = logging.getLogger("llmrelay.http")

LINGER = 1.0  # after a graceful GOAWAY: how long to read (and drop) what the client still sends
DRAIN_QUIET = 0.1  # a draining connection without a stream for this long gets its GOAWAY
DRAIN_GOAWAY_AFTER = 10.0  # a draining connection busy this long gets its GOAWAY with streams open
_HEADER, _BODY, _IDLE, _WRITE = TimerReason.HEADER, TimerReason.BODY, TimerReason.IDLE, TimerReason.WRITE
_PENDING = ResponsePhase.PENDING


class Http2Connection:
    """Serves the streams of one HTTP/2 client connection, concurrently."""

    def __init__(
        self,
        transport: Transport,
        client: tuple[str, int],
        handler: RequestHandler,
        limits: ClientLimits,
        http2: Http2Section,
        state: ServerState,
        wheel: TimerWheel,
        scheme: str,
        initial: bytes = b"",
    ) -> None:
        self.transport = transport
        self.client = client
        self.limits = limits
        self.wheel = wheel
        self.core = ServerConnection(http2, limits.head, scheme, client, monotonic())
        self._handler = handler
        self._state = state
        self._initial = initial
        self._exchanges: dict[int, Http2Exchange] = {}
        self._nursery: trio.Nursery | None = None
        self._reader = trio.CancelScope()
        self._timer = wheel.timer(self._timer_fired)  # the preface, then idleness
        self._write_timer = wheel.timer(self._write_timed_out)
        self._sending = False
        self._send_turn: trio.Event | None = None
        self._draining = False
        self._goaway_sent = False  # (a draining connection's GOAWAY waits for an idle moment)
        self._graceful = False  # stopping after a GOAWAY(NO_ERROR): flush it and linger
        self._broken = False
        self._dispatch = {
            Readable: self._on_readable,
            Opened: self._on_opened,
            Writable: self._on_writable,
            Reset: self._on_reset,
            Refused: self._on_refused,
            PeerGoingAway: self._on_peer_going_away,
        }

    # -- the connection ---------------------------------------------------------------------------
    async def run(self) -> None:
        state = self._state
        state.connection_opened()
        state.multiplexed.add(self)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                with self._reader:
                    await self._serve()
                if self._graceful and not self._broken:
                    await self._close_gracefully()
                self.transport.close()  # (wakes a stream task in a shielded write)
                nursery.cancel_scope.cancel()
        except Exception as exc:  # a bug: this connection ends, the worker and its other connections go on
            log.error("internal error on the HTTP/2 connection from %s: %s", self.client[0], describe(exc))
            log.debug("traceback of that internal error", exc_info=True)
        finally:
            self._nursery = None
            state.multiplexed.discard(self)
            self._timer.disarm()
            self._write_timer.disarm()
            for exchange in self._exchanges.values():
                exchange.disarm()
            state.connection_closed()
            self.transport.close()

    async def _serve(self) -> None:
        core = self.core
        core.start()
        self._timer.arm(self.limits.header_timeout, _HEADER)
        if self._initial:
            data, self._initial = self._initial, b""
            if not self._receive(data):
                await self._send_final()
                return
        await self.send_pending()
        transport = self.transport
        while True:
            data = await transport.receive()
            if not data:
                return
            if not self._receive(data):
                await self._send_final()
                return
            await self.send_pending()

    def _receive(self, data: bytes) -> bool:
        """Hand what `data` brings to the streams; False when the connection must end."""
        core = self.core
        try:
            events = core.receive_data(data, monotonic())
        except ConnectionFailed as exc:
            log.info("closing HTTP/2 connection from %s: %s", self.client[0], one_line(exc.reason))
            return False
        if not events:
            return True
        started: list[Http2Exchange] = []
        dispatch = self._dispatch
        for event in events:
            dispatch[type(event)](event, started)  # type: ignore[operator]
        # Streams start after the whole batch: one opened and reset in the same read costs nothing.
        nursery = self._nursery
        for exchange in started:
            if exchange.reset_by_client:
                self._stream_done(exchange)
            elif nursery is not None:
                nursery.start_soon(self._serve_stream, exchange)
        if started:
            self._timer.disarm()  # (idle, or a draining connection's quiet moment: over)
            if self._state.draining and not self._draining:  # came in while draining: this batch only
                self.drain()
        if self._broken:
            return False
        if not self._exchanges and core.settings_received and self._timer.reason is _HEADER:
            self._idle()
        return True

    # -- events (the reader's, in order) ----------------------------------------------------------
    def _on_opened(self, event: Opened, started: list[Http2Exchange]) -> None:
        stream_id = event.stream_id
        exchange = Http2Exchange(self, stream_id, event.head, self.core.body_ended(stream_id))
        self._exchanges[stream_id] = exchange
        started.append(exchange)

    def _on_refused(self, event: Refused, started: list[Http2Exchange]) -> None:
        error = event.error
        log.info("rejected HTTP/2 request from %s: %d %s", self.client[0], error.status, error.message)
        self._handler.refused(Refusal(self.client, error.method, error.target, error.status, "rejected", 0.0))
        headers, body = plain_error(error.status, error.message)
        core = self.core
        core.answer(event.stream_id, response_fields(error.status, headers), body)
        core.release(event.stream_id, True)

    def _on_readable(self, event: Readable, started: list[Http2Exchange]) -> None:
        exchange = self._exchanges.get(event.stream_id)
        if exchange is not None:
            exchange.wake_reader()

    def _on_reset(self, event: Reset, started: list[Http2Exchange]) -> None:
        exchange = self._exchanges.get(event.stream_id)
        if exchange is not None:
            exchange.reset_by_client = True
            exchange.cancel()

    def _on_writable(self, event: Writable, started: list[Http2Exchange]) -> None:
        if event.stream_id:
            exchange = self._exchanges.get(event.stream_id)
            if exchange is not None:
                exchange.wake_writer()
        else:
            for exchange in self._exchanges.values():
                exchange.wake_writer()

    def _on_peer_going_away(self, event: PeerGoingAway, started: list[Http2Exchange]) -> None:
        """The client's GOAWAY: graceful (NO_ERROR), its open streams are still answered and the
        connection then closes, as in a drain; with an error code, nothing more is sent."""
        if event.error_code == 0 and self._exchanges:
            self.drain()
        else:
            self._broken = True

    # -- streams ----------------------------------------------------------------------------------
    async def _serve_stream(self, exchange: Http2Exchange) -> None:
        state = self._state
        state.requests_in_flight += 1
        state.requests_total += 1
        try:
            with exchange.scope:
                await self._run_handler(exchange)
            if exchange.scope.cancelled_caught:
                await self._after_cancel(exchange)
        finally:
            state.requests_in_flight -= 1
            exchange.disarm()
            self._stream_done(exchange)
        try:
            await self.send_pending()  # (a reset, a WINDOW_UPDATE for what was left unread)
        except ClientDisconnected:
            return

    async def _run_handler(self, exchange: Http2Exchange) -> None:
        try:
            await self._handler(exchange)
        except ClientDisconnected:
            pass
        except RequestRejected as exc:
            await self._answer_failure(exchange, exc.status, exc.message)
        except Exception as exc:
            log.error("internal error while serving an HTTP/2 request from %s: %s", self.client[0], describe(exc))
            log.debug("traceback of that internal error", exc_info=True)
            await self._answer_failure(exchange, 500, "internal error in the relay")

    async def _answer_failure(self, exchange: Http2Exchange, status: int, message: str) -> None:
        """An error status while nothing was sent yet; otherwise the stream is reset."""
        if exchange.phase is not _PENDING:
            await exchange.abort()
            return
        headers, body = exchange.error_format(status, message)
        try:
            await exchange.send_head(status, headers)
            await exchange.end(body)
        except ClientDisconnected:
            pass

    async def _after_cancel(self, exchange: Http2Exchange) -> None:
        """The stream's scope was cancelled: the client reset it, or one of its timers fired."""
        if exchange.reset_by_client:
            return
        reason = exchange.timed_out
        if reason is _BODY and exchange.phase is _PENDING:
            with trio.move_on_after(min(self.limits.write_timeout, 5.0)):
                await self._answer_failure(exchange, 408, "request body not received in time")
        elif reason is _WRITE:
            log.info(
                "resetting HTTP/2 stream from %s: its window stayed shut for %g s", self.client[0], self.limits.write_timeout
            )

    def _stream_done(self, exchange: Http2Exchange) -> None:
        self._exchanges.pop(exchange.stream_id, None)
        self.core.release(exchange.stream_id, exchange.complete)
        if not self._exchanges and self.core.settings_received:
            self._idle()

    # -- timers and ends --------------------------------------------------------------------------
    def _idle(self) -> None:
        """No stream is open: close after `keepalive_timeout`, or, draining, after a quiet moment."""
        self._timer.arm(DRAIN_QUIET if self._draining else self.limits.keepalive_timeout, _IDLE)

    def _timer_fired(self, reason: TimerReason) -> None:
        if reason is _HEADER:
            if not self.core.settings_received:
                log.info("closing connection from %s: no HTTP/2 preface within %g s", self.client[0], self.limits.header_timeout)
                self._stop(graceful=False)
        elif reason is _IDLE and not self._exchanges:
            self._go_away()
            self._stop(graceful=True)

    def _write_timed_out(self, reason: TimerReason) -> None:
        log.info("closing connection from %s: it did not read for %g s", self.client[0], self.limits.write_timeout)
        self._broken = True
        self.transport.close()
        self._reader.cancel()

    def drain(self) -> None:
        """The worker drains: GOAWAY when no stream is open (at once if none is), or after
        `DRAIN_GOAWAY_AFTER` seconds; the open streams finish, then the connection closes."""
        if self._draining:
            return
        self._draining = True
        if not self._exchanges:
            self._go_away()
            self._stop(graceful=True)
        elif self._nursery is not None:
            self._nursery.start_soon(self._go_away_later)

    def _go_away(self) -> None:
        if not self._goaway_sent:
            self._goaway_sent = True
            self.core.go_away()

    async def _go_away_later(self) -> None:
        await trio.sleep(DRAIN_GOAWAY_AFTER)
        if not self._goaway_sent:
            log.info(
                "HTTP/2 connection from %s still busy %g s into the drain: GOAWAY with %d streams open",
                self.client[0],
                DRAIN_GOAWAY_AFTER,
                len(self._exchanges),
            )
            self._go_away()
            await self._flush_quietly()

    def _stop(self, graceful: bool) -> None:
        self._graceful = self._graceful or graceful
        self._reader.cancel()

    async def _close_gracefully(self) -> None:
        """Send what is queued (the GOAWAY), then read and drop what the client still sends for a
        moment: closing a socket with unread input resets it, and the client could lose the end of
        the last response."""
        with trio.move_on_after(min(self.limits.write_timeout, 5.0)):
            try:
                await self.send_pending()
            except ClientDisconnected:
                return
        transport = self.transport
        if isinstance(transport, SocketTransport):
            try:
                transport.sock.shutdown(socket.SHUT_WR)
            except OSError:
                return
        with trio.move_on_after(LINGER):
            while await transport.receive():
                pass

    async def _send_final(self) -> None:
        """Send a fatal GOAWAY (bounded), before the connection closes."""
        with trio.move_on_after(min(self.limits.write_timeout, 5.0)):
            try:
                await self.send_pending()
            except ClientDisconnected:
                pass

    # -- sending ----------------------------------------------------------------------------------
    async def send_pending(self) -> None:
        """Send every frame queued so far, in one write; ClientDisconnected when the client is gone."""
        while self._sending:
            turn = self._send_turn
            if turn is None:
                turn = self._send_turn = trio.Event()
            await turn.wait()
        data = self.core.data_to_send()
        if not data:
            return
        if self._broken:
            raise ClientDisconnected("client connection is closed")
        self._sending = True
        try:
            transport = self.transport
            # The usual case: the kernel takes it all, without a scope. What it did not take is sent
            # shielded: by `send_all` (plain), by `finish_send` (TLS: the transport holds the rest).
            if isinstance(transport, TlsTransport):
                if not transport.send_now(data):
                    with trio.CancelScope(shield=True):
                        await transport.finish_send(self._write_timer, self.limits.write_timeout)
            else:
                if isinstance(transport, SocketTransport):
                    data = transport.send_now(data)
                if data:
                    with trio.CancelScope(shield=True):
                        await transport.send_all(data, self._write_timer, self.limits.write_timeout)
        except BrokenTransport:
            self._broken = True
            self._reader.cancel()
            raise ClientDisconnected("client connection broke while sending") from None
        finally:
            self._sending = False
            turn = self._send_turn
            if turn is not None:
                self._send_turn = None
                turn.set()

    def flush_soon(self) -> None:
        """Send what is queued from a task of its own (for callers that cannot wait)."""
        if self._nursery is not None:
            self._nursery.start_soon(self._flush_quietly)

    async def _flush_quietly(self) -> None:
        try:
            await self.send_pending()
        except ClientDisconnected:
            pass
