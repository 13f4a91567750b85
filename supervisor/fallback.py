"""The stand-in for a slot that has no worker: answer 503 at once instead of leaving clients waiting.

The kernel spreads new connections over every slot's socket. While a slot's worker is being
respawned, its connections wait in the backlog and are served by the successor a second later. But
when workers of that slot cannot boot (a config they cannot apply, a broken installation) or keep
crashing and are respawned with backoff, waiting would hang clients for as long as that lasts. Then
the supervisor itself accepts on the slot's sockets and answers each connection with a short
`503 Service Unavailable` (`Retry-After: 1`, `Connection: close`) until a worker of the slot is ready
again: a client, or its SDK, retries and most likely lands on a healthy slot. Like nginx's or Envoy's
local replies, the answer is made without any upstream: no config, no routing, just bytes. On a TLS
listener there is no certificate to answer with: its connections are closed at once, which a TLS
client takes as a failed handshake and retries.
"""

from __future__ import annotations

import errno
import json
import logging
import socket

import trio

log = logging.getLogger("supervisor")

MAX_ANSWERING = 64  # connections answered at once; beyond that, closed at once
READ_TIMEOUT = 1.0  # to read the request head before answering (so that closing sends no RST)
WRITE_TIMEOUT = 2.0
_BODY = json.dumps(
    {
        "error": {
            "message": "llmrelay: no worker is available to serve this connection; retry",
            "type": "service_unavailable",
            "code": "no_worker",
        }
    }
).encode()
RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)
_RETRY_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
_BACKOFF_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


async def answer_unavailable(sockets: list[socket.socket], slot: int, tls: list[bool] | None = None) -> None:
    """Answer 503 on every connection of `sockets` until cancelled (or the sockets are closed);
    `tls[i]`: socket i is a TLS listener's (its connections are closed)."""
    answering = trio.Semaphore(MAX_ANSWERING)
    flags = tls or []
    async with trio.open_nursery() as nursery:
        for index, sock in enumerate(sockets):
            closing = index < len(flags) and flags[index]
            nursery.start_soon(_accept_loop, sock, slot, answering, nursery, closing)


async def _accept_loop(
    sock: socket.socket, slot: int, answering: trio.Semaphore, nursery: trio.Nursery, close_only: bool = False
) -> None:
    answered = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                return
            continue
        except OSError as exc:
            if exc.errno in _RETRY_ERRNOS:
                continue
            if exc.errno in _BACKOFF_ERRNOS:
                await trio.sleep(0.1)
                continue
            if sock.fileno() == -1:
                return
            raise
        answered += 1
        if answered == 1 or answered % 1000 == 0:
            what = "closed" if close_only else "answered 503 to"
            log.warning("slot %d has no worker: %s %d connection(s)", slot, what, answered)
        if close_only:
            conn.close()
            continue
        try:
            answering.acquire_nowait()
        except trio.WouldBlock:
            conn.close()
            continue
        nursery.start_soon(_answer, conn, answering)


async def _answer(conn: socket.socket, answering: trio.Semaphore) -> None:
    try:
        conn.setblocking(False)
        with trio.socket.from_stdlib_socket(conn) as sock:
            head = b""
            with trio.move_on_after(READ_TIMEOUT):
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    data = await sock.recv(65536)
                    if not data:
                        break
                    head += data
            with trio.move_on_after(WRITE_TIMEOUT):
                view = memoryview(RESPONSE)
                while view:
                    view = view[await sock.send(view) :]
                sock.shutdown(socket.SHUT_WR)
                with trio.move_on_after(0.5):  # let the client read the answer before the close
                    while await sock.recv(65536):
                        pass
    except OSError:
        pass
    finally:
        answering.release()
