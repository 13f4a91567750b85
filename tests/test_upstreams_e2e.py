"""Several upstreams per endpoint, end to end: real `llmrelay serve` processes (a supervisor and its
trio workers) in front of mock providers on 127.0.0.1.

Weighted splits between upstreams and between the keys of one upstream, priority tiers and the
fallback, a provider killed under load (failover with no failed client request, ejection, recovery),
key cool-downs on 429 and keys disabled on 401, bodies replayed on the next upstream (and the large one
that is not), a stream cut after its first bytes (never retried), relay keys scoped to upstreams,
active health checks (once per interval per machine, through the upstream's proxy, with its key), the
same `/health` table from every worker, and the `x-llmrelay-upstream` header with `attempts=N` in the
access log.

Upstream traffic is counted where it lands, on the mocks (path, presented key, time of arrival);
attempts that never reached a mock (refused connects) are counted from the relay's access log, whose
`attempts=N` says how many upstreams a request tried.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email.utils import format_datetime
from datetime import datetime, timezone

import httpx
import openai
import pytest

from mock_providers import MockProvider
from relaytest import (
    RelayProcess,
    access_record,
    access_records_matching,
    free_port,
    fresh_connections,
    get_health,
    run_load,
    upstream_health,
    upstreams_config,
    wait_until,
)
from test_upstream_proxies import start_proxy  # noqa: F401 - the pproxy fixture, reused

pytestmark = pytest.mark.timeout(90)

TEAM = "team-key-7c1d9e"
AUTH = {"authorization": f"Bearer {TEAM}"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
CHAT_PATH = "/v1/chat/completions"
TIMEOUT = 10.0


@pytest.fixture
def mocks() -> Iterator[Callable[[int], list[MockProvider]]]:
    """mocks(n) -> n started mock providers, stopped at the end of the test."""
    started: list[MockProvider] = []

    def make(count: int) -> list[MockProvider]:
        new = [MockProvider().start() for _ in range(count)]
        started.extend(new)
        return new

    yield make
    for provider in started:
        provider.stop()


def up(name: str, mock: MockProvider | None, **keys: object) -> dict[str, object]:
    """An `[[upstreams]]` table for `mock` (None: a port on 127.0.0.1 where nothing listens)."""
    base = mock.base_url if mock is not None else f"http://127.0.0.1:{free_port()}"
    return {"name": name, "provider": "openai", "target_base": base + "/v1", **keys}


def post_chat(relay: RelayProcess, endpoint: str = "chat", key: str = TEAM, client: httpx.Client | None = None,
              **kwargs: object) -> httpx.Response:
    """A chat completion through the relay; without a client, over a new connection."""
    headers = {"authorization": f"Bearer {key}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    url = relay.url(f"/{endpoint}{CHAT_PATH}")
    return (client or fresh_connections()).post(url, json=CHAT, headers=headers, **kwargs)  # type: ignore[arg-type]


def served_by(responses: list[httpx.Response]) -> Counter[str]:
    """How many of the responses each upstream served (its `x-llmrelay-upstream`), all 200."""
    bad = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert not bad, bad
    return Counter(r.headers["x-llmrelay-upstream"] for r in responses)


def chats(mock: MockProvider, since: int = 0) -> int:
    return mock.count(path=CHAT_PATH, since=since)


def within(value: float, expected: float, relative: float) -> bool:
    return abs(value - expected) <= relative * expected


def wait_for_state(relay: RelayProcess, endpoint: str, upstream: str, states: tuple[str, ...], timeout: float) -> dict:
    """The upstream's /health entry once its state is one of `states` (fails after `timeout`)."""
    seen: list[dict] = []

    def reached() -> bool:
        seen.append(upstream_health(relay, endpoint, upstream))
        return seen[-1]["state"] in states

    assert wait_until(reached, timeout, step=0.05), f"wanted {states}, last: {seen[-1]}"
    return seen[-1]


# -- 1. weights -------------------------------------------------------------------------------------


