"""The upstream connection interface, and its HTTP/1.1 implementation over any byte transport.

`UpstreamConnection` is what the pool schedules and the relay reads a response from: send a request,
receive the response head, read the body, know whether the connection can carry another request, and
be closed (at once, from anywhere: a timer or a drain deadline). `H1Connection` drives the sans-IO
client (`llmrelay.proto.h1.client`) over a transport made by `dial`: a direct TCP or TLS connection,
or one through an HTTP or SOCKS5 proxy. So every response, whatever the way, is judged by the same
parser and framing rules. HTTP/2 is `h2connection`: streams, scheduled by `h2pool`.

Compared with httpcore's HTTP/1.1 connection, which drives h11 and wraps every step in tracing and
exception-mapping context managers, a request here is one send (head and a whole body together) and
one parse of the head with the body bytes that came with it. Timeouts use the connection's `Timer`:
when it fires, the transport is closed, the waiting read wakes with end of stream, and `timer.fired`
turns that into `UpstreamTimeout`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Protocol

from llmrelay.io.timers import Timer, TimerReason, TimerWheel
from llmrelay.io.transport import BrokenTransport, Transport
from llmrelay.proto.h1.client import ClientProtocol, ResponseClosed, ResponseError, ResponseHead
from llmrelay.proto.h1.framing import LAST_CHUNK, FramingError, encode_chunk
from llmrelay.proto.messages import Headers
from llmrelay.upstream.errors import UpstreamProtocolError, UpstreamTimeout

_FIRST_BYTE, _IDLE = TimerReason.FIRST_BYTE, TimerReason.IDLE  # global reads on the hot path

STREAM_READ = 16384  # a read shorter than this means the sender paused (a stream between events)


class UpstreamConnection(Protocol):
    reused: bool  # it carried a request before this one
    idle_since: float  # monotonic time it went back to the pool
    idle_timeout: float  # longest silence while a body is read
    body_done: bool  # the current response's body has been read to its end

    @property
    def trailers(self) -> Headers | None: ...

    async def send_request(self, head: bytes, body: AsyncIterable[bytes] | bytes, chunked: bool, write_timeout: float) -> None: ...

    async def receive_head(self, method: bytes, timeout: float) -> ResponseHead: ...

    async def read_body(self) -> bytes:
        """The next body bytes (b"" once the body is complete; check `body_done`)."""
        ...

    def retry_safe(self) -> bool:
        """After a failed request: whether it failed before the upstream saw it answered (a kept-alive
        connection the peer closed just then), so it may be sent again on a new connection."""
        ...

    def has_buffered_body(self) -> bool: ...

    def reusable(self) -> bool: ...

    def looks_alive(self) -> bool: ...

    def close(self) -> None:
        """Close now (synchronous: wakes whatever waits on the connection)."""
        ...


class H1Connection:
    """One HTTP/1.1 connection to a target; carries one request at a time."""

    __slots__ = ("transport", "timer", "reused", "idle_since", "idle_timeout", "_protocol", "_read_dry", "body_done")
    trailers: Headers | None = None  # (chunked trailers are not kept: nothing downstream takes them)

    def __init__(self, transport: Transport, wheel: TimerWheel) -> None:
        self.transport = transport
        self.timer: Timer = wheel.timer(self._expired)
        self.reused = False
        self.idle_since = 0.0
        self.idle_timeout = 0.0
        self.body_done = False
        self._protocol = ClientProtocol()
        self._read_dry = False

    def _expired(self, _reason: TimerReason) -> None:
        self.transport.close()

    # -- state ------------------------------------------------------------------------------------
    def reusable(self) -> bool:
        return self._protocol.reusable() and not self.transport.closed

    def looks_alive(self) -> bool:
        """An idle connection must have nothing to read: data or end of stream means it is done for."""
        if self.transport.closed:
            return False
        return not self.transport.input_pending()

    def retry_safe(self) -> bool:
        return self.reused and not self.timer.fired and not self._protocol.received

    def has_buffered_body(self) -> bool:
        return bool(self._protocol.buffer)

    def close(self) -> None:
        self.timer.disarm()
        self.transport.close()

    # -- one request ------------------------------------------------------------------------------
    async def send_request(
        self, head: bytes, body: AsyncIterable[bytes] | bytes, chunked: bool, write_timeout: float
    ) -> None:
        """Send the head and body (a whole body leaves with the head, in one send)."""
        transport = self.transport
        timer = self.timer
        self._protocol.start_request()
        try:
            if isinstance(body, bytes):
                if chunked:
                    body = (encode_chunk(body) if body else b"") + LAST_CHUNK
                await transport.send_all(head + body, timer, write_timeout)
                return
            await transport.send_all(head, timer, write_timeout)
            async for chunk in body:
                if chunk:
                    await transport.send_all(encode_chunk(chunk) if chunked else chunk, timer, write_timeout)
            if chunked:
                await transport.send_all(LAST_CHUNK, timer, write_timeout)
        except BrokenTransport as exc:
            if timer.fired:
                raise UpstreamTimeout(f"upstream did not read the request for {write_timeout:g} s") from None
            raise UpstreamProtocolError(f"upstream connection failed (request): {exc}") from None

    async def receive_head(self, method: bytes, timeout: float) -> ResponseHead:
        """Read the response head (skipping 100 Continue); the body bytes read with it are kept."""
        timer = self.timer
        transport = self.transport
        protocol = self._protocol
        timer.arm(timeout, _FIRST_BYTE)
        try:
            while True:
                try:
                    if protocol.buffer:  # (bytes after a 100 Continue, or a head not whole yet)
                        head = protocol.next_head(method)
                        if head is not None:
                            self.body_done = protocol.body_done
                            return head
                        data = await transport.receive()
                    else:  # the request has just left: the answer cannot be here yet
                        data = await transport.receive_after_wait()
                    if not data:
                        if timer.fired:
                            raise UpstreamTimeout(f"no response headers within {timeout:g} s")
                        if not protocol.received:
                            raise UpstreamProtocolError("upstream closed the connection without answering")
                        protocol.end_of_stream()
                    protocol.receive_data(data)
                except ResponseError as exc:
                    raise UpstreamProtocolError(f"malformed upstream response: {exc}") from None
        finally:
            timer.disarm()

    async def read_body(self) -> bytes:
        """The next body bytes (b"" once the body is complete; check `body_done`)."""
        protocol = self._protocol
        decoder = protocol.decoder
        assert decoder is not None
        try:
            if protocol.buffer or decoder.done:  # bytes that came with the head, or the end
                content = protocol.next_body()
                if content is not None:
                    self.body_done = decoder.done
                    return content
            while True:
                timer = self.timer
                timer.arm(self.idle_timeout, _IDLE)
                if self._read_dry:
                    data = await self.transport.receive_after_wait()
                else:
                    data = await self.transport.receive()
                timer.disarm()
                # A short read means the peer's sending paused: next time, wait before reading.
                self._read_dry = len(data) < STREAM_READ
                if not data:
                    if timer.fired:
                        raise UpstreamTimeout(f"upstream sent nothing for {self.idle_timeout:g} s mid-body")
                    protocol.end_of_stream()
                    self.body_done = True
                    return b""
                try:
                    content = decoder.feed(data)  # (the buffer is empty here: straight to the decoder)
                except FramingError as exc:
                    raise ResponseError(str(exc)) from None
                if decoder.done:
                    self.body_done = True
                    return content
                if content:
                    return content
        except ResponseClosed:
            raise UpstreamProtocolError("upstream closed the connection mid-body") from None
        except ResponseError as exc:
            raise UpstreamProtocolError(f"malformed upstream response body: {exc}") from None
