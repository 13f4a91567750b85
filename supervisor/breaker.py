"""The health of one upstream as sans-IO state machines: passive health and the cool-downs of its keys,
driven by the reports every worker sends, and the verdict of its active check, driven by the
supervisor's checks (`now` is always given, never read here).

`Breaker` (per upstream) is a circuit breaker:

    ok --(unhealthy_threshold failures in a row)--> ejected(until)
    ejected --(now >= until)--> half_open: the next request is a probe
    half_open --(success)--> ok            half_open --(failure)--> ejected, cool-down doubled
    any --(success, or a passing active check)--> ok

The cool-down starts at `FIRST_COOLDOWN` and doubles each time a probe fails, up to `MAX_COOLDOWN`. A
failure while already ejected (a request that was under way) extends the ejection to the later of the
two deadlines, never shortens it, and does not double it. Every failure class counts the same (connect errors, resets, timeouts, 5xx): what counts as a
failure is the reporter's decision, not the breaker's.

`KeyState` (per provider key): a 429 cools the key down until its `Retry-After` (a later deadline wins);
a 401/403 disables it until the config is reloaded.

`CheckVerdict` (per upstream with an active check): healthy at first; `unhealthy_threshold` failed
checks in a row make it unhealthy, then `healthy_threshold` passed checks in a row make it healthy again.
"""

from __future__ import annotations

import enum

FIRST_COOLDOWN = 1.0
MAX_COOLDOWN = 60.0


class BreakerState(enum.Enum):
    OK = "ok"
    EJECTED = "ejected"
    HALF_OPEN = "half_open"


class Breaker:
    __slots__ = ("threshold", "state", "failures", "cooldown", "until", "last_error")

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.state = BreakerState.OK
        self.failures = 0  # in a row
        self.cooldown = 0.0  # the last ejection's length (0: never ejected since the last success)
        self.until = 0.0
        self.last_error = ""

    def usable(self, now: float) -> bool:
        """Whether requests may go to the upstream (an ejection past its deadline half-opens)."""
        if self.state is BreakerState.EJECTED and now >= self.until:
            self.state = BreakerState.HALF_OPEN
        return self.state is not BreakerState.EJECTED

    def failure(self, now: float, error: str) -> bool:
        """Count one failure; True when it ejected the upstream (or extended its ejection)."""
        self.failures += 1
        self.last_error = error
        self.usable(now)  # (an ejection past its deadline is half-open: this failure was its probe)
        if self.state is BreakerState.OK:
            if self.failures < self.threshold:
                return False
            self.cooldown = FIRST_COOLDOWN
        elif self.state is BreakerState.HALF_OPEN:  # the probe failed: a longer cool-down
            self.cooldown = min(max(self.cooldown, FIRST_COOLDOWN) * 2.0, MAX_COOLDOWN)
        # (EJECTED: a request that was already under way failed too; the same cool-down, from now)
        self.state = BreakerState.EJECTED
        self.until = max(self.until, now + self.cooldown)
        return True

    def success(self) -> bool:
        """A request (or an active check) went well; True when that ended an ejection."""
        recovered = self.state is not BreakerState.OK
        self.state = BreakerState.OK
        self.failures = 0
        self.cooldown = 0.0
        self.until = 0.0
        return recovered


class KeyState:
    """One provider key's standing: usable, cooling down until a moment, or disabled until reload."""

    __slots__ = ("cooling_until", "disabled")

    def __init__(self) -> None:
        self.cooling_until = 0.0
        self.disabled = False

    def usable(self, now: float) -> bool:
        return not self.disabled and now >= self.cooling_until

    def cool(self, until: float) -> None:
        """A 429: not before `until` (a second one never brings the deadline forward)."""
        self.cooling_until = max(self.cooling_until, until)

    def disable(self) -> bool:
        """A 401/403: until the config is reloaded; True the first time (to log it once)."""
        first = not self.disabled
        self.disabled = True
        return first


class CheckVerdict:
    """The verdict of an upstream's active check, after its thresholds (healthy until proven otherwise)."""

    __slots__ = ("healthy_threshold", "unhealthy_threshold", "ok", "passes", "failures")

    def __init__(self, healthy_threshold: int, unhealthy_threshold: int) -> None:
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.ok = True
        self.passes = 0  # in a row
        self.failures = 0  # in a row

    def result(self, passed: bool) -> bool:
        """Count one check; True when that turned the verdict (either way)."""
        if passed:
            self.passes += 1
            self.failures = 0
            if not self.ok and self.passes >= self.healthy_threshold:
                self.ok = True
                return True
            return False
        self.failures += 1
        self.passes = 0
        if self.ok and self.failures >= self.unhealthy_threshold:
            self.ok = False
            return True
        return False
