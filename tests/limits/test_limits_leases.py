"""One worker's lease book: admitting from leases without asking, asks sized from the recent rate,
grants, corrections, expiry, recalls and the drain."""

from __future__ import annotations

import pytest

from llmrelay.limits.leases import MAX_BATCH, Admission, LeaseBook
from llmrelay.limits.ledger import Ledger
from llmrelay.limits.types import LEASE_TTL, CounterAsk, CounterGrant, CounterId, CounterReturn, CounterState, Limits, Units

T0 = 1_700_000_000.0
A = CounterId("per-key", "v1", "alice")
B = CounterId("per-model", "v1", "gpt-4o")
ONE = Units(requests=1, input_tokens=100, output_tokens=50, concurrent=1)


def asks_of(result: Admission | list[CounterAsk]) -> list[CounterAsk]:
    assert isinstance(result, list), "expected asks, got an admission"
    return result


def grant_all(book: LeaseBook, asks: list[CounterAsk], now: float, ledger: Ledger | None = None) -> bool:
    grants = (ledger or Ledger()).ask("w1", asks, now)
    return book.granted(asks, grants, now)


def admitted(book: LeaseBook, counters: list[tuple[CounterId, Limits]], need: Units, now: float, ledger: Ledger) -> Admission:
    result = book.admit(counters, need, now)
    if not isinstance(result, Admission):
        assert grant_all(book, result, now, ledger)
        result = book.admit(counters, need, now)
    assert isinstance(result, Admission)
    return result


def test_a_first_request_asks_for_its_need_on_the_limited_dimensions_only() -> None:
    book = LeaseBook()
    limits = Limits(requests_per_minute=10, concurrent_requests=3)
    asks = book.admit([(A, limits)], ONE, T0)
    assert asks == [CounterAsk(A, limits, need=Units(requests=1, concurrent=1), want=Units(requests=1, concurrent=1))]
    assert book.admit([(A, limits)], ONE, T0) == asks  # nothing was taken


def test_admission_from_a_lease_takes_from_every_counter() -> None:
    book, ledger = LeaseBook(), Ledger()
    per_key = Limits(requests_per_minute=100, tokens_per_minute=100_000)
    per_model = Limits(output_tokens_per_minute=1000)
    counters = [(A, per_key), (B, per_model)]
    asks = book.admit(counters, ONE, T0)
    assert isinstance(asks, list) and [a.counter for a in asks] == [A, B]
    assert asks[1].need == Units(output_tokens=50)
    assert grant_all(book, asks, T0, ledger)
    admission = book.admit(counters, ONE, T0)
    assert isinstance(admission, Admission)
    assert admission.taken == [(A, Units(requests=1, input_tokens=100, output_tokens=50)), (B, Units(output_tokens=50))]


def test_a_shortfall_on_one_counter_takes_nothing_from_the_others() -> None:
    book, ledger = LeaseBook(), Ledger()
    limits = Limits(requests_per_minute=100)
    assert grant_all(book, asks_of(book.admit([(A, limits)], ONE, T0)), T0, ledger)
    before = book.leases[A].requests
    result = book.admit([(A, limits), (B, limits)], ONE, T0)
    assert isinstance(result, list) and [a.counter for a in result] == [B]
    assert book.leases[A].requests == before


def test_the_want_follows_the_recent_rate_up_to_the_batch_cap() -> None:
    book, ledger = LeaseBook(), Ledger()
    limits = Limits(requests_per_minute=100_000)
    now = T0
    for _ in range(2000):  # 1000 requests per second for two seconds
        admitted(book, [(A, limits)], Units(requests=1), now, ledger)
        now += 0.001
    book.leases[A].requests = 0
    [ask] = asks_of(book.admit([(A, limits)], Units(requests=1), now))
    assert 450 <= ask.want.requests <= 550  # about LEASE_TTL / 4 seconds' worth at 1000 per second
    book.leases[A].rate = 100_000.0
    [ask] = asks_of(book.admit([(A, limits)], Units(requests=1), now))
    assert ask.want.requests == MAX_BATCH  # (never more than the cap)
    slow = LeaseBook()
    now = T0
    for _ in range(30):  # 4 per second
        admitted(slow, [(A, limits)], Units(requests=1), now, ledger)
        slow.leases[A].requests = 0
        now += 0.25
    [ask] = asks_of(slow.admit([(A, limits)], Units(requests=1), now))
    assert ask.want.requests == 2  # about LEASE_TTL / 4 seconds' worth


