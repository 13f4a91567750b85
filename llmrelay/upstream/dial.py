"""Making an upstream connection: direct, or through the endpoint's `proxy_url`, then TLS when the
target is https. Every way ends in one of our transports carrying our HTTP/1.1 client.

| target | proxy           | how                                                               |
|--------|-----------------|-------------------------------------------------------------------|
| any    | none            | TCP to the target                                                 |
| http   | http(s)://      | TCP (TLS) to the proxy; requests in absolute form, forwarded      |
| https  | http(s)://      | TCP (TLS) to the proxy, `CONNECT`, then TLS to the target inside  |
| any    | socks5(h)://    | TCP to the proxy, SOCKS5 `CONNECT`, then TLS for an https target  |

A plain TCP connection ends as a `SocketTransport` (the fast path). TLS straight over a TCP socket
(direct, or inside a tunnel through an http:// or SOCKS5 proxy, which is TCP all the same once open)
ends as a `TlsTransport`, the same driving with TLS in the middle. Only TLS inside the TLS of an
https:// proxy stays a `trio.SSLStream` over another, in a `StreamTransport`, as does a plain target
forwarded through such a proxy. The whole of it, handshakes included, runs under `connect_timeout`;
whatever fails or is cancelled on the way closes the socket.

`connect()` offers only "http/1.1" in ALPN: WebSocket upgrades and health checks need a connection
that speaks HTTP/1.1 whatever the upstream prefers. `connect_negotiated()` is the way of an upstream
with `http2 = true`: it offers "h2" first and says what the server chose. There is no h2c (HTTP/2
over plain TCP): a plain-http target is always reached over HTTP/1.1.
"""

from __future__ import annotations

import os
import socket
import ssl
from urllib.parse import unquote, urlsplit

import certifi
import trio

from llmrelay.config.resolved import Target
from llmrelay.io.tls_transport import TlsTransport
from llmrelay.io.transport import BrokenTransport, SocketTransport, StreamTransport, Transport
from llmrelay.upstream.errors import UpstreamConnectError, UpstreamError, UpstreamProxyError, UpstreamTimeout
from llmrelay.upstream.proxies import basic_credentials, http_connect, socks5_connect

DEFAULT_PROXY_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}


