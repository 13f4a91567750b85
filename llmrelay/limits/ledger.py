"""The counters of one machine, in the supervisor's memory: workers ask for units of a counter (all
of a request's `need`, or nothing), give back what they did not use, and are charged the difference
once a response's real usage is known.

Grants are the only way units leave a counter, so the workers together can never admit more than the
counter allows, whatever the order in which their asks arrive. A grant may be larger than `need`
(a batch the worker admits from without asking again) but shrinks as the counter runs low: never more
than `max(need, available / (2 * active holders))`, so that near the limit every worker gets just
what its waiting request needs and no worker holds units another one is refused.

Synchronous and given `now`: `local_store.LocalStore` puts the async `CounterStore` face on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from llmrelay.limits.buckets import Concurrency, DayBudget, MinuteBucket
from llmrelay.limits.types import (
    LEASE_TTL,
    CounterAsk,
    CounterCharge,
    CounterGrant,
    CounterId,
    CounterReturn,
    CounterState,
    Limits,
    Units,
)

ACTIVE_WINDOW = 60.0  # a holder granted units this recently shares the counter (sizes the grants)
FORGET_AFTER = 120.0  # an idle counter with full buckets and no holdings is forgotten after this
SWEEP_INTERVAL = 10.0  # idle counters are looked for at most this often
REFUSED_CONCURRENCY_WAIT = 1.0  # a concurrency slot frees when a request ends: no way to know when


class Counter:
    """One counter's dimensions (None: not limited) and who was granted units of it lately."""

    __slots__ = ("limits", "requests", "tokens", "input", "output", "day", "concurrency", "granted_at", "touched")

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self.requests = MinuteBucket(limits.requests_per_minute, now) if limits.requests_per_minute > 0 else None
        self.tokens = MinuteBucket(limits.tokens_per_minute, now) if limits.tokens_per_minute > 0 else None
        self.input = MinuteBucket(limits.input_tokens_per_minute, now) if limits.input_tokens_per_minute > 0 else None
        self.output = MinuteBucket(limits.output_tokens_per_minute, now) if limits.output_tokens_per_minute > 0 else None
        self.day = DayBudget(limits.tokens_per_day, now) if limits.tokens_per_day > 0 else None
        self.concurrency = Concurrency(limits.concurrent_requests) if limits.concurrent_requests > 0 else None
        self.granted_at: dict[str, float] = {}
        self.touched = now

    # -- reading ----------------------------------------------------------------------------------
    def state(self, now: float) -> CounterState:
        """Where the counter stands. `remaining.input_tokens` is the least left on any dimension that
        counts input tokens (tokens, input tokens, the day), `output_tokens` likewise for output;
        `reset_tokens` follows the token dimension the headers show (the first limited of tokens,
        input tokens, output tokens, day)."""
        requests = self.requests.whole(now) if self.requests is not None else 0
        both = [dim.whole(now) for dim in (self.tokens, self.day) if dim is not None]
        input_left = min([*both, self.input.whole(now)] if self.input is not None else both, default=0)
        output_left = min([*both, self.output.whole(now)] if self.output is not None else both, default=0)
        concurrent = self.concurrency.available() if self.concurrency is not None else 0
        shown = self.tokens or self.input or self.output or self.day
        return CounterState(
            remaining=Units(requests=requests, input_tokens=input_left, output_tokens=output_left, concurrent=max(0, concurrent)),
            reset_requests=self.requests.reset_after(now) if self.requests is not None else 0.0,
            reset_tokens=shown.reset_after(now) if shown is not None else 0.0,
        )

    def idle(self, now: float) -> bool:
        if now - self.touched < FORGET_AFTER or (self.concurrency is not None and self.concurrency.held):
            return False
        return all(dim is None or dim.full(now) for dim in (self.requests, self.tokens, self.input, self.output, self.day))

    def active_holders(self, holder: str, now: float) -> int:
        """Holders granted units in the last ACTIVE_WINDOW, counting the one asking now."""
        stale = [h for h, at in self.granted_at.items() if now - at > ACTIVE_WINDOW]
        for h in stale:
            del self.granted_at[h]
        return len(self.granted_at) + (holder not in self.granted_at)

    # -- granting ---------------------------------------------------------------------------------
    def refusal(self, need: Units, now: float) -> float:
        """0 when `need` can be granted on every dimension, else the longest wait among those that
        cannot cover it. Token needs are clamped to each dimension's capacity by `seconds_until`."""
        wait = 0.0
        tokens = need.input_tokens + need.output_tokens
        for dim, amount in ((self.requests, need.requests), (self.tokens, tokens), (self.input, need.input_tokens), (self.output, need.output_tokens), (self.day, tokens)):
            if dim is not None and amount > 0:
                wait = max(wait, dim.seconds_until(amount, now))
        if self.concurrency is not None and need.concurrent > 0 and need.concurrent > self.concurrency.available():
            wait = max(wait, REFUSED_CONCURRENCY_WAIT)
        return wait

    def grant(self, holder: str, need: Units, want: Units, now: float) -> Units:
        """Size the grant (between `need` and `want`, shrunk near the limit) and take it."""
        share = 2 * self.active_holders(holder, now)
        requests = _sized(self.requests, need.requests, want.requests, share, now)
        in_need, out_need = need.input_tokens, need.output_tokens
        inp = _sized(self.input, in_need, want.input_tokens, share, now)
        out = _sized(self.output, out_need, want.output_tokens, share, now)
        cap = math.inf
        for dim in (self.tokens, self.day):
            if dim is not None:
                cap = min(cap, max(0, math.floor(dim.available(now) / share)))
        extra_in, extra_out = inp - in_need, out - out_need
        if inp + out > cap and extra_in + extra_out > 0:  # shrink both extras in proportion, never below the need
            room = max(0, int(cap) - in_need - out_need)
            give_in = min(extra_in, room * extra_in // (extra_in + extra_out))
            inp, out = in_need + give_in, out_need + min(extra_out, room - give_in)
        concurrent = need.concurrent
        if self.concurrency is not None:
            concurrent = max(need.concurrent, min(want.concurrent, self.concurrency.available() // share))
            self.concurrency.take(holder, concurrent)
        else:
            concurrent = max(need.concurrent, want.concurrent)
        # A need clamped to a dimension's capacity was admitted on a full bucket: the charge takes
        # the bucket below zero, and the refill pays that debt before anyone else is admitted.
        if self.requests is not None:
            self.requests.charge(requests, now)
        if self.tokens is not None:
            self.tokens.charge(inp + out, now)
        if self.input is not None:
            self.input.charge(inp, now)
        if self.output is not None:
            self.output.charge(out, now)
        if self.day is not None:
            self.day.charge(inp + out, now)
        self.granted_at[holder] = now
        return Units(requests=requests, input_tokens=inp, output_tokens=out, concurrent=concurrent)

    # -- coming back ------------------------------------------------------------------------------
    def give(self, holder: str, units: Units, now: float) -> None:
        tokens = units.input_tokens + units.output_tokens
        if self.requests is not None and units.requests > 0:
            self.requests.give(units.requests, now)
        if self.tokens is not None and tokens > 0:
            self.tokens.give(tokens, now)
        if self.input is not None and units.input_tokens > 0:
            self.input.give(units.input_tokens, now)
        if self.output is not None and units.output_tokens > 0:
            self.output.give(units.output_tokens, now)
        if self.day is not None and tokens > 0:
            self.day.give(tokens, now)
        if self.concurrency is not None and units.concurrent > 0:
            self.concurrency.give(holder, units.concurrent)

    def charge(self, input_tokens: int, output_tokens: int, now: float) -> None:
        tokens = input_tokens + output_tokens
        if self.tokens is not None:
            self.tokens.charge(tokens, now)
        if self.input is not None:
            self.input.charge(input_tokens, now)
        if self.output is not None:
            self.output.charge(output_tokens, now)
        if self.day is not None:
            self.day.charge(tokens, now)


def _sized(dim: MinuteBucket | None, need: int, want: int, share: int, now: float) -> int:
    """`want`, but no more than this holder's share of what is left, and never less than `need`."""
    if dim is None:
        return max(need, want)
    return max(need, min(want, math.floor(dim.available(now) / share)))


class Ledger:
    """Every counter of this machine, created on first sight from the limits each message carries."""

    def __init__(self) -> None:
        self.counters: dict[CounterId, Counter] = {}
        self._swept = -math.inf

    def _counter(self, counter: CounterId, limits: Limits, now: float) -> Counter:
        found = self.counters.get(counter)
        if found is None:
            found = self.counters[counter] = Counter(limits, now)
        found.touched = now
        return found

    def ask(self, holder: str, asks: Iterable[CounterAsk], now: float) -> list[CounterGrant]:
        """One grant per ask, in order: zero with `retry_after` > 0, or between `need` and `want`.

        Each ask is decided alone: a request under two counters may be granted one and refused the
        other; the worker keeps the first grant in its lease for the requests to come."""
        self._sweep(now)
        grants: list[CounterGrant] = []
        for ask in asks:
            counter = self._counter(ask.counter, ask.limits, now)
            wait = counter.refusal(ask.need, now)
            if wait > 0:
                grants.append(CounterGrant(counter=ask.counter, granted=Units(), state=counter.state(now), retry_after=wait))
                continue
            granted = counter.grant(holder, ask.need, ask.want, now)
            grants.append(CounterGrant(counter=ask.counter, granted=granted, state=counter.state(now)))
        return grants

    def give_back(self, holder: str, returns: Iterable[CounterReturn], now: float) -> None:
        """Units `holder` did not use. A counter no longer known is full already (it was forgotten
        only once full, or dropped by a reload): nothing to give back to."""
        for back in returns:
            counter = self.counters.get(back.counter)
            if counter is not None:
                counter.touched = now
                counter.give(holder, back.units, now)

    def charge(self, charges: Iterable[CounterCharge], now: float) -> None:
        for charge in charges:
            self._counter(charge.counter, charge.limits, now).charge(charge.input_tokens, charge.output_tokens, now)

    def drop_holder(self, holder: str) -> None:
        """A worker is gone: free its concurrency units (its leased request and token units are
        lost with it: never admitted, they come back with the refill)."""
        for counter in self.counters.values():
            if counter.concurrency is not None:
                counter.concurrency.drop(holder)
            counter.granted_at.pop(holder, None)

    def recent_holders(self, counter: CounterId, now: float) -> list[str]:
        """Holders granted units of `counter` within the last LEASE_TTL: those that may still hold
        some unused (the supervisor recalls them when it refuses someone)."""
        found = self.counters.get(counter)
        if found is None:
            return []
        return [holder for holder, at in found.granted_at.items() if now - at <= LEASE_TTL]

    def states(self, now: float) -> list[tuple[CounterId, CounterState]]:
        self._sweep(now)
        return [(cid, counter.state(now)) for cid, counter in self.counters.items()]

    def retain(self, versions: set[tuple[str, str]]) -> None:
        """After a reload: forget counters of rules that went or changed (their version differs)."""
        for cid in [cid for cid in self.counters if (cid.rule, cid.version) not in versions]:
            del self.counters[cid]

    def _sweep(self, now: float) -> None:
        """Forget idle counters (bounded memory: a counter per client IP or header value is cheap to
        create and must not live forever)."""
        if now - self._swept < SWEEP_INTERVAL and now >= self._swept:
            return
        self._swept = now
        for cid in [cid for cid, counter in self.counters.items() if counter.idle(now)]:
            del self.counters[cid]


__all__ = ["Counter", "Ledger"]