def test_weighted_split_between_upstreams_and_between_keys(mocks, start_relay) -> None:  # type: ignore[no-untyped-def]
    a, b, c = mocks(3)
    config = upstreams_config(
        "chat",
        [
            up("a", a, weight=1.0, api_key="sk-a-only"),
            up("b", b, weight=2.0, api_key="sk-b-only"),
            up("c", c, weight=3.0, api_keys=[{"key": "sk-c-light", "weight": 1.0, "name": "light"},
                                             {"key": "sk-c-heavy", "weight": 2.0}]),
        ],
        auth_keys=[TEAM],
    )
    relay = start_relay(config, workers=2)
    total = 3000

    def send(client: httpx.Client, index: int) -> tuple[int, str]:
        response = post_chat(relay, client=client)
        return response.status_code, response.headers.get("x-llmrelay-upstream", "")

    results = run_load(send, total, concurrency=16, timeout=60)
    failures = [r for r in results if not isinstance(r, tuple) or r[0] != 200]
    assert not failures, failures[:5]

    received = {"a": chats(a), "b": chats(b), "c": chats(c)}
    assert sum(received.values()) == total, received
    assert Counter(name for _, name in results) == received  # the header names the upstream that served
    for name, share in (("a", 1 / 6), ("b", 2 / 6), ("c", 3 / 6)):
        assert within(received[name] / total, share, 0.03), (name, received)

    assert a.key_counts() == {"sk-a-only": received["a"]}
    assert b.key_counts() == {"sk-b-only": received["b"]}
    keys = c.key_counts()
    assert set(keys) == {"sk-c-light", "sk-c-heavy"}, keys
    assert within(keys["sk-c-light"] / received["c"], 1 / 3, 0.03), keys
    assert within(keys["sk-c-heavy"] / received["c"], 2 / 3, 0.03), keys

    chat_lines = access_records_matching(relay, lambda r: r.get("endpoint") == "chat", total)
    served_pids = {r["pid"] for r in chat_lines}
    assert len(served_pids) == 2, served_pids  # both workers took part
    assert TEAM not in relay.logs()


# -- 2. priority tiers and fallback -------------------------------------------------------------------


def test_priority_tiers_and_fallback_follow_health(mocks, start_relay) -> None:  # type: ignore[no-untyped-def]
    primary, secondary, backup = mocks(3)
    check = {"path": "/v1/models", "interval": 1, "timeout": 1, "healthy_threshold": 1, "unhealthy_threshold": 2}
    config = upstreams_config(
        "chat",
        [
            up("primary", primary, priority=1, health_check=check),
            up("secondary", secondary, priority=0, health_check=check),
            # The highest priority of all, but a fallback: used only when no other upstream is.
            up("backup", backup, priority=5, fallback=True),
        ],
        auth_keys=[TEAM],
    )
    relay = start_relay(config, workers=2)

    def batch(count: int = 30) -> Counter[str]:
        return served_by([post_chat(relay) for _ in range(count)])

    assert batch() == {"primary": 30}
    assert (chats(secondary), chats(backup)) == (0, 0)

    primary.kill()
    assert batch() == {"secondary": 30}  # every request, the first ones by failover
    assert chats(backup) == 0
    wait_for_state(relay, "chat", "primary", ("ejected", "unhealthy"), 5)

    secondary.kill()
    assert batch() == {"backup": 30}

    primary.revive()
    secondary.revive()
    # The active check (every second, one pass is enough) brings the primary back, with no request
    # sent meanwhile (so no passive probe either).
    health = wait_for_state(relay, "chat", "primary", ("ok",), 5)
    assert health["usable"] is True and health["last_check"] > 0, health
    assert chats(primary) == 30
    seen_secondary, seen_backup = chats(secondary), chats(backup)
    assert batch() == {"primary": 30}
    assert (chats(secondary), chats(backup)) == (seen_secondary, seen_backup)


# -- 3. an upstream killed under load ------------------------------------------------------------------


