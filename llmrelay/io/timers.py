"""Coarse deadlines for the hot path: arming one is an attribute write, not a cancel scope.

A trio cancel scope with a deadline costs several microseconds to enter and leave, and a relayed
request would need one per operation (header, body, write, connect, first byte, every body chunk).
Instead each connection owns a `Timer`; arming it stores a deadline, and one sweeper task per trio run
(`TimerWheel`) wakes every `TICK` seconds, looks only at the timers whose bucket is due, and calls the
action of those really expired. An action closes a transport or cancels the owner's scope, so the
task waiting on it wakes up and reads `timer.fired` to tell a timeout from a failure. Timeouts fire up
to one tick late, which is what seconds-scale timeouts allow (nginx's timers are as coarse).
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from time import monotonic

import trio

from llmrelay.io.logsafe import describe

log = logging.getLogger("llmrelay.timers")


class TimerReason(enum.Enum):
    """Why a timer was armed: what a connection was waiting for when its deadline passed."""

    HEADER = "header"  # a request head (client side)
    BODY = "body"  # the next piece of a request body
    IDLE = "idle"  # a next request on a keep-alive connection; the next chunk of an upstream body
    WRITE = "write"  # the peer to take what is being sent
    WATCH = "watch"  # when to start watching a quiet client (not a timeout)
    FIRST_BYTE = "first_byte"  # an upstream response head

TICK = 0.1
_INF = math.inf
_RUN_WHEEL: trio.lowlevel.RunVar[TimerWheel] = trio.lowlevel.RunVar("llmrelay_timer_wheel")


class Timer:
    """One deadline with an action, re-armed as its owner moves from one wait to the next."""

    __slots__ = ("_wheel", "_action", "deadline", "reason", "fired", "_bucket")

    def __init__(self, wheel: TimerWheel, action: Callable[[TimerReason], None]) -> None:
        self._wheel = wheel
        self._action = action
        self.deadline = _INF
        self.reason = TimerReason.IDLE  # what the timer was last armed for
        self.fired: TimerReason | None = None  # the reason of the expiry that fired, None while none did
        self._bucket = -1  # the wheel bucket this timer sits in, -1 when in none

    def arm(self, seconds: float, reason: TimerReason) -> None:
        deadline = monotonic() + seconds
        self.deadline = deadline
        self.reason = reason
        bucket = int(deadline / TICK) + 1
        if self._bucket < 0 or bucket < self._bucket:
            self._wheel._push(self, bucket)

    def disarm(self) -> None:
        self.deadline = _INF

    def _fire(self) -> None:
        self.fired = self.reason
        self.deadline = _INF
        try:
            self._action(self.reason)
        except Exception as exc:  # an action must never take the sweeper down
            log.error("timer action failed: %s", describe(exc))
            log.debug("traceback of that failure", exc_info=True)


class TimerWheel:
    """The timers of one trio run, in buckets of `TICK` seconds, swept by one system task."""

    def __init__(self) -> None:
        self._buckets: dict[int, list[Timer]] = {}
        self._cursor = int(monotonic() / TICK)

    def timer(self, action: Callable[[TimerReason], None]) -> Timer:
        return Timer(self, action)

    def _push(self, timer: Timer, bucket: int) -> None:
        if bucket < self._cursor:
            bucket = self._cursor
        timer._bucket = bucket
        entries = self._buckets.get(bucket)
        if entries is None:
            self._buckets[bucket] = [timer]
        else:
            entries.append(timer)

    def sweep(self, now: float) -> None:
        """Fire every timer whose deadline is at or before `now`; re-file the ones pushed later."""
        last = int(now / TICK)
        first = self._cursor
        self._cursor = last + 1  # an action that re-arms its timer files it after this sweep
        for key in range(first, last + 1):
            entries = self._buckets.pop(key, None)
            if not entries:
                continue
            for timer in entries:
                if timer._bucket != key:
                    continue  # re-filed into an earlier bucket since; this entry is stale
                timer._bucket = -1
                if timer.deadline <= now:
                    timer._fire()
                elif timer.deadline != _INF:
                    self._push(timer, int(timer.deadline / TICK) + 1)

    async def run(self) -> None:
        while True:
            await trio.sleep(TICK)
            self.sweep(monotonic())


def wheel() -> TimerWheel:
    """The timer wheel of the current trio run (started on first use)."""
    try:
        return _RUN_WHEEL.get()
    except LookupError:
        current = TimerWheel()
        _RUN_WHEEL.set(current)
        trio.lowlevel.spawn_system_task(current.run, name="llmrelay timer wheel")
        return current
