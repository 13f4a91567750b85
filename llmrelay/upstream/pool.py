"""`UpstreamPool`: the one interface through which the relay reaches a provider.

The interface is one entry point, `stream(request)`, an async context manager: the response is closed
when the block exits, on every path (normal end, client gone, timeout, error), so a pool place is never
leaked; `interrupt()` closes the connection from outside (a drain deadline). The response gives
`status`, `headers`, and its body through `read_chunk()`.

Behind it are our own connections (`connection.H1Connection`), made by the endpoint's `Dialer` (direct,
TLS, HTTP proxy forwarding or CONNECT, SOCKS5) and scheduled by `ConnectionSlots`. A request that fails
on a reused keep-alive connection before any response byte arrives (the peer closed it while idle) is
sent again once on a new connection when its body can be replayed.

With `http2 = true` on an https target, requests go first to the HTTP/2 side (`h2pool.H2Pool`):
streams multiplexed on shared connections, with the same `stream()` interface; `trailers` then holds
the response trailers, if any. A request the server did not process (above a GOAWAY's last stream,
or refused) is sent again on another connection when its body can be replayed. When the upstream does
not select "h2" in ALPN, the pool goes on over HTTP/1.1. There is no h2c: a plain-http target is
always reached over HTTP/1.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from time import monotonic
from typing import Protocol

import msgspec
import trio

from llmrelay.config.resolved import ResolvedUpstream
from llmrelay.io.timers import wheel
from llmrelay.proto.h1.client import request_head
from llmrelay.proto.messages import Headers
from llmrelay.upstream.connection import H1Connection, UpstreamConnection
from llmrelay.upstream.dial import Dialer
from llmrelay.upstream.errors import UpstreamProtocolError, UpstreamProxyError
from llmrelay.upstream.h2stream import H2Stream
from llmrelay.upstream.h2pool import H2Pool
from llmrelay.upstream.slots import ConnectionSlots

FRESH_CONNECTION = 1.0  # seconds idle under which a pooled connection is reused without a liveness check
UNPROCESSED_RETRIES = 3  # times an HTTP/2 request the server did not process is sent again
# Connection-specific fields (RFC 9113 8.2.2) that an HTTP/1.1 request may carry and HTTP/2 forbids.
_NOT_IN_H2 = frozenset({b"host", b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"})


class UpstreamRequest(msgspec.Struct):
    method: bytes
    target: bytes  # path and query
    headers: Headers
    body: AsyncIterable[bytes] | bytes = b""
    chunked: bool = False  # the headers say Transfer-Encoding: chunked (the body is sent chunk-encoded)


class ResponseBody(Protocol):
    """Where a response's body comes from: an HTTP/1.1 connection or an HTTP/2 stream."""

    body_done: bool

    @property
    def trailers(self) -> Headers | None: ...

    async def read_body(self) -> bytes: ...

    def has_buffered_body(self) -> bool: ...


