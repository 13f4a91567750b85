"""A new client connection, from accept to its protocol driver.

Each listener is plain or TLS. On a plain listener the first bytes choose the protocol (`picker`):
HTTP/1.1, or HTTP/2 with prior knowledge (h2c, the client's preface); a TLS ClientHello sent to a
plain port is closed with a log line. On a TLS listener the handshake runs under its timeout and
ALPN chooses: `h2` or `http/1.1` (no ALPN: HTTP/1.1). A client that speaks plain HTTP to a TLS port
gets a short 400 in plain text and a close (what nginx does), not a hung handshake.

The choice is made once per connection; the drivers (`h1`, `h2`) never learn how it was made.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable

import msgspec
import trio

from llmrelay.config.limits import ClientLimits
from llmrelay.config.schema import Http2Section, ListenSection
from llmrelay.io.logsafe import describe
from llmrelay.io.timers import TimerReason, TimerWheel
from llmrelay.io.tls import ALPN_H2
from llmrelay.io.tls_transport import TlsTransport
from llmrelay.io.transport import BrokenTransport, SocketTransport, Transport
from llmrelay.server.exchange import RequestHandler
from llmrelay.server.h1 import Http1Connection
from llmrelay.server.picker import H2_PREFACE, Wire, sniff
from llmrelay.server.state import ServerState

log = logging.getLogger("llmrelay.http")

_TLS_RECORD = 0x16
PLAIN_HTTP_ON_TLS = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 44\r\nconnection: close\r\n\r\n"
    b"This port speaks HTTPS: use an https:// URL\n"
)


class ListenerRuntime(msgspec.Struct, frozen=True):
    """One listener as a worker serves it: its config and, for TLS, the context built from it."""

    config: ListenSection
    tls: ssl.SSLContext | None


class Serving(msgspec.Struct, frozen=True):
    """What every connection is served with (swapped whole when a new config arrives)."""

    handler: RequestHandler
    limits: ClientLimits
    http2: Http2Section


class _FirstBytes:
    """A connection waiting for its first bytes: a full stop closes it (`ServerState.idle`)."""

    __slots__ = ("transport",)

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def stop_idle(self) -> None:
        self.transport.close()


def peer_of(sock: socket.socket) -> tuple[str, int]:
    try:
        host, port, *_ = sock.getpeername()
        return (str(host), int(port))
    except (OSError, ValueError):
        return ("unknown", 0)


class ConnectionServer:
    """Takes each accepted socket to the driver of its protocol."""

    def __init__(self, state: ServerState, wheel: Callable[[], TimerWheel]) -> None:
        self._state = state
        self._wheel = wheel

    async def serve(self, sock: socket.socket, listener: ListenerRuntime, serving: Serving) -> None:
        client = peer_of(sock)
        try:
            if listener.tls is None:
                await self._serve_plain(sock, client, serving)
            else:
                await self._serve_tls(sock, client, listener.tls, listener.config, serving)
        except Exception as exc:  # a bug: this connection ends, the worker and its other connections go on
            log.error("internal error on the connection from %s: %s", client[0], describe(exc))
            log.debug("traceback of that internal error", exc_info=True)
            sock.close()

    # -- plain: HTTP/1.1 or h2c --------------------------------------------------------------------
    async def _serve_plain(self, sock: socket.socket, client: tuple[str, int], serving: Serving) -> None:
        transport = SocketTransport(sock)
        first = await self._first_bytes(transport, serving.limits.header_timeout)
        if not first:
            transport.close()
            return
        wire = sniff(first)
        if wire is Wire.TLS:
            log.info("closing connection from %s: a TLS handshake on a plain HTTP listener", client[0])
            transport.close()
            return
        if wire is Wire.HTTP2_PRIOR_KNOWLEDGE:
            while len(first) < len(H2_PREFACE) and H2_PREFACE.startswith(first):
                more = await self._first_bytes(transport, serving.limits.header_timeout)
                if not more:
                    transport.close()
                    return
                first += more
            if first.startswith(H2_PREFACE) and serving.http2.enabled:
                await self._run_h2(transport, client, serving, "http", first)
                return
        await Http1Connection(
            transport, client, serving.handler, serving.limits, self._state, self._wheel(), "http", first
        ).run()

    async def _first_bytes(self, transport: Transport, timeout: float) -> bytes:
        """The connection's first bytes within `timeout` (b"": none came, or a full stop)."""
        state = self._state
        if state.closing_idle:
            return b""
        waiting = _FirstBytes(transport)
        state.idle.add(waiting)
        timer = self._wheel().timer(lambda _reason: transport.close())
        timer.arm(timeout, TimerReason.IDLE)
        try:
            return await transport.receive()
        finally:
            timer.disarm()
            state.idle.discard(waiting)

    # -- TLS: ALPN h2 or http/1.1 ----------------------------------------------------------------
    async def _serve_tls(
        self,
        sock: socket.socket,
        client: tuple[str, int],
        context: ssl.SSLContext,
        config: ListenSection,
        serving: Serving,
    ) -> None:
        assert config.tls is not None
        transport = TlsTransport(sock, context, server_side=True)
        ready = False  # the handshake is done: from then on the transport is the driver's to close
        try:
            with trio.move_on_after(config.tls.handshake_timeout) as deadline:
                first = await _peek_first_byte(sock)  # (peeked: nothing is consumed)
                if not first:
                    return  # connected and left
                if first[0] != _TLS_RECORD:
                    log.info("closing connection from %s: plain HTTP on TLS listener %s", client[0], config.address)
                    await _answer_plain_http(SocketTransport(sock))
                    return
                await transport.handshake()
                ready = True
            if deadline.cancelled_caught:
                log.info("closing connection from %s: TLS handshake not done within %g s", client[0], config.tls.handshake_timeout)
                return
        except (ssl.SSLError, BrokenTransport, OSError) as exc:
            log.info("TLS handshake with %s failed on %s: %s", client[0], config.address, _tls_reason(exc))
            return
        finally:
            if not ready:
                transport.close()
        if transport.selected_alpn_protocol() == ALPN_H2 and serving.http2.enabled:
            await self._run_h2(transport, client, serving, "https", b"")
            return
        await Http1Connection(transport, client, serving.handler, serving.limits, self._state, self._wheel(), "https").run()

    async def _run_h2(self, transport: Transport, client: tuple[str, int], serving: Serving, scheme: str, initial: bytes) -> None:
        from llmrelay.server.h2 import Http2Connection

        await Http2Connection(
            transport, client, serving.handler, serving.limits, serving.http2, self._state, self._wheel(), scheme, initial
        ).run()


async def _peek_first_byte(sock: socket.socket) -> bytes:
    """The connection's first byte, left in the kernel (b"": the client connected and left)."""
    while True:
        try:
            return sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


async def _answer_plain_http(transport: SocketTransport) -> None:
    """The 400 for plain HTTP on a TLS port, then a clean close: the request's bytes are read and
    dropped first (closing with unread bytes would reset the connection before the client read it)."""
    with trio.move_on_after(1.0):
        try:
            await transport.send_all(PLAIN_HTTP_ON_TLS)
            transport.sock.shutdown(socket.SHUT_WR)
        except (BrokenTransport, OSError):
            return
        dropped = 0
        while dropped < 65536:
            data = await transport.receive()
            if not data:
                break
            dropped += len(data)


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or str(exc) or type(exc).__name__
    return describe(exc)
