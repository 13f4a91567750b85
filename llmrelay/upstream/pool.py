"""`UpstreamPool`: the one interface through which the relay reaches a provider.

The interface is one entry point, `stream(request)`, an async context manager: the response is closed
when the block exits, on every path (normal end, client gone, timeout, error), so a pool place is never
leaked. The response gives `status`, `headers`, and its body through `read_chunk()` (or `iter_body()`).

Behind it, for a target reached directly, are our own HTTP/1.1 connections (`h1_client`, plain or TLS)
scheduled by `ConnectionSlots`; for a target behind `proxy_url`, httpcore's connections (HTTP proxy
forwarding or CONNECT, SOCKS5), made by httpcore's pool classes used only as connection factories.
A request that fails on a reused keep-alive connection before any response byte arrives (the peer
closed it while idle) is sent again once on a new connection when its body can be replayed.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from time import monotonic
from typing import AsyncContextManager
from urllib.parse import unquote, urlsplit

import httpcore
import msgspec
from httpcore import AsyncConnectionInterface
import socksio.exceptions
import trio

from llmrelay.config.resolved import ResolvedEndpoint
from llmrelay.upstream.errors import UpstreamProtocolError, UpstreamProxyError, UpstreamTimeout, translate
from llmrelay.http.wire import serialize_head
from llmrelay.io.timers import wheel
from llmrelay.upstream.h1_client import ClientConnection, open_connection
from llmrelay.upstream.slots import ConnectionSlots

# What httpcore raises for network, protocol and proxy failures. Anything else (such as the error a
# request body source raises when the client misbehaves) passes through untranslated.
TRANSPORT_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
    socksio.exceptions.SOCKSError,  # a SOCKS5 proxy that breaks its handshake
    OSError,
)

Headers = list[tuple[bytes, bytes]]


class UpstreamRequest(msgspec.Struct):
    method: bytes
    scheme: bytes
    host: bytes
    port: int
    target: bytes  # path and query
    headers: Headers
    body: AsyncIterable[bytes] | bytes = b""
    chunked: bool = False  # the headers say Transfer-Encoding: chunked (the body is sent chunk-encoded)


class UpstreamResponse:
    """Status and headers of an upstream answer, with its body read chunk by chunk.

    `read_chunk()` returns the next body bytes; once it has returned the last of them, `complete` is
    True (possibly together with the last bytes, so that they can leave with the end of the response).
    """

    status: int
    headers: Headers
    complete: bool

    @property
    def body_ready(self) -> bool:
        """Whether body bytes (or the end) are already here, so the head can wait for them."""
        return self.complete

    async def read_chunk(self) -> bytes:
        raise NotImplementedError

    async def iter_body(self) -> AsyncIterator[bytes]:
        while not self.complete:
            chunk = await self.read_chunk()
            if chunk:
                yield chunk


class DirectResponse(UpstreamResponse):
    __slots__ = ("status", "headers", "_connection", "read_chunk")

    def __init__(self, connection: ClientConnection, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers
        self._connection = connection
        self.read_chunk = connection.read_body  # type: ignore[method-assign]  # no wrapper per chunk

    @property
    def complete(self) -> bool:  # type: ignore[override]
        return self._connection.body_done

    @property
    def body_ready(self) -> bool:
        return self._connection.body_done or self._connection.has_buffered_body


class HttpcoreResponse(UpstreamResponse):
    """An answer read through httpcore (proxied targets)."""

    def __init__(self, response: httpcore.Response, idle_timeout: float) -> None:
        self.status = response.status
        self.headers = [(name.lower(), value) for name, value in response.headers]
        self.complete = False
        self._iterator = response.stream.__aiter__()  # type: ignore[union-attr]
        self._idle_timeout = idle_timeout

    async def read_chunk(self) -> bytes:
        with trio.move_on_after(self._idle_timeout):
            try:
                return await self._iterator.__anext__()
            except StopAsyncIteration:
                self.complete = True
                return b""
            except TRANSPORT_ERRORS as exc:
                raise translate(exc, "body") from None
        raise UpstreamTimeout(f"upstream sent nothing for {self._idle_timeout:g} s mid-body")


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    if ca_file:
        context = ssl.create_default_context(cafile=ca_file)
    else:
        context = httpcore._ssl.default_ssl_context()  # certifi's bundle, as httpx uses
    context.set_alpn_protocols(["http/1.1"])
    return context


def _proxy_parts(proxy_url: str) -> tuple[str, tuple[str, str] | None]:
    parts = urlsplit(proxy_url)
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme, 1080)
    return f"{parts.scheme}://{host}:{parts.port or default}", auth


FRESH_CONNECTION = 1.0  # seconds idle under which a pooled connection is reused without a liveness check


class UpstreamPool:
    """Connections to one endpoint's target, direct or through its `proxy_url`."""

    def __init__(self, endpoint: ResolvedEndpoint) -> None:
        self.endpoint = endpoint
        self._target = endpoint.target
        self._connect_timeout = endpoint.connect_timeout
        self._first_byte_timeout = endpoint.first_byte_timeout
        self._idle_timeout = endpoint.idle_timeout
        self._keepalive_expiry = endpoint.keepalive_expiry
        self._ssl_context = _ssl_context(endpoint.ca_file) if endpoint.target.scheme == "https" else None
        self._wheel = wheel()
        self._slots: ConnectionSlots[ClientConnection] | None = None
        self._proxied: _ProxiedPool | None = None
        if endpoint.proxy_url is None:
            self._slots = ConnectionSlots(
                endpoint.max_connections, endpoint.pool_timeout, self._still_usable, ClientConnection.close
            )
        else:
            self._proxied = _ProxiedPool(endpoint, self._ssl_context)

    def _still_usable(self, connection: ClientConnection) -> bool:
        idle = monotonic() - connection.idle_since
        if idle >= self._keepalive_expiry:
            return False
        # A connection used a moment ago is taken as it is (a peer that closed it just then is
        # covered by the retry of a replayable request); one idle for a while is checked first.
        return idle < FRESH_CONNECTION or connection.looks_alive()

    def stream(self, request: UpstreamRequest) -> AsyncContextManager[UpstreamResponse]:
        """Send `request`; the response once its headers arrived; always closed on leaving."""
        if self._proxied is not None:
            return self._proxied.stream(request)
        return _DirectExchange(self, request)

    async def _open(self) -> ClientConnection:
        target = self._target
        return await open_connection(
            target.scheme, target.host, target.port, self._ssl_context, self._connect_timeout, self._wheel
        )

    def statistics(self) -> dict[str, int]:
        if self._proxied is not None:
            return self._proxied.statistics()
        assert self._slots is not None
        return self._slots.statistics()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            if self._proxied is not None:
                await self._proxied.aclose()
            elif self._slots is not None:
                await self._slots.aclose()


