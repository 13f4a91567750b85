"""One HTTP/2 stream as the relay sees it: an `Exchange` (and, for CONNECT, a `Tunnel`).

Each stream is served by its own task in the connection's nursery, inside its own cancel scope: a
RST_STREAM from the client, a request body that stalls past `body_idle_timeout`, or a client that
keeps the stream's send window shut past `write_timeout` cancels that scope only, and the
connection's other streams go on.

Body bytes are handed to the relay as they came (one DATA frame each) and given back to the client's
window only then; a response body leaves as soon as the window allows, frame by frame, and waits for
WINDOW_UPDATE when it does not. A response head waits to leave with the first body bytes (one send
for a whole small response); `flush()` sends it alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from llmrelay.io.timers import Timer, TimerReason
from llmrelay.proto.errors import ClientDisconnected, InvalidResponseHead
from llmrelay.proto.h2.connection import CANCEL, INTERNAL_ERROR
from llmrelay.proto.h2.events import StreamGone
from llmrelay.proto.h2.request import response_fields, trailer_fields
from llmrelay.proto.messages import Headers, InvalidPhase, RequestHead, ResponseEvent, ResponsePhase, advance
from llmrelay.server.exchange import ErrorFormat, plain_error

if TYPE_CHECKING:
    from llmrelay.server.h2 import Http2Connection

_PENDING, _STREAMING, _DONE = ResponsePhase.PENDING, ResponsePhase.STREAMING, ResponsePhase.DONE
_HEAD, _BODY_EVENT, _END, _ABORT = ResponseEvent.HEAD, ResponseEvent.BODY, ResponseEvent.END, ResponseEvent.ABORT
_BODY, _WRITE = TimerReason.BODY, TimerReason.WRITE


class Http2Exchange:
    """One request and its response on an HTTP/2 stream (implements `Exchange`)."""

    __slots__ = (
        "head", "phase", "body_complete", "error_format", "timed_out", "stream_id", "scope", "reset_by_client",
        "_connection", "_pending", "_readable", "_writable", "_timer",
    )

    def __init__(self, connection: Http2Connection, stream_id: int, head: RequestHead, body_complete: bool) -> None:
        self.head = head
        self.phase = _PENDING
        self.body_complete = body_complete
        self.error_format: ErrorFormat = plain_error
        self.timed_out: TimerReason | None = None
        self.stream_id = stream_id
        self.scope = trio.CancelScope()
        self.reset_by_client = False
        self._connection = connection
        self._pending: list[tuple[bytes, bytes]] | None = None  # a response head not sent yet
        self._readable: trio.Event | None = None
        self._writable: trio.Event | None = None
        self._timer: Timer | None = None

    # -- what the connection's reader tells a stream ----------------------------------------------
    def wake_reader(self) -> None:
        if self._readable is not None:
            self._readable.set()

    def wake_writer(self) -> None:
        if self._writable is not None:
            self._writable.set()

    def cancel(self, reason: TimerReason | None = None) -> None:
        if reason is not None:
            self.timed_out = reason
        self.scope.cancel()

    def _timed_out(self, reason: TimerReason) -> None:
        self.cancel(reason)

    def _arm(self, seconds: float, reason: TimerReason) -> Timer:
        timer = self._timer
        if timer is None:
            timer = self._timer = self._connection.wheel.timer(self._timed_out)
        timer.arm(seconds, reason)
        return timer

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.disarm()

    # -- the request body -------------------------------------------------------------------------
    async def receive_body(self) -> bytes:
        if self.body_complete:
            return b""
        return await self._receive(self._connection.limits.body_idle_timeout)

    async def _receive(self, idle_timeout: float | None) -> bytes:
        connection = self._connection
        core = connection.core
        stream_id = self.stream_id
        while True:
            chunk = core.read(stream_id)
            if chunk is not None:
                if core.body_ended(stream_id):
                    self.body_complete = True
                await connection.send_pending()  # (a WINDOW_UPDATE, when the window is half used)
                if chunk or self.body_complete:
                    return chunk
                continue  # an empty DATA frame
            if core.body_ended(stream_id):
                self.body_complete = True
                return b""
            if core.was_reset(stream_id):
                raise ClientDisconnected("client reset the stream mid-body")
            readable = self._readable = trio.Event()
            if idle_timeout is None:
                await readable.wait()
            else:
                timer = self._arm(idle_timeout, _BODY)
                await readable.wait()
                timer.disarm()
            self._readable = None

    # -- the response -----------------------------------------------------------------------------
    def close_when_done(self) -> None:
        """Nothing to do on HTTP/2: the connection serves other streams (a draining worker has
        already sent GOAWAY)."""

    async def send_head(self, status: int, headers: Headers) -> None:
        fields = response_fields(status, headers)
        self.phase = advance(self.phase, _HEAD)
        self._pending = fields

    async def flush(self) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._send_headers(pending, False)
            await self._connection.send_pending()

    async def send_body(self, data: bytes) -> None:
        self.phase = advance(self.phase, _BODY_EVENT)
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._send_headers(pending, False)
        if data:
            await self._send_data(data, False)
        elif pending is not None:
            await self._connection.send_pending()

    async def end(self, data: bytes = b"", trailers: Headers | None = None) -> None:
        done = advance(self.phase, _END)  # (the phase moves once everything is out: a response cut
        pending = self._pending  # while its last bytes wait for the window is reset, not complete)
        last = not data and not trailers
        if pending is not None:
            self._pending = None
            self._send_headers(pending, last)
        if data:
            await self._send_data(data, not trailers)
        if trailers:
            self._send_headers(trailer_fields(trailers), True)
        elif last and pending is None:
            try:
                self._connection.core.end_stream(self.stream_id)
            except StreamGone:
                raise ClientDisconnected("client reset the stream") from None
        self.phase = done
        await self._connection.send_pending()

    async def abort(self) -> None:
        self.phase = advance(self.phase, _ABORT)
        self._pending = None
        if self.phase is not _DONE:
            self._connection.core.reset(self.stream_id, INTERNAL_ERROR)
            try:
                await self._connection.send_pending()
            except ClientDisconnected:
                pass

    async def open_tunnel(self, status: int, headers: Headers) -> Http2Tunnel:
        """Answer an extended (or plain) CONNECT: HEADERS without END_STREAM (200: HTTP/2 has no 101),
        then DATA both ways."""
        if self.phase is not _PENDING:
            raise InvalidPhase("a tunnel opens before anything of the response was sent")
        if status == 101:
            status = 200
        if not 200 <= status < 300:
            raise InvalidResponseHead(f"a tunnel cannot open with status {status}")
        await self.send_head(status, headers)
        await self.flush()
        return Http2Tunnel(self)

    # -- sending ----------------------------------------------------------------------------------
    def _send_headers(self, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        try:
            self._connection.core.send_headers(self.stream_id, fields, end_stream)
        except StreamGone:
            raise ClientDisconnected("client reset the stream") from None

    async def _send_data(self, data: bytes, end_stream: bool) -> None:
        """Send `data` within the client's windows, waiting for WINDOW_UPDATE when they are shut."""
        connection = self._connection
        core = connection.core
        stream_id = self.stream_id
        size = len(data)
        offset = 0
        try:
            while True:
                window = core.sendable(stream_id)
                if window >= size - offset:
                    core.send_data(stream_id, data[offset:] if offset else data, end_stream)
                    break
                if window > 0:
                    core.send_data(stream_id, data[offset : offset + window], False)
                    offset += window
                await connection.send_pending()
                writable = self._writable = trio.Event()
                timer = self._arm(connection.limits.write_timeout, _WRITE)
                await writable.wait()
                timer.disarm()
                self._writable = None
        except StreamGone:
            raise ClientDisconnected("client reset the stream") from None
        await connection.send_pending()

    @property
    def complete(self) -> bool:
        """Whether the response ended cleanly."""
        return self.phase is _DONE


class Http2Tunnel:
    """The client's side of a CONNECT stream: its DATA frames (implements `Tunnel`)."""

    __slots__ = ("_exchange", "_ended")

    def __init__(self, exchange: Http2Exchange) -> None:
        self._exchange = exchange
        self._ended = False

    async def receive(self) -> bytes:
        exchange = self._exchange
        if exchange.body_complete:
            return b""
        try:
            return await exchange._receive(None)
        except ClientDisconnected:
            return b""

    async def send(self, data: bytes) -> None:
        if self._ended:
            raise ClientDisconnected("the tunnel's sending side was ended")
        if data:
            await self._exchange._send_data(data, False)

    async def send_eof(self) -> None:
        if not self._ended:
            self._ended = True
            await self._exchange.end()

    def close(self) -> None:
        exchange = self._exchange
        if exchange.phase is not _DONE:
            exchange.phase = ResponsePhase.ABORTED
        exchange._connection.core.reset(exchange.stream_id, CANCEL)
        exchange._connection.flush_soon()
