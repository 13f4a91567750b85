"""Our HTTP/1.1 client connection to a provider: serialise the request, parse the response strictly.

Used for targets reached directly (plain TCP, or TLS with `trio.SSLStream`). Proxied targets keep
httpcore's connections (see `pool.py`). Compared with httpcore's HTTP/1.1 connection, which drives h11
and wraps every step in tracing and exception-mapping context managers, a request here is one send
(head and a whole body together) and one parse of the head with the body bytes that came with it.

Timeouts use the connection's `Timer`: when it fires, the transport is closed, the waiting read wakes
with end of stream, and `timer.fired` turns that into `UpstreamTimeout`.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import AsyncIterable

import trio

from llmrelay.http.wire import (
    FIELD_LINE,
    LAST_CHUNK,
    NO_BODY,
    UNTIL_CLOSE,
    BodyDecoder,
    FramingError,
    body_framing,
    connection_close_requested,
    encode_chunk,
)
from llmrelay.io.timers import Timer, TimerReason, TimerWheel
from llmrelay.io.transport import BrokenTransport, SocketTransport, StreamTransport, Transport
from llmrelay.upstream.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout

_FIRST_BYTE, _IDLE = TimerReason.FIRST_BYTE, TimerReason.IDLE  # global reads on the hot path

Headers = list[tuple[bytes, bytes]]

MAX_RESPONSE_HEAD = 65536
STREAM_READ = 16384  # a read shorter than this means the sender paused (a stream between events)
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [^\x00-\x08\x0a-\x1f\x7f]*)?")


class ResponseHead:
    __slots__ = ("status", "headers", "framing", "length", "keep_alive")

    def __init__(self, status: int, headers: Headers, framing: int, length: int, keep_alive: bool) -> None:
        self.status = status
        self.headers = headers
        self.framing = framing
        self.length = length
        self.keep_alive = keep_alive


def parse_response_head(head: bytes, method: bytes) -> ResponseHead:
    """Parse a response head (up to, not including, its blank line); raise FramingError when it is
    malformed or its framing ambiguous (RFC 9112 section 6.3)."""
    line_end = head.find(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(head if line_end < 0 else head[:line_end])
    if status_line is None:
        raise FramingError("malformed status line")
    http10 = status_line.group(1) == b"0"
    status = int(status_line.group(2))
    headers: Headers = []
    close = http10
    lengths: list[bytes] = []
    codings: list[bytes] = []
    if line_end >= 0:
        match_field = FIELD_LINE.fullmatch
        for line in head[line_end + 2 :].split(b"\r\n"):
            field = match_field(line)
            if field is None:
                raise FramingError("malformed header line")
            name, value = field.groups()
            name = name.lower()
            headers.append((name, value))
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings.append(value)
            elif name == b"connection":
                close = close or connection_close_requested(value)
    # The same rules as for requests (`wire.body_framing`): a coding other than chunked alone, both
    # Content-Length and Transfer-Encoding, or a Content-Length list make the response a 502. So the
    # client never gets a Content-Length that is not the length of the body it receives.
    framing, length = body_framing(lengths, codings)
    if method == b"HEAD" or status in (204, 304) or status < 200:
        return ResponseHead(status, headers, NO_BODY, 0, not close)
    if framing == UNTIL_CLOSE:
        return ResponseHead(status, headers, UNTIL_CLOSE, 0, False)
    return ResponseHead(status, headers, framing, length, not close)


class ClientConnection:
    """One connection to a target; carries one request at a time."""

    __slots__ = ("transport", "timer", "reused", "idle_since", "_buffer", "_decoder", "keep_alive", "nothing_received", "_read_dry", "body_done", "idle_timeout")

    def __init__(self, transport: Transport, wheel: TimerWheel) -> None:
        self.transport = transport
        self.timer: Timer = wheel.timer(self._expired)
        self.reused = False
        self.idle_since = 0.0
        self._buffer = b""
        self._decoder: BodyDecoder | None = None
        self.keep_alive = False
        self.nothing_received = True
        self._read_dry = False
        self.body_done = False  # the last response's body has been read to its end
        self.idle_timeout = 0.0  # longest silence while a body is read

    def _expired(self, _reason: TimerReason) -> None:
        self.transport.close()

    # -- state ------------------------------------------------------------------------------------
    def reusable(self) -> bool:
        """Whether the last response ended cleanly on a connection both sides keep open."""
        decoder = self._decoder
        return (
            self.keep_alive
            and decoder is not None
            and decoder.done
            and not decoder.leftover
            and not self._buffer
            and not self.transport.closed
        )

    def looks_alive(self) -> bool:
        """An idle connection must have nothing to read: data or end of stream means it is done for."""
        if self.transport.closed:
            return False
        return not self.transport.input_pending()

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
        self.nothing_received = True
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
        buffer = self._buffer
        timer.arm(timeout, _FIRST_BYTE)
        try:
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_RESPONSE_HEAD:
                        raise UpstreamProtocolError("malformed upstream response: head too large")
                    if buffer:
                        data = await transport.receive()
                    else:  # the request has just left: the answer cannot be here yet
                        data = await transport.receive_after_wait()
                    if not data:
                        if timer.fired:
                            raise UpstreamTimeout(f"no response headers within {timeout:g} s")
                        if buffer:
                            raise UpstreamProtocolError("malformed upstream response: closed inside the head")
                        raise UpstreamProtocolError("upstream closed the connection without answering")
                    buffer += data
                    self.nothing_received = False
                    continue
                if b"\n" in buffer[:end].replace(b"\r\n", b""):
                    raise UpstreamProtocolError("malformed upstream response: bare LF in head")
                try:
                    head = parse_response_head(buffer[:end], method)
                except FramingError as exc:
                    raise UpstreamProtocolError(f"malformed upstream response: {exc}") from None
                buffer = buffer[end + 4 :]
                if 100 <= head.status < 200:
                    if head.status == 101:
                        raise UpstreamProtocolError("upstream switched protocols, which is not relayed")
                    continue  # 100 Continue, 103 Early Hints: the real answer follows
                self._buffer = buffer
                decoder = BodyDecoder(head.framing, head.length)
                self._decoder = decoder
                self.body_done = decoder.done
                self.keep_alive = head.keep_alive
                return head
        finally:
            timer.disarm()

    async def read_body(self) -> bytes:
        """The next body bytes (b"" once the body is complete; check `body_done`)."""
        decoder = self._decoder
        assert decoder is not None
        idle_timeout = self.idle_timeout
        while not decoder.done:
            data = self._buffer
            if data:
                self._buffer = b""
            else:
                timer = self.timer
                timer.arm(idle_timeout, _IDLE)
                if self._read_dry:
                    data = await self.transport.receive_after_wait()
                else:
                    data = await self.transport.receive()
                timer.disarm()
                # A short read means the peer's sending paused: next time, wait before reading.
                self._read_dry = len(data) < STREAM_READ
                if not data:
                    if timer.fired:
                        raise UpstreamTimeout(f"upstream sent nothing for {idle_timeout:g} s mid-body")
                    try:
                        decoder.eof()
                    except FramingError:
                        raise UpstreamProtocolError("upstream closed the connection mid-body") from None
                    self.keep_alive = False
                    self.body_done = True
                    return b""
            try:
                content = decoder.feed(data)
            except FramingError as exc:
                raise UpstreamProtocolError(f"malformed upstream response body: {exc}") from None
            if decoder.done:
                self.body_done = True
                return content
            if content:
                return content
        return b""

    @property
    def has_buffered_body(self) -> bool:
        return bool(self._buffer)


async def open_connection(
    scheme: str,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    connect_timeout: float,
    wheel: TimerWheel,
) -> ClientConnection:
    """Connect to host:port (TLS for https) within `connect_timeout`."""
    with trio.move_on_after(connect_timeout):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to the upstream: {exc.strerror or exc}") from None
        if scheme != "https":
            sock = socket.socket(fileno=stream.socket.detach())
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return ClientConnection(SocketTransport(sock), wheel)
        assert ssl_context is not None
        tls = trio.SSLStream(stream, ssl_context, server_hostname=host, https_compatible=True)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, OSError) as exc:
            await trio.aclose_forcefully(tls)
            cause = exc.__cause__ or exc
            raise UpstreamConnectError(f"TLS handshake with the upstream failed: {cause}") from None
        return ClientConnection(StreamTransport(tls, stream.socket), wheel)
    raise UpstreamTimeout("timed out connecting to the upstream")
