"""One lease: what a worker holds of one counter (units granted by the counter's owner, slots in use)
and how fast it admits under it; what one admission took from it (`Taken`), and an admitted request
(`Admission`). `limits.leases.LeaseBook` keeps them and does the bookkeeping across counters.
"""

from __future__ import annotations

import math

from llmrelay.limits.headers import Headers, HeaderTemplate, tightest
from llmrelay.limits.types import LEASE_TTL, CounterId, CounterState, Limits, Units

BATCH_SECONDS = LEASE_TTL / 4  # a grant asked for covers about this long at the recent rate
MAX_BATCH = 1024  # requests' worth at most in one ask (the owner grants no more than a share of what is left)
RATE_WINDOW = 0.25  # the admission rate is measured over windows of at least this long
NO_STATE = CounterState(remaining=Units())


class Lease:
    """What this worker holds of one counter, and how fast it admits under it."""

    __slots__ = (
        "counter", "limits", "counts_requests", "counts_input", "counts_output", "counts_concurrent",
        "requests", "input_tokens", "output_tokens", "free", "in_use", "expires", "state",
        "window_start", "window_count", "rate", "used_at", "template", "dropped", "_half", "_half_rate",
    )  # fmt: skip

    def __init__(self, counter: CounterId, limits: Limits, now: float) -> None:
        self.counter = counter
        self.limits = limits
        # Only dimensions the counter limits are asked for and tracked: units of the others are free.
        self.counts_requests = limits.requests_per_minute > 0
        tokens = limits.tokens_per_minute > 0 or limits.tokens_per_day > 0
        self.counts_input = tokens or limits.input_tokens_per_minute > 0
        self.counts_output = tokens or limits.output_tokens_per_minute > 0
        self.counts_concurrent = limits.concurrent_requests > 0
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.free = 0  # concurrency units held and not in use
        self.in_use = 0  # concurrency units held by requests running now
        self.expires = -math.inf  # request and token units are unusable from then on
        self.state = NO_STATE  # the counter as of the last answer (for the headers)
        self.window_start = now
        self.window_count = 0
        self.rate = 0.0  # admissions per second here, recently
        self.used_at = now
        self.template: HeaderTemplate | None = None  # the headers' fixed parts, as of `state`
        self.dropped = False  # no longer in the book (its slots went back with it)
        self._half = 0.0  # half a batch at `_half_rate` (made again when the rate changes)
        self._half_rate = 0.0

    def count(self, now: float) -> None:
        """One more admission from this lease: the recent rate, measured over RATE_WINDOW at least."""
        self.used_at = now
        self.window_count += 1
        elapsed = now - self.window_start
        if elapsed >= RATE_WINDOW or elapsed < 0:
            measured = self.window_count / elapsed if elapsed > 0 else 0.0
            self.rate = measured if elapsed > 10 * RATE_WINDOW else (self.rate + measured) / 2
            self.window_start, self.window_count = now, 0

    def runs_low(self, taken: Taken, now: float) -> bool:
        """Whether `LeaseBook.refills` would ask ahead for this lease after `taken` (checked on
        every admission; the asks themselves are made only then)."""
        rate = self.rate
        if rate <= 0 or not (taken.requests or taken.input_tokens or taken.output_tokens):
            return False
        if rate != self._half_rate:
            self._half_rate = rate
            self._half = min(MAX_BATCH, max(1, math.ceil(rate * BATCH_SECONDS))) / 2
        half = self._half
        return bool(
            (taken.requests and self.requests < taken.requests * half)
            or (taken.input_tokens and self.input_tokens < taken.input_tokens * half)
            or (taken.output_tokens and self.output_tokens < taken.output_tokens * half)
            or self.expires - now < BATCH_SECONDS / 4
        )

    def headers(self) -> Headers:
        """x-ratelimit-* as a client sees the counter from here (`rate_limit_headers` of `view()`)."""
        template = self.template
        if template is None or template.state is not self.state:
            template = self.template = HeaderTemplate(self.limits, self.state)
        return template.render(self.requests, self.input_tokens, self.output_tokens)

    def view(self) -> CounterState:
        """The counter as a client sees it from here: what the supervisor had left after its last
        answer, plus what this lease still holds."""
        left = self.state.remaining
        return CounterState(
            remaining=Units(
                requests=left.requests + self.requests,
                input_tokens=left.input_tokens + self.input_tokens,
                output_tokens=left.output_tokens + self.output_tokens,
                concurrent=left.concurrent + self.free,
            ),
            reset_requests=self.state.reset_requests,
            reset_tokens=self.state.reset_tokens,
        )

    def unused(self) -> Units:
        """Take out every request and token unit (whether or not expired) and every free slot."""
        units = Units(requests=self.requests, input_tokens=self.input_tokens, output_tokens=self.output_tokens, concurrent=self.free)
        self.requests = self.input_tokens = self.output_tokens = self.free = 0
        return units


class Taken:
    """What one admission took from one lease."""

    __slots__ = ("lease", "requests", "input_tokens", "output_tokens", "concurrent")

    def __init__(self, lease: Lease, requests: int, input_tokens: int, output_tokens: int, concurrent: int) -> None:
        self.lease = lease
        self.requests = requests
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.concurrent = concurrent


class Admission:
    """An admitted request: what it took from each counter's lease, to be `finish`ed exactly once.
    `low`: some lease it drew from runs low (`LeaseBook.refills` has asks to make)."""

    __slots__ = ("parts", "finished", "low")

    def __init__(self, parts: list[Taken], low: bool = True) -> None:
        self.parts = parts
        self.finished = False
        self.low = low

    @property
    def taken(self) -> list[tuple[CounterId, Units]]:
        return [(p.lease.counter, Units(p.requests, p.input_tokens, p.output_tokens, p.concurrent)) for p in self.parts]

    def tightest(self) -> tuple[Limits, CounterState] | None:
        """The counter closest to refusing, and where it stands (the success answer's headers)."""
        return tightest((p.lease.limits, p.lease.view()) for p in self.parts)
