"""Listening sockets: one SO_REUSEPORT socket per worker slot, bound once and kept for life.

Worker i serves slot i's socket; its successor inherits the same socket, so connections queued in
that socket's backlog are accepted by the successor instead of being reset, which is what happens
when a SO_REUSEPORT socket is closed.

SO_REUSEPORT lets any process of the same user join a port and take a share of its connections, so
a second `llmrelay serve` on a port in use would start and silently split the traffic. The first
socket of a new address is therefore bound without SO_REUSEPORT, which fails if anything at all is
bound there, and only then given SO_REUSEPORT (before `listen`) so that the other slots can join it.
There is no window between a check and the bind: the check is the bind.
"""

from __future__ import annotations

import errno
import socket

import trio

# Per slot socket; the kernel caps it at net.core.somaxconn. A burst of new connections waits here
# while a worker is busy or being replaced, instead of being reset.
BACKLOG = 4096


class BindError(Exception):
    """A listening socket could not be bound (address in use, permission, bad address)."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind_one(host: str, port: int, exclusive: bool) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT do not count
        if not exclusive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if exclusive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # our other slots may join now
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise BindError(
                f"cannot listen on {host}:{port}: address already in use (another process listens there;"
                " a second llmrelay serve does not share a port)"
            ) from None
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def bind_slot_sockets(host: str, port: int, slots: int, join: bool = False) -> list[socket.socket]:
    """Bind `slots` sockets on one address; with port 0 they share the port the first one got.

    `join`: the address is already ours (one slot more): every socket joins the existing group.
    Otherwise the first bind fails when anything else is bound to the address.
    """
    if host == "localhost":
        host = "127.0.0.1"
    sockets: list[socket.socket] = []
    try:
        for index in range(slots):
            sock = _bind_one(host, port, exclusive=index == 0 and not join)
            port = sock.getsockname()[1]
            sockets.append(sock)
    except BindError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def close_sockets(sockets: list[socket.socket]) -> None:
    """Close listening sockets, waking any task of ours still waiting to accept on them."""
    for sock in sockets:
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()
