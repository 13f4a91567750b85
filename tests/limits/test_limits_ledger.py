"""The supervisor's counters: all-or-nothing grants, grants that shrink near the limit, refusals with
the right wait, returns, charges, dead holders, reloads and bounded memory."""

from __future__ import annotations

import pytest

from llmrelay.limits.buckets import DAY
from llmrelay.limits.ledger import FORGET_AFTER, SWEEP_INTERVAL, Ledger
from llmrelay.limits.types import LEASE_TTL, CounterAsk, CounterCharge, CounterId, CounterReturn, Limits, Units

T0 = 1_700_000_000.0
CID = CounterId(rule="per-key", version="abc", key="alice")


def ask(limits: Limits, need: Units, want: Units | None = None, counter: CounterId = CID) -> CounterAsk:
    return CounterAsk(counter=counter, limits=limits, need=need, want=want if want is not None else need)


def test_a_grant_is_the_want_while_plenty_is_left() -> None:
    ledger = Ledger()
    limits = Limits(requests_per_minute=600)
    [grant] = ledger.ask("w1", [ask(limits, Units(requests=1), Units(requests=20))], T0)
    assert grant.granted == Units(requests=20) and grant.retry_after == 0
    assert grant.state.remaining.requests == 580
    assert grant.state.reset_requests == pytest.approx(2.0)


def test_grants_shrink_near_the_limit_to_the_single_request() -> None:
    ledger = Ledger()
    limits = Limits(requests_per_minute=40)
    sizes = []
    for n in range(12):
        [grant] = ledger.ask(f"w{n % 4}", [ask(limits, Units(requests=1), Units(requests=64))], T0)
        sizes.append(grant.granted.requests)
    # at most half of what is left, divided among the active holders, never below the need
    assert sizes[0] == 20  # 40 / (2 * 1)
    assert sizes[1] == 5  # 20 / (2 * 2)
    assert all(b <= a for a, b in zip(sizes[1:], sizes[2:]))
    assert sum(sizes) <= 40 and sizes[-1] in (0, 1)
    [grant] = ledger.ask("w9", [ask(limits, Units(requests=1), Units(requests=64))], T0)
    while grant.granted.requests:  # every last unit goes, one request at a time
        assert grant.granted.requests == 1
        [grant] = ledger.ask("w9", [ask(limits, Units(requests=1), Units(requests=64))], T0)
    assert grant.retry_after == pytest.approx(60 / 40)


def test_a_refusal_grants_nothing_and_names_the_longest_wait() -> None:
    ledger = Ledger()
    limits = Limits(requests_per_minute=60, tokens_per_minute=600, concurrent_requests=1, tokens_per_day=10_000)
    [grant] = ledger.ask("w1", [ask(limits, Units(requests=1, input_tokens=500, concurrent=1))], T0)
    assert grant.granted == Units(requests=1, input_tokens=500, concurrent=1)
    # tokens short by 400 (40 s), concurrency held (1 s), requests fine
    [refused] = ledger.ask("w2", [ask(limits, Units(requests=1, input_tokens=500, concurrent=1))], T0)
    assert refused.granted == Units()
    assert refused.retry_after == pytest.approx(40.0)
    assert refused.state.remaining == Units(requests=59, input_tokens=100, output_tokens=100, concurrent=0)
    # nothing was taken by the refusal
    [again] = ledger.ask("w2", [ask(limits, Units(requests=1, input_tokens=100))], T0)
    assert again.granted == Units(requests=1, input_tokens=100)


