"""The local store: the async `CounterStore` face of the ledger, with the wall clock."""

from __future__ import annotations

import time

from llmrelay.limits.local_store import LocalStore
from llmrelay.limits.store import CounterStore
from llmrelay.limits.types import CounterAsk, CounterCharge, CounterId, CounterReturn, Limits, Units

CID = CounterId("per-key", "v1", "alice")
LIMITS = Limits(requests_per_minute=2, tokens_per_minute=1000, concurrent_requests=1)


async def test_the_local_store_is_a_counter_store() -> None:
    store: CounterStore = LocalStore()
    ask = CounterAsk(CID, LIMITS, need=Units(requests=1, input_tokens=10, concurrent=1), want=Units(requests=1, input_tokens=10, concurrent=1))
    [grant] = await store.ask("w1", [ask])
    assert grant.granted == Units(requests=1, input_tokens=10, concurrent=1)
    [refused] = await store.ask("w2", [ask])
    assert refused.granted == Units() and refused.retry_after == 1.0
    await store.give_back("w1", [CounterReturn(CID, LIMITS, Units(concurrent=1))])
    await store.charge([CounterCharge(CID, LIMITS, input_tokens=500, output_tokens=0)])
    await store.touch(["w1"])
    [(cid, state)] = await store.states()
    assert cid == CID and state.remaining.requests == 1 and state.remaining.concurrent == 1
    assert state.remaining.input_tokens <= 1000 - 510 + 1  # (a second of refill at most)
    [grant] = await store.ask("w2", [ask])
    assert grant.granted.requests == 1
    await store.drop_holder("w2")
    store.retain(set())
    assert await store.states() == []


async def test_recent_holders_are_readable_through_the_ledger() -> None:
    store = LocalStore()
    ask = CounterAsk(CID, LIMITS, need=Units(requests=1), want=Units(requests=1))
    await store.ask("w7", [ask])
    assert store.ledger.recent_holders(CID, time.time()) == ["w7"]