class _DirectExchange:
    """`UpstreamPool.stream()` for a direct target: one request on one of our connections."""

    __slots__ = ("_pool", "_request", "_connection", "_interrupted")

    def __init__(self, pool: UpstreamPool, request: UpstreamRequest) -> None:
        self._pool = pool
        self._request = request
        self._connection: ClientConnection | None = None
        self._interrupted = False

    def interrupt(self) -> None:
        """Close the upstream connection now (a drain deadline): the request fails where it stands."""
        self._interrupted = True
        if self._connection is not None:
            self._connection.close()

    async def __aenter__(self) -> UpstreamResponse:
        pool = self._pool
        slots = pool._slots
        assert slots is not None
        request = self._request
        head = serialize_head(b"%s %s HTTP/1.1" % (request.method, request.target), request.headers)
        chunked = request.chunked
        replayable = isinstance(request.body, bytes)
        while True:
            connection = await slots.acquire()
            if connection is None:
                try:
                    connection = await pool._open()
                except BaseException:
                    slots.forfeit()
                    raise
            if self._interrupted:
                await slots.release(connection, False)
                raise UpstreamProtocolError("interrupted: the relay is shutting down")
            self._connection = connection
            try:
                await connection.send_request(head, request.body, chunked, pool._idle_timeout)
                response = await connection.receive_head(request.method, pool._first_byte_timeout)
            except BaseException as exc:
                # `async with` calls no __aexit__ when __aenter__ fails: give the connection back here.
                self._connection = None
                connection.close()
                await slots.release(connection, False)
                retry = (
                    isinstance(exc, UpstreamProtocolError)
                    and connection.reused
                    and replayable
                    and not connection.timer.fired
                    and connection.nothing_received
                    and not self._interrupted
                )
                if retry:
                    continue  # the peer closed this idle connection just as it was reused: use a new one
                raise
            connection.idle_timeout = pool._idle_timeout
            return DirectResponse(connection, response.status, response.headers)

    async def __aexit__(self, *exc_info: object) -> None:
        connection = self._connection
        if connection is None:
            return
        self._connection = None
        slots = self._pool._slots
        assert slots is not None
        reusable = connection.reusable()
        if reusable:
            connection.reused = True
            connection.idle_since = monotonic()
        await slots.release(connection, reusable)


