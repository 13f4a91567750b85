"""The arithmetic of one counter's dimensions, on a fake clock."""

from __future__ import annotations

import pytest

from llmrelay.limits.buckets import DAY, Concurrency, DayBudget, MinuteBucket

T0 = 1_700_000_000.0  # 22:13:20 UTC
MIDNIGHT = (T0 // DAY + 1) * DAY


def test_a_minute_bucket_starts_full_and_refills_at_limit_per_60_seconds() -> None:
    bucket = MinuteBucket(60, T0)
    assert bucket.available(T0) == 60
    assert bucket.take(60, T0)
    assert not bucket.take(1, T0)
    assert bucket.available(T0 + 0.5) == pytest.approx(0.5)
    assert bucket.whole(T0 + 0.5) == 0
    assert bucket.available(T0 + 10) == pytest.approx(10)
    assert bucket.available(T0 + 600) == 60  # never above the capacity


def test_take_is_all_or_nothing() -> None:
    bucket = MinuteBucket(10, T0)
    assert bucket.take(7, T0)
    assert not bucket.take(4, T0)
    assert bucket.available(T0) == 3
    assert bucket.take(3, T0)


def test_refill_sums_are_seen_whole_despite_float_rounding() -> None:
    bucket = MinuteBucket(10, T0)
    bucket.take(10, T0)
    now = T0
    for _ in range(60):
        now += 1.0
        bucket.available(now)
    assert bucket.whole(now) == 10
    assert bucket.full(now)
    assert bucket.take(10, now)


def test_give_is_capped_at_the_capacity_and_charge_may_go_into_debt() -> None:
    bucket = MinuteBucket(100, T0)
    bucket.give(50, T0)
    assert bucket.available(T0) == 100
    bucket.take(30, T0)
    bucket.give(50, T0)
    assert bucket.available(T0) == 100
    bucket.charge(250, T0)
    assert bucket.available(T0) == -150
    assert bucket.whole(T0) == 0
    assert bucket.seconds_until(1, T0) == pytest.approx(151 * 60 / 100)
    bucket.charge(-40, T0)  # a negative charge gives back
    assert bucket.available(T0) == -110
    bucket.charge(-1000, T0)
    assert bucket.available(T0) == 100


def test_seconds_until_clamps_a_need_larger_than_the_capacity() -> None:
    bucket = MinuteBucket(1000, T0)
    assert bucket.seconds_until(5000, T0) == 0.0  # a full bucket admits any single request
    bucket.charge(5000, T0)
    assert bucket.seconds_until(5000, T0) == pytest.approx(5000 * 60 / 1000)  # the debt, then a full bucket
    assert bucket.reset_after(T0) == pytest.approx(5000 * 60 / 1000)


def test_reset_after_is_the_time_to_full() -> None:
    bucket = MinuteBucket(120, T0)
    assert bucket.reset_after(T0) == 0.0
    bucket.take(30, T0)
    assert bucket.reset_after(T0) == pytest.approx(15.0)
    assert bucket.reset_after(T0 + 5) == pytest.approx(10.0)


def test_a_clock_stepping_back_refills_nothing_and_does_not_drain() -> None:
    bucket = MinuteBucket(60, T0)
    bucket.take(60, T0)
    assert bucket.available(T0 - 3600) == 0
    assert bucket.available(T0 - 3590) == pytest.approx(10)


def test_a_day_budget_resets_at_midnight_utc() -> None:
    budget = DayBudget(1000, MIDNIGHT - 100)
    assert budget.take(900, MIDNIGHT - 100)
    assert not budget.take(200, MIDNIGHT - 50)
    assert budget.seconds_until(200, MIDNIGHT - 50) == pytest.approx(50)
    assert budget.reset_after(MIDNIGHT - 50) == pytest.approx(50)
    assert budget.available(MIDNIGHT) == 1000
    assert budget.take(200, MIDNIGHT + 1)
    assert budget.reset_after(MIDNIGHT + 1) == pytest.approx(DAY - 1)


def test_a_day_budget_charge_give_and_clamped_need() -> None:
    budget = DayBudget(1000, T0)
    assert budget.seconds_until(5000, T0) == 0.0  # clamped to the budget: admitted on a fresh day
    budget.charge(1500, T0)
    assert budget.whole(T0) == 0 and budget.available(T0) == -500
    assert budget.seconds_until(1, T0) == pytest.approx(MIDNIGHT - T0)
    budget.give(2000, T0)
    assert budget.available(T0) == 1000 and budget.full(T0)


def test_a_day_budget_is_not_restored_by_a_clock_stepping_back_over_midnight() -> None:
    budget = DayBudget(1000, MIDNIGHT + 10)
    budget.take(1000, MIDNIGHT + 10)
    assert budget.available(MIDNIGHT - 10) == 0


def test_concurrency_is_held_per_holder() -> None:
    slots = Concurrency(3)
    assert slots.take("a", 2)
    assert not slots.take("b", 2)
    assert slots.take("b", 1)
    assert slots.available() == 0
    slots.give("b", 5)  # more than it holds: only its own unit comes back
    assert slots.available() == 1
    slots.give("c", 1)  # a holder with nothing frees nothing
    assert slots.available() == 1
    slots.drop("a")
    assert slots.available() == 3 and slots.holdings == {}
    slots.drop("a")
    assert slots.available() == 3
