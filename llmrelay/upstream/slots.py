"""Connection scheduling: a LIFO free-list, a cap, and a queue of waiters.

httpcore's `AsyncConnectionPool` re-examines every pooled connection (a poll syscall each) on every
request, which costs more CPU than the rest of a relayed request. Here a request takes the most
recently used idle connection (the one most likely still open), checks only that one, and gets a
reserved place to open a new connection when none is idle and the cap allows.

`acquire()` returns an idle connection, or None with a place reserved: the caller then opens a
connection, or calls `forfeit()` when opening fails. Every connection taken must be given back with
`release()` exactly once, kept only when it is reusable; anything else is closed and its place freed,
so cancellation can never leak a place. Nothing on the usual path enters a cancel scope.

HTTP/2 connections (`h2pool`) count against the same cap: `reserve_nowait()` takes a place without
waiting and `forfeit()` gives it back when the connection closes; `on_free` tells the HTTP/2 side
that a place or a connection came free, since its requests wait there rather than here.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

from llmrelay.upstream.errors import UpstreamPoolFull

C = TypeVar("C")


class ConnectionSlots(Generic[C]):
    def __init__(
        self,
        limit: int,
        wait_timeout: float,
        alive: Callable[[C], bool],
        close: Callable[[C], Awaitable[None] | None],
    ) -> None:
        self._limit = limit
        self._wait_timeout = wait_timeout
        self._alive = alive
        self._close = close
        self._idle: list[C] = []
        self._open = 0  # idle, in use and being opened: what counts against the cap
        self._waiters = trio.lowlevel.ParkingLot()
        self._closed = False
        self.on_free: Callable[[], None] | None = None

    async def _take(self) -> tuple[bool, C | None]:
        while self._idle:
            connection = self._idle.pop()
            if self._alive(connection):
                return True, connection
            await self._discard(connection)
        if self._open < self._limit:
            self._open += 1
            return True, None
        return False, None

    async def acquire(self) -> C | None:
        """An idle connection, None with a place reserved for a new one, or wait (503 after the
        wait timeout)."""
        found, connection = await self._take()
        if found:
            return connection
        with trio.move_on_after(self._wait_timeout):
            while True:
                try:
                    await self._waiters.park()
                except trio.Cancelled:
                    self._waiters.unpark()  # pass a wake-up this task may have taken to the next waiter
                    raise
                found, reused = await self._take()
                if found:
                    return reused
        raise UpstreamPoolFull(f"no upstream connection became free within {self._wait_timeout:g} s")

    def reserve_nowait(self) -> bool:
        """Take a place for a new connection if the cap allows, without waiting."""
        if self._open < self._limit:
            self._open += 1
            return True
        return False

    def forfeit(self) -> None:
        """Opening a connection in a reserved place failed, or the connection it held is closed:
        free the place."""
        self._open -= 1
        self._waiters.unpark()
        if self.on_free is not None:
            self.on_free()

    async def release(self, connection: C, reusable: bool) -> None:
        """Give a connection back: kept when reusable, closed otherwise."""
        if reusable and not self._closed:
            self._idle.append(connection)
        else:
            await self._discard(connection)
        if self._waiters:
            self._waiters.unpark()
        if self.on_free is not None:
            self.on_free()

    async def _discard(self, connection: C) -> None:
        self._open -= 1
        try:
            closing = self._close(connection)
            if inspect.isawaitable(closing):
                with trio.CancelScope(shield=True):
                    await closing
        except Exception:  # closing a broken connection: nothing left to save
            pass

    def statistics(self) -> dict[str, int]:
        return {"connections": self._open, "idle": len(self._idle), "waiting": len(self._waiters)}

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            await self._discard(self._idle.pop())
