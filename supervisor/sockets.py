"""Listening sockets: one SO_REUSEPORT socket per worker slot, bound once and kept for life.

Worker i serves slot i's socket; its successor inherits the same socket, so connections queued in
that socket's backlog are accepted by the successor instead of being reset, which is what happens
when a SO_REUSEPORT socket is closed.

SO_REUSEPORT lets any process of the same user join a port and take a share of its connections, so
a second `llmrelay serve` on a port in use would start and silently split the traffic. The first
socket of a new address is therefore bound without SO_REUSEPORT, which fails if anything at all is
bound there, and only then given SO_REUSEPORT (before `listen`) so that the other slots can join it.
There is no window between a check and the bind: the check is the bind.

On macOS, SO_REUSEPORT does not spread connections over the sockets of a group (the last one bound
gets them all), so there every slot gets a copy (`dup`) of one shared listening socket per address,
bound without SO_REUSEPORT: the workers then accept from one queue (`shared_listeners` decides; the
environment variable LLMRELAY_LISTEN_MODE = "shared" or "reuseport" overrides the platform's choice).
Slot i still holds its own descriptor, so closing one slot's copy leaves the others listening.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Mapping

import trio

# Per slot socket; the kernel caps it at net.core.somaxconn. A burst of new connections waits here
# while a worker is busy or being replaced, instead of being reset.
BACKLOG = 4096


LISTEN_MODE_ENV = "LLMRELAY_LISTEN_MODE"


class BindError(Exception):
    """A listening socket could not be bound (address in use, permission, bad address)."""


def shared_listeners(platform: str | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether every slot shares one listening socket per address (macOS) rather than having a
    SO_REUSEPORT socket of its own (Linux and the others, where the kernel spreads connections)."""
    mode = (os.environ if environ is None else environ).get(LISTEN_MODE_ENV, "").strip().lower()
    if mode in ("shared", "reuseport"):
        return mode == "shared"
    return (sys.platform if platform is None else platform) == "darwin"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind_one(host: str, port: int, exclusive: bool, reuseport: bool = True) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT do not count
        if not exclusive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if exclusive and reuseport:
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


def bind_slot_sockets(
    host: str, port: int, slots: int, join: bool = False, shared: bool = False, existing: socket.socket | None = None
) -> list[socket.socket]:
    """Bind `slots` sockets on one address; with port 0 they share the port the first one got.

    `join`: the address is already ours (one slot more): every socket joins the existing group.
    Otherwise the first bind fails when anything else is bound to the address.
    `shared` (macOS): one socket bound without SO_REUSEPORT and a copy of it per slot; joining an
    address that is ours then copies `existing`, its socket.
    """
    if shared:
        if join and existing is not None:
            return [_copy(existing) for _ in range(slots)]
        first = _bind_one("127.0.0.1" if host == "localhost" else host, port, exclusive=True, reuseport=False)
        return [first] + [_copy(first) for _ in range(slots - 1)]
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


def _copy(sock: socket.socket) -> socket.socket:
    """Another descriptor of the same listening socket (one accept queue for both)."""
    copy = sock.dup()
    copy.setblocking(False)
    return copy


def close_sockets(sockets: list[socket.socket]) -> None:
    """Close listening sockets, waking any task of ours still waiting to accept on them."""
    for sock in sockets:
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()