def test_concurrency_refusal_waits_one_second_and_day_refusal_waits_for_midnight() -> None:
    ledger = Ledger()
    slots = Limits(concurrent_requests=1)
    ledger.ask("w1", [ask(slots, Units(concurrent=1))], T0)
    [refused] = ledger.ask("w2", [ask(slots, Units(concurrent=1))], T0)
    assert refused.granted == Units() and refused.retry_after == 1.0
    day = Limits(tokens_per_day=1000)
    other = CounterId(rule="budget", version="v", key="-")
    ledger.ask("w1", [ask(day, Units(input_tokens=900), counter=other)], T0)
    [refused] = ledger.ask("w1", [ask(day, Units(input_tokens=200), counter=other)], T0)
    assert refused.retry_after == pytest.approx((T0 // DAY + 1) * DAY - T0)
    [fresh] = ledger.ask("w1", [ask(day, Units(input_tokens=200), counter=other)], (T0 // DAY + 1) * DAY)
    assert fresh.granted.input_tokens == 200


def test_a_request_larger_than_a_whole_minute_is_admitted_on_a_full_bucket() -> None:
    ledger = Ledger()
    limits = Limits(tokens_per_minute=1000)
    [grant] = ledger.ask("w1", [ask(limits, Units(input_tokens=3000, output_tokens=500))], T0)
    assert grant.granted == Units(input_tokens=3000, output_tokens=500)
    assert grant.state.remaining.input_tokens == 0
    # its debt is paid back before anything else: 2500 over, then a full minute for the next one
    [refused] = ledger.ask("w1", [ask(limits, Units(input_tokens=3000))], T0)
    assert refused.retry_after == pytest.approx(3500 * 60 / 1000)


def test_token_grants_are_shared_between_input_and_output_within_the_token_limits() -> None:
    ledger = Ledger()
    limits = Limits(tokens_per_minute=10_000, output_tokens_per_minute=2_000)
    need = Units(requests=1, input_tokens=1000, output_tokens=500)
    want = Units(requests=10, input_tokens=10_000, output_tokens=5_000)
    [grant] = ledger.ask("w1", [ask(limits, need, want)], T0)
    g = grant.granted
    assert g.output_tokens <= 1000  # half the output limit for one holder
    assert g.input_tokens + g.output_tokens <= 5000  # half the token limit
    assert g.input_tokens >= 1000 and g.output_tokens >= 500
    assert g.requests == 10  # requests are not limited: granted as asked
    assert grant.state.remaining.input_tokens == 10_000 - g.input_tokens - g.output_tokens
    assert grant.state.remaining.output_tokens == min(2000 - g.output_tokens, 10_000 - g.tokens)


def test_unlimited_dimensions_are_granted_as_asked_and_not_tracked() -> None:
    ledger = Ledger()
    limits = Limits(requests_per_minute=5)
    for _ in range(5):
        [grant] = ledger.ask("w1", [ask(limits, Units(requests=1, input_tokens=10**9, concurrent=1))], T0)
        assert grant.granted == Units(requests=1, input_tokens=10**9, concurrent=1)
    [refused] = ledger.ask("w1", [ask(limits, Units(requests=1, input_tokens=1, concurrent=1))], T0)
    assert refused.granted == Units()


def test_each_ask_is_decided_alone() -> None:
    ledger = Ledger()
    tight, loose = Limits(requests_per_minute=1), Limits(requests_per_minute=100)
    a, b = CounterId("a", "v", "k"), CounterId("b", "v", "k")
    ledger.ask("w1", [ask(tight, Units(requests=1), counter=a)], T0)
    grants = ledger.ask("w1", [ask(tight, Units(requests=1), counter=a), ask(loose, Units(requests=1), counter=b)], T0)
    assert [g.counter for g in grants] == [a, b]
    assert grants[0].granted == Units() and grants[1].granted == Units(requests=1)


def test_returns_come_back_capped_and_only_a_holders_own_slots() -> None:
    ledger = Ledger()
    limits = Limits(requests_per_minute=10, concurrent_requests=2)
    ledger.ask("w1", [ask(limits, Units(requests=1, concurrent=1), Units(requests=4, concurrent=1))], T0)
    ledger.ask("w2", [ask(limits, Units(requests=1, concurrent=1))], T0)
    ledger.give_back("w1", [CounterReturn(CID, limits, Units(requests=3, concurrent=5))], T0)
    [(_, state)] = ledger.states(T0)
    assert state.remaining.requests == 10 - 1 - 1 and state.remaining.concurrent == 1
    ledger.give_back("w1", [CounterReturn(CID, limits, Units(requests=100))], T0)
    [(_, state)] = ledger.states(T0)
    assert state.remaining.requests == 10  # never above the limit
    ledger.give_back("w9", [CounterReturn(CounterId("gone", "v", "k"), limits, Units(requests=1))], T0)
    assert len(ledger.counters) == 1  # a return to an unknown counter creates nothing


def test_charges_correct_the_token_counters() -> None:
    ledger = Ledger()
    limits = Limits(tokens_per_minute=1000, input_tokens_per_minute=800, tokens_per_day=5000)
    ledger.ask("w1", [ask(limits, Units(input_tokens=100, output_tokens=100))], T0)
    ledger.charge([CounterCharge(CID, limits, input_tokens=300, output_tokens=-50)], T0)
    counter = ledger.counters[CID]
    assert counter.tokens is not None and counter.tokens.available(T0) == pytest.approx(1000 - 200 - 250)
    assert counter.input is not None and counter.input.available(T0) == pytest.approx(800 - 100 - 300)
    assert counter.day is not None and counter.day.available(T0) == 5000 - 450
    other = CounterId("late", "v", "k")
    ledger.charge([CounterCharge(other, limits, input_tokens=900, output_tokens=0)], T0)
    assert ledger.counters[other].state(T0).remaining.input_tokens == 0  # created from the charge's limits


def test_a_dropped_holder_frees_its_slots() -> None:
    ledger = Ledger()
    limits = Limits(concurrent_requests=2)
    [half] = ledger.ask("w1", [ask(limits, Units(concurrent=1), Units(concurrent=2))], T0)
    assert half.granted.concurrent == 1  # a holder's want is held to half of what is left
    ledger.ask("w1", [ask(limits, Units(concurrent=1))], T0)
    [refused] = ledger.ask("w2", [ask(limits, Units(concurrent=1))], T0)
    assert refused.granted == Units()
    ledger.drop_holder("w1")
    [grant] = ledger.ask("w2", [ask(limits, Units(concurrent=1))], T0)
    assert grant.granted.concurrent == 1
    assert ledger.recent_holders(CID, T0) == ["w2"]


def test_recent_holders_are_those_granted_within_the_lease_ttl() -> None:
    ledger = Ledger()
    limits = Limits(requests_per_minute=100)
    ledger.ask("w1", [ask(limits, Units(requests=1))], T0)
    ledger.ask("w2", [ask(limits, Units(requests=1))], T0 + 1.5)
    ledger.ask("w3", [ask(limits, Units(requests=100))], T0 + 1.5)  # refused: not a holder
    assert sorted(ledger.recent_holders(CID, T0 + 1.5)) == ["w1", "w2"]
    assert ledger.recent_holders(CID, T0 + LEASE_TTL + 1) == ["w2"]
    assert ledger.recent_holders(CounterId("x", "v", "k"), T0) == []


def test_retain_keeps_only_the_counters_of_unchanged_rules() -> None:
    ledger = Ledger()
    limits = Limits(requests_per_minute=10)
    kept, changed = CounterId("a", "v1", "k"), CounterId("b", "v1", "k")
    ledger.ask("w1", [ask(limits, Units(requests=5), counter=kept), ask(limits, Units(requests=5), counter=changed)], T0)
    ledger.retain({("a", "v1"), ("b", "v2")})
    assert list(ledger.counters) == [kept]
    assert ledger.counters[kept].state(T0).remaining.requests == 5


def test_idle_full_counters_are_forgotten_and_busy_ones_kept() -> None:
    ledger = Ledger()
    minute, day, slots = Limits(requests_per_minute=60), Limits(tokens_per_day=100), Limits(concurrent_requests=3)
    ids = [CounterId("r", "v", f"ip{n}") for n in range(100)]
    for cid in ids:
        ledger.ask("w1", [ask(minute, Units(requests=1), counter=cid)], T0)
    spent, held = CounterId("d", "v", "k"), CounterId("c", "v", "k")
    ledger.ask("w1", [ask(day, Units(input_tokens=10), counter=spent), ask(slots, Units(concurrent=1), counter=held)], T0)
    ledger.states(T0 + FORGET_AFTER - 1)
    assert len(ledger.counters) == 102
    ledger.states(T0 + FORGET_AFTER + SWEEP_INTERVAL + 1)
    assert set(ledger.counters) == {spent, held}  # a spent day budget and a held slot are kept
