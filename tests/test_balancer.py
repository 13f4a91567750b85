"""Upstream selection, sans-IO: smooth weighted round-robin, priority tiers, fallback, key scopes."""

from __future__ import annotations

from collections import Counter

from llmrelay.upstream.balancer import Candidate, Selector, SmoothWeighted


def always(_index: int) -> bool:
    return True


def test_the_sequence_is_nginx_smooth_weighted_round_robin() -> None:
    rotation = SmoothWeighted([5, 1, 1])
    picks = "".join("abc"[rotation.pick([0, 1, 2]) or 0] for _ in range(7))
    assert picks == "aabacaa"  # interleaved, not five a's in a row


def test_shares_follow_the_weights_exactly_per_cycle_and_within_3_percent_over_1000() -> None:
    selector = Selector([Candidate("one", 1), Candidate("two", 2), Candidate("three", 3)])
    counts = Counter(selector.choose(None, always) for _ in range(6000))
    assert counts == {0: 1000, 1: 2000, 2: 3000}
    counts = Counter(selector.choose(None, always) for _ in range(1000))
    for index, weight in enumerate((1, 2, 3)):
        assert abs(counts[index] / 1000 - weight / 6) <= 0.03 * weight / 6, counts


def test_fractional_weights() -> None:
    rotation = SmoothWeighted([0.5, 1.5])
    counts = Counter(rotation.pick([0, 1]) for _ in range(400))
    assert counts == {0: 100, 1: 300}


def test_a_zero_weight_is_never_chosen_beside_a_weighted_member() -> None:
    selector = Selector([Candidate("zero", 0), Candidate("one", 1), Candidate("two", 2)])
    assert 0 not in {selector.choose(None, always) for _ in range(300)}


def test_a_parked_zero_weight_primary_is_never_chosen_even_alone() -> None:
    selector = Selector([Candidate("parked", 0), Candidate("one", 1)])
    assert selector.choose(None, lambda i: i != 1) is None  # weight 0 without fallback: parked
    selector = Selector([Candidate("parked", 0), Candidate("spare", 0, fallback=True)])
    assert {selector.choose(None, always) for _ in range(4)} == {1}


def test_a_tier_of_only_zero_weights_is_served_in_turn() -> None:
    rotation = SmoothWeighted([0, 0, 0])
    assert [rotation.pick([0, 1, 2]) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_the_highest_usable_priority_tier_wins() -> None:
    selector = Selector([Candidate("low", priority=0), Candidate("high-a", priority=5), Candidate("high-b", priority=5)])
    assert {selector.choose(None, always) for _ in range(10)} == {1, 2}
    assert {selector.choose(None, lambda i: i != 1) for _ in range(10)} == {2}
    assert {selector.choose(None, lambda i: i == 0) for _ in range(10)} == {0}


def test_fallback_only_when_no_primary_is_usable_whatever_its_priority() -> None:
    selector = Selector(
        [Candidate("primary", priority=0), Candidate("backup", priority=9, fallback=True, weight=0)]
    )
    assert {selector.choose(None, always) for _ in range(10)} == {0}
    assert selector.choose(None, lambda i: i != 0) == 1  # a zero-weight fallback still serves
    assert selector.choose(None, lambda i: False) is None


def test_tried_upstreams_are_not_chosen_again() -> None:
    selector = Selector([Candidate("a"), Candidate("b"), Candidate("backup", fallback=True)])
    assert selector.choose(None, always, tried={0}) == 1
    assert selector.choose(None, always, tried={0, 1}) == 2
    assert selector.choose(None, always, tried={0, 1, 2}) is None


def test_key_scoped_upstreams_serve_only_their_tenants() -> None:
    selector = Selector(
        [
            Candidate("tenant-a", scope=frozenset({"key-a"})),
            Candidate("tenant-b", scope=frozenset({"key-b"})),
            Candidate("shared-backup", fallback=True),
        ]
    )
    assert {selector.choose("key-a", always) for _ in range(5)} == {0}
    assert {selector.choose("key-b", always) for _ in range(5)} == {1}
    assert selector.choose("key-b", lambda i: i != 1) == 2  # its own is down: the shared fallback
    assert selector.choose("key-c", always) == 2
    assert selector.choose(None, always) == 2  # no relay key: only unscoped upstreams


def test_one_upstream() -> None:
    selector = Selector([Candidate("only")])
    assert [selector.choose(None, always) for _ in range(3)] == [0, 0, 0]
    assert selector.choose(None, lambda i: False) is None
