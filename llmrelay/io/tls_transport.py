"""TLS over a non-blocking socket, driven the way `SocketTransport` drives a plain one.

`trio.SSLStream` runs every call through a general retry loop (locks, conflict detectors, checkpoints,
a round trip through its transport stream for each record): on a keep-alive HTTP/1.1 request that is
some 40 µs of CPU, more than the encryption itself. Here an `ssl.SSLObject` sits between two memory
BIOs and this class moves bytes between them and the socket:

- `receive()` returns decrypted bytes the TLS object already holds; only when it has none does it read
  the socket into the incoming BIO, and only when the socket has nothing does it wait for readability.
- `send_all()` encrypts into the outgoing BIO and hands its bytes to one `send`; it waits for
  writability only when the kernel's buffer is full (arming the write timer only then).
  `send_now()` is its first half alone, for a caller that enters a cancel scope only when it must
  wait: it says whether everything left, and `finish_send()` then sends what did not.
- `input_pending()` (is an idle connection still clean?) lets the TLS object process what has
  arrived: records without data (TLS 1.3 session tickets, which a server may send after its first
  answer, a KeyUpdate) are not input, and data it finds is kept for the next `receive()`.
- Calls that did not wait checkpoint once every few calls, before touching anything, so that a
  cancellation there consumes nothing.

One receiving task and one sending task may use a transport at once (HTTP/2's reader and writer); two
senders may not. No method awaits between using the TLS object and moving its output, so each sees a
consistent state, and what the receiving side makes OpenSSL write (a TLS 1.3 KeyUpdate answer) goes
out at once when no send is waiting, or right after the waiting send's bytes, never inside them.

End of stream is what trio's `https_compatible=True` makes it: a close_notify, a peer that closes
without one, a reset, a broken record: `receive()` returns b"" for all of them (for a relay each means
the peer is gone). `close()` sends a close_notify if the kernel takes it at once, and never waits.

Cancellation: bytes read from the socket go into the TLS object before any await, so a cancelled
`receive()` loses nothing; the next call finds them. A `send_all()` cancelled while waiting keeps its
encrypted remainder for the next send (the TLS record stream stays whole), but the caller does not
know how much of its message went out: at the protocol level the connection is unusable, as with a
cancelled `trio.SSLStream.send_all`.
"""

from __future__ import annotations

import socket
import ssl

import trio

from llmrelay.io.timers import Timer, TimerReason
from llmrelay.io.transport import CHECKPOINT_EVERY, READ_SIZE, BrokenTransport

