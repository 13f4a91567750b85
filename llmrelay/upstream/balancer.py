"""Choosing an upstream (and a key within it) for one request: sans-IO, a few comparisons per choice.

Order, as an endpoint's `upstreams` are configured:
1. only upstreams that accept the client's relay key (`scope`; an upstream without its own keys
   accepts every key its endpoint accepts), that are usable now (health, cool-downs: the caller's
   `usable`), and that this request has not tried yet;
2. non-fallback upstreams before fallback ones;
3. among those, the highest `priority` tier that has any candidate;
4. within the tier, smooth weighted round-robin (nginx's algorithm): over any run of picks each
   member's share follows its weight, evenly interleaved rather than in bursts.

A weight of 0 takes no share: a non-fallback upstream of weight 0 is never chosen (it is parked), a
fallback one is chosen when no fallback with weight is usable in its tier (zero weights in turn).

Keys within an upstream use the same `SmoothWeighted`, so their split is as even.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence

import msgspec


class SmoothWeighted:
    """nginx's smooth weighted round-robin over a fixed list of weights; each pick is made among the
    members allowed at that moment (the others keep their place)."""

    __slots__ = ("weights", "current")

    def __init__(self, weights: Sequence[float]) -> None:
        self.weights = [float(weight) for weight in weights]
        self.current = [0.0] * len(self.weights)

    def pick(self, allowed: Sequence[int]) -> int | None:
        """One of `allowed` (indexes into the weights), or None when it is empty."""
        if not allowed:
            return None
        if len(allowed) == 1:
            return allowed[0]
        weights = self.weights
        current = self.current
        total = 0.0
        for index in allowed:
            total += weights[index]
        even = total == 0.0  # only zero weights here: take them in turn
        if even:
            total = float(len(allowed))
        best = -1
        for index in allowed:
            current[index] += 1.0 if even else weights[index]
            if best < 0 or current[index] > current[best]:
                best = index
        current[best] -= total
        return best


class Candidate(msgspec.Struct, frozen=True):
    """What selection needs to know of one upstream (from the config)."""

    name: str
    weight: float = 1.0
    priority: int = 0
    fallback: bool = False
    scope: frozenset[str] | None = None  # the relay keys that may use it; None: every key of the endpoint


class Selector:
    """The per-worker choice among one endpoint's upstreams."""

    __slots__ = ("candidates", "_rotation", "_scoped", "_parked")

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.candidates = list(candidates)
        self._rotation = SmoothWeighted([candidate.weight for candidate in self.candidates])
        self._scoped = any(candidate.scope is not None for candidate in self.candidates)
        self._parked = [c.weight == 0 and not c.fallback for c in self.candidates]

    def choose(
        self, relay_key: str | None, usable: Callable[[int], bool], tried: Container[int] = ()
    ) -> int | None:
        """The index of the upstream for the next attempt, or None when nothing may serve it.

        `relay_key`: the configured relay key the client presented (None when the endpoint checks
        none); `usable(index)`: not ejected, not failing its checks, some key not cooling down;
        `tried`: upstreams this request has already failed on.
        """
        candidates = self.candidates
        scoped = self._scoped
        parked = self._parked
        for fallback in (False, True):
            tier: int | None = None
            members: list[int] = []
            for index, candidate in enumerate(candidates):
                if candidate.fallback is not fallback or index in tried or parked[index]:
                    continue
                if scoped and candidate.scope is not None and (relay_key is None or relay_key not in candidate.scope):
                    continue
                if not usable(index):
                    continue
                if tier is None or candidate.priority > tier:
                    tier = candidate.priority
                    members = [index]
                elif candidate.priority == tier:
                    members.append(index)
            if members:
                return self._rotation.pick(members)
        return None
