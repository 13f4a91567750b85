"""Fuzzes the rate limiter's core (`llmrelay.limits`): the exactness of leases and the robustness of
what reads client input.

- Exactness: any number of workers, each admitting from its own `LeaseBook` against one `Ledger`,
  under any arrivals, answer delays (so any order of answers across workers), request durations,
  kills and graceful replacements: the admitted requests of any window never pass what the bucket
  allows (a burst: exactly the limit), concurrency never passes its limit, and once everything has
  ended and the leases went back, no slot is left held.
- The estimate never raises and never goes negative, whatever the body; counter keys from any facts
  are bounded and never hold a header value.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "limits"))

from limits_sim import T0, Simulation, bucket_bound, check_windows, most_in_window  # noqa: E402

from llmrelay.config.resolved import ResolvedRule  # noqa: E402
from llmrelay.limits.estimate import estimate  # noqa: E402
from llmrelay.limits.headers import duration, retry_after_header  # noqa: E402
from llmrelay.limits.rules import MAX_KEY, RequestFacts, RuleSet, hashed  # noqa: E402
from llmrelay.limits.types import Limits  # noqa: E402

HORIZON = 150.0


def make_rule(name: str, **fields: Any) -> ResolvedRule:
    """A resolved rule that matches anything unless told otherwise."""
    base: dict[str, Any] = {
        "version": "v1", "endpoints": [], "models": [], "upstreams": [], "relay_keys": [], "client_ips": [],
        "per": "relay_key", "per_header": "", "limits": Limits(requests_per_minute=10),
    }  # fmt: skip
    base.update(fields)
    return ResolvedRule(name=name, **base)


arrival = st.tuples(
    st.floats(min_value=0, max_value=HORIZON - 20),  # when
    st.integers(min_value=0, max_value=7),  # which worker (modulo the count)
    st.floats(min_value=0, max_value=5),  # how long it runs
    st.integers(min_value=1, max_value=8),  # how many arrive at that instant
)
incident = st.tuples(st.floats(min_value=0, max_value=HORIZON - 20), st.integers(min_value=0, max_value=7), st.booleans())


@given(
    workers=st.integers(min_value=1, max_value=6),
    per_minute=st.integers(min_value=1, max_value=300),
    slots=st.integers(min_value=0, max_value=8),
    arrivals=st.lists(arrival, max_size=80),
    incidents=st.lists(incident, max_size=4),
    max_delay=st.sampled_from([0.0, 0.001, 0.05, 0.5]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_workers_with_leases_never_admit_more_than_the_limit(
    workers: int,
    per_minute: int,
    slots: int,
    arrivals: list[tuple[float, int, float, int]],
    incidents: list[tuple[float, int, bool]],
    max_delay: float,
    seed: int,
) -> None:
    sim = Simulation(workers, Limits(requests_per_minute=per_minute, concurrent_requests=slots), seed, max_delay)
    sim.start_ticks(T0 + HORIZON)
    for when, worker, length, count in arrivals:
        for _ in range(count):
            sim.at(T0 + when, sim.arrive, worker % workers, 0, length)
    for when, worker, kill in incidents:
        sim.at(T0 + when, sim.kill if kill else sim.retire, worker % workers)
    out = sim.run(until=T0 + HORIZON)
    times = [when for when, _ in out.admitted]
    check_windows(times, per_minute)
    assert most_in_window(times, 0.0) <= per_minute
    if slots:
        assert out.max_in_flight <= slots
    assert out.in_flight == 0
    for counter in sim.ledger.counters.values():
        assert counter.concurrency is None or counter.concurrency.held == 0


@given(
    workers=st.integers(min_value=1, max_value=8),
    limit=st.integers(min_value=1, max_value=60),
    burst=st.integers(min_value=1, max_value=150),
    max_delay=st.sampled_from([0.0, 0.01, 0.3]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_a_burst_admits_exactly_min_of_limit_and_arrivals(workers: int, limit: int, burst: int, max_delay: float, seed: int) -> None:
    sim = Simulation(workers, Limits(requests_per_minute=limit), seed, max_delay)
    for _ in range(burst):
        sim.at(T0, sim.arrive, sim.rng.randrange(workers))
    out = sim.run(until=T0 + 1)
    assert len(out.admitted) == min(limit, burst) <= bucket_bound(limit, 0)
    assert out.refused == burst - len(out.admitted)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["messages", "content", "text", "parts", "input", "system", "contents", "max_tokens", "generationConfig", "maxOutputTokens", "n", "tools", "x"]), inner, max_size=5),
    max_leaves=30,
)


@given(value=json_values, per_token=st.floats(allow_nan=True, allow_infinity=True), length=st.none() | st.integers(min_value=0, max_value=10**9))
def test_the_estimate_of_any_json_never_raises_and_is_never_negative(value: object, per_token: float, length: int | None) -> None:
    raw = json.dumps(value).encode()
    tokens_in, tokens_out = estimate("openai", raw, length, per_token)
    assert tokens_in >= 0 and tokens_out >= 0


@given(raw=st.binary(max_size=300), length=st.none() | st.integers(min_value=0, max_value=10**9))
def test_the_estimate_of_any_bytes_never_raises(raw: bytes, length: int | None) -> None:
    tokens_in, tokens_out = estimate("gemini", raw, length, 4.0)
    assert tokens_in >= 0 and tokens_out >= 0


@given(
    model=st.none() | st.text(max_size=300),
    client_ip=st.text(max_size=60),
    header=st.binary(max_size=200),
    per=st.sampled_from(["relay_key", "client_ip", "endpoint", "upstream", "model", "header"]),
)
def test_counter_keys_are_bounded_and_never_hold_a_header_value(model: str | None, client_ip: str, header: bytes, per: str) -> None:
    rules = RuleSet([make_rule(name="r", per=per, per_header="x-team", client_ips=[] if per != "client_ip" else ["0.0.0.0/0", "::/0"])])
    facts = RequestFacts(endpoint="openai", model=model, relay_key="alice", client_ip=client_ip, upstream="main", headers=[(b"X-Team", header)])
    for counter, _ in rules.counters(facts):
        assert len(counter.key) <= MAX_KEY
        if per == "header":
            assert counter.key == hashed(header)  # never the value


@given(seconds=st.floats(min_value=-10, max_value=10**7, allow_nan=False))
def test_header_values_are_well_formed(seconds: float) -> None:
    text = duration(seconds)
    assert text.endswith("s") and text[0].isdigit()
    [(name, value)] = retry_after_header(seconds)
    assert name == b"retry-after" and int(value) >= 1 and int(value) >= seconds
