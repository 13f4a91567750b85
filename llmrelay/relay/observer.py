"""Passive upstream health, as one worker sees it: failures and recoveries, queued for the supervisor.

The relay calls `failure()` when an upstream request fails (cannot connect, times out, answers
garbage or a 5xx) and `success()` otherwise. Only failures and the first success after a failure
become events, so a healthy endpoint costs nothing on the control pipe. The supervisor merges the
events of every worker into one table (see `supervisor.health`).
"""

from __future__ import annotations

import trio

from llmrelay.control import UpstreamEvent

FAILURE_STATUSES = frozenset({500, 502, 503, 504, 529})
QUEUE_SIZE = 1024


class UpstreamObserver:
    def __init__(self) -> None:
        self._send, self.events = trio.open_memory_channel[UpstreamEvent](QUEUE_SIZE)
        self._failing: set[str] = set()  # failed here since the last success, or failing in the shared view

    def failure(self, endpoint: str, reason: str) -> None:
        self._failing.add(endpoint)
        self._offer(UpstreamEvent(endpoint=endpoint, ok=False, reason=reason))

    def success(self, endpoint: str) -> None:
        if endpoint in self._failing:
            self._failing.discard(endpoint)
            self._offer(UpstreamEvent(endpoint=endpoint, ok=True))

    def shared_view(self, failing: set[str]) -> None:
        """The supervisor's table counts failures for these endpoints: report the next success."""
        self._failing |= failing

    def _offer(self, event: UpstreamEvent) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            pass  # the supervisor is behind; a later event carries the same news
