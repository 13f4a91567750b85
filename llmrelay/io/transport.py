"""Byte transports: a plain socket driven by trio's low-level waits, or any trio stream (TLS; the
server's TLS listeners use `tls_transport.TlsTransport`, the same driving with TLS in the middle).

`trio.SocketStream` checkpoints twice and enters two context managers per call; on the hot path a
relayed request makes four or more calls, which cost more than parsing it. `SocketTransport` calls the
non-blocking socket first and waits (`trio.lowlevel.wait_readable` / `wait_writable`) only when the
kernel has nothing, with an explicit checkpoint every few calls that did not wait, so a busy
connection still lets the others run and still sees cancellation.

`receive()` returns b"" at the end of the stream and on any failure (reset, closed under it): for the
relay both mean the peer is gone. `send_all()` raises `BrokenTransport`. `close()` is synchronous and
wakes any task waiting on the transport (it then sees end of stream or `BrokenTransport`), which is how
a timer interrupts a wait.
"""

from __future__ import annotations

import select
import socket
from typing import TYPE_CHECKING, TypeAlias

import trio

from llmrelay.io.timers import Timer, TimerReason

if TYPE_CHECKING:
    from llmrelay.io.tls_transport import TlsTransport

_WRITE = TimerReason.WRITE  # a global read on the hot path, not an enum attribute lookup

READ_SIZE = 65536
CHECKPOINT_EVERY = 16
_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
_checkpoint = trio.lowlevel.checkpoint
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


def socket_input_pending(sock: socket.socket) -> bool:
    """Whether the kernel has bytes or an end of stream waiting on an idle socket: a peek that takes
    nothing and never blocks (unlike `select()`, it works for any descriptor number)."""
    try:
        sock.recv(1, _PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset or closed under us: as good as gone
    return True


class BrokenTransport(Exception):
    """The peer is gone or the transport was closed while sending."""


class SocketTransport:
    __slots__ = ("sock", "closed", "_quick")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.closed = False
        self._quick = 0

    async def receive(self) -> bytes:
        sock = self.sock
        while True:
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                try:
                    await _wait_readable(sock)
                except (trio.ClosedResourceError, OSError):
                    return b""
                self._quick = 0
                continue
            except OSError:
                return b""
            self._quick += 1
            if self._quick >= CHECKPOINT_EVERY:
                self._quick = 0
                await _checkpoint()
            return data

    async def receive_after_wait(self) -> bytes:
        """Like `receive()`, for a peer that has just been read dry and sends in bursts (a stream):
        wait for readability first instead of paying for a read that finds nothing."""
        sock = self.sock
        while True:
            try:
                await _wait_readable(sock)
                return sock.recv(READ_SIZE)
            except BlockingIOError:  # woken without data (another reader took it): wait again
                continue
            except (trio.ClosedResourceError, OSError):
                return b""

    def send_now(self, data: bytes) -> bytes:
        """Send what the kernel takes now, without waiting; what is left (b"": everything left).
        Raises BrokenTransport. (The caller then gives the rest to `send_all`.)"""
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            return data
        except OSError as exc:
            raise BrokenTransport(exc.strerror or type(exc).__name__) from None
        return b"" if sent == len(data) else data[sent:]

    async def send_all(self, data: bytes, timer: Timer | None = None, seconds: float = 0.0) -> None:
        """Send everything; when the kernel's buffer is full, arm `timer` for `seconds` while waiting."""
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise BrokenTransport(exc.strerror or type(exc).__name__) from None
        if sent == len(data):
            self._quick += 1
            if self._quick >= CHECKPOINT_EVERY:
                self._quick = 0
                await _checkpoint()
            return
        view = memoryview(data)[sent:]
        if timer is not None:
            timer.arm(seconds, _WRITE)
        try:
            while view:
                try:
                    await _wait_writable(sock)
                    sent = sock.send(view)
                except BlockingIOError:
                    continue
                except (trio.ClosedResourceError, OSError) as exc:
                    raise BrokenTransport(str(exc) or type(exc).__name__) from None
                view = view[sent:]
        finally:
            if timer is not None:
                timer.disarm()
        self._quick = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def input_pending(self) -> bool:
        return socket_input_pending(self.sock)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class StreamTransport:
    """A trio stream (an `SSLStream` over a socket) behind the same interface."""

    __slots__ = ("stream", "_socket", "closed")

    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType) -> None:
        self.stream = stream
        self._socket = sock
        self.closed = False

    async def receive(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(READ_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return b""

    async def receive_after_wait(self) -> bytes:
        return await self.receive()  # TLS may hold decrypted bytes: never wait first

    async def send_all(self, data: bytes, timer: Timer | None = None, seconds: float = 0.0) -> None:
        if timer is not None:
            timer.arm(seconds, _WRITE)
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise BrokenTransport(str(exc) or type(exc).__name__) from None
        finally:
            if timer is not None:
                timer.disarm()

    def fileno(self) -> int:
        return self._socket.fileno()

    def input_pending(self) -> bool:
        poller = select.poll()  # a trio socket cannot be peeked without awaiting
        poller.register(self._socket.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._socket.close()  # trio's socket close wakes its waiters


# A name for annotations only (a string at run time): `tls_transport` builds on this module.
Transport: TypeAlias = "SocketTransport | StreamTransport | TlsTransport"
