"""The byte pump of an opened tunnel (a relayed WebSocket, a CONNECT tunnel): the client's side and an
upstream connection, bytes copied both ways unchanged until either side closes.

One task per direction, in one nursery, under one cancel scope whose deadline is the idle timeout:
every chunk that moves, either way, pushes the deadline on, so a tunnel ends after `idle_timeout`
seconds with nothing moving in either direction (a peer that stops reading counts as nothing
moving: its direction stalls, and the other one has nothing to say).

A side that ends its stream (end of stream on its connection) has that end passed on to the other
side (a TCP half-close where the transport has one), and the other direction may go on for `linger`
more seconds, so the last words of a close handshake still arrive; then both sides are closed, as
nginx and HAProxy do: few peers behind a relay rely on a half-open connection, and a tunnel held
open by a peer that never closes its half would hold a worker's connection for nothing. A side that
breaks (a failed send) ends the tunnel at once. Whatever the end, the upstream connection is closed;
the client's side is closed uncleanly unless both sides ended theirs.

The pump does not know how it was opened: `websocket` and `connect` open tunnels and keep the
access-log record; the drain deadline cuts a tunnel by cancelling its caller's scope.
"""

from __future__ import annotations

import enum
import socket
import time

import trio

from llmrelay.proto.errors import ClientDisconnected
from llmrelay.proto.messages import Headers
from llmrelay.io.transport import BrokenTransport, SocketTransport, Transport
from llmrelay.relay.accesslog import AccessRecord
from llmrelay.server.exchange import Exchange, Tunnel


class TunnelEnd(enum.Enum):
    """How a tunnel ended (the access log's `outcome`)."""

    CLIENT_CLOSED = "client_closed"  # the client ended its side first
    UPSTREAM_CLOSED = "upstream_closed"  # the upstream ended its side first
    IDLE_TIMEOUT = "idle_timeout"  # nothing moved either way for `idle_timeout`
    CLIENT_GONE = "client_gone"  # a send to the client failed
    UPSTREAM_GONE = "upstream_gone"  # a send to the upstream failed


def shutdown_write(transport: Transport) -> None:
    """End our sending half of an upstream connection (a TCP FIN). A TLS transport has no half-close
    (its close_notify ends both directions): there the other direction's linger ends the tunnel."""
    if isinstance(transport, SocketTransport) and not transport.closed:
        try:
            transport.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class TunnelPump:
    """Copies bytes between `client` and `upstream` until the tunnel ends (see the module's text)."""

    __slots__ = (
        "client", "upstream", "idle_timeout", "linger", "bytes_up", "bytes_down", "end", "_scope", "_open", "_limit"
    )

    def __init__(self, client: Tunnel, upstream: Transport, idle_timeout: float, linger: float) -> None:
        self.client = client
        self.upstream = upstream
        self.idle_timeout = idle_timeout
        self.linger = linger
        self.bytes_up = 0  # client -> upstream
        self.bytes_down = 0  # upstream -> client
        self.end: TunnelEnd | None = None
        self._scope = trio.CancelScope()
        self._open = 2  # directions still running
        self._limit = float("inf")  # once one side ended: when the other must have ended too

    async def run(self, first_down: bytes = b"") -> TunnelEnd:
        """Pump until the tunnel ends; `first_down`: upstream bytes that arrived with its answer's
        head, sent to the client before anything else."""
        scope = self._scope
        try:
            with scope:
                scope.deadline = trio.current_time() + self.idle_timeout
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._client_to_upstream)
                    nursery.start_soon(self._upstream_to_client, first_down)
        finally:
            self.upstream.close()
            if self._open:  # not both sides ended theirs: the client must not take it for a clean end
                self.client.close()
        if self.end is None:
            self.end = TunnelEnd.IDLE_TIMEOUT
        return self.end

    def _moved(self) -> None:
        self._scope.deadline = min(trio.current_time() + self.idle_timeout, self._limit)

    def _side_ended(self, end: TunnelEnd) -> None:
        self._open -= 1
        if self.end is None:
            self.end = end
        if self._open:
            self._limit = trio.current_time() + self.linger
            self._scope.deadline = min(self._scope.deadline, self._limit)

    def _broken(self, end: TunnelEnd) -> None:
        if self.end is None:
            self.end = end
        self._scope.cancel()

    async def _client_to_upstream(self) -> None:
        client, upstream = self.client, self.upstream
        while True:
            try:
                data = await client.receive()
            except ClientDisconnected:
                self._broken(TunnelEnd.CLIENT_GONE)
                return
            if not data:
                break
            self._moved()
            try:
                await upstream.send_all(data)
            except BrokenTransport:
                self._broken(TunnelEnd.UPSTREAM_GONE)
                return
            self.bytes_up += len(data)
        self._side_ended(TunnelEnd.CLIENT_CLOSED)
        shutdown_write(upstream)

    async def _upstream_to_client(self, data: bytes) -> None:
        client, upstream = self.client, self.upstream
        while True:
            if data:
                self._moved()
                try:
                    await client.send(data)
                except ClientDisconnected:
                    self._broken(TunnelEnd.CLIENT_GONE)
                    return
                self.bytes_down += len(data)
            data = await upstream.receive()
            if not data:
                break
        self._side_ended(TunnelEnd.UPSTREAM_CLOSED)
        try:
            await client.send_eof()
        except ClientDisconnected:
            pass


async def refuse(exchange: Exchange, status: int, headers: Headers, body: bytes, record: AccessRecord) -> None:
    """Answer a tunnel request that is not opened with a whole response, and close the connection
    after it: a client that asked for a tunnel may already be sending the tunnel's bytes."""
    exchange.close_when_done()
    record.status = status
    record.first_byte = time.perf_counter()
    await exchange.send_head(status, headers)
    record.bytes_out += len(body)
    await exchange.end(body)
