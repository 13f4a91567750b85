"""The shapes every part of the rate limiter speaks: the worker's lease book, the supervisor's ledger,
the Redis store and the control pipe between them.

A *counter* is one rule applied to one value of its `per` (the relay key "alice", the client
192.0.2.7...): `CounterId`. What it allows is `Limits` (0 on a dimension: no limit there). Amounts on
every dimension at once are `Units`: requests, input and output tokens, concurrent requests (the
`tokens_per_minute` and `tokens_per_day` dimensions count input + output).

The bucket arithmetic, the same in the local ledger and in the Redis script:
- a per-minute dimension of limit L is a bucket of capacity L refilled continuously at L/60 per
  second (a sliding window to the second, never a fixed minute that allows 2L at its boundary);
  taking x leaves `available - x`; a charge after the response may push it below zero (a debt the
  refill pays back);
- `tokens_per_day` is a budget of L tokens for the current UTC day (reset at 00:00 UTC);
- `concurrent_requests` is held, not spent: the units granted to a holder come back when it returns
  them or when the holder is dropped (a dead worker, an expired Redis holder).
"""

from __future__ import annotations

import msgspec

# How long a lease's unused request and token units may be kept by a worker before it returns them.
LEASE_TTL = 2.0
# A holder that has not been heard from for this long is dropped (its concurrency units freed):
# the Redis store's expiry of another machine's holdings.
HOLDER_TTL = 30.0


class Limits(msgspec.Struct, frozen=True, array_like=True):
    """What one counter allows; 0 on a dimension is no limit there."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0  # input + output
    input_tokens_per_minute: int = 0
    output_tokens_per_minute: int = 0
    concurrent_requests: int = 0
    tokens_per_day: int = 0  # input + output, per UTC day


class CounterId(msgspec.Struct, frozen=True, array_like=True):
    """One counter: a rule (by name and version) and the value of its `per` for a request.

    `version` is a short hash of the rule's match, per and limits: a reload that leaves a rule as it
    was keeps its counters; one that changes it starts fresh ones. `key` never holds a secret: a
    relay key appears as its name (or label), a header value as a hash."""

    rule: str
    version: str
    key: str


class Units(msgspec.Struct, array_like=True):
    """An amount on every dimension at once."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    concurrent: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class CounterAsk(msgspec.Struct, frozen=True, array_like=True):
    """A worker asks for units of one counter: `need` is what the request waiting now takes (all of it
    or nothing), `want` the batch it would like to hold (>= need) for the requests to come."""

    counter: CounterId
    limits: Limits
    need: Units
    want: Units


class CounterState(msgspec.Struct, frozen=True, array_like=True):
    """Where a counter stands (for the x-ratelimit-* headers and the admin views): what remains on
    each dimension, and seconds until each per-minute bucket is full again."""

    remaining: Units
    reset_requests: float = 0.0
    reset_tokens: float = 0.0


class CounterGrant(msgspec.Struct, frozen=True, array_like=True):
    """The answer for one ask: `granted` is either zero (refused: `retry_after` seconds until `need`
    could be granted) or at least the ask's `need`."""

    counter: CounterId
    granted: Units
    state: CounterState
    retry_after: float = 0.0


class CounterReturn(msgspec.Struct, frozen=True, array_like=True):
    """Units a holder gives back unused (a lease past its TTL, a recall, a drain)."""

    counter: CounterId
    limits: Limits
    units: Units


class CounterCharge(msgspec.Struct, frozen=True, array_like=True):
    """A correction once a response's real usage is known: the tokens used beyond (positive) or short
    of (negative) what was taken for it."""

    counter: CounterId
    limits: Limits
    input_tokens: int
    output_tokens: int


class UsageRow(msgspec.Struct, frozen=True, array_like=True):
    """Usage accounting: what requests of one relay key, endpoint, upstream and model added."""

    relay_key: str  # the key's name, or its label; "-" with no relay key
    endpoint: str
    upstream: str
    model: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    errors: int = 0
