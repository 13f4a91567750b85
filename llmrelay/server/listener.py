"""The accept loop: takes connections from a listening socket and starts one task each.

Connections are bounded per worker (`server.max_connections`): past the bound, accepting waits, so
new connections queue in the kernel backlog, where another worker's socket may take them. Running out
of descriptors or memory (EMFILE, ENFILE, ENOMEM, ENOBUFS) backs off 100 ms with a log line instead of
spinning; a client that gave up while queued is skipped. On drain, whatever is already queued on a
socket about to close is taken and served (`sweep`), so nothing in a backlog is reset.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("llmrelay.worker")

_BACKOFF_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_GAVE_UP_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
BACKOFF = 0.1

Serve = Callable[[socket.socket, int], Awaitable[None]]  # (the accepted socket, its listener's index)


class Acceptor:
    """Accepts on any number of listening sockets into one connection nursery, under one bound."""

    def __init__(self, serve: Serve, max_connections: int) -> None:
        self._serve = serve
        self._slots = trio.Semaphore(max_connections)

    async def accept_loop(self, listener: socket.socket, nursery: trio.Nursery, index: int = 0) -> None:
        while True:
            await self._slots.acquire()
            while True:
                try:
                    accepted, _ = listener.accept()
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(listener)
                    continue
                except OSError as exc:
                    if exc.errno in _BACKOFF_ERRNOS:
                        log.warning("accept failed (%s); backing off 100 ms", os.strerror(exc.errno or 0))
                        await trio.sleep(BACKOFF)
                        continue
                    if exc.errno in _GAVE_UP_ERRNOS:
                        continue  # the client gave up while queued
                    self._slots.release()
                    raise
                break
            prepare(accepted)
            nursery.start_soon(self._serve_counted, accepted, index)

    def sweep(self, listener: socket.socket, nursery: trio.Nursery, index: int = 0) -> None:
        """Take every connection already queued on a socket this worker is about to close (over the
        bound if need be: they are few, and refusing them would reset them)."""
        while True:
            try:
                accepted, _ = listener.accept()  # the listening socket is non-blocking
            except OSError:  # BlockingIOError: nothing left
                return
            prepare(accepted)
            nursery.start_soon(self._serve, accepted, index)

    async def _serve_counted(self, sock: socket.socket, index: int) -> None:
        try:
            await self._serve(sock, index)
        finally:
            self._slots.release()


def prepare(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not TCP (a test's Unix socket) or already reset
        pass
