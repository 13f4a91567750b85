"""The HTTP/2 side of an upstream pool (`http2 = true` on an https target): streams on shared connections.

A request takes a stream place on the first connection that has one (filling connections in order,
so the later ones drain and expire), under `min(SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS)` per
connection. When every connection is full, one new connection is opened, in a place of the pool's
`ConnectionSlots` (HTTP/1.1 and HTTP/2 connections share `max_connections`); while it is being opened,
the other requests wait for it rather than each opening its own. With every place taken, requests
wait for a stream place up to `pool_timeout` (then `UpstreamPoolFull`): the server's limit is never
exceeded.

A connection whose TLS handshake did not select "h2" is handed to the request as an HTTP/1.1
connection, and the pool turns to HTTP/1.1 for good (`h1_only`): the upstream does not speak HTTP/2.
A connection that received GOAWAY leaves the list at once (new requests go to another one) and gives
its place back when its last stream is done.
"""

from __future__ import annotations

from time import monotonic

import trio

from llmrelay.io.timers import TimerWheel
from llmrelay.upstream.connection import H1Connection, UpstreamConnection
from llmrelay.upstream.dial import Dialer
from llmrelay.upstream.errors import UpstreamError, UpstreamPoolFull, UpstreamProtocolError
from llmrelay.upstream.h2connection import H2Connection
from llmrelay.upstream.h2stream import H2Stream
from llmrelay.upstream.slots import ConnectionSlots


class H2Pool:
    def __init__(
        self,
        dialer: Dialer,
        slots: ConnectionSlots[UpstreamConnection],
        wheel: TimerWheel,
        wait_timeout: float,
        write_timeout: float,
        keepalive_expiry: float,
    ) -> None:
        self._dialer = dialer
        self._slots = slots
        self._wheel = wheel
        self._wait_timeout = wait_timeout
        self._write_timeout = write_timeout
        self._keepalive_expiry = keepalive_expiry
        self.connections: list[H2Connection] = []  # ready and taking new streams (when not full)
        self._placed: set[H2Connection] = set()  # every connection holding a place, going away ones too
        self.h1_only = False  # the upstream did not select h2 in ALPN
        self._opening = 0
        self._failures = 0  # connections that failed to open, and the error of the last one
        self._failure: UpstreamError | None = None
        self._waiters = trio.lowlevel.ParkingLot()
        slots.on_free = self._place_freed

    # -- taking a stream --------------------------------------------------------------------------------
    def _take(self) -> H2Stream | None:
        for connection in self.connections:
            if connection.available():
                if connection.reserved == 0 and monotonic() - connection.idle_since >= self._keepalive_expiry:
                    connection.close()  # (idle too long: the server may be about to drop it)
                    return self._take()
                return connection.open_stream()
        return None

    async def acquire(self) -> H2Stream | UpstreamConnection | None:
        """A stream place on an HTTP/2 connection; a new HTTP/1.1 connection (with its place) when
        the upstream turned out not to speak h2; None when the pool already knows it does not."""
        stream = self._take()
        if stream is not None:
            return stream
        if self.h1_only:
            return None
        if not self._may_open():
            deadline = trio.current_time() + self._wait_timeout
            failures = self._failures
            while True:
                with trio.move_on_at(deadline) as scope:
                    try:
                        await self._waiters.park()
                    except trio.Cancelled:
                        self._waiters.unpark()  # pass on a wake-up this task may have taken
                        raise
                stream = self._take()
                if stream is not None:
                    return stream
                if self.h1_only:
                    return None
                failure = self._failure
                if self._failures != failures and failure is not None:
                    # The connection this request waited for could not be opened: fail now, like
                    # the request that tried (not one after another, each after its own attempt).
                    raise type(failure)(failure.message)
                if self._may_open():
                    break
                if scope.cancelled_caught:
                    raise UpstreamPoolFull(f"no upstream HTTP/2 stream became free within {self._wait_timeout:g} s")
        return await self._open()

    def _may_open(self) -> bool:
        """Whether this request opens a new connection (a place is then reserved for it)."""
        return self._opening == 0 and self._slots.reserve_nowait()

    async def _open(self) -> H2Stream | UpstreamConnection:
        self._opening += 1
        connection: H2Connection | None = None
        try:
            transport, protocol = await self._dialer.connect_negotiated()
            if protocol != "h2":
                self.h1_only = True
                return H1Connection(transport, self._wheel)  # (its place is released the HTTP/1.1 way)
            connection = H2Connection(transport, self._wheel, self._write_timeout, self._changed)
            self._placed.add(connection)  # from here its place is freed when it closes
            await connection.start(self._dialer.connect_timeout)
        except BaseException as exc:
            if isinstance(exc, UpstreamError):
                self._failures += 1
                self._failure = exc
            if connection is None:
                self._slots.forfeit()
            else:
                connection.close()
            raise
        finally:
            self._opening -= 1
            self._waiters.unpark_all()
        connection.idle_since = monotonic()
        self.connections.append(connection)
        if not connection.available():
            raise UpstreamProtocolError("the upstream's new HTTP/2 connection takes no stream")
        return connection.open_stream()

    # -- news from connections and slots --------------------------------------------------------------
    def _changed(self, connection: H2Connection) -> None:
        """A connection freed stream places, received settings or GOAWAY, or closed."""
        if connection.closed or connection.going_away:
            if connection in self.connections:
                self.connections.remove(connection)
            if connection.closed and connection in self._placed:
                self._placed.discard(connection)
                self._slots.forfeit()  # (wakes our waiters through `on_free`)
            self._waiters.unpark_all()
        elif self._waiters:
            self._waiters.unpark(count=max(1, connection.max_streams - connection.reserved))

    def _place_freed(self) -> None:
        if self._waiters:
            self._waiters.unpark()

    def statistics(self) -> dict[str, int]:
        return {
            "h2_connections": len(self._placed),
            "h2_streams": sum(connection.reserved for connection in self._placed),
            "h2_waiting": len(self._waiters),
        }

    def aclose(self) -> None:
        for connection in list(self._placed):
            connection.close()