_WRITE = TimerReason.WRITE
_SLICE = 65536  # plaintext encrypted per step of a large send: bounds the ciphertext held at once
_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
_checkpoint = trio.lowlevel.checkpoint
_WantRead = ssl.SSLWantReadError
_SSLError = ssl.SSLError
_NOTHING = memoryview(b"")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class TlsTransport:
    """A TLS connection on `sock`, client side (`server_hostname` is then checked against the
    certificate exactly as the context says, as `trio.SSLStream` with that context would) or server
    side. `await handshake()` before anything else."""

    __slots__ = (
        "sock",
        "closed",
        "_ssl",
        "_incoming",
        "_outgoing",
        "_backlog",
        "_sending",
        "_handshaken",
        "_ended",
        "_quick",
        "_held",
        "_unsent",
    )

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.closed = False
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname)
        self._backlog = b""  # encrypted bytes that go out before anything else
        self._sending = False  # a send waits for the socket: others leave their bytes in the outgoing BIO
        self._handshaken = False
        self._ended = False  # the peer's end of stream was seen: never read the socket again
        self._quick = 0
        self._held = b""  # data `input_pending()` decrypted: the next receive returns it first
        self._unsent = _NOTHING  # plaintext `send_now()` did not encrypt yet, for `finish_send()`

    # -- handshake ---------------------------------------------------------------------------------
    async def handshake(self) -> None:
        """Run the TLS handshake. Raises `ssl.SSLError` when TLS fails (`ssl.SSLCertVerificationError`
        client side for a certificate that does not verify, `ssl.SSLEOFError` when the peer leaves
        mid-way) and `BrokenTransport` when the socket fails or the transport is closed under it."""
        sslobj = self._ssl
        while True:
            try:
                sslobj.do_handshake()
                break
            except _WantRead:
                pass
            except _SSLError:
                self._flush_nowait()  # the alert, so that the peer learns why
                raise
            await self._send_rest(memoryview(self._take_outgoing()), _NOTHING, None, 0.0)
            await self._fill_for_handshake()
        self._handshaken = True
        if sslobj.server_side and sslobj.version() == "TLSv1.3":
            # OpenSSL writes the session tickets once the client's Finished is in; sent now they could
            # reach a client that does not read yet (trio #819). They go with the first answer.
            self._backlog = self._take_outgoing()
        else:
            await self._send_rest(memoryview(self._take_outgoing()), _NOTHING, None, 0.0)

    async def _fill_for_handshake(self) -> None:
        sock = self.sock
        while True:
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                try:
                    await _wait_readable(sock)
                except (trio.ClosedResourceError, OSError):
                    raise BrokenTransport("closed during the TLS handshake") from None
                continue
            except OSError as exc:
                raise BrokenTransport(_reason(exc)) from None
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()  # OpenSSL then reports the unexpected end as SSLEOFError
            return

    def selected_alpn_protocol(self) -> str | None:
        return self._ssl.selected_alpn_protocol()

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The TLS state (peer certificate, version, cipher): for reading, not for I/O."""
        return self._ssl

    # -- receiving ---------------------------------------------------------------------------------
    async def receive(self) -> bytes:
        if self._quick >= CHECKPOINT_EVERY:
            self._quick = 0
            await _checkpoint()
        held = self._held
        if held:
            self._held = b""
            self._quick += 1
            return held
        sslobj = self._ssl
        incoming = self._incoming
        if not incoming.pending and not sslobj.pending() and not self._ended:
            # Nothing buffered: read the socket first rather than pay for a failing TLS read.
            try:
                data = self.sock.recv(READ_SIZE)
            except BlockingIOError:
                if not await self._fill():
                    return self._end()
            except OSError:
                return self._end()
            else:
                if not data:
                    return self._end()
                incoming.write(data)
        while True:
            try:
                data = sslobj.read(READ_SIZE)
            except _WantRead:  # a partial record, or only records without data (tickets, KeyUpdate)
                if self._outgoing.pending:
                    self._flush_nowait()
                if not await self._fill():
                    return self._end()
                continue
            except _SSLError:  # close_notify seen before, a truncated stream, a broken record
                return self._end()
            if not data:  # close_notify
                return self._end()
            if incoming.pending and len(data) < READ_SIZE:
                data = self._read_more(data)
            self._quick += 1
            return data

    async def receive_after_wait(self) -> bytes:
        """Like `receive()`, for a peer that has just been read dry and sends in bursts: wait for the
        socket first, unless the TLS object already holds input."""
        if not self._held and not self._incoming.pending and not self._ssl.pending() and not self._ended:
            try:
                await _wait_readable(self.sock)
            except (trio.ClosedResourceError, OSError):
                return self._end()
            self._quick = 0
        return await self.receive()

    async def _fill(self) -> bool:
        """Wait until the socket has bytes and put them in the incoming BIO; False at its end of
        stream, when it fails, or when the transport is closed."""
        sock = self.sock
        while True:
            try:
                await _wait_readable(sock)
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except (trio.ClosedResourceError, OSError):
                return False
            self._quick = 0
            if not data:
                return False
            self._incoming.write(data)
            return True

    def _read_more(self, data: bytes) -> bytes:
        """Further whole records already in the incoming BIO (a pipelined request, a bulk transfer):
        one return instead of one per 16 KiB record."""
        parts = [data]
        size = len(data)
        sslobj = self._ssl
        while size < READ_SIZE:
            try:
                more = sslobj.read(READ_SIZE - size)
            except _WantRead:
                break
            except _SSLError:
                self._ended = True  # (the next receive reports it)
                break
            if not more:
                self._ended = True
                break
            parts.append(more)
            size += len(more)
        return b"".join(parts)

    def _end(self) -> bytes:
        self._ended = True
        return b""

    # -- sending -----------------------------------------------------------------------------------
    async def send_all(self, data: bytes, timer: Timer | None = None, seconds: float = 0.0) -> None:
        """Send everything; when the kernel's buffer is full, arm `timer` for `seconds` while waiting.
        One sender at a time."""
        if self._quick >= CHECKPOINT_EVERY:
            self._quick = 0
            await _checkpoint()
        if len(data) > _SLICE:
            await self._send_rest(_NOTHING, memoryview(data), timer, seconds)
            return
        if not data:
            return  # (SSLObject.write(b"") would mean something else)
        try:
            self._ssl.write(data)
        except _SSLError as exc:
            raise BrokenTransport(_reason(exc)) from None
        out = self._take_outgoing()
        try:
            sent = self.sock.send(out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise BrokenTransport(_reason(exc)) from None
        if sent == len(out):
            self._quick += 1
            return
        await self._send_rest(memoryview(out)[sent:], _NOTHING, timer, seconds)

    def send_now(self, data: bytes) -> bool:
        """Encrypt `data` and send what the kernel takes without waiting: True when all of it left.
        False: the rest (encrypted or not yet) waits in the transport, and `finish_send()` must send
        it before anything else is sent. Raises BrokenTransport. One sender at a time."""
        view = memoryview(data)
        sock = self.sock
        while view:
            try:
                self._ssl.write(view[:_SLICE])  # (a slice at a time, as in `_send_rest`)
            except _SSLError as exc:
                raise BrokenTransport(_reason(exc)) from None
            view = view[_SLICE:]
            out = self._take_outgoing()
            try:
                sent = sock.send(out)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise BrokenTransport(_reason(exc)) from None
            if sent < len(out):
                self._backlog = out[sent:]
                self._unsent = view
                return False
        return True

    async def finish_send(self, timer: Timer | None = None, seconds: float = 0.0) -> None:
        """Send what `send_now()` left, waiting for the socket; `timer` as in `send_all()`."""
        plain = self._unsent
        self._unsent = _NOTHING
        await self._send_rest(memoryview(self._take_outgoing()), plain, timer, seconds)

    async def _send_rest(self, view: memoryview, plain: memoryview, timer: Timer | None, seconds: float) -> None:
        """Send `view` (encrypted), then `plain` encrypted a slice at a time, then whatever the
        receiving side left in the outgoing BIO meanwhile, waiting for the socket when it is full."""
        sock = self.sock
        armed = False
        waited = False
        self._sending = True
        try:
            while True:
                while view:
                    try:
                        sent = sock.send(view)
                    except BlockingIOError:
                        if timer is not None and not armed:
                            timer.arm(seconds, _WRITE)
                            armed = True
                        try:
                            await _wait_writable(sock)
                        except (trio.ClosedResourceError, OSError) as exc:
                            raise BrokenTransport(str(exc) or type(exc).__name__) from None
                        waited = True
                        continue
                    except OSError as exc:
                        raise BrokenTransport(_reason(exc)) from None
                    view = view[sent:]
                if plain:
                    try:
                        self._ssl.write(plain[:_SLICE])
                    except _SSLError as exc:
                        raise BrokenTransport(_reason(exc)) from None
                    plain = plain[_SLICE:]
                    view = memoryview(self._take_outgoing())
                elif self._outgoing.pending:
                    view = memoryview(self._outgoing.read())
                else:
                    break
        finally:
            self._sending = False
            if view:
                self._backlog = bytes(view) + self._backlog  # (cancelled: these go first next time)
            if armed and timer is not None:
                timer.disarm()
        if waited:
            self._quick = 0
        else:
            self._quick += 1

    def _take_outgoing(self) -> bytes:
        out = self._outgoing.read()
        if self._backlog:
            out = self._backlog + out
            self._backlog = b""
        return out

    def _flush_nowait(self) -> None:
        """Send what OpenSSL wrote outside `send_all()` (an alert, a KeyUpdate answer) if no send is
        waiting (that one sends it after its own bytes); what the kernel does not take stays first
        in line."""
        if self._sending:
            return
        out = self._take_outgoing()
        if not out:
            return
        try:
            sent = self.sock.send(out)
        except OSError:  # (BlockingIOError included: the next send takes it)
            sent = 0
        self._backlog = out[sent:]

    # -- state -------------------------------------------------------------------------------------
    def fileno(self) -> int:
        return self.sock.fileno()

    def input_pending(self) -> bool:
        """Whether application data or an end of stream waits to be read, for an idle connection (not
        while a `receive()` is under way). What the kernel holds goes through the TLS object now, so
        that records without data do not count: a TLS 1.3 server may send session tickets after its
        answer, and a pooled connection that looked used up by them would never be reused. Data found
        is kept for the next `receive()`."""
        if self._held or self._ended or self._ssl.pending():
            return True
        sslobj = self._ssl
        incoming = self._incoming
        while True:
            if incoming.pending or incoming.eof:
                try:
                    held = sslobj.read(READ_SIZE)
                except _WantRead:  # only records without data so far, or part of one
                    if incoming.eof:  # (cut short by the end: OpenSSL reports that, but never loop)
                        self._ended = True
                        return True
                except _SSLError:  # a truncated stream, a broken record
                    self._ended = True
                    return True
                else:
                    if not held:  # close_notify
                        self._ended = True
                        return True
                    self._held = held
                    return True
            try:
                data = self.sock.recv(READ_SIZE)
            except BlockingIOError:  # (the usual case: one failing recv, as cheap as a peek)
                if self._outgoing.pending:
                    self._flush_nowait()  # (a KeyUpdate answer)
                return False
            except OSError:  # reset, or closed under us: as good as gone
                self._ended = True
                return True
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()  # (a read then reports it, after any whole records before it)

    def close(self) -> None:
        """Close at once: a close_notify goes out first if the kernel takes it without waiting (not
        in the middle of a waiting send, whose record it would cut), then the socket closes and any
        task waiting on it wakes up."""
        if self.closed:
            return
        self.closed = True
        if self._handshaken and not self._sending:
            try:
                self._ssl.unwrap()
            except (_SSLError, ValueError):
                pass  # (SSLWantReadError: the peer's close_notify is not in, which we do not wait for)
            self._flush_nowait()
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()
