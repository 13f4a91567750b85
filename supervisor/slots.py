"""A worker slot: a position with its listening sockets, kept for the supervisor's life, and the
worker serving them now.

When the slot's worker cannot serve for a while (a boot failure or a crash loop backs its respawn
off), the slot answers its connections with 503 itself (see `fallback`), so no client waits on a
socket nobody accepts from.
"""

from __future__ import annotations

import logging
import socket

import trio

from supervisor.fallback import answer_unavailable
from supervisor.sockets import close_sockets
from supervisor.workers import WorkerProcess

log = logging.getLogger("supervisor")


class Slot:
    """A worker position: its listening sockets (kept for life) and the worker serving them now."""

    def __init__(self, index: int, sockets: list[socket.socket]) -> None:
        self.index = index
        self.sockets = sockets
        self.worker: WorkerProcess | None = None
        self.removed = False
        self.quick_exits = 0  # workers that died young in a row, after they were ready
        self.boot_failures = 0  # workers that could not boot, in a row
        self._fallback: trio.CancelScope | None = None

    def answer_unavailable(self, nursery: trio.Nursery) -> None:
        """Answer 503 on the slot's sockets until `serve_again` (a worker of the slot is ready)."""
        if self._fallback is not None or self.removed:
            return
        log.warning("slot %d has no worker that can serve: answering 503 on it until one is ready", self.index)
        scope = self._fallback = trio.CancelScope()

        async def run() -> None:
            with scope:
                await answer_unavailable(self.sockets, self.index)

        nursery.start_soon(run)

    def serve_again(self) -> None:
        if self._fallback is not None:
            self._fallback.cancel()
            self._fallback = None
            log.info("slot %d has a worker again: no longer answering 503", self.index)

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.cancel()
            self._fallback = None
        close_sockets(self.sockets)
