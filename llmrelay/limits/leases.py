"""One worker's leases: units of counters granted by the supervisor, from which the worker admits
requests without asking for each one.

A request under counters C1..Cn is admitted only when every counter's lease covers its `need`; then
the need is taken from each, all or nothing. When a lease falls short, `admit` takes nothing and
returns the asks to send; the answer is added with `granted`, and `admit` is tried again. Units are
only ever granted by the counters' owner, so however many workers admit from their leases, together
they never admit more than a counter allows.

Request and token units expire LEASE_TTL seconds after the grant that opened the lease (a later grant
adds to it but does not extend it): a unit is admitted at most LEASE_TTL after it left the counter,
and what was not used goes back with `expired`. Concurrency units are held by the requests that use
them; when a request ends, its unit stays here for the next request of this worker until the next
`expired`, which gives back every unit not in use (so a slot freed here is soon free everywhere).

Sans-IO: times come from the caller; the worker's trio glue sends the asks, returns and charges.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from llmrelay.limits.lease import BATCH_SECONDS, MAX_BATCH, RATE_WINDOW, Admission, Lease, Taken
from llmrelay.limits.types import (
    LEASE_TTL,
    CounterAsk,
    CounterCharge,
    CounterGrant,
    CounterId,
    CounterReturn,
    Limits,
    Units,
)

MAX_OWED = 4096  # corrections kept one by one before they are summed by counter
FORGET_AFTER = 60.0  # an empty lease record unused this long is dropped (its rate is stale anyway)


def _has_units(units: Units) -> bool:
    return bool(units.requests or units.input_tokens or units.output_tokens or units.concurrent)


class LeaseBook:
    def __init__(self) -> None:
        self.leases: dict[CounterId, Lease] = {}
        self._returns: list[CounterReturn] = []  # units of leases that lapsed before a new grant
        self._charges: dict[CounterId, tuple[Limits, int, int]] = {}
        self._owed: list[tuple[CounterId, Limits, int, int]] = []  # corrections not summed yet (one append each)

    # -- the request path -------------------------------------------------------------------------
    def admit(self, counters: list[tuple[CounterId, Limits]], need: Units, now: float) -> Admission | list[CounterAsk]:
        """Take `need` from every counter's lease, or nothing and the asks for those that fall short."""
        leases = self.leases
        if len(counters) == 1:  # (one rule applies: the usual case, taken in one go)
            counter, limits = counters[0]
            lease = leases.get(counter)
            if lease is None:
                lease = leases[counter] = Lease(counter, limits, now)
            r = need.requests if lease.counts_requests else 0
            i = need.input_tokens if lease.counts_input else 0
            o = need.output_tokens if lease.counts_output else 0
            c = need.concurrent if lease.counts_concurrent else 0
            if ((r or i or o) and now >= lease.expires) or lease.requests < r or lease.input_tokens < i or lease.output_tokens < o or lease.free < c:
                return [self._ask(lease, Units(r, i, o, c), now)]
            lease.requests -= r
            lease.input_tokens -= i
            lease.output_tokens -= o
            lease.free -= c
            lease.in_use += c
            lease.used_at = now  # (Lease.count, inline)
            lease.window_count += 1
            if now - lease.window_start >= RATE_WINDOW or now < lease.window_start:
                lease.window_count -= 1
                lease.count(now)
            taken = Taken(lease, r, i, o, c)
            return Admission([taken], lease.runs_low(taken, now) if lease.rate > 0 and (r or i or o) else False)
        found: list[Lease] = []
        short: list[CounterAsk] | None = None
        for counter, limits in counters:
            lease = leases.get(counter)
            if lease is None:
                lease = leases[counter] = Lease(counter, limits, now)
            found.append(lease)
            r = need.requests if lease.counts_requests else 0
            i = need.input_tokens if lease.counts_input else 0
            o = need.output_tokens if lease.counts_output else 0
            c = need.concurrent if lease.counts_concurrent else 0
            if ((r or i or o) and now >= lease.expires) or lease.requests < r or lease.input_tokens < i or lease.output_tokens < o or lease.free < c:
                if short is None:
                    short = []
                short.append(self._ask(lease, Units(r, i, o, c), now))
        if short is not None:
            return short
        parts: list[Taken] = []
        low = False
        for lease in found:
            r = need.requests if lease.counts_requests else 0
            i = need.input_tokens if lease.counts_input else 0
            o = need.output_tokens if lease.counts_output else 0
            c = need.concurrent if lease.counts_concurrent else 0
            taken = self._take(lease, r, i, o, c, now)
            low = low or lease.runs_low(taken, now)
            parts.append(taken)
        return Admission(parts, low)

    @staticmethod
    def _take(lease: Lease, r: int, i: int, o: int, c: int, now: float) -> Taken:
        lease.requests -= r
        lease.input_tokens -= i
        lease.output_tokens -= o
        lease.free -= c
        lease.in_use += c
        lease.count(now)
        return Taken(lease, r, i, o, c)

    def _ask(self, lease: Lease, need: Units, now: float) -> CounterAsk:
        """Ask for `need` now and about BATCH_SECONDS' worth at this worker's recent rate. The whole
        need, not what the lease lacks: concurrent requests of this worker each ask for their own,
        so none counts on units another one is about to take. Slots are never batched: a slot held
        idle here is one another worker is refused."""
        batch = min(MAX_BATCH, max(1, math.ceil(lease.rate * BATCH_SECONDS)))
        want = Units(need.requests * batch, need.input_tokens * batch, need.output_tokens * batch, need.concurrent)
        return CounterAsk(counter=lease.counter, limits=lease.limits, need=need, want=want)

    def refills(self, admission: Admission, now: float) -> list[CounterAsk]:
        """Asks to send ahead of need (nothing waits on them) for the leases `admission` drew from
        that run low: under half a batch at the recent rate left, or lapsing within a quarter of a
        batch's time. So a busy worker's requests find units in their lease, and none waits."""
        asks: list[CounterAsk] = []
        for part in admission.parts:
            lease = part.lease
            if lease.rate <= 0 or not (part.requests or part.input_tokens or part.output_tokens):
                continue
            batch = min(MAX_BATCH, max(1, math.ceil(lease.rate * BATCH_SECONDS)))
            low = (
                (part.requests and lease.requests < part.requests * batch / 2)
                or (part.input_tokens and lease.input_tokens < part.input_tokens * batch / 2)
                or (part.output_tokens and lease.output_tokens < part.output_tokens * batch / 2)
                or lease.expires - now < BATCH_SECONDS / 4
            )
            if low:
                want = Units(part.requests * batch, part.input_tokens * batch, part.output_tokens * batch, 0)
                asks.append(CounterAsk(counter=lease.counter, limits=lease.limits, need=Units(), want=want))
        return asks

    def granted(self, asks: list[CounterAsk], grants: list[CounterGrant], now: float) -> bool:
        """Add the answer to the leases. True when every ask's `need` is now covered, so `admit`
        will succeed: by its own grant, or by units another request's grant brought meanwhile."""
        covered = True
        for ask, grant in zip(asks, grants):
            lease = self.leases.get(ask.counter)
            if lease is None:
                lease = self.leases[ask.counter] = Lease(ask.counter, ask.limits, now)
            units = grant.granted
            if units.requests or units.input_tokens or units.output_tokens:
                if now >= lease.expires - BATCH_SECONDS / 4:
                    # a lapsed (or lapsing) lease's units go back; the new grant opens a new one, so
                    # that a busy worker's lease is renewed by its asks ahead of need, never lapses
                    left = Units(lease.requests, lease.input_tokens, lease.output_tokens)
                    lease.requests = lease.input_tokens = lease.output_tokens = 0
                    if _has_units(left):
                        self._returns.append(CounterReturn(counter=lease.counter, limits=lease.limits, units=left))
                    lease.expires = now + LEASE_TTL
                lease.requests += units.requests if lease.counts_requests else 0
                lease.input_tokens += units.input_tokens if lease.counts_input else 0
                lease.output_tokens += units.output_tokens if lease.counts_output else 0
            lease.free += units.concurrent if lease.counts_concurrent else 0
            lease.state = grant.state
            need = ask.need
            if (
                ((need.requests or need.input_tokens or need.output_tokens) and now >= lease.expires)
                or lease.requests < need.requests
                or lease.input_tokens < need.input_tokens
                or lease.output_tokens < need.output_tokens
                or lease.free < need.concurrent
            ):
                covered = False
        return covered and len(grants) == len(asks)

    def finish(self, admission: Admission, input_tokens: int | None, output_tokens: int | None, now: float) -> None:
        """The request ended (on any path). Its slots come back to the leases; with the real usage
        known, an overestimate goes back into a live lease (else to the counter) and an
        underestimate is charged (sent with the next `take_charges`)."""
        if admission.finished:
            return
        admission.finished = True
        for part in admission.parts:
            lease = part.lease
            current = not lease.dropped  # (not released since: else its slot went back)
            if part.concurrent:
                lease.in_use -= part.concurrent
                if current:
                    lease.free += part.concurrent
            extra_in = input_tokens - part.input_tokens if input_tokens is not None and lease.counts_input else 0
            extra_out = output_tokens - part.output_tokens if output_tokens is not None and lease.counts_output else 0
            if current and now < lease.expires:
                if extra_in < 0:
                    lease.input_tokens -= extra_in
                    extra_in = 0
                if extra_out < 0:
                    lease.output_tokens -= extra_out
                    extra_out = 0
            if extra_in or extra_out:
                owed = self._owed
                owed.append((lease.counter, lease.limits, extra_in, extra_out))
                if len(owed) >= MAX_OWED:
                    self._sum_owed()

    # -- what goes back ---------------------------------------------------------------------------
    def _sum_owed(self) -> None:
        """Add the corrections owed request by request to the charges by counter."""
        charges = self._charges
        for counter, limits, extra_in, extra_out in self._owed:
            known = charges.get(counter)
            if known is None:
                charges[counter] = (limits, extra_in, extra_out)
            else:
                charges[counter] = (limits, known[1] + extra_in, known[2] + extra_out)
        self._owed = []

    def take_charges(self) -> list[CounterCharge]:
        self._sum_owed()
        charges = [
            CounterCharge(counter=counter, limits=limits, input_tokens=inp, output_tokens=out)
            for counter, (limits, inp, out) in self._charges.items()
            if inp or out
        ]
        self._charges = {}
        return charges

    def expired(self, now: float) -> list[CounterReturn]:
        """Units to give back now: request and token units of leases past their TTL, and every slot
        not in use. Lease records idle for long are forgotten (bounded memory)."""
        returns, self._returns = self._returns, []
        forget: list[CounterId] = []
        for counter, lease in self.leases.items():
            if now >= lease.expires:
                units = lease.unused()
            elif lease.free:
                units = Units(concurrent=lease.free)
                lease.free = 0
            else:
                units = None
            if units is not None and _has_units(units):
                returns.append(CounterReturn(counter=counter, limits=lease.limits, units=units))
            if now >= lease.expires and not lease.in_use and now - lease.used_at > FORGET_AFTER:
                forget.append(counter)
        for counter in forget:
            self.leases.pop(counter).dropped = True
        return returns

    def recall(self, counters: Iterable[CounterId]) -> list[CounterReturn]:
        """The supervisor refused another worker: give back everything unused of these counters."""
        returns: list[CounterReturn] = []
        for counter in counters:
            lease = self.leases.get(counter)
            if lease is not None:
                units = lease.unused()
                if _has_units(units):
                    returns.append(CounterReturn(counter=counter, limits=lease.limits, units=units))
        return returns

    def release_all(self) -> list[CounterReturn]:
        """The worker stops: give back everything, slots in use included (their requests are over or
        cut; a `finish` after this gives nothing back twice)."""
        returns, self._returns = self._returns, []
        for counter, lease in self.leases.items():
            units = lease.unused()
            units.concurrent += lease.in_use
            if _has_units(units):
                returns.append(CounterReturn(counter=counter, limits=lease.limits, units=units))
            lease.dropped = True
        self.leases = {}
        return returns


__all__ = ["BATCH_SECONDS", "MAX_BATCH", "RATE_WINDOW", "Admission", "Lease", "LeaseBook", "Taken"]