def test_killed_upstream_under_load_fails_no_request_is_ejected_and_comes_back(mocks, start_relay) -> None:  # type: ignore[no-untyped-def]
    one, doomed, three = mocks(3)
    config = upstreams_config("chat", [up("one", one), up("doomed", doomed), up("three", three)], auth_keys=[TEAM])
    relay = start_relay(config, workers=2)
    total, concurrency, kill_at, threshold = 500, 16, 100, 3

    states: list[str] = []
    monitoring = threading.Event()

    def monitor() -> None:
        while not monitoring.is_set():
            try:
                states.append(upstream_health(relay, "chat", "doomed")["state"])
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                states.append(f"error: {exc!r}")
            time.sleep(0.05)

    killed_at: list[float] = []

    def send(client: httpx.Client, index: int) -> int:
        if index == kill_at:
            doomed.kill()
            killed_at.append(time.monotonic())
        return post_chat(relay, client=client, headers={"x-request-id": f"load-{index:04d}"}).status_code

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    results = run_load(send, total, concurrency, timeout=60)
    ended = time.monotonic()
    monitoring.set()
    watcher.join(5)

    assert results == [200] * total, Counter(map(repr, results))
    assert {"ejected", "unhealthy"} & set(states), Counter(states)

    # Every attempt that failed went to the killed upstream (the other two never fail), so the
    # attempts beyond the first of every request count the ones it got after it died.
    records = access_records_matching(relay, lambda r: r.get("rid", "").startswith("load-"), total)
    assert len(records) == total
    failed_attempts = sum(int(r["attempts"]) - 1 for r in records)
    assert failed_attempts >= 1  # the kill was noticed
    assert all(r["upstream"] != "doomed" for r in records if int(r["attempts"]) > 1)
    # Up to the threshold in a row, plus the requests already on their way when it was ejected, plus
    # one probe per worker each time an ejection (1 s, then doubling) ran out during the load.
    dead_for = ended - killed_at[0]
    probes = 2 * (1 + int(dead_for))
    assert failed_attempts <= threshold + concurrency + probes, (failed_attempts, dead_for)
    health = upstream_health(relay, "chat", "doomed")
    assert health["consecutive_failures"] >= threshold and health["usable"] is False, health

    # Listening again: a probe (when the ejection runs out) finds it, and it takes its share again.
    served_before_kill = chats(doomed)
    doomed.revive()
    assert wait_until(lambda: post_chat(relay).status_code == 200 and chats(doomed) > served_before_kill, 20, step=0.1)
    wait_for_state(relay, "chat", "doomed", ("ok",), 5)
    before = chats(doomed)
    assert sum(served_by([post_chat(relay) for _ in range(60)]).values()) == 60
    assert chats(doomed) - before >= 10


# -- 4. keys: 429 cool-down, 401 disabled --------------------------------------------------------------


KEY_A = "sk-alpha-5e8f01c2"
KEY_B = "sk-bravo-93ad7b44"
KEY_REVOKED = "sk-revoked-d4c1e0aa"
KEY_GOOD = "sk-good-0b7f3e19"