def test_slots_are_never_asked_in_batches() -> None:
    book = LeaseBook()
    limits = Limits(requests_per_minute=100_000, concurrent_requests=100)
    book.leases.clear()
    asks = book.admit([(A, limits)], ONE, T0)
    assert isinstance(asks, list)
    book.leases[A].rate = 100_000.0
    [ask] = asks_of(book.admit([(A, limits)], ONE, T0))
    assert ask.want.requests == MAX_BATCH and ask.want.concurrent == 1


def test_request_and_token_units_expire_with_the_lease_and_go_back() -> None:
    book, ledger = LeaseBook(), Ledger()
    limits = Limits(requests_per_minute=600)
    asks = book.admit([(A, limits)], Units(requests=1), T0)
    assert isinstance(asks, list)
    asks = [CounterAsk(A, limits, need=Units(requests=1), want=Units(requests=10))]
    assert grant_all(book, asks, T0, ledger)
    assert isinstance(book.admit([(A, limits)], Units(requests=1), T0 + LEASE_TTL - 0.01), Admission)
    assert book.expired(T0 + LEASE_TTL - 0.01) == []
    assert isinstance(book.admit([(A, limits)], Units(requests=1), T0 + LEASE_TTL), list)  # unusable now
    assert book.expired(T0 + LEASE_TTL) == [CounterReturn(A, limits, Units(requests=9))]
    assert book.expired(T0 + LEASE_TTL + 1) == []


def test_a_later_grant_adds_to_a_live_lease_without_extending_it() -> None:
    book = LeaseBook()
    limits = Limits(requests_per_minute=600)
    state = CounterState(remaining=Units())
    ask = CounterAsk(A, limits, need=Units(requests=1), want=Units(requests=1))
    assert book.granted([ask], [CounterGrant(A, Units(requests=3), state)], T0)
    assert book.granted([ask], [CounterGrant(A, Units(requests=2), state)], T0 + 1.5)
    assert book.leases[A].requests == 5 and book.leases[A].expires == T0 + LEASE_TTL
    # a grant to a lapsed lease opens a new one; the lapsed units go back
    assert book.granted([ask], [CounterGrant(A, Units(requests=4), state)], T0 + 3)
    assert book.leases[A].requests == 4 and book.leases[A].expires == T0 + 3 + LEASE_TTL
    assert book.expired(T0 + 3) == [CounterReturn(A, limits, Units(requests=5))]


def test_granted_is_true_when_a_siblings_grant_covers_a_refused_ask() -> None:
    book = LeaseBook()
    limits = Limits(requests_per_minute=10)
    ask = CounterAsk(A, limits, need=Units(requests=1), want=Units(requests=1))
    state = CounterState(remaining=Units())
    assert book.granted([ask], [CounterGrant(A, Units(requests=5), state)], T0)
    refused = CounterGrant(A, Units(), state, retry_after=3.0)
    assert book.granted([ask], [refused], T0)  # the lease still holds 5
    book.leases[A].requests = 0
    assert not book.granted([ask], [refused], T0)
    assert not book.granted([ask], [], T0)  # an answer without its grants covers nothing


