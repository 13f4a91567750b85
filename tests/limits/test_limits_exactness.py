"""The point of the leases: N workers admitting from their own leases together never admit more than a
counter allows, with asks answered in any order, leases expiring, recalled, given back at a drain and
lost with a killed worker. Simulated on a fake clock (`limits_sim`)."""

from __future__ import annotations

import pytest

from limits_sim import T0, Simulation, bucket_bound, check_windows, most_in_window
from llmrelay.limits.types import Limits


@pytest.mark.parametrize("seed", range(20))
def test_a_burst_of_50_on_4_workers_admits_exactly_10(seed: int) -> None:
    sim = Simulation(workers=4, limits=Limits(requests_per_minute=10), seed=seed)
    for n in range(50):
        sim.at(T0, sim.arrive, sim.rng.randrange(4))
    sim.start_ticks(T0 + 3)
    out = sim.run(until=T0 + 3)
    assert len(out.admitted) == 10
    assert out.refused == 40


@pytest.mark.parametrize("seed", range(10))
def test_a_burst_admits_exactly_the_limit_whatever_the_delays(seed: int) -> None:
    sim = Simulation(workers=8, limits=Limits(requests_per_minute=37), seed=seed, max_delay=0.2)
    for n in range(200):
        sim.at(T0 + sim.rng.uniform(0, 0.05), sim.arrive, sim.rng.randrange(8))
    out = sim.run(until=T0 + 1)
    assert len(out.admitted) == 37
    assert out.refused == 200 - 37


@pytest.mark.parametrize("seed", range(6))
def test_a_steady_overload_never_passes_the_bucket(seed: int) -> None:
    """Three minutes at about 4x the limit from 4 workers, with kills and replacements."""
    limit = 120
    sim = Simulation(workers=4, limits=Limits(requests_per_minute=limit), seed=seed, max_delay=0.02)
    end = T0 + 180
    sim.start_ticks(end)
    t = T0
    for n in range(1600):
        t += sim.rng.expovariate(8.0)
        sim.at(t, sim.arrive, sim.rng.randrange(4), 0, sim.rng.uniform(0, 2))
    for n in range(6):
        sim.at(T0 + sim.rng.uniform(0, 170), sim.kill if n % 2 else sim.retire, sim.rng.randrange(4))
    out = sim.run(until=end + 5)
    times = [when for when, _ in out.admitted]
    check_windows(times, limit)
    assert most_in_window(times, 0.0) <= bucket_bound(limit, 0)
    # and the limit is used, not starved: over 3 minutes at least 2.5 minutes' worth was admitted
    assert len(times) >= limit * 2.5
    assert out.recalls > 0


@pytest.mark.parametrize("seed", range(6))
def test_bursts_and_pauses_at_high_rates_never_pass_the_bucket(seed: int) -> None:
    """Bursts of up to 400 requests per second (big batches in the leases) between pauses long
    enough for the bucket to fill again while leases still hold units: every window stays within
    the bucket."""
    limit = 3000
    sim = Simulation(workers=4, limits=Limits(requests_per_minute=limit), seed=seed, max_delay=0.005)
    end = T0 + 240
    sim.start_ticks(end)
    t = T0
    while t < end - 10:
        burst_end = t + sim.rng.uniform(0.5, 15)
        rate = sim.rng.choice([20.0, 100.0, 400.0])
        while t < burst_end:
            t += sim.rng.expovariate(rate)
            sim.at(t, sim.arrive, sim.rng.randrange(4), 0, sim.rng.uniform(0, 0.5))
        t += sim.rng.choice([0.0, 1.0, 30.0, 70.0])
    out = sim.run(until=end + 5)
    times = [when for when, _ in out.admitted]
    check_windows(times, limit)
    assert len(times) >= limit


@pytest.mark.parametrize("seed", range(6))
def test_concurrency_never_passes_its_limit(seed: int) -> None:
    sim = Simulation(workers=4, limits=Limits(concurrent_requests=5), seed=seed, max_delay=0.02)
    end = T0 + 60
    sim.start_ticks(end + 10)
    t = T0
    for n in range(600):
        t += sim.rng.expovariate(10.0)
        sim.at(t, sim.arrive, sim.rng.randrange(4), 0, sim.rng.uniform(0.05, 3))
    for n in range(4):
        sim.at(T0 + sim.rng.uniform(0, 50), sim.kill if n % 2 else sim.retire, sim.rng.randrange(4))
    out = sim.run(until=end + 10)
    assert out.max_in_flight == 5  # reached, and never passed
    assert out.in_flight == 0
    # nothing leaked: once all ended and the leases went back, the ledger holds no slot
    assert all(c.concurrency is None or c.concurrency.held == 0 for c in sim.ledger.counters.values())


def test_slots_freed_by_finished_requests_are_admitted_again() -> None:
    sim = Simulation(workers=4, limits=Limits(concurrent_requests=5), seed=1)
    for n in range(6):
        sim.at(T0, sim.arrive, n % 4, 0, 10.0)
    sim.start_ticks(T0 + 20)
    out = sim.run(until=T0 + 1)
    assert (len(out.admitted), out.refused) == (5, 1)
    out = sim.run(until=T0 + 10.5)  # all five ended at T0 + 10; their slots went back within a tick
    for n in range(5):
        sim.at(T0 + 10.5, sim.arrive, n % 4, 0, 1.0)
    out = sim.run(until=T0 + 11)
    assert (len(out.admitted), out.refused) == (10, 1)


@pytest.mark.parametrize("seed", range(6))
def test_token_limits_hold_with_estimates_and_corrections(seed: int) -> None:
    """Requests of various estimated sizes under 10 000 tokens per minute: the estimates admitted
    (each the real usage here) never pass the bucket, and lower real usage is given back."""
    limit = 10_000
    sim = Simulation(workers=3, limits=Limits(tokens_per_minute=limit, requests_per_minute=1000), seed=seed, max_delay=0.02)
    end = T0 + 120
    sim.start_ticks(end)
    t = T0
    for n in range(1000):
        t += sim.rng.expovariate(8.0)
        tokens = sim.rng.randint(1, 900)
        sim.at(t, sim.arrive, sim.rng.randrange(3), tokens, sim.rng.uniform(0, 1), tokens)
    out = sim.run(until=end + 5)
    check_windows([when for when, _ in out.admitted], limit, [tokens for _, tokens in out.admitted])
    assert sum(tokens for _, tokens in out.admitted) >= limit * 1.5


def test_overestimates_are_given_back() -> None:
    """Requests estimated at 1000 tokens that use 100: about ten times more are admitted than the
    estimates alone would allow, and still no more than the real usage allows."""
    limit = 10_000
    sim = Simulation(workers=2, limits=Limits(tokens_per_minute=limit), seed=3)
    end = T0 + 60
    sim.start_ticks(end)
    for n in range(200):
        sim.at(T0 + n * 0.25, sim.arrive, n % 2, 1000, 0.1, 100)
    out = sim.run(until=end)
    admitted = len(out.admitted)
    assert admitted > 2 * (limit // 1000)
    assert admitted * 100 <= bucket_bound(limit, 60) + 1000  # (the last one's estimate is in flight)
