"""Passive health and key cool-downs, sans-IO (`supervisor.breaker`), with the cases other proxies get
wrong: a later deadline always wins, every failure class counts, one transient failure ejects nothing."""

from __future__ import annotations

from supervisor.breaker import FIRST_COOLDOWN, MAX_COOLDOWN, Breaker, BreakerState, CheckVerdict, KeyState


def test_threshold_failures_in_a_row_eject_and_a_success_resets_the_count() -> None:
    breaker = Breaker(threshold=3)
    assert not breaker.failure(0.0, "connect refused")
    assert not breaker.failure(0.1, "reset")
    assert breaker.success() is False  # it was never ejected
    assert not breaker.failure(0.2, "timeout") and not breaker.failure(0.3, "status 502")
    assert breaker.usable(0.3)
    assert breaker.failure(0.4, "status 503")
    assert breaker.state is BreakerState.EJECTED and not breaker.usable(0.5)
    assert breaker.until == 0.4 + FIRST_COOLDOWN


def test_one_transient_failure_does_not_eject_a_healthy_upstream() -> None:
    breaker = Breaker(threshold=3)
    for second in range(10):
        assert not breaker.failure(float(second), "stream reset mid-body")
        breaker.success()
    assert breaker.usable(10.0) and breaker.state is BreakerState.OK


def test_twenty_five_5xx_in_a_row_never_leave_the_upstream_in_rotation() -> None:
    breaker = Breaker(threshold=3)
    now = 0.0
    for _ in range(25):
        breaker.usable(now)
        breaker.failure(now, "status 500")
        now += 0.01
    assert not breaker.usable(now)


def test_the_ejection_half_opens_then_one_probe_decides_and_the_cool_down_doubles() -> None:
    breaker = Breaker(threshold=1)
    breaker.failure(0.0, "refused")
    cooldowns = []
    now = 0.0
    for _ in range(9):
        now = breaker.until
        assert breaker.usable(now) and breaker.state is BreakerState.HALF_OPEN
        breaker.failure(now, "refused")  # the probe failed
        cooldowns.append(breaker.until - now)
    assert cooldowns == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]
    assert max(cooldowns) == MAX_COOLDOWN
    assert breaker.usable(breaker.until)
    assert breaker.success() is True  # the probe went through: back in rotation, cool-down reset
    assert breaker.state is BreakerState.OK and breaker.cooldown == 0.0


def test_a_second_failure_while_ejected_extends_to_the_later_deadline_never_the_earlier() -> None:
    breaker = Breaker(threshold=1)
    breaker.failure(10.0, "refused")
    assert breaker.until == 11.0
    breaker.failure(10.8, "reset")  # a request already under way failed too
    assert breaker.until == 11.8 and breaker.cooldown == FIRST_COOLDOWN  # later, not doubled
    breaker.failure(10.1, "late report")  # an older failure reported late: never shortens
    assert breaker.until == 11.8


def test_a_cool_down_holds_from_the_next_request_on() -> None:
    breaker = Breaker(threshold=1)
    breaker.failure(5.0, "refused")
    assert not breaker.usable(5.0)  # no refresh cycle: the very next look sees it


def test_key_cool_downs_keep_the_later_deadline_and_disables_last_until_reload() -> None:
    key = KeyState()
    key.cool(12.0)
    key.cool(11.0)  # a shorter Retry-After arriving later does not shorten the cool-down
    assert key.cooling_until == 12.0 and not key.usable(11.9) and key.usable(12.0)
    assert key.disable() is True and key.disable() is False  # logged once
    assert not key.usable(1e9)


def test_the_check_verdict_turns_only_after_its_thresholds_in_a_row() -> None:
    verdict = CheckVerdict(healthy_threshold=2, unhealthy_threshold=3)
    assert verdict.ok  # healthy until proven otherwise
    assert [verdict.result(False) for _ in range(2)] == [False, False]
    assert verdict.result(True) is False and verdict.ok  # a pass breaks the run of failures
    assert [verdict.result(False) for _ in range(3)] == [False, False, True] and not verdict.ok
    assert verdict.result(False) is False  # already unhealthy: turns once
    assert verdict.result(True) is False and verdict.result(False) is False and not verdict.ok
    assert [verdict.result(True) for _ in range(2)] == [False, True] and verdict.ok
