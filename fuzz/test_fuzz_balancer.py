"""Property of upstream selection: whatever the weights, tiers, health and key scopes, the choice is a
usable upstream of the highest usable tier, a fallback only when no primary is usable, and the long-run
split follows the weights."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from llmrelay.upstream.balancer import Candidate, Selector, SmoothWeighted

KEYS = ("k1", "k2", "k3")

candidates = st.lists(
    st.builds(
        Candidate,
        name=st.just("u"),
        weight=st.sampled_from((0.0, 0.5, 1.0, 2.0, 3.0)),
        priority=st.integers(0, 2),
        fallback=st.booleans(),
        scope=st.none() | st.frozensets(st.sampled_from(KEYS), min_size=1),
    ),
    min_size=1,
    max_size=6,
)


@given(
    candidates,
    st.lists(st.booleans(), min_size=6, max_size=6),
    st.none() | st.sampled_from(KEYS),
    st.frozensets(st.integers(0, 5), max_size=3),
    st.integers(1, 20),
)
def test_the_choice_is_always_a_usable_upstream_of_the_best_tier(
    cands: list[Candidate], health: list[bool], key: str | None, tried: frozenset[int], rounds: int
) -> None:
    selector = Selector(cands)

    def eligible(index: int) -> bool:
        scope = cands[index].scope
        parked = cands[index].weight == 0 and not cands[index].fallback  # weight 0: only as a fallback
        in_scope = scope is None or (key is not None and key in scope)
        return health[index] and index not in tried and in_scope and not parked

    primaries = [i for i in range(len(cands)) if eligible(i) and not cands[i].fallback]
    group = primaries or [i for i in range(len(cands)) if eligible(i) and cands[i].fallback]
    for _ in range(rounds):
        choice = selector.choose(key, lambda i: health[i], tried)
        if not group:
            assert choice is None
            continue
        assert choice in group
        assert cands[choice].priority == max(cands[i].priority for i in group)


@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.integers(1, 4))
def test_each_full_cycle_gives_every_member_exactly_its_weight(weights: list[int], cycles: int) -> None:
    rotation = SmoothWeighted(weights)
    members = list(range(len(weights)))
    counts = Counter(rotation.pick(members) for _ in range(sum(weights) * cycles))
    assert counts == {index: weight * cycles for index, weight in enumerate(weights)}
