"""The arithmetic of one counter's dimensions (see `limits.types`): a per-minute bucket, a UTC-day
budget and a concurrency count, each knowing what it has left and how long a caller must wait.

Every method takes `now` (unix wall-clock seconds) from its caller and never reads a clock, so the
same numbers come out in tests with a fake clock, in the supervisor's ledger and in a worker. A clock
that steps backwards is taken as "no time passed" rather than as a refill in reverse.
"""

from __future__ import annotations

import math

DAY = 86400.0
# Float refills accumulate rounding error (10 units refilled in 60 steps of 1/6 may sum to
# 9.999999999); amounts are compared with this slack so that a full bucket is seen as full.
EPSILON = 1e-9


class MinuteBucket:
    """A limit of `capacity` per minute: a bucket refilled continuously at capacity/60 per second.

    The level may go below zero when a response used more tokens than were taken for it (`charge`):
    that debt is paid back by the refill before anything else is admitted."""

    __slots__ = ("capacity", "level", "stamp", "_rate")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.level = float(capacity)
        self.stamp = now
        self._rate = capacity / 60.0

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            if self.level < self.capacity:
                self.level = min(float(self.capacity), self.level + (now - self.stamp) * self._rate)
        self.stamp = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self.level

    def whole(self, now: float) -> int:
        """Whole units available (0 when in debt)."""
        self._refill(now)
        return max(0, math.floor(self.level + EPSILON))

    def take(self, x: int, now: float) -> bool:
        """Take `x` if the bucket holds it; otherwise take nothing and say so."""
        self._refill(now)
        if self.level + EPSILON < x:
            return False
        self.level -= x
        return True

    def give(self, x: int, now: float) -> None:
        """Units taken and not used come back; never above the capacity."""
        self._refill(now)
        self.level = min(float(self.capacity), self.level + x)

    def charge(self, x: int, now: float) -> None:
        """Spend `x` whether or not it is there (a negative `x` gives back, capped at capacity)."""
        self._refill(now)
        self.level = min(float(self.capacity), self.level - x)

    def seconds_until(self, x: int, now: float) -> float:
        """Seconds until the bucket holds `x` (clamped to the capacity: a full bucket admits any
        single amount, or an amount larger than a minute's limit could never be admitted)."""
        self._refill(now)
        deficit = min(x, self.capacity) - self.level
        return 0.0 if deficit <= EPSILON else deficit / self._rate

    def reset_after(self, now: float) -> float:
        """Seconds until the bucket is full again."""
        self._refill(now)
        missing = self.capacity - self.level
        return 0.0 if missing <= EPSILON else missing / self._rate

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.level + EPSILON >= self.capacity


class DayBudget:
    """`limit` units per UTC day; what was used is forgotten at 00:00 UTC."""

    __slots__ = ("limit", "used", "day")

    def __init__(self, limit: int, now: float) -> None:
        self.limit = limit
        self.used = 0
        self.day = math.floor(now / DAY)

    def _roll(self, now: float) -> None:
        day = math.floor(now / DAY)
        if day > self.day:  # (a clock stepping back over midnight does not restore a spent budget)
            self.day = day
            self.used = 0

    def available(self, now: float) -> float:
        self._roll(now)
        return float(self.limit - self.used)

    def whole(self, now: float) -> int:
        self._roll(now)
        return max(0, self.limit - self.used)

    def take(self, x: int, now: float) -> bool:
        self._roll(now)
        if self.limit - self.used < x:
            return False
        self.used += x
        return True

    def give(self, x: int, now: float) -> None:
        self._roll(now)
        self.used = max(0, self.used - x)

    def charge(self, x: int, now: float) -> None:
        self._roll(now)
        self.used = max(0, self.used + x)

    def seconds_until(self, x: int, now: float) -> float:
        self._roll(now)
        if self.limit - self.used >= min(x, self.limit):
            return 0.0
        return self.reset_after(now)

    def reset_after(self, now: float) -> float:
        """Seconds until the next 00:00 UTC."""
        self._roll(now)
        return (self.day + 1) * DAY - now

    def full(self, now: float) -> bool:
        self._roll(now)
        return self.used == 0


class Concurrency:
    """`limit` units held at once, counted per holder so that a holder that goes away (a dead worker)
    frees exactly what it held."""

    __slots__ = ("limit", "held", "holdings")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.holdings: dict[str, int] = {}

    def available(self) -> int:
        return self.limit - self.held

    def take(self, holder: str, x: int) -> bool:
        if x > self.limit - self.held:
            return False
        if x > 0:
            self.holdings[holder] = self.holdings.get(holder, 0) + x
            self.held += x
        return True

    def give(self, holder: str, x: int) -> None:
        """`holder` gives back up to what it holds (more is ignored: a duplicate return must not free
        someone else's units)."""
        has = self.holdings.get(holder, 0)
        x = min(x, has)
        if x <= 0:
            return
        if x == has:
            del self.holdings[holder]
        else:
            self.holdings[holder] = has - x
        self.held -= x

    def drop(self, holder: str) -> None:
        self.held -= self.holdings.pop(holder, 0)


__all__ = ["DAY", "Concurrency", "DayBudget", "MinuteBucket"]
