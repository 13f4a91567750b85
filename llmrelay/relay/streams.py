"""Responses in flight, so that a draining worker can keep them alive and, at its deadline, end them
honestly.

Every relayed response registers an `ActiveResponse` with the worker's `ResponseRegistry`. While the
worker drains, an SSE response that has been quiet for `keepalive_interval` gets an SSE comment
(`: keepalive`) at an event boundary, so load balancers do not cut an idle stream. When the drain
deadline passes, `cut_all()` interrupts every response (closes its upstream connection); the relay
then ends each one with an error event in the provider's format (never a fake clean end) and closes
the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic
from typing import Protocol

import trio

from llmrelay.observe.usage import UsageReader, whole_body_usage
from llmrelay.proto.errors import ClientDisconnected
from llmrelay.proto.messages import Headers, InvalidPhase
from llmrelay.server.exchange import Exchange

log = logging.getLogger("llmrelay.relay")

KEEPALIVE_COMMENT = b": keepalive\n\n"
_EVENT_ENDINGS = (b"\n\n", b"\r\n\r\n", b"\r\r")


class ChunkRewrite(Protocol):
    """Changes a response body as it passes, holding back at most an incomplete event."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class ActiveResponse:
    """One response being relayed: how to interrupt it, and where its byte stream stands."""

    __slots__ = (
        "exchange", "interrupt", "cut_by_drain", "sse", "at_event_boundary", "last_send", "sending", "events", "_cr_lf",
        "_usage", "_whole", "extra_headers", "rewrite",
    )

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.interrupt: Callable[[], None] | None = None  # closes the upstream connection
        self.cut_by_drain = False
        self.sse = False
        self.at_event_boundary = True
        self.last_send = monotonic()
        self.sending = False  # a send is under way: a keep-alive comment must wait for the next round
        self.events = 0  # SSE events relayed (ends of events counted; keep-alive comments are not)
        self._cr_lf = b""  # the line-break bytes a previous chunk ended with (an event end may straddle)
        self._usage: UsageReader | None = None  # reads the provider's token usage from what passed
        self._whole: bytes | None = None  # a JSON body that came in one piece (its usage read at the end)
        self.extra_headers: Headers = []  # added to the response head (the relay's x-ratelimit-*)
        self.rewrite: ChunkRewrite | None = None  # changes the body on its way (usage the client did not ask for)

    async def send(self, chunk: bytes) -> None:
        """Send a body chunk (the relay's task is the only one that sends while this is set)."""
        out = chunk if self.rewrite is None else self.rewrite.feed(chunk)
        if out:
            self.sending = True
            try:
                await self.exchange.send_body(out)
            finally:
                self.sending = False
            self.last_send = monotonic()
            if self.sse:
                self.at_event_boundary = out.endswith(_EVENT_ENDINGS)
                self._count_events(out)
        usage = self._usage
        if usage is None:
            usage = self._usage = UsageReader(self.sse)
        usage.feed(chunk)  # (what the provider sent: its usage, even where the client does not see it)

    async def end(self, chunk: bytes, trailers: Headers | None = None) -> None:
        """Send the last bytes of the response (and its trailers) and end it."""
        out = chunk if self.rewrite is None else self.rewrite.feed(chunk) + self.rewrite.finish()
        await self.exchange.end(out, trailers)
        if out and self.sse:
            self._count_events(out)
        if chunk:
            if self._usage is None:
                if not self.sse:  # (the whole body in one piece, the usual JSON answer: read at once)
                    self._whole = chunk
                    return
                self._usage = UsageReader(self.sse)
            self._usage.feed(chunk)

    def usage(self) -> dict[str, int] | None:
        """Tokens by kind, as the provider reported them in the response (None: it did not)."""
        if self._whole is not None:
            return whole_body_usage(self._whole)
        return None if self._usage is None else self._usage.result()

    def _count_events(self, chunk: bytes) -> None:
        """Count the ends of events in `chunk`, and the one that straddles it and the previous chunk."""
        count = chunk.count(b"\n\n") or chunk.count(b"\r\n\r\n")
        previous = self._cr_lf
        if previous:
            joined = previous + chunk[:3]
            cut = len(previous)  # an event end that starts before the cut and ends after it
            for ending in (b"\n\n", b"\r\n\r\n"):
                at = joined.find(ending)
                if 0 <= at < cut < at + len(ending):
                    count += 1
                    break
        self._cr_lf = chunk[len(chunk.rstrip(b"\r\n")) :][-3:]
        self.events += count

    def wants_keepalive(self, now: float, interval: float) -> bool:
        return self.sse and self.at_event_boundary and now - self.last_send >= interval and not self.sending

    async def send_keepalive(self) -> None:
        if self.sending:
            return  # the stream is sending anyway
        self.sending = True
        try:
            await self.exchange.send_body(KEEPALIVE_COMMENT)
            self.last_send = monotonic()
        except (ClientDisconnected, InvalidPhase):
            pass  # the relay's own send notices too (or the response ended meanwhile)
        finally:
            self.sending = False


class ResponseRegistry:
    def __init__(self, keepalive_interval: float = 15.0) -> None:
        self.keepalive_interval = keepalive_interval
        self._active: set[ActiveResponse] = set()

    def add(self, response: ActiveResponse) -> None:
        self._active.add(response)

    def discard(self, response: ActiveResponse) -> None:
        self._active.discard(response)

    async def keepalive_loop(self) -> None:
        """While draining: an SSE comment on every stream quiet for `keepalive_interval`."""
        step = min(1.0, self.keepalive_interval / 4)
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(step)
                now = monotonic()
                for response in list(self._active):
                    if response.wants_keepalive(now, self.keepalive_interval):
                        nursery.start_soon(response.send_keepalive)

    def cut_all(self) -> int:
        """Cancel every response in flight (the drain deadline passed); return how many."""
        for response in list(self._active):
            response.cut_by_drain = True
            if response.interrupt is not None:
                response.interrupt()
        return len(self._active)
