"""Passive upstream health, as one worker sees it: failures, recoveries and refused keys, queued for
the supervisor.

The relay calls `failure()` when an attempt on an upstream fails (cannot connect, times out, answers
garbage or a 5xx, a stream cut) and `success()` otherwise; `key_refused()` when the provider refused
the injected key (429 cooling it, 401/403 disabling it). Only failures, refused keys and the first
success after a failure become events, so a healthy upstream costs nothing on the control pipe. The
supervisor merges the events of every worker into one table (see `supervisor.health`).
"""

from __future__ import annotations

import trio

from llmrelay.control import KeyEvent, UpstreamEvent

FAILURE_STATUSES = frozenset({500, 502, 503, 504, 529})
QUEUE_SIZE = 1024


class UpstreamObserver:
    def __init__(self) -> None:
        self._send, self.events = trio.open_memory_channel[UpstreamEvent | KeyEvent](QUEUE_SIZE)
        # (endpoint, upstream) that failed here since their last success, or not ok in the shared view;
        # while it is empty, a success is no news (the relay skips reporting it)
        self.failing: set[tuple[str, str]] = set()

    def failure(self, endpoint: str, upstream: str, reason: str) -> None:
        self.failing.add((endpoint, upstream))
        self._offer(UpstreamEvent(endpoint=endpoint, upstream=upstream, ok=False, reason=reason))

    def success(self, endpoint: str, upstream: str) -> None:
        if self.failing and (endpoint, upstream) in self.failing:
            self.failing.discard((endpoint, upstream))
            self._offer(UpstreamEvent(endpoint=endpoint, upstream=upstream, ok=True))

    def key_refused(
        self, generation: int, endpoint: str, upstream: str, key: int, status: int, disabled: bool, until: float
    ) -> None:
        self._offer(
            KeyEvent(
                endpoint=endpoint,
                upstream=upstream,
                key=key,
                status=status,
                generation=generation,
                disabled=disabled,
                until=until,
            )
        )

    def shared_view(self, failing: set[tuple[str, str]]) -> None:
        """The supervisor's table counts failures for these upstreams: report the next success."""
        self.failing |= failing

    def _offer(self, event: UpstreamEvent | KeyEvent) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            pass  # the supervisor is behind; a later event carries the same news