def test_finish_returns_the_slot_to_the_lease_and_expired_gives_it_back() -> None:
    book, ledger = LeaseBook(), Ledger()
    limits = Limits(concurrent_requests=2)
    first = admitted(book, [(A, limits)], ONE, T0, ledger)
    assert book.leases[A].in_use == 1
    book.finish(first, None, None, T0 + 1)
    book.finish(first, None, None, T0 + 1)  # twice is once
    assert book.leases[A].free == 1 and book.leases[A].in_use == 0
    second = book.admit([(A, limits)], ONE, T0 + 1.1)  # reused here without asking
    assert isinstance(second, Admission)
    book.finish(second, None, None, T0 + 1.2)
    assert book.expired(T0 + 1.3) == [CounterReturn(A, limits, Units(concurrent=1))]
    assert book.expired(T0 + 1.4) == []


def test_slots_in_use_are_never_given_back_by_expiry_or_recall() -> None:
    book, ledger = LeaseBook(), Ledger()
    limits = Limits(requests_per_minute=100, concurrent_requests=5)
    running = admitted(book, [(A, limits)], ONE, T0, ledger)
    assert book.recall([A]) == []
    assert book.expired(T0 + 100) == []
    book.finish(running, None, None, T0 + 101)
    assert book.recall([A]) == [CounterReturn(A, limits, Units(concurrent=1))]


def test_real_usage_replaces_the_estimate() -> None:
    book, ledger = LeaseBook(), Ledger()
    limits = Limits(tokens_per_minute=10_000)
    over = admitted(book, [(A, limits)], ONE, T0, ledger)
    lease = book.leases[A]
    held = lease.input_tokens, lease.output_tokens
    book.finish(over, 40, 20, T0 + 0.5)  # used less than the estimate: back into the live lease
    assert (lease.input_tokens, lease.output_tokens) == (held[0] + 60, held[1] + 30)
    assert book.take_charges() == []
    under = admitted(book, [(A, limits)], ONE, T0 + 0.6, ledger)
    book.finish(under, 300, 50, T0 + 0.7)
    late = admitted(book, [(A, limits)], ONE, T0 + 0.8, ledger)
    book.finish(late, 10, None, T0 + 5)  # lease lapsed: the overestimate goes to the counter
    [charge] = book.take_charges()
    assert (charge.counter, charge.input_tokens, charge.output_tokens) == (A, 200 - 90, 0)
    assert book.take_charges() == []


def test_usage_on_a_dimension_the_rule_does_not_count_is_not_charged() -> None:
    book, ledger = LeaseBook(), Ledger()
    limits = Limits(requests_per_minute=10, output_tokens_per_minute=1000)
    admission = admitted(book, [(A, limits)], ONE, T0, ledger)
    assert admission.taken == [(A, Units(requests=1, output_tokens=50))]
    book.finish(admission, 5000, 80, T0)
    [charge] = book.take_charges()
    assert (charge.input_tokens, charge.output_tokens) == (0, 30)


def test_recall_gives_back_every_unused_unit_of_those_counters() -> None:
    book, ledger = LeaseBook(), Ledger()
    limits = Limits(requests_per_minute=100)
    asks = [CounterAsk(A, limits, Units(requests=1), Units(requests=10)), CounterAsk(B, limits, Units(requests=1), Units(requests=10))]
    assert grant_all(book, asks, T0, ledger)
    assert book.recall([A]) == [CounterReturn(A, limits, Units(requests=10))]
    assert book.leases[B].requests == 10
    assert book.recall([CounterId("x", "v", "k")]) == []


def test_release_all_gives_back_everything_once() -> None:
    book, ledger = LeaseBook(), Ledger()
    limits = Limits(requests_per_minute=100, concurrent_requests=4)
    asks = [CounterAsk(A, limits, Units(requests=1, concurrent=1), Units(requests=8, concurrent=1))]
    assert grant_all(book, asks, T0, ledger)
    running = book.admit([(A, limits)], Units(requests=1, concurrent=1), T0)
    assert isinstance(running, Admission)
    assert book.release_all() == [CounterReturn(A, limits, Units(requests=7, concurrent=1))]
    book.finish(running, None, None, T0 + 1)  # its slot went back with the drain already
    assert book.release_all() == [] and book.expired(T0 + 10) == []


