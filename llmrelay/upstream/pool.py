"""`UpstreamPool`: the one interface through which the relay reaches a provider.

Behind it sits an httpcore pool (direct, HTTP proxy, or SOCKS5 proxy). The interface is one entry
point, `stream(request)`, an async context manager: the response is closed when the block exits, on
every path (normal end, client gone, timeout, error), with the close shielded from cancellation so a
pool slot is never leaked. Timeouts are enforced with trio cancel scopes: connect and first byte when
the request is sent, idle between body chunks while it is read.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import unquote, urlsplit

import httpcore
import msgspec
from httpcore import AsyncConnectionInterface
import socksio.exceptions
import trio

from llmrelay.config.resolved import ResolvedEndpoint
from llmrelay.upstream.errors import UpstreamProxyError, UpstreamTimeout, translate
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


class UpstreamResponse:
    """Status and headers of an upstream answer, with its body read chunk by chunk."""

    def __init__(self, response: httpcore.Response, idle_timeout: float) -> None:
        self.status = response.status
        self.headers: Headers = list(response.headers)
        self._stream = response.stream
        self._idle_timeout = idle_timeout

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Yield body chunks as they arrive; raise UpstreamTimeout after `idle_timeout` of silence."""
        iterator = self._stream.__aiter__()  # type: ignore[union-attr]
        while True:
            with trio.move_on_after(self._idle_timeout) as scope:
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                except TRANSPORT_ERRORS as exc:
                    raise translate(exc, "body") from None
            if scope.cancelled_caught:
                raise UpstreamTimeout(f"upstream sent nothing for {self._idle_timeout:g} s mid-body")
            if chunk:
                yield chunk


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


class UpstreamPool:
    """Connections to one endpoint's target, direct or through its `proxy_url`."""

    def __init__(self, endpoint: ResolvedEndpoint) -> None:
        self.endpoint = endpoint
        self._connect_timeout = endpoint.connect_timeout
        self._first_byte_timeout = endpoint.first_byte_timeout
        self._idle_timeout = endpoint.idle_timeout
        self._timeouts = {
            "connect": endpoint.connect_timeout,
            "read": max(endpoint.idle_timeout, endpoint.first_byte_timeout),
            "write": endpoint.idle_timeout,
            "pool": endpoint.pool_timeout,
        }
        ssl_context = _ssl_context(endpoint.ca_file) if endpoint.target.scheme == "https" else None
        common = dict(
            ssl_context=ssl_context,
            max_connections=endpoint.max_connections,
            keepalive_expiry=endpoint.keepalive_expiry,
            http1=True,
            http2=False,
        )
        factory: httpcore.AsyncConnectionPool
        self._via_proxy = endpoint.proxy_url is not None
        # Through an HTTP proxy, a plain-http target is forwarded rather than tunnelled: a 407 then
        # comes from the proxy itself, never from the provider.
        self._proxy_answers_directly = bool(
            endpoint.proxy_url and endpoint.proxy_url.startswith(("http://", "https://"))
            and endpoint.target.scheme == "http"
        )
        # httpcore's pool classes serve only as connection factories (direct, HTTP proxy, SOCKS5);
        # which connection a request uses is decided by ConnectionSlots.
        if endpoint.proxy_url is None:
            factory = httpcore.AsyncConnectionPool(**common)  # type: ignore[arg-type]
        else:
            url, auth = _proxy_parts(endpoint.proxy_url)
            if url.startswith("socks5"):
                url = "socks5://" + url.split("://", 1)[1]
                factory = httpcore.AsyncSOCKSProxy(proxy_url=url, proxy_auth=auth, **common)  # type: ignore[arg-type]
            else:
                factory = httpcore.AsyncHTTPProxy(proxy_url=url, proxy_auth=auth, **common)  # type: ignore[arg-type]
        origin = httpcore.Origin(
            endpoint.target.scheme.encode(), endpoint.target.host.encode("ascii"), endpoint.target.port
        )
        self._slots = ConnectionSlots(
            lambda: factory.create_connection(origin), endpoint.max_connections, endpoint.pool_timeout
        )

    @asynccontextmanager
    async def stream(self, request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        """Send `request`; yield the response once its headers arrived; always close it."""
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
                try:
                    response = await connection.handle_async_request(core_request)
                except TRANSPORT_ERRORS as exc:
                    raise translate(exc, "request", via_proxy=self._via_proxy) from None
            if response is None or scope.cancelled_caught:
                raise UpstreamTimeout(f"no response headers within {self._first_byte_timeout:g} s")
            if response.status == 407 and self._proxy_answers_directly:
                raise UpstreamProxyError("upstream proxy refused the request: 407 Proxy Authentication Required")
            yield UpstreamResponse(response, self._idle_timeout)
        finally:
            with trio.CancelScope(shield=True):
                if response is not None:
                    try:
                        await response.aclose()
                    except Exception:  # closing a broken connection: nothing left to save
                        pass
                if connection is not None:
                    await self._slots.release(connection)

    def statistics(self) -> dict[str, int]:
        return self._slots.statistics()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._slots.aclose()
