"""Jobs that change the set of workers (a rolling replacement, a reload, one worker more or fewer,
a memory recycling) run in the background, one at a time, so that the signal loop always answers
the next signal. The nursery they run in belongs to the supervisor's main task, which cancels it
when a stop begins; once the supervisor is stopping, new jobs are refused with a log line.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from supervisor.slots import SlotTable

log = logging.getLogger("supervisor")


class Jobs:
    def __init__(self, table: SlotTable, nursery: trio.Nursery) -> None:
        self._table = table
        self._nursery = nursery
        self._lock = trio.Lock()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def submit(self, action: str, job: Callable[[], Awaitable[object]]) -> None:
        """Run `job` after any running one (unless the supervisor is stopping by then)."""
        if self._table.stopping:
            log.info("%s ignored: the supervisor is stopping", action)
            return

        async def run() -> None:
            async with self.one_at_a_time(action):
                if not self._table.stopping:
                    await job()

        self._nursery.start_soon(run)

    @asynccontextmanager
    async def one_at_a_time(self, action: str) -> AsyncIterator[None]:
        """Hold the one lock of the jobs that change the set of workers; log when it has to wait."""
        if self._lock.locked():
            log.info("%s queued behind a change in progress", action)
        async with self._lock:
            yield
