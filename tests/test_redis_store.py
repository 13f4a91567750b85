"""The Redis store against a real `redis-server`: the counter arithmetic (grants, refusals, refill,
give back, charges, the day's budget, concurrency and its holders), two stores sharing one limit
exactly, scripts flushed or refused, outages, authentication, TLS, and the usage accounts."""

from __future__ import annotations

import math
import random
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path

import msgspec
import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent))

from redis_server import RedisServer, free_port, redis_available  # noqa: E402

from llmrelay.limits.ledger import Ledger  # noqa: E402
from llmrelay.limits.store import StoreUnavailable  # noqa: E402
from llmrelay.limits.types import (  # noqa: E402
    CounterAsk,
    CounterCharge,
    CounterGrant,
    CounterId,
    CounterReturn,
    Limits,
    Units,
    UsageRow,
)
from supervisor.redis_store import RedisStore, counter_key, parse_redis_url  # noqa: E402

if not redis_available():  # .ci/run installs it; a machine without it cannot run these
    pytest.fail("redis-server is not installed (apt-get install redis-server)", pytrace=False)

ALICE = CounterId("per-key", "v1", "alice")
A = "host:1:abc:w1"
B = "host:1:abc:w2"
C = "host:2:def:w1"  # another machine's worker

StoreFactory = Callable[..., RedisStore]


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def make_store() -> AsyncIterator[StoreFactory]:
    stores: list[RedisStore] = []

    def make(url: str, instance: str = "host:1:abc", **options: float) -> RedisStore:
        store = RedisStore(url, instance, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.aclose()


def ask(limits: Limits, need: Units, want: Units | None = None, counter: CounterId = ALICE) -> CounterAsk:
    return CounterAsk(counter, limits, need, want or need)


ONE = Units(requests=1)


async def one(store: RedisStore, holder: str, request: CounterAsk) -> CounterGrant:
    (grant,) = await store.ask(holder, [request])
    return grant


def refused(grant: CounterGrant) -> bool:
    return grant.granted == Units() and grant.retry_after > 0


# -- the arithmetic ------------------------------------------------------------------------------


async def test_grants_until_the_limit_then_refuses_with_retry_after(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(requests_per_minute=60)
    grants = await store.ask(A, [ask(limits, ONE)] * 61)  # one pipeline, run in order
    assert [g.granted for g in grants[:60]] == [ONE] * 60
    assert grants[59].state.remaining.requests == 0
    assert refused(grants[60])
    assert 0 < grants[60].retry_after <= 1.01  # 60/min: one request a second
    assert 59 <= grants[60].state.reset_requests <= 60.01


async def test_want_is_granted_up_to_a_share_of_what_is_left(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(requests_per_minute=100)
    first = await one(store, A, ask(limits, ONE, Units(requests=80)))
    assert first.granted.requests == 50  # alone: at most half of 100
    second = await one(store, B, ask(limits, ONE, Units(requests=80)))
    assert second.granted.requests == 12  # two active holders (A and itself): floor(50 / 4)
    third = await one(store, C, ask(limits, ONE, Units(requests=80)))
    assert third.granted.requests == 6  # three: floor(38 / 6)
    # Near the end, grants shrink to the single request, never below it, until none is left.
    sizes = []
    for _ in range(30):
        grant = await one(store, A, ask(limits, ONE, Units(requests=80)))
        if refused(grant):
            break
        sizes.append(grant.granted.requests)
    assert sizes[-1] == 1 and min(sizes) >= 1
    assert 100 <= 50 + 12 + 6 + sum(sizes) <= 101  # (a refill of 100/min adds one in 0.6 s)


async def test_buckets_refill_continuously(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(requests_per_minute=60)
    await store.ask(A, [ask(limits, ONE)] * 60)
    assert refused(await one(store, A, ask(limits, ONE)))
    await trio.sleep(1.1)
    assert (await one(store, A, ask(limits, ONE))).granted == ONE
    assert refused(await one(store, A, ask(limits, ONE)))


async def test_give_back_returns_units_capped_at_capacity(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(requests_per_minute=10)
    await store.ask(A, [ask(limits, ONE)] * 10)
    await store.give_back(A, [CounterReturn(ALICE, limits, Units(requests=4))])
    grants = await store.ask(A, [ask(limits, ONE)] * 5)
    assert [g.granted.requests for g in grants] == [1, 1, 1, 1, 0]
    await store.give_back(A, [CounterReturn(ALICE, limits, Units(requests=1000))])
    (state,) = [s for c, s in await store.states() if c == ALICE]
    assert state.remaining.requests == 10


async def test_a_charge_can_leave_a_debt_the_refill_pays_back(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(tokens_per_minute=600)  # 10 tokens a second
    grant = await one(store, A, ask(limits, Units(requests=1, input_tokens=100)))
    assert grant.granted.input_tokens == 100
    assert grant.state.remaining.input_tokens == grant.state.remaining.output_tokens == 500
    await store.charge([CounterCharge(ALICE, limits, input_tokens=300, output_tokens=900)])  # 1300 used in all
    late = await one(store, A, ask(limits, Units(requests=1, input_tokens=1)))
    assert refused(late)
    assert 69 < late.retry_after < 71.5  # from -700 to +1 at 10 a second
    assert late.state.remaining.input_tokens == 0  # (never shown below zero)
    # A negative charge (the estimate was too high) gives tokens back.
    await store.charge([CounterCharge(ALICE, limits, input_tokens=-1000, output_tokens=0)])
    assert (await one(store, A, ask(limits, Units(requests=1, input_tokens=250)))).granted.input_tokens == 250


async def test_a_request_larger_than_a_minute_of_tokens_passes_a_full_bucket(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(tokens_per_minute=1000, input_tokens_per_minute=500, output_tokens_per_minute=400)
    big = Units(requests=1, input_tokens=5000, output_tokens=4000)
    assert (await one(store, A, ask(limits, big))).granted == big
    assert refused(await one(store, A, ask(limits, Units(requests=1, input_tokens=1))))


async def test_token_grants_shrink_in_proportion_never_below_need(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(tokens_per_minute=1000)
    need = Units(requests=1, input_tokens=100, output_tokens=100)
    grant = await one(store, A, ask(limits, need, Units(requests=1, input_tokens=400, output_tokens=400)))
    assert grant.granted == Units(requests=1, input_tokens=250, output_tokens=250)  # 500: half of 1000


async def test_the_day_budget_refuses_until_midnight_utc(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(tokens_per_day=100)
    assert (await one(store, A, ask(limits, Units(requests=1, input_tokens=60)))).granted.input_tokens == 60
    late = await one(store, A, ask(limits, Units(requests=1, input_tokens=60)))
    assert refused(late)
    now = time.time()
    to_midnight = (math.floor(now / 86400) + 1) * 86400 - now
    assert abs(late.retry_after - to_midnight) < 5
    assert late.state.remaining.input_tokens == 40
    assert abs(late.state.reset_tokens - to_midnight) < 5
    pttl = int(redis.command("PTTL", counter_key(ALICE)))
    assert pttl >= (to_midnight - 5) * 1000  # the day's use is kept until the day ends


async def test_concurrency_holdings_and_drop_holder(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(concurrent_requests=2)
    slot = Units(concurrent=1)
    assert [g.granted for g in await store.ask(A, [ask(limits, slot)] * 2)] == [slot, slot]
    late = await one(store, B, ask(limits, slot))
    assert refused(late) and late.retry_after == 1.0
    await store.give_back(A, [CounterReturn(ALICE, limits, slot)])
    assert (await one(store, B, ask(limits, slot))).granted == slot
    assert refused(await one(store, B, ask(limits, slot)))
    await store.drop_holder(A)  # A's last slot is free; B keeps its own
    assert (await one(store, B, ask(limits, slot))).granted == slot
    assert refused(await one(store, C, ask(limits, slot)))
    # A holder never gives back more than it holds.
    await store.give_back(C, [CounterReturn(ALICE, limits, Units(concurrent=5))])
    assert refused(await one(store, C, ask(limits, slot)))


async def test_a_holder_that_stops_touching_is_dropped(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url, holder_ttl=1.0)
    other_machine = make_store(redis.url, instance="host:2:def", holder_ttl=1.0)
    limits = Limits(concurrent_requests=2)
    slot = Units(concurrent=1)
    assert (await one(store, A, ask(limits, slot))).granted == slot
    assert (await one(store, B, ask(limits, slot))).granted == slot
    # A is kept alive by touches; B is never heard from again (say its machine died).
    started = time.monotonic()
    await store.touch([A])
    await trio.sleep(0.3)
    assert refused(await one(other_machine, C, ask(limits, slot)))  # B's holding lives 1 s
    while time.monotonic() - started < 1.6:
        await store.touch([A])
        await trio.sleep(0.2)
    assert (await one(other_machine, C, ask(limits, slot))).granted == slot  # B's slot, freed
    assert refused(await one(other_machine, C, ask(limits, slot)))  # A's slot, kept by the touches


async def test_two_machines_share_a_limit_exactly(redis: RedisServer, make_store: StoreFactory) -> None:
    machines = [make_store(redis.url, instance="host:1:abc"), make_store(redis.url, instance="host:2:def")]
    requests = Limits(requests_per_minute=20)
    concurrent = Limits(concurrent_requests=20)
    for limits, need, counter in [(requests, ONE, ALICE), (concurrent, Units(concurrent=1), CounterId("c", "v1", "k"))]:
        granted: list[int] = []
        started = time.monotonic()

        async def client(n: int) -> None:
            store = machines[n % 2]
            grant = await one(store, f"{store.instance}:w{n % 4}", ask(limits, need, counter=counter))
            granted.append(grant.granted.requests + grant.granted.concurrent)

        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(client, n)
        assert time.monotonic() - started < 2.5  # (a refill of 20/min adds one request in 3 s)
        assert len(granted) == 100
        assert sum(granted) == 20


async def test_the_same_arithmetic_as_the_ledger(redis: RedisServer, make_store: StoreFactory) -> None:
    """The script and the in-memory ledger, fed the same operations at the same instants (the
    ledger is given the Redis clock each script ran at), grant the same units and state the same
    counters, step after step."""
    store = make_store(redis.url, holder_ttl=600.0)
    ledger = Ledger()
    rng = random.Random(20241203)
    counters = [
        (CounterId("r1", "v", "a"), Limits(requests_per_minute=300, tokens_per_minute=30000, concurrent_requests=3)),
        (CounterId("r2", "v", "b"), Limits(input_tokens_per_minute=9000, output_tokens_per_minute=6000, tokens_per_day=40000)),
        (CounterId("r3", "v", "c"), Limits(60, 12000, 9000, 9000, concurrent_requests=2, tokens_per_day=30000)),
    ]
    holders = [A, B, C]
    for counter, limits in counters:  # (the ledger does not create a counter on a give back)
        need = Units(requests=1)
        (got,) = await store.ask(A, [CounterAsk(counter, limits, need, need)])
        (expected,) = ledger.ask(A, [CounterAsk(counter, limits, need, need)], store.clock)
        assert got == expected
    compared = 0
    for step in range(400):
        counter, limits = rng.choice(counters)
        holder = rng.choice(holders)
        roll = rng.random()
        if roll < 0.6:
            need = Units(rng.choice([0, 1, 1, 1]), rng.randint(0, 300), rng.randint(0, 200), rng.choice([0, 1]))
            extra = Units(rng.randint(0, 10), rng.randint(0, 600), rng.randint(0, 400), rng.randint(0, 2))
            want = Units(*(a + b for a, b in zip(msgspec.structs.astuple(need), msgspec.structs.astuple(extra))))
            request = CounterAsk(counter, limits, need, want)
            (got,) = await store.ask(holder, [request])
            (expected,) = ledger.ask(holder, [request], store.clock)
            context = f"step {step}: {holder} asks {need} / {want} of {counter.rule}"
            assert got.granted == expected.granted, context
            assert abs(got.retry_after - expected.retry_after) <= 0.0011, context
            assert got.state.remaining == expected.state.remaining, context
            assert abs(got.state.reset_requests - expected.state.reset_requests) <= 0.0011, context
            assert abs(got.state.reset_tokens - expected.state.reset_tokens) <= 0.0011, context
            compared += 1
        elif roll < 0.8:
            back = CounterReturn(counter, limits, Units(rng.randint(0, 3), rng.randint(0, 300), rng.randint(0, 300), rng.randint(0, 1)))
            await store.give_back(holder, [back])
            ledger.give_back(holder, [back], store.clock)
        elif roll < 0.95:
            charge = CounterCharge(counter, limits, rng.randint(-100, 400), rng.randint(-100, 400))
            await store.charge([charge])
            ledger.charge([charge], store.clock)
        else:
            await store.drop_holder(holder)
            ledger.drop_holder(holder)
    assert compared > 200


# -- scripts --------------------------------------------------------------------------------------


async def test_scripts_are_loaded_again_after_a_flush(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(requests_per_minute=10)
    assert (await one(store, A, ask(limits, ONE))).granted == ONE
    assert redis.command("SCRIPT", "FLUSH") == b"OK"
    assert (await one(store, A, ask(limits, ONE))).granted == ONE
    stats = redis.command("INFO", "commandstats").decode()
    assert "cmdstat_evalsha:" in stats and "cmdstat_eval:" not in stats


async def test_eval_with_the_body_when_script_and_evalsha_are_refused(make_store: StoreFactory) -> None:
    with RedisServer("--rename-command", "SCRIPT", "", "--rename-command", "EVALSHA", "") as redis:
        store = make_store(redis.url)
        limits = Limits(requests_per_minute=3)
        grants = await store.ask(A, [ask(limits, ONE)] * 4)
        assert [g.granted.requests for g in grants] == [1, 1, 1, 0]
        await store.give_back(A, [CounterReturn(ALICE, limits, ONE)])
        assert (await one(store, A, ask(limits, ONE))).granted == ONE
        assert "cmdstat_eval:" in redis.command("INFO", "commandstats").decode()


async def test_eval_when_only_evalsha_is_refused(make_store: StoreFactory) -> None:
    with RedisServer("--rename-command", "EVALSHA", "") as redis:
        store = make_store(redis.url)
        limits = Limits(requests_per_minute=3)
        assert [g.granted.requests for g in await store.ask(A, [ask(limits, ONE)] * 4)] == [1, 1, 1, 0]
        assert (await one(store, B, ask(limits, ONE))).granted == Units()


async def test_eval_when_an_acl_user_may_not_load_scripts(make_store: StoreFactory) -> None:
    acl = ["--user", "relay", "on", ">acl-pw-77", "~llmrelay:*", "&*", "+@all", "-evalsha", "-script"]
    with RedisServer(*acl) as redis:
        store = make_store(f"redis://relay:acl-pw-77@127.0.0.1:{redis.port}/0")
        limits = Limits(requests_per_minute=2)
        assert [g.granted.requests for g in await store.ask(A, [ask(limits, ONE)] * 3)] == [1, 1, 0]
        await store.add([UsageRow("alice", "e", "u", "m", requests=1)])
        assert await store.rows() == [UsageRow("alice", "e", "u", "m", requests=1)]


# -- outages --------------------------------------------------------------------------------------


async def test_a_dead_server_fails_fast_and_a_returning_one_is_used_again(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(requests_per_minute=100)
    assert (await one(store, A, ask(limits, ONE))).granted == ONE
    redis.kill()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{redis.port}"):
        await one(store, A, ask(limits, ONE))
    assert time.monotonic() - started < 1.5
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="next attempt"):  # backing off: no connection tried
        await one(store, A, ask(limits, ONE))
    assert time.monotonic() - started < 0.05
    redis.start()
    for _ in range(100):  # backoff 0.1, 0.2, ... : back within a second or two
        try:
            grant = await one(store, A, ask(limits, ONE))
            break
        except StoreUnavailable:
            await trio.sleep(0.05)
    else:
        raise AssertionError("the store did not come back")
    assert grant.granted == ONE  # (a fresh server: a fresh counter)


class ReplyEater:
    """A TCP proxy to Redis that, when told to, passes a request on and loses its reply (the
    connection breaks after the server acted: the caller cannot know whether it did)."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.eat_next = False
        self.port = 0

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", self.redis_port)
        async with client, upstream, trio.open_nursery() as nursery:

            async def forward() -> None:
                async for data in client:
                    await upstream.send_all(data)
                nursery.cancel_scope.cancel()

            nursery.start_soon(forward)
            async for data in upstream:
                if self.eat_next:
                    self.eat_next = False
                    break
                await client.send_all(data)
            nursery.cancel_scope.cancel()


async def test_a_grant_whose_reply_was_lost_is_undone(redis: RedisServer, make_store: StoreFactory) -> None:
    eater = ReplyEater(redis.port)
    async with trio.open_nursery() as nursery:
        await nursery.start(eater.serve)
        store = make_store(f"redis://127.0.0.1:{eater.port}/0")
        other_machine = make_store(redis.url, instance="host:2:def")
        limits = Limits(requests_per_minute=10, concurrent_requests=2)
        slot = Units(requests=1, concurrent=1)
        assert (await one(store, A, ask(limits, slot))).granted == slot  # (scripts loaded)
        eater.eat_next = True
        with pytest.raises(StoreUnavailable, match="closed by the server"):
            await one(store, A, ask(limits, slot))  # granted in Redis; the answer never came
        assert refused(await one(other_machine, C, ask(limits, slot)))  # both slots held by A
        await trio.sleep(0.15)  # (past the backoff)
        await store.touch([A])  # any call: the lost grant is undone first
        assert (await one(other_machine, C, ask(limits, slot))).granted == slot
        assert refused(await one(other_machine, C, ask(limits, slot)))  # A's first slot is still its own
        states = await other_machine.states()
        assert [s.remaining.requests for c, s in states if c == ALICE] == [8]  # 10 - A's 1 - C's 1: the lost one is back
        nursery.cancel_scope.cancel()


async def test_a_server_that_never_answers_is_a_timeout_not_a_hang(make_store: StoreFactory) -> None:
    accepted: list[trio.SocketStream] = []

    async def silent(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        store = make_store(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="no answer within 0.3 s"):
            await one(store, A, ask(Limits(requests_per_minute=1), ONE))
        assert 0.25 < time.monotonic() - started < 1.0
        assert accepted
        # Many calls at once: none waits longer than its turn plus its own timeout.
        await trio.sleep(0.5)  # (past the backoff)
        failures: list[float] = []

        async def call() -> None:
            begun = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await one(store, A, ask(Limits(requests_per_minute=1), ONE))
            failures.append(time.monotonic() - begun)

        async with trio.open_nursery() as callers:
            for _ in range(10):
                callers.start_soon(call)
        assert len(failures) == 10 and max(failures) < 0.8
        nursery.cancel_scope.cancel()


async def test_garbage_from_the_server_is_unavailable(make_store: StoreFactory) -> None:
    async def liar(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, liar, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        store = make_store(f"redis://127.0.0.1:{port}/0")
        with pytest.raises(StoreUnavailable, match="not a Redis reply"):
            await one(store, A, ask(Limits(requests_per_minute=1), ONE))
        nursery.cancel_scope.cancel()


async def test_nothing_listening_is_unavailable(make_store: StoreFactory) -> None:
    store = make_store(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreUnavailable):
        await store.add([UsageRow("alice", "openai", "u", "m", requests=1)])


async def test_an_invalid_url_fails_every_call_clearly(make_store: StoreFactory) -> None:
    store = make_store("redis://:s3cret@127.0.0.1:notaport/0")
    with pytest.raises(StoreUnavailable, match="redis_url") as raised:
        await store.rows()
    assert "s3cret" not in str(raised.value)


async def test_a_cancelled_call_leaves_the_connection_usable(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(requests_per_minute=1000)
    for delay in (0.0, 0.0001, 0.001):
        with trio.move_on_after(delay):
            await store.ask(A, [ask(limits, ONE)] * 50)
    assert (await one(store, A, ask(limits, ONE))).granted == ONE


# -- authentication, databases, TLS ---------------------------------------------------------------


async def test_auth_and_the_password_never_in_an_error(make_store: StoreFactory) -> None:
    password = "pw-Zq81-secret"
    with RedisServer(password=password) as redis:
        good = make_store(redis.url)
        assert (await one(good, A, ask(Limits(requests_per_minute=5), ONE))).granted == ONE
        wrong = make_store(f"redis://:wrong-{password}@127.0.0.1:{redis.port}/0")
        with pytest.raises(StoreUnavailable, match="authentication refused") as raised:
            await one(wrong, A, ask(Limits(requests_per_minute=5), ONE))
        assert password not in str(raised.value)
        missing = make_store(f"redis://127.0.0.1:{redis.port}/0")
        with pytest.raises(StoreUnavailable, match="requires a password"):
            await one(missing, A, ask(Limits(requests_per_minute=5), ONE))
        named = make_store(f"redis://default:{password}@127.0.0.1:{redis.port}/0")  # AUTH user password
        assert (await one(named, A, ask(Limits(requests_per_minute=5), ONE))).granted == ONE
        redis.kill()
        with pytest.raises(StoreUnavailable) as raised:
            await one(good, A, ask(Limits(requests_per_minute=5), ONE))
        assert password not in str(raised.value)
        assert password not in repr(raised.value)


async def test_the_database_number_is_selected(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url.replace("/0", "/3"))
    await one(store, A, ask(Limits(requests_per_minute=5), ONE))
    assert redis.command("-n", "3", "EXISTS", counter_key(ALICE)) == b"1"
    assert redis.command("-n", "0", "EXISTS", counter_key(ALICE)) == b"0"


async def test_rediss_with_a_verified_certificate(tmp_path: Path, make_store: StoreFactory) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = [tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem")]
    cert.cert_chain_pems[0].write_to_path(paths[0])
    cert.private_key_pem.write_to_path(paths[1])
    ca.cert_pem.write_to_path(paths[2])
    with RedisServer(tls=(str(paths[0]), str(paths[1]), str(paths[2]))) as redis:
        trusted = make_store(f"{redis.url}?ssl_ca_certs={paths[2]}")
        assert (await one(trusted, A, ask(Limits(requests_per_minute=5), ONE))).granted == ONE
        unverified = make_store(f"{redis.url}?ssl_cert_reqs=none")
        assert (await one(unverified, A, ask(Limits(requests_per_minute=5), ONE))).granted == ONE
        untrusted = make_store(redis.url)  # the system's CAs do not know this one
        with pytest.raises(StoreUnavailable, match="rediss://127.0.0.1"):
            await one(untrusted, A, ask(Limits(requests_per_minute=5), ONE))


def test_redis_urls() -> None:
    address = parse_redis_url("rediss://user:p%40ss@cache.example:6380/2?ssl_cert_reqs=none")
    assert (address.host, address.port, address.db, address.username, address.password) == ("cache.example", 6380, 2, "user", "p@ss")
    assert address.tls and not address.verify
    assert address.shown == "rediss://cache.example:6380/2"
    plain = parse_redis_url("redis://[::1]")
    assert (plain.host, plain.port, plain.db, plain.tls, plain.verify) == ("::1", 6379, 0, False, True)
    assert plain.shown == "redis://[::1]:6379/0"
    for bad in ["http://x:1/0", "redis://:pw-secret@host:99999/0", "redis://:pw-secret@host/zero", "redis:///0", "redis://h/0?ssl_cert_reqs=maybe"]:
        with pytest.raises(ValueError) as raised:
            parse_redis_url(bad)
        assert "pw-secret" not in str(raised.value)


# -- keys, states, retain -------------------------------------------------------------------------


async def test_every_key_of_a_counter_carries_its_hash_tag_and_an_expiry(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(requests_per_minute=60, tokens_per_minute=6000, concurrent_requests=3)
    await one(store, A, ask(limits, Units(requests=1, input_tokens=10, concurrent=1)))
    await store.charge([CounterCharge(ALICE, limits, input_tokens=5, output_tokens=5)])
    keys = redis.command("--scan", "--pattern", "llmrelay:*").decode().split()
    assert keys == ["llmrelay:limit:{per-key:v1:alice}"]
    fields = set(redis.command("HKEYS", keys[0]).decode().split())
    assert {"ts", "b:r", "b:t", f"h:{A}", f"x:{A}", f"a:{A}"} <= fields
    assert 60_000 < int(redis.command("PTTL", keys[0])) <= 600_000


async def test_any_counter_key_is_a_counter(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    limits = Limits(requests_per_minute=1)
    odd = [CounterId("r", "v", key) for key in ("\ud800", "a}b{c", "", "x" * 2000, "é:\r\n")]
    grants = await store.ask(A, [ask(limits, ONE, counter=counter) for counter in odd])
    assert [g.granted for g in grants] == [ONE] * len(odd)  # five counters, not one
    assert all(refused(g) for g in await store.ask(A, [ask(limits, ONE, counter=counter) for counter in odd]))


async def test_states_report_the_counters_in_use_and_retain_forgets_old_rules(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    old = CounterId("old-rule", "v0", "alice")
    limits = Limits(requests_per_minute=10, concurrent_requests=4)
    await store.ask(A, [ask(limits, Units(requests=1, concurrent=1)), ask(limits, Units(requests=3), counter=old)])
    states = dict(await store.states())
    assert states[ALICE].remaining == Units(requests=9, concurrent=3)
    assert states[old].remaining.requests == 7
    store.retain({("per-key", "v1")})
    assert [counter for counter, _ in await store.states()] == [ALICE]


# -- usage ----------------------------------------------------------------------------------------


async def test_usage_sums_survive_every_supervisor(redis: RedisServer, make_store: StoreFactory) -> None:
    first = make_store(redis.url, instance="host:1:abc")
    await first.add([UsageRow("alice", "openai", "main", "gpt-4o", requests=2, input_tokens=100, output_tokens=20)])
    await first.add([
        UsageRow("alice", "openai", "main", "gpt-4o", requests=1, input_tokens=5, output_tokens=1, errors=1),
        UsageRow("-", "anthropic", "a\x1fb", "claude", requests=1),
        UsageRow("\ud800é", "e", "u", "m", errors=2),
    ])
    await first.aclose()
    second = make_store(redis.url, instance="host:2:def")  # another machine, or this one restarted
    await second.add([UsageRow("bob", "openai", "main", "gpt-4o", requests=1, output_tokens=7)])
    assert await second.rows() == [
        UsageRow("-", "anthropic", "a b", "claude", requests=1),
        UsageRow("alice", "openai", "main", "gpt-4o", requests=3, input_tokens=105, output_tokens=21, errors=1),
        UsageRow("bob", "openai", "main", "gpt-4o", requests=1, output_tokens=7),
        UsageRow("\ud800é", "e", "u", "m", errors=2),
    ]


async def test_a_large_usage_batch_is_one_round_trip(redis: RedisServer, make_store: StoreFactory) -> None:
    store = make_store(redis.url)
    rows = [UsageRow(f"key{n}", "e", "u", "m", requests=1, input_tokens=n) for n in range(1200)]
    await store.add(rows)
    got = await store.rows()
    assert len(got) == 1200
    assert sum(row.input_tokens for row in got) == sum(range(1200))
    assert "cmdstat_evalsha:calls=5" in redis.command("INFO", "commandstats").decode()  # 2400 fields / 500


def test_the_helper_server_stops(tmp_path: Path) -> None:
    server = RedisServer()
    server.start()
    port = server.port
    server.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
