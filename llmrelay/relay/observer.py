"""Passive upstream health, as one worker sees it: failures, recoveries and refused keys, queued for
the supervisor.

The relay calls `failure()` when an attempt on an upstream fails (cannot connect, times out, answers
garbage or a 5xx, a stream cut) and `success()` otherwise; `key_refused()` when the provider refused
the injected key (429 cooling it, 401/403 disabling it). Only failures, refused keys and the first
success after a failure become events, so a healthy upstream costs nothing on the control pipe. The
supervisor merges the events of every worker into one table (see `supervisor.health`).

A 401 to a key whose `$(command)` the supervisor can re-run (`refresh_interval`) is not a disabled key
at first: `ask_key_refresh()` asks for a re-run and hands the request an event that `key_updated()`
sets when the supervisor's answer (a KeyUpdate) arrives; asks for one key while one is pending share it.
"""

from __future__ import annotations

import time

import trio

from llmrelay.control import KeyEvent, KeyRefreshAsk, UpstreamEvent

FAILURE_STATUSES = frozenset({500, 502, 503, 504, 529})
QUEUE_SIZE = 1024
ASK_AGAIN_AFTER = 15.0  # seconds: an ask without an answer by then (dropped, or its answer lost) is made again


class UpstreamObserver:
    def __init__(self) -> None:
        self._send, self.events = trio.open_memory_channel[UpstreamEvent | KeyEvent | KeyRefreshAsk](QUEUE_SIZE)
        # (endpoint, upstream, key) asked to be refreshed -> (the event its answer sets, when asked)
        self._refreshes: dict[tuple[str, str, int], tuple[trio.Event, float]] = {}
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

    def ask_key_refresh(self, generation: int, endpoint: str, upstream: str, key: int) -> trio.Event:
        """Ask the supervisor to re-run the key's command; the event is set when it answers."""
        asked = (endpoint, upstream, key)
        now = time.monotonic()
        pending = self._refreshes.get(asked)
        if pending is not None and now - pending[1] < ASK_AGAIN_AFTER:
            return pending[0]
        if pending is not None:
            pending[0].set()  # (its waiters gave up long ago)
        event = trio.Event()
        self._refreshes[asked] = (event, now)
        self._offer(KeyRefreshAsk(generation=generation, endpoint=endpoint, upstream=upstream, key=key))
        return event

    def key_updated(self, endpoint: str, upstream: str, key: int) -> None:
        """The supervisor sent the key's current value: wake the requests waiting for it."""
        pending = self._refreshes.pop((endpoint, upstream, key), None)
        if pending is not None:
            pending[0].set()

    def shared_view(self, failing: set[tuple[str, str]]) -> None:
        """The supervisor's table counts failures for these upstreams: report the next success."""
        self.failing |= failing

    def _offer(self, event: UpstreamEvent | KeyEvent | KeyRefreshAsk) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            pass  # the supervisor is behind; a later event carries the same news
