"""What every connection of a worker shares: the drain state and the counters.

Connections register through small protocols, so the state is the same for every protocol driver:
an HTTP/1.1 connection waiting for its next request is a `DrainableConnection` in `idle`; an HTTP/2
connection is a `MultiplexedConnection` in `multiplexed` for its whole life, since it must hear of a
drain while streams are open (to send GOAWAY and accept no new stream).
"""

from __future__ import annotations

from typing import Protocol

import trio


class DrainableConnection(Protocol):
    def stop_idle(self) -> None:
        """A full stop: close the connection while it waits for a next request."""
        ...


class MultiplexedConnection(Protocol):
    def drain(self) -> None:
        """The worker drains: accept no new stream (GOAWAY), finish the open ones, then close."""
        ...


class ServerState:
    """The drain flag, idle connections, counters, and the nursery that owns watcher tasks."""

    def __init__(self, watchers: trio.Nursery | None = None) -> None:
        self.draining = False
        self.close_idle = False
        self.closing_idle = False  # draining and closing idle connections: none waits for a next request
        self.idle: set[DrainableConnection] = set()  # waiting for a next request; a full stop closes them
        self.multiplexed: set[MultiplexedConnection] = set()  # open HTTP/2 connections
        self.watchers = watchers
        self.connections = 0
        self.requests_in_flight = 0
        self.requests_total = 0
        self._all_closed = trio.Event()

    def connection_opened(self) -> None:
        self.connections += 1

    def connection_closed(self) -> None:
        self.connections -= 1
        if self.connections == 0:
            self._all_closed.set()
            self._all_closed = trio.Event()

    async def wait_all_closed(self) -> None:
        """Return once no connection is open (at once when none is)."""
        if self.connections:
            await self._all_closed.wait()

    def start_draining(self, close_idle: bool) -> None:
        self.draining = True
        self.close_idle = self.close_idle or close_idle
        self.closing_idle = self.close_idle
        if self.close_idle:
            for connection in list(self.idle):
                connection.stop_idle()
        for multiplexed in list(self.multiplexed):
            multiplexed.drain()