def test_idle_lease_records_are_forgotten() -> None:
    book, ledger = LeaseBook(), Ledger()
    limits = Limits(requests_per_minute=100)
    for n in range(50):
        admitted(book, [(CounterId("r", "v", f"ip{n}"), limits)], Units(requests=1), T0, ledger)
    assert len(book.leases) == 50
    book.expired(T0 + 30)
    assert len(book.leases) == 50
    book.expired(T0 + 61)
    assert book.leases == {}


def test_tightest_reports_the_counter_closest_to_refusing_with_the_lease_added() -> None:
    book = LeaseBook()
    roomy, tight = Limits(requests_per_minute=1000), Limits(requests_per_minute=10)
    asks = book.admit([(A, roomy), (B, tight)], Units(requests=1), T0)
    assert isinstance(asks, list)
    grants = [
        CounterGrant(A, Units(requests=5), CounterState(remaining=Units(requests=900), reset_requests=6.0)),
        CounterGrant(B, Units(requests=2), CounterState(remaining=Units(requests=3), reset_requests=42.0)),
    ]
    assert book.granted(asks, grants, T0)
    admission = book.admit([(A, roomy), (B, tight)], Units(requests=1), T0)
    assert isinstance(admission, Admission)
    best = admission.tightest()
    assert best is not None
    assert best[0] == tight
    assert best[1].remaining.requests == 3 + 1 and best[1].reset_requests == 42.0


@pytest.mark.parametrize("rounds", [1, 5])
def test_a_worker_never_admits_beyond_what_it_was_granted(rounds: int) -> None:
    book, ledger = LeaseBook(), Ledger()
    limits = Limits(requests_per_minute=7)
    admitted_count = 0
    for _ in range(20):
        result = book.admit([(A, limits)], Units(requests=1), T0)
        for _ in range(rounds):
            if isinstance(result, Admission):
                break
            if not book.granted(result, ledger.ask("w1", result, T0), T0):
                break
            result = book.admit([(A, limits)], Units(requests=1), T0)
        admitted_count += isinstance(result, Admission)
    assert admitted_count == 7


def test_the_low_flag_and_the_headers_agree_with_the_general_forms() -> None:
    # `Admission.low` gates `refills` (it must be set whenever refills has asks to make), and a
    # lease's headers come from cached parts (they must equal rate_limit_headers of its view).
    import random

    from llmrelay.limits.headers import rate_limit_headers

    rng = random.Random(5)
    shapes = [
        Limits(requests_per_minute=600, tokens_per_minute=100_000),
        Limits(requests_per_minute=60),
        Limits(input_tokens_per_minute=5000),
        Limits(output_tokens_per_minute=700, concurrent_requests=3),
        Limits(input_tokens_per_minute=900, output_tokens_per_minute=800, tokens_per_day=10**6),
        Limits(concurrent_requests=2),
    ]
    ledger = Ledger()
    refilled = headers_seen = 0
    for round_ in range(300):
        book = LeaseBook()
        limits = rng.choice(shapes)
        counters = [(CounterId("r", "v", f"k{round_}"), limits)]
        if rng.random() < 0.3:
            counters.append((CounterId("r2", "v", f"k{round_}"), rng.choice(shapes)))
        now = T0 + round_ * 100
        need = Units(requests=1, input_tokens=rng.randrange(1, 400), output_tokens=rng.randrange(0, 200), concurrent=1)
        for step in range(rng.randrange(1, 40)):
            now += rng.choice([0.0, 0.001, 0.05, 0.3, 1.9])
            result = book.admit(counters, need, now)
            if isinstance(result, list):
                grant_all(book, result, now, ledger)
                continue
            if book.refills(result, now):
                assert result.low
                refilled += 1
            headers_seen += 1
            for part in result.parts:
                assert part.lease.headers() == rate_limit_headers(part.lease.limits, part.lease.view())
            if rng.random() < 0.5:
                book.finish(result, rng.randrange(500), rng.randrange(300), now)
    assert refilled > 50 and headers_seen > 1000, (refilled, headers_seen)  # (both paths were taken)
