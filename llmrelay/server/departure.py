"""Noticing that a client left while its request is still being answered.

A request still in flight `WATCH_AFTER` seconds after it was received whole gets a watcher task that
waits for the client socket to turn readable: end of stream means the client left, and the
connection's `on_gone` cancels the exchange at once, so the upstream request is closed and the
provider stops generating. Quick requests never pay for a watcher, nor do streams whose events keep
flowing (a departed client makes their sends fail); bytes that arrive instead are the next pipelined
request and stay in the kernel for later.

On a TLS connection the kernel's bytes are records, not requests (a TLS 1.3 close_notify looks like
data), so the watcher reads through the TLS transport instead (`receive_after_wait`: it waits on the
raw socket first, like the plain watcher, unless the TLS object already holds input): end of stream
means gone, and decrypted bytes (a pipelined request) go to the connection's parser (`on_data`) for
later. Cancelling a TLS read loses nothing: what was read from the socket is already in the TLS object.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import trio

from llmrelay.io.timers import Timer, TimerReason, TimerWheel
from llmrelay.io.transport import SocketTransport, Transport
from llmrelay.proto.h1.server import ServerExchange, finished

WATCH_AFTER = 0.05
_WATCH = TimerReason.WATCH


class DepartureWatcher:
    __slots__ = ("_timer", "_transport", "_nursery", "_on_gone", "_on_data", "_exchange", "_mark", "_scope", "_done")

    def __init__(
        self,
        wheel: TimerWheel,
        transport: Transport,
        nursery: trio.Nursery | None,
        on_gone: Callable[[ServerExchange], None],
        on_data: Callable[[bytes], None] | None = None,
    ) -> None:
        self._timer: Timer = wheel.timer(self._start)
        self._transport = transport
        self._nursery = nursery  # the owner of watcher tasks (None: no watching)
        self._on_gone = on_gone
        self._on_data = on_data  # where bytes read through a TLS stream go (the next request's)
        self._exchange: ServerExchange | None = None
        self._mark = 0
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None

    def watch_soon(self, exchange: ServerExchange) -> None:
        """`exchange`'s request is complete: watch for the client leaving if the answer takes a while."""
        self._exchange = exchange
        self._mark = exchange.sends
        self._timer.arm(WATCH_AFTER, _WATCH)

    def _start(self, _reason: TimerReason) -> None:
        exchange = self._exchange
        if exchange is None or finished(exchange) or self._nursery is None:
            return
        if self._scope is not None or self._transport.closed:
            return
        if exchange.sends != self._mark:
            # Still sending (a stream's events flow): a departed client shows as a failed send soon
            # enough. Look again one period later.
            self._mark = exchange.sends
            self._timer.arm(WATCH_AFTER, _WATCH)
            return
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        self._nursery.start_soon(self._watch, exchange, self._scope, self._done)

    async def _watch(self, exchange: ServerExchange, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                transport = self._transport
                if isinstance(transport, SocketTransport):
                    sock = transport.sock
                    try:
                        await trio.lowlevel.wait_readable(sock)
                        peeked = sock.recv(1, socket.MSG_PEEK)
                    except (OSError, trio.ClosedResourceError):
                        peeked = b""
                else:
                    peeked = await transport.receive_after_wait()
                    if peeked and self._on_data is not None:
                        self._on_data(peeked)
                if not peeked and self._exchange is exchange and not finished(exchange):
                    exchange.client_gone = True
                    self._on_gone(exchange)
        finally:
            done.set()

    @property
    def running(self) -> bool:
        """Whether a watcher task runs (`stop()` must then be awaited; `cancel()` suffices otherwise)."""
        return self._scope is not None

    async def stop(self) -> None:
        """The exchange is over: no more watching (waits for a running watcher to finish)."""
        self._timer.disarm()
        self._exchange = None
        if self._scope is not None and self._done is not None:
            self._scope.cancel()
            await self._done.wait()
        self._scope = None
        self._done = None

    def cancel(self) -> None:
        """The connection ends: stop at once, without waiting."""
        self._timer.disarm()
        self._exchange = None
        if self._scope is not None:
            self._scope.cancel()
