"""The worker's side of upstream selection (`relay.upstreams`): health from the supervisor's table and
from its own observations, key cool-downs, half-open probes, and the Retry-After of 'nothing usable'."""

from __future__ import annotations

import time
from collections import Counter

from llmrelay.config import load_config_text
from llmrelay.control import EndpointHealth, KeyHealth, UpstreamHealth
from llmrelay.relay.upstreams import EndpointUpstreams

CONFIG = """
auth_keys = ["team", "tenant-a"]
[endpoints.chat]
[[endpoints.chat.upstreams]]
name = "a"
target_base = "http://127.0.0.1:9/v1"
weight = 1
api_keys = [{ key = "sk-1", weight = 1 }, { key = "sk-2", weight = 3 }]
[[endpoints.chat.upstreams]]
name = "b"
target_base = "http://127.0.0.1:10/v1"
weight = 2
[[endpoints.chat.upstreams]]
name = "scoped"
target_base = "http://127.0.0.1:11/v1"
auth_keys = ["tenant-b"]
priority = 5
[[endpoints.chat.upstreams]]
name = "spare"
target_base = "http://127.0.0.1:12/v1"
fallback = true
health_check = { interval = 7 }
"""
TEAM, TENANT_A, TENANT_B = 0, 1, 2  # indexes of the endpoint's relay keys (own, then scoped)


def upstreams() -> EndpointUpstreams:
    config = load_config_text(CONFIG, "t", environ={})
    return EndpointUpstreams(config.endpoints[0])


def names(ups: EndpointUpstreams, key: int | None, n: int, now: float | None = None) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        choice = ups.choose(key, now or time.time())
        counts[choice.name if choice else "-"] += 1
    return counts


async def test_weights_and_scope() -> None:
    ups = upstreams()
    assert names(ups, TEAM, 300) == {"a": 100, "b": 200}
    assert names(ups, TENANT_B, 10) == {"scoped": 10}  # its own tier-5 upstream first
    ups.by_name["scoped"].check_ok = False
    assert names(ups, TENANT_B, 30) == {"a": 10, "b": 20}  # then every unscoped one


async def test_keys_follow_their_weights_and_a_cooling_key_is_skipped() -> None:
    a = upstreams().by_name["a"]
    now = time.time()
    assert Counter(a.pick_key(now) for _ in range(400)) == {0: 100, 1: 300}
    a.cool_key(1, now + 2)
    assert {a.pick_key(now) for _ in range(20)} == {0}
    assert a.usable(now)
    a.disable_key(0)
    assert not a.usable(now) and a.pick_key(now) is None
    assert a.usable(now + 3) and a.pick_key(now + 3) == 1  # the cool-down ends; the disabled key stays out


async def test_a_later_cool_down_wins_and_an_earlier_one_never_shortens_it() -> None:
    a = upstreams().by_name["a"]
    now = time.time()
    a.cool_key(0, now + 10)
    a.cool_key(0, now + 2)
    assert a.key_cooling[0] == now + 10


async def test_fallback_only_when_nothing_else_is_usable_and_the_503_retry_after() -> None:
    ups = upstreams()
    now = time.time()
    table = EndpointHealth(
        {
            "a": UpstreamHealth(state="ejected", ejected_until=now + 4),
            "b": UpstreamHealth(state="ejected", ejected_until=now + 8),
        }
    )
    ups.apply(table, now, keys=True)
    assert names(ups, TEAM, 5, now) == {"spare": 5}
    ups.by_name["spare"].check_ok = False
    assert ups.choose(TEAM, now) is None
    assert 3.9 <= ups.retry_after(TEAM, now) <= 4.0  # the soonest ejection ends first


async def test_nothing_usable_with_no_deadline_waits_for_the_active_check_interval() -> None:
    ups = upstreams()
    for upstream in ups.upstreams:
        upstream.check_ok = False
    assert ups.retry_after(TEAM, time.time()) == 7


async def test_an_ejection_past_its_deadline_lets_one_probe_through_per_worker() -> None:
    ups = upstreams()
    b = ups.by_name["b"]
    now = time.time()
    ups.apply(EndpointHealth({"b": UpstreamHealth(state="ejected", ejected_until=now - 1)}), now, keys=True)
    assert b.usable(now)
    b.start_attempt(now)  # the probe
    assert not b.usable(now)  # no second one while it runs
    b.attempt_failed(now)
    assert not b.usable(now) and b.usable(now + 1.5)  # held until the supervisor's verdict arrives
    assert b.start_attempt(now + 1.5)
    b.end_probe()  # the client went away before any verdict: the next request probes
    assert b.usable(now + 1.5)
    assert b.start_attempt(now + 1.5)
    b.attempt_succeeded()
    assert b.usable(now + 1.5) and b.ejected_until == 0.0
    assert not b.start_attempt(now + 2)  # not ejected: an ordinary attempt


async def test_the_tables_key_states_merge_with_the_workers_own() -> None:
    ups = upstreams()
    a = ups.by_name["a"]
    now = time.time()
    a.cool_key(0, now + 30)
    shared = EndpointHealth({"a": UpstreamHealth(keys=[KeyHealth("0", "cooling", now + 5), KeyHealth("1", "disabled")])})
    ups.apply(shared, now, keys=True)
    assert a.key_cooling[0] == now + 30 and a.key_disabled[1]
    other = upstreams()
    other.apply(shared, now, keys=False)  # a table of another config generation: keys untouched
    assert not other.by_name["a"].key_disabled[1]


async def test_a_refreshed_key_ignores_a_verdict_on_its_older_value() -> None:
    ups = upstreams()
    a = ups.by_name["a"]
    now = time.time()
    a.disable_key(1)
    a.refreshed_key(1, "sk-2-renewed", 1, now)  # (the supervisor's first new value)
    assert a.keys[1] == "sk-2-renewed" and not a.key_disabled[1]
    before = EndpointHealth({"a": UpstreamHealth(keys=[KeyHealth("0"), KeyHealth("1", "disabled", refreshes=0)])})
    ups.apply(before, now, keys=True)  # a table made before the refresh, delivered after it
    assert not a.key_disabled[1]
    a.refreshed_key(1, "sk-2-older", 1, now)  # an update not newer than the value in use changes nothing
    assert a.keys[1] == "sk-2-renewed"
    after = EndpointHealth({"a": UpstreamHealth(keys=[KeyHealth("0"), KeyHealth("1", "disabled", refreshes=1)])})
    ups.apply(after, now, keys=True)  # the provider refused the new value too
    assert a.key_disabled[1]
