"""Limits across machines: two llmrelay instances (separate supervisors, two workers each) share one
real redis-server. A limit of 20 over both admits exactly 20 of 100 concurrent requests; a Redis
that goes away is never silent and follows `on_backend_error` (503 for "deny", admitted and
reported degraded for "allow"); service and exact limits resume when it returns; usage accounting
in Redis outlives a supervisor."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_providers import MockProvider  # noqa: E402
from redis_server import RedisServer, redis_available  # noqa: E402
from relaytest import RelayProcess, free_port, run_load, wait_until  # noqa: E402
from test_limits_e2e import ALICE, KEYS, admin, endpoints, post, rule  # noqa: E402

if not redis_available():  # .ci/run installs it
    pytest.fail("redis-server is not installed (apt-get install redis-server)", pytrace=False)


@pytest.fixture
def redis() -> Any:
    with RedisServer() as server:
        yield server


def redis_limits(server: RedisServer, on_error: str = "allow") -> str:
    return f'[limits]\nbackend = "redis"\nredis_url = "{server.url}"\non_backend_error = "{on_error}"\n'


def test_two_instances_share_one_limit_exactly(mock: MockProvider, redis: RedisServer, start_relay) -> None:  # type: ignore[no-untyped-def]
    config = KEYS + endpoints(mock) + redis_limits(redis) + rule("shared", per="relay_key", requests_per_minute=20)
    first = start_relay(config, workers=2)
    second = start_relay(config, workers=2)
    relays = [first, second]
    answers = run_load(lambda client, index: post(relays[index % 2], client=client), count=100, concurrency=50)
    statuses = [getattr(a, "status_code", repr(a)) for a in answers]
    assert statuses.count(200) == 20, statuses
    assert statuses.count(429) == 80, statuses
    assert mock.count(path="/v1/chat/completions") == 20
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["x-ratelimit-limit-requests"] == "20"


def test_a_lost_redis_follows_on_backend_error_and_service_resumes(mock: MockProvider, redis: RedisServer, start_relay) -> None:  # type: ignore[no-untyped-def]
    deny_admin, allow_admin = free_port(), free_port()
    limits_rule = rule("shared", per="relay_key", requests_per_minute=1000)
    deny = start_relay(KEYS + admin(deny_admin) + endpoints(mock) + redis_limits(redis, "deny") + limits_rule)
    allow = start_relay(KEYS + admin(allow_admin) + endpoints(mock) + redis_limits(redis, "allow") + limits_rule)
    assert post(deny).status_code == 200 and post(allow).status_code == 200
    redis.kill()

    def denied() -> httpx.Response | None:
        answer = post(deny)
        return answer if answer.status_code == 503 else None

    refused = wait_until(denied, timeout=10)  # (leases held before the outage run out first)
    assert refused, "deny: requests are refused while Redis is away"
    assert refused.json()["error"]["code"] == "service_unavailable"
    assert refused.headers["retry-after"] == "1"
    assert wait_until(lambda: all(post(allow).status_code == 200 for _ in range(5)), timeout=10)

    def degraded(relay: RelayProcess, admin_port: int) -> bool:
        health = httpx.get(relay.url("/health"), timeout=5).json()
        metrics = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).text
        return (
            health["status"] == "degraded"
            and "limits" in health
            and 'llmrelay_limits_backend_up{backend="redis"} 0.0' in metrics
            and "limits backend unreachable" in relay.logs()
        )

    assert wait_until(lambda: degraded(allow, allow_admin), timeout=10), allow.logs()[-2000:]
    assert wait_until(lambda: degraded(deny, deny_admin), timeout=10)
    status = httpx.get(f"http://127.0.0.1:{allow_admin}/status", timeout=5).json()
    assert status["limits"]["backend"] == "redis" and status["limits"]["degraded"]
    assert status["limits"]["backend_errors"] > 0 and status["limits"]["rules"] == ["shared"]
    assert redis.password is None or redis.password not in allow.logs()

    redis.restart()
    assert wait_until(lambda: post(deny).status_code == 200, timeout=15), "deny: service resumes with Redis"

    def exact_again(relay: RelayProcess) -> bool:
        health = httpx.get(relay.url("/health"), timeout=5).json()
        return health["status"] == "ok" and "limits" not in health

    assert wait_until(lambda: exact_again(allow) if post(allow).status_code == 200 else False, timeout=15)


def test_usage_kept_in_redis_outlives_the_supervisor(mock: MockProvider, redis: RedisServer, start_relay) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    config = KEYS + admin(port) + endpoints(mock) + redis_limits(redis) + rule("per-key", per="relay_key", requests_per_minute=1000)
    relay = start_relay(config, workers=2)
    for _ in range(3):
        assert post(relay).status_code == 200

    def alice_requests() -> int:
        answer = httpx.get(f"http://127.0.0.1:{port}/usage?by=key", timeout=5)
        rows = [r for r in answer.json()["rows"] if r["relay_key"] == "alice"] if answer.status_code == 200 else []
        return rows[0]["requests"] if rows else 0

    assert wait_until(lambda: alice_requests() == 3, timeout=10)
    relay.stop()
    again = start_relay(config, workers=1)
    assert post(again).status_code == 200
    assert wait_until(lambda: alice_requests() == 4, timeout=10), "the counts before the restart are still there"
    assert ALICE not in again.logs()