def test_rate_limited_key_cools_for_its_retry_after_then_serves_again(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    config = upstreams_config(
        "chat",
        [up("only", mock, api_keys=[{"key": KEY_A, "name": "key-a"}, {"key": KEY_B, "name": "key-b"}])],
        auth_keys=[TEAM],
    )
    relay = start_relay(config, workers=2)
    with httpx.Client(timeout=TIMEOUT) as client:  # one connection: one worker
        assert served_by([post_chat(relay, client=client) for _ in range(4)]) == {"only": 4}
    assert [r.key for r in mock.requests] == [KEY_A, KEY_B, KEY_A, KEY_B]  # one after the other
    start = len(mock.requests)

    rule = mock.answer(429, key=KEY_A, retry_after=2)
    responses: list[httpx.Response] = []
    cooling_seen: list[dict] = []
    first: float | None = None
    loop_end = time.monotonic() + 10
    while time.monotonic() < loop_end:
        responses.append(post_chat(relay, headers={"x-request-id": f"cool-{len(responses):03d}"}))
        limited = mock.received(key=KEY_A, since=start)
        if first is None and limited:
            first = limited[0].at
            # (the other worker learns of it from the supervisor's broadcast, a moment later)
            def key_a_view() -> dict | None:
                code, payload, _ = get_health(relay)
                view = {**payload["endpoints"]["chat"]["upstreams"]["only"]["keys"]["key-a"], "relay": (code, payload["status"])}
                return view if view["state"] == "cooling" else None

            cooling_seen.append(wait_until(key_a_view, 1.0) or {"state": "never seen cooling"})
            loop_end = first + 3.5
        if first is not None and time.monotonic() > first + 1.0 and rule in mock.rules:
            mock.remove_rule(rule)  # key A answers again once its cool-down ends
        time.sleep(0.05)

    assert first is not None, "key A was never used"
    assert served_by(responses) == {"only": len(responses)}  # the 429 never reached the client
    assert access_record(relay, "cool-000")  # the access log has the loop's requests
    a_times = [r.at - first for r in mock.received(key=KEY_A, since=start)]
    b_times = [r.at - first for r in mock.received(key=KEY_B, since=start)]
    assert not [t for t in a_times if 0.3 < t < 1.8], a_times  # cooling for its Retry-After
    assert [t for t in a_times if t >= 1.8], a_times  # and used again after it
    assert len([t for t in b_times if 0.3 < t < 1.8]) >= 10, b_times  # key B took every request meanwhile
    assert cooling_seen[0]["state"] == "cooling", cooling_seen
    first_wall = time.time() - (time.monotonic() - first)  # the 429's time as unix time
    assert abs(cooling_seen[0]["cooling_until"] - (first_wall + 2)) <= 1.0, cooling_seen
    assert wait_until(lambda: upstream_health(relay, "chat", "only")["keys"]["key-a"]["state"] == "ok", 3)
    # While the key was cooling the relay was degraded (and ready: key B was there).
    assert cooling_seen[0]["relay"] == (200, "degraded"), cooling_seen


def test_rate_limited_key_with_an_http_date_retry_after(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    config = upstreams_config(
        "chat",
        [up("only", mock, api_keys=[{"key": KEY_A, "name": "key-a"}, {"key": KEY_B, "name": "key-b"}])],
        auth_keys=[TEAM],
    )
    relay = start_relay(config, workers=1)
    until = datetime.fromtimestamp(int(time.time()) + 4, tz=timezone.utc)
    mock.answer(429, key=KEY_A, retry_after=format_datetime(until, usegmt=True))
    responses = [post_chat(relay) for _ in range(6)]
    assert served_by(responses) == {"only": 6}
    assert mock.key_counts() == {KEY_A: 1, KEY_B: 6}
    key = upstream_health(relay, "chat", "only")["keys"]["key-a"]
    assert key["state"] == "cooling" and abs(key["cooling_until"] - until.timestamp()) <= 1.0, key


def test_unauthorized_key_is_disabled_and_logged_once_by_name(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    config = upstreams_config(
        "chat",
        [up("only", mock, api_keys=[{"key": KEY_REVOKED, "name": "revoked"}, {"key": KEY_GOOD}])],
        auth_keys=[TEAM],
    )
    relay = start_relay(config, workers=2)
    mock.answer(401, key=KEY_REVOKED)
    with httpx.Client(timeout=TIMEOUT) as client:  # one connection: one worker
        first = post_chat(relay, client=client)
        rest = [post_chat(relay, client=client) for _ in range(9)]
    assert first.status_code == 200, first.text  # the request moved to the other key
    assert served_by(rest) == {"only": 9}
    assert mock.key_counts()[KEY_REVOKED] == 1

    def disabled_everywhere() -> bool:
        answers = {}
        for _ in range(40):
            _, payload, pid = get_health(relay)
            answers[pid] = payload["endpoints"]["chat"]["upstreams"]["only"]["keys"]["revoked"]["state"]
            if len(answers) == 2:
                break
        return len(answers) == 2 and set(answers.values()) == {"disabled"}

    assert wait_until(disabled_everywhere, 5)
    assert served_by([post_chat(relay) for _ in range(20)]) == {"only": 20}  # new connections, both workers
    assert mock.key_counts()[KEY_REVOKED] == 1  # never used again until a reload
    code, payload, _ = get_health(relay)
    health = payload["endpoints"]["chat"]["upstreams"]["only"]
    assert health["keys"]["1"]["state"] == "ok", health  # an unnamed key goes by its index
    assert health["state"] == "ok" and health["usable"] is True, health  # one key left is enough

    logs = relay.logs()
    mentions = [line for line in logs.splitlines() if "revoked" in line]
    assert len(mentions) == 1, mentions
    for secret in (KEY_REVOKED, KEY_GOOD, TEAM):
        assert secret not in logs

    # A key that is not ok makes the relay degraded (still ready: the upstream has a key left).
    assert (code, payload["status"]) == (200, "degraded"), payload


# -- 5. replayed bodies -----------------------------------------------------------------------------------


def test_body_is_replayed_byte_for_byte_on_the_next_upstream(mocks, start_relay) -> None:  # type: ignore[no-untyped-def]
    live, flaky, spare = mocks(3)
    flaky.answer(503)
    config = upstreams_config(
        "replay", [up("dead", None, priority=1), up("live", live)], auth_keys=[TEAM]
    ) + upstreams_config(
        "big", [up("flaky", flaky, priority=1), up("spare", spare)], auth_keys=[TEAM], retry_body_limit=1048576
    )
    relay = start_relay(config, workers=1)

    def echo(endpoint: str, body: object, rid: str) -> httpx.Response:
        return fresh_connections().post(relay.url(f"/{endpoint}/v1/echo"), content=body,  # type: ignore[arg-type]
                                        headers={**AUTH, "x-request-id": rid, "content-type": "application/octet-stream"})

    def expected(blob: bytes) -> str:
        return f"{hashlib.sha256(blob).hexdigest()}\n{len(blob)}"

    # 100 KiB with a Content-Length: the dead first choice, then the live one gets every byte.
    blob = os.urandom(100 * 1024)
    response = echo("replay", blob, "replay-sized")
    assert response.status_code == 200, response.text
    assert response.text == expected(blob)
    assert response.headers["x-llmrelay-upstream"] == "live"
    assert live.last().body == blob
    record = access_record(relay, "replay-sized")
    assert (record["attempts"], record["upstream"]) == ("2", "live")

    # The same size, chunked (no Content-Length): kept in memory as it streams, replayed the same.
    chunked = os.urandom(100 * 1024)
    response = echo("replay", (chunked[i : i + 8192] for i in range(0, len(chunked), 8192)), "replay-chunked")
    assert response.status_code == 200, response.text
    assert response.text == expected(chunked)
    assert live.last().body == chunked
    record = access_record(relay, "replay-chunked")
    assert (record["attempts"], record["upstream"]) == ("2", "live")

    # 2 MiB, over retry_body_limit: sent once; the first choice's 503 goes back to the client.
    big = os.urandom(2 * 1024 * 1024)
    response = echo("big", big, "big-once")
    assert response.status_code == 503, response.text
    assert response.json()["error"]["message"] == "mock error 503"  # the upstream's own answer
    assert response.headers["x-llmrelay-upstream"] == "flaky"
    assert flaky.last().body == big
    assert spare.count() == 0
    record = access_record(relay, "big-once")
    assert (record["attempts"], record["upstream"]) == ("1", "flaky")

    # A small body on the same endpoint is replayed past the 503.
    small = os.urandom(1000)
    response = echo("big", small, "big-small")
    assert response.status_code == 200 and response.text == expected(small)
    assert spare.last().body == small
    record = access_record(relay, "big-small")
    assert (record["attempts"], record["upstream"]) == ("2", "spare")


# -- 6. no retry once the response started -------------------------------------------------------------------


def test_stream_cut_after_three_events_is_not_retried(mocks, start_relay) -> None:  # type: ignore[no-untyped-def]
    cutting, other = mocks(2)
    cutting.reset_after_events = 3
    config = upstreams_config("chat", [up("cutting", cutting, priority=1), up("other", other)], auth_keys=[TEAM])
    relay = start_relay(config, workers=1)

    lines: list[str] = []
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        with httpx.stream("POST", relay.url(f"/chat{CHAT_PATH}"), json={**CHAT, "stream": True}, timeout=TIMEOUT,
                          headers={**AUTH, "x-request-id": "cut-raw", "x-mock-events": "10"}) as response:
            assert response.status_code == 200
            assert response.headers["x-llmrelay-upstream"] == "cutting"
            for line in response.iter_lines():
                if line.startswith("data: "):
                    lines.append(line)
    sent = bytes(cutting.stream_bodies[cutting.count() - 1]).decode()
    upstream_events = [f"data: {e.partition('data: ')[2]}" for e in sent.split("\n\n") if e]
    assert len(upstream_events) == 3
    assert lines[:3] == upstream_events  # the three events, as sent
    assert len(lines) == 4 and '"error"' in lines[3], lines  # then an error event, then the cut
    assert other.count() == 0  # never a second upstream once a byte reached the client
    record = access_record(relay, "cut-raw")
    assert (record["attempts"], record["upstream"]) == ("1", "cutting")

    # The OpenAI SDK sees the text of the first events, then an error.
    client = openai.OpenAI(base_url=relay.url("/chat/v1"), api_key=TEAM, max_retries=0, timeout=TIMEOUT)
    text = []
    with pytest.raises(openai.APIError) as raised:  # from the error event, before the cut
        for chunk in client.chat.completions.create(model="m", messages=CHAT["messages"], stream=True,  # type: ignore[arg-type]
                                                    extra_headers={"x-mock-events": "10"}):
            text.append(chunk.choices[0].delta.content or "")  # type: ignore[union-attr]
    assert raised.value.message
    assert "".join(text) == "w0 w1 "  # the role chunk, "w0 ", "w1 ": the three events before the cut
    assert other.count() == 0


# -- 7. relay keys scoped to upstreams ----------------------------------------------------------------------


def test_tenant_keys_reach_only_their_upstreams_and_the_shared_fallback(mocks, start_relay) -> None:  # type: ignore[no-untyped-def]
    tenant_a, tenant_b, shared = mocks(3)
    config = upstreams_config(
        "chat",
        [
            up("a-only", tenant_a, auth_keys=["tenant-a-key"]),
            up("b-only", tenant_b, auth_keys=["tenant-b-key"]),
            up("shared", shared, fallback=True),
        ],
        auth_keys=[TEAM],
    )
    relay = start_relay(config, workers=2)

    assert served_by([post_chat(relay, key="tenant-a-key") for _ in range(20)]) == {"a-only": 20}
    assert served_by([post_chat(relay, key="tenant-b-key") for _ in range(20)]) == {"b-only": 20}
    # The endpoint's own key reaches only the upstream without a scope (here the fallback).
    assert served_by([post_chat(relay, key=TEAM) for _ in range(20)]) == {"shared": 20}
    assert (chats(tenant_a), chats(tenant_b), chats(shared)) == (20, 20, 20)
    refused = post_chat(relay, key="nobody-key")
    assert refused.status_code == 401
    assert (chats(tenant_a), chats(tenant_b), chats(shared)) == (20, 20, 20)

    # B's own upstream down: B falls to the shared fallback, never to A's upstream.
    tenant_b.kill()
    assert served_by([post_chat(relay, key="tenant-b-key") for _ in range(20)]) == {"shared": 20}
    assert served_by([post_chat(relay, key="tenant-a-key") for _ in range(10)]) == {"a-only": 10}
    assert chats(tenant_a) == 30 and chats(shared) == 40


# -- 8. active checks -----------------------------------------------------------------------------------------


def test_active_checks_once_per_interval_per_machine_through_the_proxy_with_the_key(mocks, start_relay, start_proxy) -> None:  # type: ignore[no-untyped-def]
    checked, other = mocks(2)
    proxy = start_proxy("http")
    healthy = checked.answer(204, path="/v1/healthz")
    check = {
        "method": "POST", "path": "/v1/healthz", "interval": 1, "timeout": 1, "expected_status": [204],
        "healthy_threshold": 1, "unhealthy_threshold": 2, "headers": {"x-probe": "1"}, "body": "ping",
    }
    config = upstreams_config(
        "chat",
        [up("checked", checked, api_key="sk-check-61fa", proxy_url=proxy.url(), health_check=check), up("other", other)],
        auth_keys=[TEAM],
    )
    relay = start_relay(config, workers=4)

    def checks() -> list:
        return checked.received(path="/v1/healthz")

    assert wait_until(checks, 5), checked.path_counts()
    first = checks()[0].at
    time.sleep(max(0.0, first + 3.5 - time.monotonic()))
    in_window = [r for r in checks() if first <= r.at < first + 3.5]
    assert 3 <= len(in_window) <= 5, [round(r.at - first, 2) for r in checks()]  # not 4 workers x 4

    probe = checks()[0]
    assert probe.method == "POST" and probe.body == b"ping"
    assert probe.headers.get("x-probe") == "1"
    assert probe.key == "sk-check-61fa"  # the upstream's provider key
    assert chats(checked) == 0 and checked.count() == len(checks())  # nothing but checks reached it
    assert proxy.lines_to("127.0.0.1", checked.port), proxy.log()  # ... and through its proxy
    assert other.count() == 0  # an upstream without a check is not checked

    health = upstream_health(relay, "chat", "checked")
    # (a worker's view of the table is refreshed on changes and every heartbeat_interval, 5 s here)
    assert health["state"] == "ok" and health["last_check"] > time.time() - 7 and health["last_check_ms"] >= 0, health

    # The expected status is the configured one: a 200 fails the check, the 204 passes it again.
    checked.remove_rule(healthy)
    wrong = checked.answer(200, path="/v1/healthz")
    wait_for_state(relay, "chat", "checked", ("unhealthy",), 5)
    assert served_by([post_chat(relay) for _ in range(10)]) == {"other": 10}
    checked.remove_rule(wrong)
    checked.answer(204, path="/v1/healthz")
    wait_for_state(relay, "chat", "checked", ("ok",), 5)
    assert "sk-check-61fa" not in relay.logs()


# -- 9. the same /health from every worker ---------------------------------------------------------------------


def shared_health(relay: RelayProcess, timeout: float = 5.0) -> tuple[int, dict]:
    """The /health answer of two different workers, asked one right after the other (new connections),
    once they agree; fails if they never do within `timeout`."""
    deadline = time.monotonic() + timeout
    last: dict[int, tuple[int, dict]] = {}
    differing: dict[int, tuple[int, dict]] = {}
    while time.monotonic() < deadline:
        code, payload, pid = get_health(relay)
        payload.pop("workers", None)  # each worker's own fields
        last[pid] = (code, payload)
        if len(last) >= 2:
            answers = list(last.values())
            if all(answer == answers[0] for answer in answers):
                return answers[0]
            differing = dict(last)
            last = {pid: (code, payload)}
    raise AssertionError(f"the workers' /health answers differ: {differing or last}")


def test_health_is_the_same_table_from_every_worker(mocks, start_relay) -> None:  # type: ignore[no-untyped-def]
    (live,) = mocks(1)
    failing_check = {"path": "/v1/models", "interval": 1, "timeout": 1, "unhealthy_threshold": 1, "healthy_threshold": 1}
    config = upstreams_config("chat", [up("live", live), up("gone", None)], auth_keys=[TEAM]) + upstreams_config(
        "solo", [up("lost", None, health_check=failing_check)], auth_keys=[TEAM]
    )
    relay = start_relay(config, workers=2, wait=False)
    relay.wait_ready(workers=2, statuses=(200, 503))  # "solo" may fail its first check at once

    code, health = shared_health(relay)
    gone = health["endpoints"]["chat"]["upstreams"]["gone"]
    assert gone["state"] == "ok" and gone["usable"] is True and gone["consecutive_failures"] == 0, gone

    # "gone" ejected by passive health (the requests fail over to "live"): the same table everywhere.
    assert served_by([post_chat(relay) for _ in range(12)]) == {"live": 12}
    code, health = shared_health(relay)
    gone = health["endpoints"]["chat"]["upstreams"]["gone"]
    assert gone["state"] == "ejected" and gone["consecutive_failures"] >= 3 and gone["ejected_until"] > 0, gone
    assert gone["last_error"].startswith("cannot connect"), gone
    assert health["endpoints"]["chat"]["upstreams"]["live"]["state"] == "ok", health
    assert health["endpoints"]["chat"]["usable"] is True

    # "lost", the only upstream of "solo", fails its active check: nothing usable, the relay failing.
    wait_for_state(relay, "solo", "lost", ("unhealthy",), 5)
    code, health = shared_health(relay)
    lost = health["endpoints"]["solo"]["upstreams"]["lost"]
    assert lost["usable"] is False and lost["health_check"] is True and lost["last_check"] > 0, lost
    assert health["endpoints"]["solo"]["usable"] is False
    assert (code, health["status"]) == (503, "failing"), health

    # Nothing usable: a 503 in the provider's shape with a Retry-After.
    nothing = post_chat(relay, "solo")
    assert nothing.status_code == 503, nothing.text
    assert int(nothing.headers["retry-after"]) >= 1
    assert set(nothing.json()) == {"error"} and nothing.json()["error"]["message"], nothing.text


# -- 10. the upstream in the header and the access log --------------------------------------------------------------


def test_failover_shows_in_the_header_and_the_access_log(mocks, start_relay) -> None:  # type: ignore[no-untyped-def]
    (second,) = mocks(1)
    config = upstreams_config("chat", [up("first", None, priority=1), up("second", second)], auth_keys=[TEAM])
    relay = start_relay(config, workers=1)
    client = openai.OpenAI(base_url=relay.url("/chat/v1"), api_key=TEAM, max_retries=0, timeout=TIMEOUT)
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=CHAT["messages"], extra_headers={"x-request-id": "failover-1"}  # type: ignore[arg-type]
    )
    assert raw.headers["x-llmrelay-upstream"] == "second"
    assert raw.parse().choices[0].message.content == "Hello from mock openai"
    record = access_record(relay, "failover-1")
    assert (record["attempts"], record["upstream"], record["status"]) == ("2", "second", "200")
    line = next(line for line in relay.logs().splitlines() if "llmrelay.access" in line and "rid=failover-1" in line)
    assert "attempts=2 upstream=second" in line


# -- which failures move a request, and how far ----------------------------------------------------------


def test_failover_on_5xx_429_and_first_byte_timeout_but_not_on_4xx_within_retries_and_deadline(mocks, start_relay) -> None:  # type: ignore[no-untyped-def]
    flaky, steady, never, stuck, spare = mocks(5)
    stuck.hang()
    config = (
        upstreams_config(
            "chat", [up("flaky", flaky, priority=1, api_key="sk-flaky-17"), up("steady", steady)],
            auth_keys=[TEAM], first_byte_timeout=1.0,
        )
        + upstreams_config(
            "short", [up("gone-1", None, priority=2), up("gone-2", None, priority=1), up("never", never)],
            auth_keys=[TEAM], retries=1,
        )
        + upstreams_config(
            "deadline", [up("stuck", stuck, priority=1), up("spare", spare)],
            auth_keys=[TEAM], first_byte_timeout=1.5, retry_deadline=1.0,
        )
    )
    relay = start_relay(config, workers=1)

    def attempt(endpoint: str, rid: str) -> tuple[httpx.Response, dict[str, str]]:
        response = post_chat(relay, endpoint, headers={"x-request-id": rid})
        return response, access_record(relay, rid)

    for status in (500, 502, 503, 504):
        rule = flaky.answer(status)
        response, record = attempt("chat", f"status-{status}")
        assert response.status_code == 200 and response.headers["x-llmrelay-upstream"] == "steady", (status, response.text)
        assert (record["attempts"], record["upstream"]) == ("2", "steady"), (status, record)
        flaky.remove_rule(rule)
        response, record = attempt("chat", f"after-{status}")  # a success ends the failures in a row
        assert response.headers["x-llmrelay-upstream"] == "flaky" and record["attempts"] == "1", record

    # A 4xx other than 429 is the client's business: sent back as it is, never retried.
    rule = flaky.answer(400)
    before = steady.count()
    response, record = attempt("chat", "status-400")
    assert response.status_code == 400 and response.json()["error"]["message"] == "mock error 400"
    assert response.headers["x-llmrelay-upstream"] == "flaky"
    assert (record["attempts"], record["upstream"]) == ("1", "flaky") and steady.count() == before
    flaky.remove_rule(rule)

    # No response head within first_byte_timeout: the next upstream.
    rule = flaky.hang()
    started = time.monotonic()
    response, record = attempt("chat", "first-byte-timeout")
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.headers["x-llmrelay-upstream"] == "steady"
    assert 0.9 < elapsed < 3, elapsed
    assert (record["attempts"], record["upstream"]) == ("2", "steady")
    assert flaky.wait_for_disconnect(2)  # the hung attempt was closed
    flaky.remove_rule(rule)

    # A 429 on the upstream's only key: the request moves to the other upstream.
    flaky.answer(429, key="sk-flaky-17", retry_after=1)
    response, record = attempt("chat", "status-429")
    assert response.status_code == 200 and (record["attempts"], record["upstream"]) == ("2", "steady")

    # retries = 1: two attempts at most, the third upstream is never called.
    response, record = attempt("short", "two-dead")
    assert response.status_code == 502, response.text
    assert record["attempts"] == "2" and never.count() == 0, record

    # retry_deadline = 1 s passed during the first attempt (a 1.5 s first-byte timeout): no second one.
    started = time.monotonic()
    response, record = attempt("deadline", "past-deadline")
    assert response.status_code == 504, response.text
    assert 1.4 < time.monotonic() - started < 3
    assert record["attempts"] == "1" and spare.count() == 0, record
