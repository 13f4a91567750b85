"""Limits under the life of workers, through real relays: a concurrency limit is one limit across
workers (a slot freed in one worker admits a request in the other), every admission gives its slot
back whether the request succeeded, timed out, lost its client or lost its worker to kill -9, and the
supervisor's counters outlive the workers, so neither a rolling replacement (SIGUSR2) nor a killed
worker lets more requests through than a rule allows.

Requests are pinned to a worker when it matters: a keep-alive client whose one connection the kernel
gave to that worker (its `/health` says which) sends everything there, and the access log confirms
afterwards who served each request. The mock provider's request count is the truth about what was
admitted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import httpx
import pytest

from mock_providers import MockProvider
from relaytest import RelayProcess, access_record, endpoint_config, run_load, wait_until
from test_limits_e2e import ALICE, BODY, CHAT, KEYS, endpoints, post, rule

UPSTREAM_CHAT = "/v1/chat/completions"
Pin = Callable[[RelayProcess, int], dict[int, list[httpx.Client]]]


# -- helpers ------------------------------------------------------------------------------------------


@pytest.fixture
def pin() -> Iterator[Pin]:
    """pin(relay, per_worker) -> {worker pid: [clients]}: `per_worker` keep-alive clients for every
    worker of the relay, each holding one connection that this worker accepted (closed at the end)."""
    opened: list[httpx.Client] = []

    def pinned(relay: RelayProcess, per_worker: int) -> dict[int, list[httpx.Client]]:
        workers = len(relay.worker_pids())
        found: dict[int, list[httpx.Client]] = {}
        for _ in range(40 * workers * per_worker):  # (the kernel spreads new connections by their hash)
            # (no keep-alive expiry: httpx would otherwise replace a connection idle for 5 s by a new one)
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=None)
            client = httpx.Client(timeout=20, limits=limits)
            opened.append(client)
            answer = client.get(relay.url("/health"))
            assert answer.status_code == 200, answer.text
            mine = found.setdefault(int(answer.headers["x-llmrelay-worker"]), [])
            if len(mine) < per_worker:
                mine.append(client)
            else:
                client.close()
            if len(found) == workers and all(len(clients) == per_worker for clients in found.values()):
                return found
        raise AssertionError(f"could not get {per_worker} connections on each of {workers} workers: {found}")

    yield pinned
    for client in opened:
        client.close()


class Served:
    """Requests sent on pinned clients, by x-request-id, and the worker each was meant for: `check`
    reads the access log to prove that each was served there (a pinned connection that was closed
    under us would have been replaced by one to any worker)."""

    def __init__(self, relay: RelayProcess) -> None:
        self.relay = relay
        self.expected: dict[str, int] = {}

    def request_id(self, worker: int) -> str:
        request_id = uuid.uuid4().hex
        self.expected[request_id] = worker
        return request_id

    def post(self, client: httpx.Client, worker: int) -> httpx.Response:
        return post(self.relay, client=client, headers={"x-request-id": self.request_id(worker)})

    def check(self) -> None:
        for request_id, worker in self.expected.items():
            record = access_record(self.relay, request_id, timeout=10)
            assert record["pid"] == str(worker), f"meant for {worker}: {record}"


class HeldStream:
    """A slow streamed chat completion, read in a thread until it ends by itself or `close()` cuts
    it (the client going away mid-stream: the connection is closed under the relay)."""

    def __init__(self, relay: RelayProcess, client: httpx.Client, request_id: str, delay: float, events: int) -> None:
        self.status: int | None = None
        self.chunks = 0
        self.errors: list[Exception] = []
        self.answered = threading.Event()  # the status is known (or the request failed)
        self.ended = threading.Event()  # read to its end
        self.done = threading.Event()  # the thread is over, either way
        self._stop = threading.Event()
        headers = {"authorization": f"Bearer {ALICE}", "x-request-id": request_id, "x-mock-delay": str(delay), "x-mock-events": str(events)}
        self._request = (client, relay.url(CHAT), headers)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        client, url, headers = self._request
        try:
            with client.stream("POST", url, json={**BODY, "stream": True}, headers=headers) as response:
                self.status = response.status_code
                self.answered.set()
                for _ in response.iter_raw():
                    self.chunks += 1
                    if self._stop.is_set():
                        return  # (leaving the block closes the connection mid-stream)
                self.ended.set()
        except httpx.HTTPError as exc:
            self.errors.append(exc)
        finally:
            self.answered.set()
            self.done.set()

    def close(self) -> None:
        self._stop.set()
        assert self.done.wait(10), "the stream reader did not stop"
        self._thread.join(5)


def in_background(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `call` in a thread; its result (or what it raised) lands in the list."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(call())
        except Exception as exc:  # noqa: BLE001 - the caller looks at it
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def closing(client: httpx.Client, relay: RelayProcess, headers: dict[str, str]) -> httpx.Response:
    """A request on `client`, which is closed then (no idle connection keeps a draining worker)."""
    try:
        return post(relay, headers=headers, client=client)
    finally:
        client.close()


def statuses(answers: list[Any]) -> list[int | str]:
    return [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers]


def assert_five_admitted_at_once(relay: RelayProcess, mock: MockProvider) -> None:
    """Five slow streams on new connections (any worker) are admitted together, and hold the five
    slots: while they run, a sixth request is refused. Nothing leaked, in either direction. (Streams:
    their head comes at once, so an endpoint's short first-byte timeout does not cut them.)"""
    before = mock.count(path=UPSTREAM_CHAT)
    slow, body = {"x-mock-delay": "0.5", "x-mock-events": "4"}, {**BODY, "stream": True}
    thread, result = in_background(
        lambda: run_load(lambda client, index: post(relay, body=body, headers=slow, client=client), count=5, concurrency=5)
    )
    assert wait_until(lambda: mock.count(path=UPSTREAM_CHAT) == before + 5, timeout=10), statuses(result[0] if result else [])
    sixth = post(relay)
    assert sixth.status_code == 429, sixth.text
    thread.join(30)
    assert statuses(result[0]) == [200] * 5


def expect_refused(answer: httpx.Response, rpm: int) -> None:
    """A 429 of the concurrency rule, in OpenAI's shape, with Retry-After and the x-ratelimit-* of
    the rule (whose requests-per-minute dimension is what the headers can show: there is no header
    for concurrency)."""
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(answer.headers["retry-after"]) >= 1
    assert answer.headers["x-ratelimit-limit-requests"] == str(rpm)
    assert int(answer.headers["x-ratelimit-remaining-requests"]) >= 0
    assert answer.headers["x-ratelimit-reset-requests"]


# -- 1. one concurrency limit across workers -------------------------------------------------------


def test_five_slots_across_two_workers_are_one_limit(mock: MockProvider, start_relay, pin: Pin) -> None:  # type: ignore[no-untyped-def]
    rpm = 1000
    config = KEYS + endpoints(mock) + rule("five-at-once", per="relay_key", concurrent_requests=5, requests_per_minute=rpm)
    relay = start_relay(config, workers=2)
    clients = pin(relay, 4)
    a, b = sorted(clients)
    served = Served(relay)
    probe = {a: clients[a][0], b: clients[b][0]}

    def stream(worker: int, index: int, delay: float = 0.5, events: int = 60) -> HeldStream:
        return HeldStream(relay, clients[worker][index], served.request_id(worker), delay, events)

    # five streams in flight, three in worker a (one of them short: it ends by itself), two in b
    short = stream(a, 1, delay=0.3, events=12)
    held = [stream(a, 2), stream(a, 3), stream(b, 1), stream(b, 2)]
    try:
        for one in [short, *held]:
            assert one.answered.wait(10) and one.status == 200, (one.status, one.errors)
        assert wait_until(lambda: mock.count(path=UPSTREAM_CHAT) == 5, timeout=10)
        # the sixth is refused, whichever worker it reaches
        expect_refused(served.post(probe[a], a), rpm)
        expect_refused(served.post(probe[b], b), rpm)
        assert not short.done.is_set(), "the short stream ended before the refusals were checked"

        # a stream that ends frees its slot: worker b (which held none of a's) admits at once
        assert short.done.wait(20) and short.ended.is_set(), short.errors
        assert wait_until(lambda: served.post(probe[b], b).status_code == 200, timeout=5)
        assert served.post(probe[a], a).status_code == 200  # (and a, the slot being free again)

        # back to five (b admits a new stream); then a client that goes away mid-stream frees its slot
        again = stream(b, 3)
        held.append(again)
        assert again.answered.wait(10) and again.status == 200, (again.status, again.errors)
        expect_refused(served.post(probe[a], a), rpm)
        gone = held[2]  # one of b's first two
        assert gone.chunks > 0
        gone.close()
        assert mock.wait_for_disconnect(10)  # (the relay closed the upstream stream)
        assert wait_until(lambda: served.post(probe[a], a).status_code == 200, timeout=5)
    finally:
        for one in held:
            one.close()
    served.check()  # every request was served by the worker it was pinned to


# -- 2. slots are released after upstream timeouts and after kill -9 ------------------------------------


def test_timed_out_requests_give_back_every_slot(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    # (Passive health would eject the upstream after 3 failures in a row and answer 503 while it
    # cools down: a threshold above this test's five timeouts keeps it in service, so that what is
    # checked afterwards is the limits alone. The active check itself runs once an hour.)
    check = {"path": "/v1/models", "interval": 3600, "unhealthy_threshold": 100}
    config = (
        KEYS
        + endpoint_config(
            "oai", mock, "openai", "/v1", api_key="sk-openai-provider", first_byte_timeout=1.0, retries=0, health_check=check
        )
        + rule("five-at-once", per="relay_key", concurrent_requests=5)
    )
    relay = start_relay(config, workers=2)
    hang = mock.hang(path=UPSTREAM_CHAT)
    answers = run_load(lambda client, index: post(relay, client=client), count=10, concurrency=10)
    seen = sorted(statuses(answers), key=str)
    assert seen.count(504) == 5 and seen.count(429) == 5, seen
    assert mock.count(path=UPSTREAM_CHAT) == 5
    mock.remove_rule(hang)
    assert_five_admitted_at_once(relay, mock)  # at once: no wait between the timeouts and this


def test_a_killed_worker_gives_back_the_slots_it_held(mock: MockProvider, start_relay, pin: Pin) -> None:  # type: ignore[no-untyped-def]
    config = (
        KEYS
        + endpoint_config("oai", mock, "openai", "/v1", api_key="sk-openai-provider", first_byte_timeout=60.0, retries=0)
        + rule("five-at-once", per="relay_key", concurrent_requests=5)
    )
    relay = start_relay(config, workers=2)
    clients = pin(relay, 5)
    victim, survivor = sorted(clients)
    hang = mock.hang(path=UPSTREAM_CHAT)
    # five requests that never get an answer, all in one worker: it holds the five slots
    holders = [in_background(partial(post, relay, client=client)) for client in clients[victim]]
    assert wait_until(lambda: mock.count(path=UPSTREAM_CHAT) == 5, timeout=10)
    assert post(relay, client=clients[survivor][0]).status_code == 429
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: victim not in relay.worker_pids() and len(relay.worker_pids()) == 2, timeout=15)
    relay.wait_ready(workers=3)  # (the replacement said it is ready: the third "ready" line)
    for thread, result in holders:
        thread.join(10)
        assert result and isinstance(result[0], httpx.HTTPError), result  # (cut with their worker)
    mock.remove_rule(hang)
    assert_five_admitted_at_once(relay, mock)


# -- 3. a rolling replacement and a killed worker never admit more than the limit -----------------------

RPM = 10
REFILL_SECONDS = 60 / RPM  # a per-minute bucket refills continuously: one more request every 6 s


def refilled(since: float) -> int:
    """Requests the bucket may have refilled since `since` (0 when the test ran at its usual pace:
    then the limit is exactly RPM)."""
    return int((time.monotonic() - since) // REFILL_SECONDS)


def paced(client: httpx.Client, relay: RelayProcess, count: int) -> list[int]:
    """`count` requests at a steady 4 a second on one connection: at this pace the worker measures
    a rate and asks for batches, so it may hold leased units ahead of its requests (the supervisor
    shrinks batches near the limit, so that no worker holds what another is refused)."""
    answers = []
    for _ in range(count):
        started = time.monotonic()
        answers.append(post(relay, client=client).status_code)
        time.sleep(max(0.0, 0.25 - (time.monotonic() - started)))  # (the pace itself, not a wait)
    return answers


def test_a_rolling_replacement_admits_exactly_the_limit(mock: MockProvider, start_relay, pin: Pin) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(KEYS + endpoints(mock) + rule("ten", per="relay_key", requests_per_minute=RPM), workers=2)
    clients = pin(relay, 2)
    steady, busy = sorted(clients)
    began = time.monotonic()
    # two slow requests in flight in one worker through the replacement (draining, it lets them
    # finish), while the other admits at a steady pace, from leases it asks batches for (the
    # supervisor shrinks them near the limit): whatever either holds when it goes comes back
    slow = [in_background(partial(closing, client, relay, {"x-mock-delay": "3"})) for client in clients[busy]]
    assert wait_until(lambda: mock.count(path=UPSTREAM_CHAT) == 2, timeout=10)
    assert paced(clients[steady][0], relay, 5) == [200] * 5
    for client in clients[steady]:
        client.close()  # (an idle keep-alive connection would keep its draining worker alive)
    old = set(relay.worker_pids())
    relay.send_signal(signal.SIGUSR2)
    assert wait_until(lambda: "rolling replacement done" in relay.logs(), timeout=30), relay.logs()[-3000:]
    assert wait_until(lambda: not old & set(relay.worker_pids()) and len(relay.worker_pids()) == 2, timeout=30)
    relay.wait_ready(workers=4)
    for thread, result in slow:
        thread.join(10)
        assert statuses(result) == [200]
    after = run_load(lambda client, index: post(relay, client=client), count=20, concurrency=10)
    allowance = refilled(began)
    admitted = mock.count(path=UPSTREAM_CHAT)
    # the old workers' leases came back (drained or lapsed), none was counted twice: exactly the limit
    if allowance == 0:
        assert admitted == RPM, statuses(after)
    else:  # (a slow run: the bucket refilled meanwhile, and only that much more was admitted)
        assert RPM <= admitted <= RPM + allowance, (admitted, allowance, statuses(after))
    assert statuses(after).count(200) == admitted - 7
    assert statuses(after).count(429) == 20 - (admitted - 7)


def test_a_killed_worker_never_lets_more_than_the_limit_through(mock: MockProvider, start_relay, pin: Pin) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(KEYS + endpoints(mock) + rule("ten", per="relay_key", requests_per_minute=RPM), workers=2)
    clients = pin(relay, 4)
    victim = sorted(clients)[0]
    began = time.monotonic()
    assert paced(clients[victim][0], relay, 5) == [200] * 5
    # the victim has requests in flight (admitted and sent upstream), and maybe leased units unused
    slow = {"x-mock-delay": "5"}
    cut = [in_background(partial(post, relay, headers=slow, client=client)) for client in clients[victim][1:]]
    assert wait_until(lambda: mock.count(path=UPSTREAM_CHAT) == 8, timeout=10)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: victim not in relay.worker_pids() and len(relay.worker_pids()) == 2, timeout=15)
    relay.wait_ready(workers=3)
    for thread, result in cut:
        thread.join(10)
        assert result and isinstance(result[0], httpx.HTTPError), result  # (cut with their worker)
    before = mock.count(path=UPSTREAM_CHAT)
    after = run_load(lambda client, index: post(relay, client=client), count=20, concurrency=10)
    admitted = mock.count(path=UPSTREAM_CHAT)
    # Never more than the limit; fewer is allowed: the killed worker's leased units cannot be told
    # apart from the ones its cut requests used (it died before saying), so the supervisor counts
    # them all as used (they come back only with the refill). Giving them back would let the units
    # of requests that did reach the provider be admitted a second time.
    assert admitted <= RPM + refilled(began), (admitted, statuses(after))
    seen = statuses(after)
    assert seen.count(200) == admitted - before and seen.count(429) == 20 - seen.count(200), seen
