"""`H2Stream`: one request on an HTTP/2 connection, sent by its own task and read as the
connection's reader delivers its response (see `h2connection` for the connection's side).

Waits (the response head, the next body bytes, send window) park on the stream's own lot; the reader
wakes it from its event handlers, and the stream's `Timer` wakes it when a deadline passes
(first byte, idle mid-body, a request body the server stops taking). Every check of state and the
park that follows it run without a checkpoint between them, so no wake-up is lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import TYPE_CHECKING

import h2.exceptions
import trio

from llmrelay.io.timers import Timer, TimerReason, TimerWheel
from llmrelay.proto.messages import Headers
from llmrelay.upstream.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout

if TYPE_CHECKING:
    from llmrelay.upstream.h2connection import H2Connection

SEND_HIGH_WATER = 256 * 1024  # queued bytes past which a body sender waits for the socket
_FIRST_BYTE, _IDLE, _WRITE = TimerReason.FIRST_BYTE, TimerReason.IDLE, TimerReason.WRITE


class _StopSending(Exception):
    """The response is already complete: the rest of the request body is not wanted."""


class H2Stream:
    """One request on an `H2Connection`: its sending, and its response as the reader delivers it.

    Also the body source of `UpstreamResponse` (`read_body`, `body_done`, `has_buffered_body`,
    `trailers`)."""

    __slots__ = (
        "connection", "stream_id", "timer", "status", "headers", "trailers", "body_done", "idle_timeout",
        "error", "unprocessed", "_chunks", "_unacked", "_ended", "_lot", "_released",
    )  # fmt: skip

    def __init__(self, connection: H2Connection, wheel: TimerWheel) -> None:
        self.connection = connection
        self.stream_id = 0  # given when the HEADERS are queued
        self.timer: Timer = wheel.timer(self._expired)
        self.status = 0
        self.headers: Headers = []
        self.trailers: Headers | None = None
        self.body_done = False
        self.idle_timeout = 0.0
        self.error: UpstreamError | None = None
        self.unprocessed = False  # failed before the server processed it: safe to send again
        self._chunks: list[bytes] = []
        self._unacked = 0  # flow-controlled bytes received and not yet handed on
        self._ended = False  # END_STREAM received
        self._lot = trio.lowlevel.ParkingLot()
        self._released = False

    # -- events from the reader ---------------------------------------------------------------------
    def _wake(self) -> None:
        if self._lot:
            self._lot.unpark_all()

    def _expired(self, _reason: TimerReason) -> None:
        self._wake()

    def fail(self, error: UpstreamError, unprocessed: bool = False) -> None:
        """The stream cannot go on (a reset, GOAWAY, the connection lost): its waiter raises `error`.
        A response already received whole stays readable."""
        if self.error is None and not self._ended:
            self.error = error
            self.unprocessed = unprocessed
        self._wake()

    # -- the request ----------------------------------------------------------------------------------
    async def send_request(self, headers: Headers, body: AsyncIterable[bytes] | bytes, write_timeout: float) -> None:
        connection = self.connection
        state = connection.h2
        if connection.closed or connection.going_away:
            self.unprocessed = True
            raise connection.error or UpstreamProtocolError("the HTTP/2 connection is going away")
        whole = isinstance(body, bytes)
        try:
            stream_id = state.get_next_available_stream_id()
            state.send_headers(stream_id, headers, end_stream=whole and not body)
        except (h2.exceptions.TooManyStreamsError, h2.exceptions.NoAvailableStreamIDError):
            self.unprocessed = True  # (the server lowered its limit under us: another connection)
            raise UpstreamProtocolError("the HTTP/2 connection has no stream left") from None
        except h2.exceptions.ProtocolError as exc:
            raise UpstreamProtocolError(f"request cannot be sent over HTTP/2: {exc}") from None
        self.stream_id = stream_id
        connection.streams[stream_id] = self
        try:
            if isinstance(body, bytes):
                if body:
                    await self._send_data(body, True, write_timeout)
            else:
                async for chunk in body:
                    if chunk:
                        await self._send_data(chunk, False, write_timeout)
                self._check_sendable()
                state.end_stream(stream_id)
        except _StopSending:
            return
        except h2.exceptions.StreamClosedError:
            raise self.error or UpstreamProtocolError("upstream closed the HTTP/2 stream") from None
        except h2.exceptions.ProtocolError as exc:
            raise self.error or UpstreamProtocolError(f"request cannot be sent over HTTP/2: {exc}") from None
        await connection.flush()
        if self.error is not None:
            raise self.error

    def _check_sendable(self) -> None:
        if self._ended:
            raise _StopSending
        if self.error is not None:
            raise self.error

    async def _send_data(self, data: bytes, end: bool, write_timeout: float) -> None:
        connection = self.connection
        state = connection.h2
        stream_id = self.stream_id
        view = memoryview(data)
        while True:
            self._check_sendable()
            size = min(state.local_flow_control_window(stream_id), state.max_outbound_frame_size, len(view))
            if size <= 0 and view:
                if connection.queued():
                    await connection.drain(0)
                    continue  # (a window update may have come meanwhile: look again before waiting)
                await self._wait_window(write_timeout)
                continue
            last = size == len(view)
            state.send_data(stream_id, bytes(view[:size]), end_stream=end and last)
            view = view[size:]
            if last:
                break
            if connection.queued() >= SEND_HIGH_WATER:
                await connection.drain()
        if not end:  # (a streamed body leaves chunk by chunk; a whole one with the final flush)
            await connection.drain()

    async def _wait_window(self, seconds: float) -> None:
        blocked = self.connection.blocked
        blocked.add(self)
        timer = self.timer
        timer.arm(seconds, _WRITE)
        try:
            await self._lot.park()
        finally:
            timer.disarm()
            blocked.discard(self)
        if timer.fired is _WRITE:
            raise UpstreamTimeout(f"upstream did not take the request body for {seconds:g} s")

    # -- the response ---------------------------------------------------------------------------------
    async def receive_head(self, timeout: float) -> None:
        """Wait for the response head (`status`, `headers`)."""
        timer = self.timer
        timer.arm(timeout, _FIRST_BYTE)
        try:
            while not self.status:
                if self.error is not None:
                    raise self.error
                if timer.fired is not None:
                    raise UpstreamTimeout(f"no response headers within {timeout:g} s")
                await self._lot.park()
        finally:
            timer.disarm()
        self.body_done = self._ended and not self._chunks

    def has_buffered_body(self) -> bool:
        return bool(self._chunks) or self._ended

    async def read_body(self) -> bytes:
        """The next body bytes (b"" once the body is complete; check `body_done`)."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.body_done = self._ended
                unacked, self._unacked = self._unacked, 0
                if unacked:
                    await self.connection.acknowledge(self.stream_id, unacked)
                return data
            if self._ended:
                self.body_done = True
                return b""
            if self.error is not None:
                raise self.error
            timer = self.timer
            if timer.fired is _IDLE:
                raise UpstreamTimeout(f"upstream sent nothing for {self.idle_timeout:g} s mid-body")
            timer.arm(self.idle_timeout, _IDLE)
            try:
                await self._lot.park()
            finally:
                timer.disarm()

    # -- the end ---------------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Reset the stream now (a drain deadline): its waiter fails, the RST_STREAM leaves soon."""
        self.error = UpstreamProtocolError("interrupted: the relay is shutting down")
        self.unprocessed = False
        self._ended = False  # (even a response buffered whole is cut)
        self._chunks.clear()
        self._wake()
        if self.stream_id:
            self.connection.reset(self.stream_id)
            self.connection.flush_soon()

    def release(self) -> None:
        """Give the stream's place back (once, synchronously): reset it when unfinished, hand its
        unread window back to the connection."""
        if self._released:
            return
        self._released = True
        self.timer.disarm()
        connection = self.connection
        connection.reserved -= 1
        stream_id = self.stream_id
        if stream_id:
            connection.streams.pop(stream_id, None)
            connection.reset(stream_id)
            if self._unacked:
                connection.acknowledge_nowait(stream_id, self._unacked)
                self._unacked = 0
            self._chunks.clear()
        connection.stream_released()

    async def aclose(self) -> None:
        """Release, then send what that queued (a reset), shielded."""
        self.release()
        await self.connection.flush()