class _ProxiedPool:
    """httpcore connections through an HTTP or SOCKS5 proxy."""

    def __init__(self, endpoint: ResolvedEndpoint, ssl_context: ssl.SSLContext | None) -> None:
        self._first_byte_timeout = endpoint.first_byte_timeout
        self._idle_timeout = endpoint.idle_timeout
        self._timeouts = {
            "connect": endpoint.connect_timeout,
            "read": max(endpoint.idle_timeout, endpoint.first_byte_timeout),
            "write": endpoint.idle_timeout,
            "pool": endpoint.pool_timeout,
        }
        common = dict(
            ssl_context=ssl_context,
            max_connections=endpoint.max_connections,
            keepalive_expiry=endpoint.keepalive_expiry,
            http1=True,
            http2=False,
        )
        assert endpoint.proxy_url is not None
        # Through an HTTP proxy, a plain-http target is forwarded rather than tunnelled: a 407 then
        # comes from the proxy itself, never from the provider.
        self._proxy_answers_directly = (
            endpoint.proxy_url.startswith(("http://", "https://")) and endpoint.target.scheme == "http"
        )
        factory: httpcore.AsyncConnectionPool
        url, auth = _proxy_parts(endpoint.proxy_url)
        if url.startswith("socks5"):
            url = "socks5://" + url.split("://", 1)[1]
            factory = httpcore.AsyncSOCKSProxy(proxy_url=url, proxy_auth=auth, **common)  # type: ignore[arg-type]
        else:
            factory = httpcore.AsyncHTTPProxy(proxy_url=url, proxy_auth=auth, **common)  # type: ignore[arg-type]
        origin = httpcore.Origin(
            endpoint.target.scheme.encode(), endpoint.target.host.encode("ascii"), endpoint.target.port
        )
        self._create: Callable[[], AsyncConnectionInterface] = lambda: factory.create_connection(origin)
        self._slots: ConnectionSlots[AsyncConnectionInterface] = ConnectionSlots(
            endpoint.max_connections,
            endpoint.pool_timeout,
            lambda c: c.is_available() and not c.has_expired(),
            lambda c: c.aclose(),
        )

    @asynccontextmanager
    async def stream(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.scheme, host=request.host, port=request.port, target=request.target),
            headers=request.headers,
            content=request.body,
            extensions={"timeout": self._timeouts},
        )
        response: httpcore.Response | None = None
        connection: AsyncConnectionInterface | None = None
        try:
            with trio.move_on_after(self._first_byte_timeout) as scope:
                connection = await self._slots.acquire()
                if connection is None:
                    connection = self._create()  # httpcore connects on first use
                try:
                    response = await connection.handle_async_request(core_request)
                except TRANSPORT_ERRORS as exc:
                    raise translate(exc, "request", via_proxy=True) from None
            if response is None or scope.cancelled_caught:
                raise UpstreamTimeout(f"no response headers within {self._first_byte_timeout:g} s")
            if response.status == 407 and self._proxy_answers_directly:
                raise UpstreamProxyError("upstream proxy refused the request: 407 Proxy Authentication Required")
            yield HttpcoreResponse(response, self._idle_timeout)
        finally:
            with trio.CancelScope(shield=True):
                if response is not None:
                    try:
                        await response.aclose()
                    except Exception:  # closing a broken connection: nothing left to save
                        pass
                if connection is not None:
                    await self._slots.release(connection, connection.is_idle())

    def statistics(self) -> dict[str, int]:
        return self._slots.statistics()

    async def aclose(self) -> None:
        await self._slots.aclose()
