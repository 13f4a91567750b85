"""Our scheduling of httpcore connections: a LIFO free-list, a cap, and a queue of waiters.

httpcore's `AsyncConnectionPool` re-examines every pooled connection (a poll syscall each) on every
request, which costs more CPU than the rest of a relayed request. Here a request takes the most
recently used idle connection (the one most likely still open), checks only that one, and creates a
new connection when none is idle and the cap allows. The connections themselves stay httpcore's,
made by its own factory, so direct, HTTP-proxy and SOCKS5 connections all work the same.

Every acquired connection must be released exactly once, shielded from cancellation; a connection
that is not idle at release (cancelled mid-request, broken, or not keep-alive) is closed and its
place freed, so cancellation can never leak a slot.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from httpcore import AsyncConnectionInterface

from llmrelay.upstream.errors import UpstreamPoolFull


class ConnectionSlots:
    def __init__(self, create: Callable[[], AsyncConnectionInterface], limit: int, wait_timeout: float) -> None:
        self._create = create
        self._limit = limit
        self._wait_timeout = wait_timeout
        self._idle: list[AsyncConnectionInterface] = []
        self._open = 0  # idle and in use: what counts against the cap
        self._waiters = trio.lowlevel.ParkingLot()
        self._closed = False

    async def acquire(self) -> AsyncConnectionInterface:
        """An idle connection, a new one, or wait for one (up to the wait timeout: 503)."""
        with trio.move_on_after(self._wait_timeout):
            while True:
                while self._idle:
                    connection = self._idle.pop()
                    if connection.is_available() and not connection.has_expired():
                        return connection
                    await self._discard(connection)
                if self._open < self._limit:
                    self._open += 1
                    return self._create()
                try:
                    await self._waiters.park()
                except trio.Cancelled:
                    self._waiters.unpark()  # pass a wake-up this task may have taken to the next waiter
                    raise
        raise UpstreamPoolFull(f"no upstream connection became free within {self._wait_timeout:g} s")

    async def release(self, connection: AsyncConnectionInterface) -> None:
        """Give a connection back: kept when idle and reusable, closed otherwise. Never cancelled."""
        with trio.CancelScope(shield=True):
            if connection.is_idle() and not self._closed:
                self._idle.append(connection)
            else:
                await self._discard(connection)
        self._waiters.unpark()

    async def _discard(self, connection: AsyncConnectionInterface) -> None:
        self._open -= 1
        with trio.CancelScope(shield=True):
            try:
                await connection.aclose()
            except Exception:  # closing a broken connection: nothing left to save
                pass

    def statistics(self) -> dict[str, int]:
        return {"connections": self._open, "idle": len(self._idle), "waiting": len(self._waiters)}

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            await self._discard(self._idle.pop())
