"""An exchange whose response heads are edited on the way out (CORS headers, response header
processors): every head the relay sends through it, and the errors the protocol driver answers by
itself, get the same edit. Body bytes go straight to the wrapped exchange (no wrapper per chunk)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from llmrelay.io.timers import TimerReason
from llmrelay.proto.messages import Headers, RequestHead, ResponsePhase
from llmrelay.server.exchange import ErrorFormat, Exchange, Tunnel


def edit_head(headers: Headers, removed: frozenset[bytes], added: Headers) -> Headers:
    """`headers` without the fields named in `removed`, then `added`."""
    return [field for field in headers if field[0] not in removed] + added


class EditedExchange:
    __slots__ = ("_inner", "_removed", "_added", "head", "receive_body", "send_body", "end", "flush", "abort", "close_when_done")

    def __init__(self, inner: Exchange, removed: frozenset[bytes], added: Headers) -> None:
        self._inner = inner
        self._removed = removed
        self._added = added
        self.head: RequestHead = inner.head
        self.receive_body: Callable[[], Coroutine[Any, Any, bytes]] = inner.receive_body
        self.send_body: Callable[[bytes], Coroutine[Any, Any, None]] = inner.send_body
        self.end: Callable[..., Coroutine[Any, Any, None]] = inner.end
        self.flush: Callable[[], Coroutine[Any, Any, None]] = inner.flush
        self.abort: Callable[[], Coroutine[Any, Any, None]] = inner.abort
        self.close_when_done: Callable[[], None] = inner.close_when_done
        inner.error_format = self._edited_format(inner.error_format)

    def _edited_format(self, format: ErrorFormat) -> ErrorFormat:
        def edited(status: int, message: str) -> tuple[Headers, bytes]:
            headers, body = format(status, message)
            return edit_head(headers, self._removed, self._added), body

        return edited

    @property
    def phase(self) -> ResponsePhase:
        return self._inner.phase

    @phase.setter
    def phase(self, phase: ResponsePhase) -> None:
        self._inner.phase = phase

    @property
    def body_complete(self) -> bool:
        return self._inner.body_complete

    @body_complete.setter
    def body_complete(self, value: bool) -> None:
        self._inner.body_complete = value

    @property
    def error_format(self) -> ErrorFormat:
        return self._inner.error_format

    @error_format.setter
    def error_format(self, format: ErrorFormat) -> None:
        self._inner.error_format = self._edited_format(format)

    @property
    def timed_out(self) -> TimerReason | None:
        return self._inner.timed_out

    @timed_out.setter
    def timed_out(self, value: TimerReason | None) -> None:
        self._inner.timed_out = value

    async def send_head(self, status: int, headers: Headers) -> None:
        await self._inner.send_head(status, edit_head(headers, self._removed, self._added))

    async def open_tunnel(self, status: int, headers: Headers) -> Tunnel:
        return await self._inner.open_tunnel(status, edit_head(headers, self._removed, self._added))