class UpstreamResponse:
    """Status and headers of an upstream answer, with its body read chunk by chunk.

    `read_chunk()` returns the next body bytes; once it has returned the last of them, `complete` is
    True (possibly together with the last bytes, so that they can leave with the end of the response).
    `trailers` are the HTTP/2 response trailers once the body is complete (None without any, and
    always over HTTP/1.1).
    """

    __slots__ = ("status", "headers", "_connection", "read_chunk")

    def __init__(self, connection: ResponseBody, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers
        self._connection = connection
        self.read_chunk = connection.read_body  # no wrapper per chunk

    @property
    def trailers(self) -> Headers | None:
        return self._connection.trailers if self._connection.body_done else None

    @property
    def complete(self) -> bool:
        return self._connection.body_done

    @property
    def body_ready(self) -> bool:
        """Whether body bytes (or the end) are already here, so the head can wait for them."""
        return self._connection.body_done or self._connection.has_buffered_body()


class UpstreamPool:
    """Connections to one upstream's target, direct or through its `proxy_url`."""

    def __init__(self, upstream: ResolvedUpstream) -> None:
        self.upstream = upstream
        self.dialer = Dialer(
            upstream.target, upstream.proxy_url, upstream.ca_file, upstream.timeouts.connect, upstream.proxy_ca_file
        )
        self.first_byte_timeout = upstream.timeouts.first_byte
        self.idle_timeout = upstream.timeouts.idle
        self._keepalive_expiry = upstream.pool.keepalive_expiry
        self._wheel = wheel()
        self.slots: ConnectionSlots[UpstreamConnection] = ConnectionSlots(
            upstream.pool.max_connections, upstream.pool.wait, self._still_usable, _close
        )
        self.h2: H2Pool | None = None
        if upstream.http2 and upstream.target.scheme == "https":
            self.h2 = H2Pool(
                self.dialer, self.slots, self._wheel, upstream.pool.wait, self.idle_timeout, self._keepalive_expiry
            )

    def _still_usable(self, connection: UpstreamConnection) -> bool:
        idle = monotonic() - connection.idle_since
        if idle >= self._keepalive_expiry:
            return False
        # A connection used a moment ago is taken as it is (a peer that closed it just then is
        # covered by the retry of a replayable request); one idle for a while is checked first.
        return idle < FRESH_CONNECTION or connection.looks_alive()

    def stream(self, request: UpstreamRequest) -> UpstreamExchange:
        """Send `request`; the response once its headers arrived; always closed on leaving."""
        return UpstreamExchange(self, request)

    async def open(self) -> UpstreamConnection:
        return H1Connection(await self.dialer.connect(), self._wheel)  # (HTTP/2 will be a second kind)

    def statistics(self) -> dict[str, int]:
        statistics = self.slots.statistics()
        if self.h2 is not None:
            statistics.update(self.h2.statistics())
        return statistics

    async def aclose(self) -> None:
        if self.h2 is not None:
            self.h2.aclose()
        with trio.CancelScope(shield=True):
            await self.slots.aclose()


def _close(connection: UpstreamConnection) -> None:
    connection.close()


def h2_request_headers(method: bytes, target: bytes, authority: bytes, headers: Headers) -> Headers:
    """The request's fields for HTTP/2: pseudo-headers first, connection-specific fields dropped
    (Host becomes :authority; a chunked body is framed by DATA frames instead)."""
    fields: Headers = [(b":method", method), (b":scheme", b"https"), (b":authority", authority), (b":path", target)]
    for name, value in headers:
        name = name.lower()
        if name in _NOT_IN_H2:
            if name == b"host":
                fields[2] = (b":authority", value)
            elif name == b"te" and value.strip().lower() == b"trailers":
                fields.append((name, b"trailers"))
            continue
        fields.append((name, value))
    return fields


class UpstreamExchange:
    """`UpstreamPool.stream()`: one request on one of the pool's connections, or one HTTP/2 stream."""

    __slots__ = ("_pool", "_request", "_connection", "_stream", "_interrupted")

    def __init__(self, pool: UpstreamPool, request: UpstreamRequest) -> None:
        self._pool = pool
        self._request = request
        self._connection: UpstreamConnection | None = None
        self._stream: H2Stream | None = None
        self._interrupted = False

    def interrupt(self) -> None:
        """Close the upstream connection now, or reset the HTTP/2 stream (a drain deadline): the
        request fails where it stands."""
        self._interrupted = True
        if self._connection is not None:
            self._connection.close()
        if self._stream is not None:
            self._stream.interrupt()

    async def __aenter__(self) -> UpstreamResponse:
        h2pool = self._pool.h2
        if h2pool is not None and not h2pool.h1_only:
            return await self._enter_h2(h2pool)
        return await self._enter_h1(None)

    async def _enter_h2(self, h2pool: H2Pool) -> UpstreamResponse:
        pool = self._pool
        request = self._request
        headers = h2_request_headers(request.method, request.target, pool.dialer.target.host_header.encode(), request.headers)
        replayable = isinstance(request.body, bytes)
        retries = UNPROCESSED_RETRIES
        while True:
            taken = await h2pool.acquire()
            if not isinstance(taken, H2Stream):
                return await self._enter_h1(taken)  # the upstream does not speak h2
            if self._interrupted:
                taken.release()
                raise UpstreamProtocolError("interrupted: the relay is shutting down")
            self._stream = taken
            try:
                await taken.send_request(headers, request.body, pool.idle_timeout)
                await taken.receive_head(pool.first_byte_timeout)
            except BaseException as exc:
                # `async with` calls no __aexit__ when __aenter__ fails: give the stream back here.
                self._stream = None
                await taken.aclose()
                if isinstance(exc, UpstreamProtocolError) and taken.unprocessed and replayable and retries > 0:
                    if not self._interrupted:
                        retries -= 1
                        continue  # the server never saw it (GOAWAY, refused): another connection
                raise
            taken.idle_timeout = pool.idle_timeout
            return UpstreamResponse(taken, taken.status, taken.headers)

    async def _enter_h1(self, opened: UpstreamConnection | None) -> UpstreamResponse:
        pool = self._pool
        slots = pool.slots
        request = self._request
        dialer = pool.dialer
        headers = request.headers
        if dialer.forward_credentials is not None:
            headers = [*headers, (b"Proxy-Authorization", dialer.forward_credentials)]  # (some proxies match its case)
        target = dialer.origin + request.target if dialer.forwarding else request.target
        head = request_head(request.method, target, headers)
        replayable = isinstance(request.body, bytes)
        while True:
            connection: UpstreamConnection | None
            if opened is not None:
                connection, opened = opened, None
            else:
                connection = await slots.acquire()
            if connection is None:
                try:
                    connection = await pool.open()
                except BaseException:
                    slots.forfeit()
                    raise
            if self._interrupted:
                await slots.release(connection, False)
                raise UpstreamProtocolError("interrupted: the relay is shutting down")
            self._connection = connection
            try:
                await connection.send_request(head, request.body, request.chunked, pool.idle_timeout)
                response = await connection.receive_head(request.method, pool.first_byte_timeout)
                if response.status == 407 and dialer.forwarding:  # the proxy's own answer, not the provider's
                    raise UpstreamProxyError("upstream proxy refused the request: 407 Proxy Authentication Required")
            except BaseException as exc:
                # `async with` calls no __aexit__ when __aenter__ fails: give the connection back here.
                self._connection = None
                connection.close()
                await slots.release(connection, False)
                if isinstance(exc, UpstreamProtocolError) and replayable and connection.retry_safe() and not self._interrupted:
                    continue  # the peer closed this idle connection just as it was reused: use a new one
                raise
            connection.idle_timeout = pool.idle_timeout
            return UpstreamResponse(connection, response.status, response.headers)

    async def __aexit__(self, *exc_info: object) -> None:
        stream = self._stream
        if stream is not None:
            self._stream = None
            await stream.aclose()
            return
        connection = self._connection
        if connection is None:
            return
        self._connection = None
        reusable = connection.reusable()
        if reusable:
            connection.reused = True
            connection.idle_since = monotonic()
        await self._pool.slots.release(connection, reusable)