def ssl_context(ca_file: str | None, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """Verification against `ca_file`, or certifi's bundle (what the providers' SDKs use)."""
    context = ssl.create_default_context(cafile=ca_file or certifi.where())
    context.set_alpn_protocols(list(alpn))
    return context


def connect_failure(exc: OSError) -> str:
    """Why a TCP connect failed, in a few words ("connection refused"): trio reports a failure of every
    address it tried as one "all attempts ... failed" error whose cause holds each attempt's error."""
    attempts = getattr(exc.__cause__, "exceptions", None) or [exc]
    reasons = set()
    for attempt in attempts:
        errno = getattr(attempt, "errno", None)
        reasons.add(os.strerror(errno) if isinstance(errno, int) and errno > 0 else getattr(attempt, "strerror", None) or str(attempt))
    return ", ".join(sorted(reason.lower() for reason in reasons))


class ProxyURL:
    """A parsed `proxy_url` (validated with the config): scheme, host, port, credentials."""

    __slots__ = ("scheme", "host", "port", "auth")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or DEFAULT_PROXY_PORTS[parts.scheme]
        self.auth = None if parts.username is None else (unquote(parts.username), unquote(parts.password or ""))


class Dialer:
    """Opens connections to one endpoint's target, the way its config says."""

    def __init__(
        self,
        target: Target,
        proxy_url: str | None,
        ca_file: str | None,
        connect_timeout: float,
        proxy_ca_file: str | None = None,
    ) -> None:
        self.target = target
        self.proxy = ProxyURL(proxy_url) if proxy_url is not None else None
        self.connect_timeout = connect_timeout
        self._tls = ssl_context(ca_file) if target.scheme == "https" else None
        self._ca_file = ca_file
        self._h2_tls: ssl.SSLContext | None = None  # made on the first negotiated dial
        self._proxy_tls = ssl_context(proxy_ca_file) if self.proxy is not None and self.proxy.scheme == "https" else None
        proxy = self.proxy
        # Through an HTTP proxy, a plain-http target is forwarded rather than tunnelled: requests go
        # in absolute form, and a 407 then comes from the proxy itself, never from the provider.
        self.forwarding = proxy is not None and proxy.scheme in ("http", "https") and target.scheme == "http"
        self._proxy_credentials = basic_credentials(*proxy.auth) if proxy is not None and proxy.auth else None
        self.forward_credentials = self._proxy_credentials if self.forwarding else None
        self.origin = target.origin.encode("ascii")  # before a path: absolute form, when forwarding

    async def connect(self) -> Transport:
        """A connection that speaks HTTP/1.1 (ALPN offers nothing else)."""
        transport, _ = await self._connect(self._tls)
        return transport

    async def connect_negotiated(self) -> tuple[Transport, str | None]:
        """A connection whose TLS handshake offered "h2" then "http/1.1", with the protocol the
        server selected (None: it selected none, or the target is plain http; both mean HTTP/1.1)."""
        context = self._tls
        if context is not None:
            if self._h2_tls is None:
                self._h2_tls = ssl_context(self._ca_file, ("h2", "http/1.1"))
            context = self._h2_tls
        return await self._connect(context)

    async def _connect(self, context: ssl.SSLContext | None) -> tuple[Transport, str | None]:
        with trio.move_on_after(self.connect_timeout):
            stream = await (self._through_proxy() if self.proxy is not None else self._direct())
            if context is None:
                return _transport(stream), None
            if isinstance(stream, trio.SocketStream):  # direct, or tunnelled through an http:// or SOCKS5 proxy
                transport = await _tls_transport(stream, context, self.target.host)
                return transport, transport.selected_alpn_protocol()
            # TLS inside the TLS of an https:// proxy: trio's streams, one over the other
            tls = await _start_tls(stream, context, self.target.host, UpstreamConnectError, "the upstream")
            return StreamTransport(tls, _socket_of(stream)), tls.selected_alpn_protocol()
        where = "through the upstream proxy" if self.proxy is not None else ""
        raise UpstreamTimeout(f"timed out connecting to the upstream {where}".rstrip())

    async def _direct(self) -> trio.abc.Stream:
        target = self.target
        try:
            return await trio.open_tcp_stream(target.host, target.port)
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to the upstream: {connect_failure(exc)}") from None

    async def _through_proxy(self) -> trio.abc.Stream:
        proxy = self.proxy
        assert proxy is not None
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(proxy.host, proxy.port)
        except OSError as exc:
            raise UpstreamProxyError(f"cannot connect to the upstream proxy: {connect_failure(exc)}") from None
        try:
            if self._proxy_tls is not None:
                stream = await _start_tls(stream, self._proxy_tls, proxy.host, UpstreamProxyError, "the upstream proxy")
            target = self.target
            if proxy.scheme.startswith("socks5"):
                await socks5_connect(stream, target.host, target.port, proxy.auth, proxy.scheme == "socks5h")
            elif not self.forwarding:
                await http_connect(stream, target.host, target.port, self._proxy_credentials)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream


async def _start_tls(
    stream: trio.abc.Stream, context: ssl.SSLContext, host: str, error: type[UpstreamError], peer: str
) -> trio.SSLStream[trio.abc.Stream]:
    tls = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
    try:
        await tls.do_handshake()
    except (trio.BrokenResourceError, OSError) as exc:
        await trio.aclose_forcefully(tls)
        cause = exc.__cause__ or exc
        raise error(f"TLS handshake with {peer} failed: {cause}") from None
    except BaseException:  # the connect timeout (a cancellation) mid-handshake: nothing stays open
        await trio.aclose_forcefully(tls)
        raise
    return tls


async def _tls_transport(stream: trio.SocketStream, context: ssl.SSLContext, host: str) -> TlsTransport:
    """TLS to the target over the stream's socket, which the transport takes over."""
    sock = _detached(stream)
    try:
        transport = TlsTransport(sock, context, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    try:
        await transport.handshake()
    except (ssl.SSLError, BrokenTransport) as exc:
        transport.close()
        raise UpstreamConnectError(f"TLS handshake with the upstream failed: {exc}") from None
    except BaseException:  # the connect timeout (a cancellation) mid-handshake: nothing stays open
        transport.close()
        raise
    return transport


def _detached(stream: trio.SocketStream) -> socket.socket:
    """The stream's socket as a stdlib one, for our transports (the trio stream is spent after)."""
    sock = socket.socket(fileno=stream.socket.detach())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    assert isinstance(stream, trio.SocketStream)
    return stream.socket


def _transport(stream: trio.abc.Stream) -> Transport:
    if isinstance(stream, trio.SocketStream):
        return SocketTransport(_detached(stream))
    return StreamTransport(stream, _socket_of(stream))  # a plain target through a TLS proxy


