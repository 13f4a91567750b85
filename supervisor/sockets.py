"""Listening sockets: one SO_REUSEPORT socket per worker slot, bound once and kept for life.

Worker i serves slot i's socket; its successor inherits the same socket, so connections queued in
that socket's backlog are accepted by the successor instead of being reset, which is what happens
when a SO_REUSEPORT socket is closed.
"""

from __future__ import annotations

import socket

# Per slot socket; the kernel caps it at net.core.somaxconn. A burst of new connections waits here
# while a worker is busy or being replaced, instead of being reset.
BACKLOG = 4096


class BindError(Exception):
    """A listening socket could not be bound (address in use, permission, bad address)."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind_one(host: str, port: int) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def bind_slot_sockets(host: str, port: int, slots: int) -> list[socket.socket]:
    """Bind `slots` sockets on one address; with port 0 they share the port the first one got."""
    if host == "localhost":
        host = "127.0.0.1"
    sockets: list[socket.socket] = []
    try:
        for _ in range(slots):
            sock = _bind_one(host, port)
            port = sock.getsockname()[1]
            sockets.append(sock)
    except BindError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
