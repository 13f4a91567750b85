"""A discrete-event simulation of N workers, each with a `LeaseBook`, against one `Ledger`, on a fake
clock: requests arrive at random workers, asks reach the ledger and answers come back after random
delays (so in any order across workers), and recalls, expiries, returns, charges, graceful
replacement (SIGUSR2) and kill -9 happen as in the real glue (`relay.admission`, `worker.accounts`,
`supervisor.limits`).

It records when each request was admitted and how many ran at once, for the exactness properties:
never more admitted than the bucket allows, never more in flight than the concurrency limit.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmrelay.limits.leases import Admission, LeaseBook
from llmrelay.limits.ledger import Ledger
from llmrelay.limits.types import LEASE_TTL, CounterAsk, CounterCharge, CounterGrant, CounterId, CounterReturn, Limits, Units

T0 = 1_700_000_000.0  # a fixed wall-clock start (22:13 UTC: no day boundary within 1.7 h)
ASK_ROUNDS = 3  # as the worker glue: a grant used up by a sibling request before this one re-admits
TICK = 0.25  # the worker's return/report interval


@dataclass
class Outcome:
    admitted: list[tuple[float, int]] = field(default_factory=list)  # (time, estimated tokens)
    refused: int = 0
    max_in_flight: int = 0
    in_flight: int = 0
    recalls: int = 0


class SimWorker:
    def __init__(self, slot: int, generation: int) -> None:
        self.book = LeaseBook()
        self.holder = f"w{slot}.{generation}"
        self.running: list[Admission] = []
        self.waiting = 0  # requests waiting for a lease answer (a drain waits for them too)
        self.alive = True  # False: killed, or stopped after its drain
        self.retiring = False


class Simulation:
    def __init__(self, workers: int, limits: Limits, seed: int, max_delay: float = 0.01) -> None:
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        self.generations = [0] * workers
        self.slots = [SimWorker(slot, 0) for slot in range(workers)]
        self.by_holder = {w.holder: w for w in self.slots}
        self.counter = CounterId(rule="r", version="v1", key="alice")
        self.limits = limits
        self.max_delay = max_delay
        self.now = T0
        self.out = Outcome()
        self._events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()

    # -- scheduling -------------------------------------------------------------------------------
    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._events, (when, next(self._seq), action, args))

    def later(self, action: Callable[..., None], *args: Any) -> None:
        self.at(self.now + self.rng.uniform(0, self.max_delay), action, *args)

    def run(self, until: float, max_events: int = 300_000) -> Outcome:
        for _ in range(max_events):
            if not self._events or self._events[0][0] > until:
                return self.out
            when, _, action, args = heapq.heappop(self._events)
            self.now = max(self.now, when)
            action(*args)
        raise AssertionError("simulation did not settle within its event budget")

    def start_ticks(self, until: float) -> None:
        for step in range(int((until - self.now) / TICK) + 1):
            self.at(self.now + TICK * step + TICK / 2, self._tick)

    # -- a request --------------------------------------------------------------------------------
    def arrive(self, slot: int, tokens: int = 0, duration: float = 0.0, real_tokens: int | None = None) -> None:
        worker = self.slots[slot]
        need = Units(requests=1, input_tokens=tokens, concurrent=1)
        worker.waiting += 1
        self._try(worker, need, duration, real_tokens, ASK_ROUNDS)

    def _try(self, worker: SimWorker, need: Units, duration: float, real: int | None, rounds: int) -> None:
        if not worker.alive:
            return  # killed while this request waited: it never ran
        result = worker.book.admit([(self.counter, self.limits)], need, self.now)
        if not isinstance(result, Admission) and rounds > 0:
            self.later(self._ledger_ask, worker, result, need, duration, real, rounds - 1)
            return
        worker.waiting -= 1
        if isinstance(result, Admission):
            self.out.admitted.append((self.now, need.input_tokens))
            self.out.in_flight += 1
            self.out.max_in_flight = max(self.out.max_in_flight, self.out.in_flight)
            worker.running.append(result)
            self.at(self.now + duration, self._finish, worker, result, real)
        else:
            self.out.refused += 1
            self._maybe_stop(worker)

    def _ledger_ask(self, worker: SimWorker, asks: list[CounterAsk], need: Units, duration: float, real: int | None, rounds: int) -> None:
        if not worker.alive:
            return  # (the supervisor drops a dead worker's pipe: its asks are never answered)
        grants = self.ledger.ask(worker.holder, asks, self.now)
        refused = [g.counter for g in grants if g.granted == Units()]
        if refused:  # the supervisor recalls the other recent holders' unused units
            for holder in self.ledger.recent_holders(self.counter, self.now):
                other = self.by_holder[holder]
                if other is not worker and other.alive:
                    self.later(self._recall, other, refused)
        self.later(self._answer, worker, asks, grants, need, duration, real, rounds)

    def _answer(self, worker: SimWorker, asks: list[CounterAsk], grants: list[CounterGrant], need: Units, duration: float, real: int | None, rounds: int) -> None:
        if not worker.alive:
            return
        if not worker.book.granted(asks, grants, self.now):
            worker.waiting -= 1
            self.out.refused += 1
            self._maybe_stop(worker)
            return
        self._try(worker, need, duration, real, rounds)

    def _finish(self, worker: SimWorker, admission: Admission, real: int | None) -> None:
        if not worker.alive:
            return  # it ended with its worker
        worker.running.remove(admission)
        self.out.in_flight -= 1
        worker.book.finish(admission, real, 0 if real is not None else None, self.now)
        self._maybe_stop(worker)

    # -- the worker's and the supervisor's glue -----------------------------------------------------
    def _tick(self) -> None:
        for worker in list(self.by_holder.values()):
            if worker.alive:
                self._report(worker, worker.book.expired(self.now))

    def _report(self, worker: SimWorker, returns: list[CounterReturn]) -> None:
        charges = worker.book.take_charges()
        if returns:
            self.later(self._give_back, worker.holder, returns)
        if charges:
            self.later(self._charge, charges)

    def _give_back(self, holder: str, returns: list[CounterReturn]) -> None:
        self.ledger.give_back(holder, returns, self.now)

    def _charge(self, charges: list[CounterCharge]) -> None:
        self.ledger.charge(charges, self.now)

    def _recall(self, worker: SimWorker, counters: list[CounterId]) -> None:
        if worker.alive:
            self.out.recalls += 1
            returns = worker.book.recall(counters)
            if returns:
                self.later(self._give_back, worker.holder, returns)

    def _replace(self, slot: int) -> SimWorker:
        old = self.slots[slot]
        self.generations[slot] += 1
        new = self.slots[slot] = SimWorker(slot, self.generations[slot])
        self.by_holder[new.holder] = new
        return old

    def kill(self, slot: int) -> None:
        """kill -9: its requests end with it, the supervisor drops its holder, a successor starts."""
        old = self._replace(slot)
        old.alive = False
        self.out.in_flight -= len(old.running)
        self.ledger.drop_holder(old.holder)

    def retire(self, slot: int) -> None:
        """SIGUSR2: a successor takes new requests; the old worker finishes its own, then gives
        everything back and exits (and the supervisor drops its holder)."""
        old = self._replace(slot)
        old.retiring = True
        self._maybe_stop(old)

    def _maybe_stop(self, worker: SimWorker) -> None:
        if worker.retiring and worker.alive and not worker.running and not worker.waiting:
            self._stop(worker)

    def _stop(self, worker: SimWorker) -> None:
        self._report(worker, worker.book.release_all())
        worker.alive = False
        self.later(self.ledger.drop_holder, worker.holder)


def most_in_window(times: list[float], window: float) -> int:
    """The most events within any closed interval of length `window`."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def bucket_bound(limit: int, window: float) -> int:
    """What a bucket of `limit` per minute may admit within `window` seconds: the full bucket plus
    its refill over the window and over the LEASE_TTL a unit may wait in a lease before use."""
    return int(limit + limit * (window + LEASE_TTL) / 60.0 + 1e-9)


WINDOWS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)


def check_windows(times: list[float], limit: int, amounts: list[int] | None = None) -> None:
    """In every window of the lengths in WINDOWS starting at an admission, at most what the bucket
    allows (summing `amounts`, else one per admission)."""
    pairs = sorted(zip(times, amounts if amounts is not None else [1] * len(times)))
    starts = [t for t, _ in pairs]
    sums = list(itertools.accumulate((amount for _, amount in pairs), initial=0))
    for i, start in enumerate(starts):
        for window in WINDOWS:
            j = bisect.bisect_right(starts, start + window)
            assert sums[j] - sums[i] <= bucket_bound(limit, window), (sums[j] - sums[i], window, limit, start - T0)
