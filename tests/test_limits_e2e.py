"""Rate limits through real relays: exact across 4 workers, 429 in each provider's shape with the
x-ratelimit headers, SDKs raising their RateLimitError and honouring Retry-After, token budgets
corrected by the real usage, concurrency slots released on every path, counters kept across a
reload that leaves their rule alone, and usage accounting on the admin listener."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from mock_providers import MockProvider
from relaytest import RelayProcess, endpoint_config, free_port, run_load, wait_until

ALICE = "relay-key-alice-6d1f"
BOB = "relay-key-bob-93aa"
KEYS = f'auth_keys = [{{ name = "alice", key = "{ALICE}" }}, {{ name = "bob", key = "{BOB}" }}]\n'
CHAT = "/oai/v1/chat/completions"
BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello there"}]}


def rule(name: str, **keys: object) -> str:
    lines = ["[[limits.rules]]", f'name = "{name}"']
    for key, value in keys.items():
        if isinstance(value, dict):
            inner = ", ".join(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v!r}".replace("'", '"') for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def endpoints(mock: MockProvider) -> str:
    return (
        endpoint_config("oai", mock, "openai", "/v1", api_key="sk-openai-provider")
        + endpoint_config("claude", mock, "anthropic", "", api_key="sk-ant-provider")
        + endpoint_config("gem", mock, "gemini", "/v1beta", api_key="g-provider")
    )


def admin(port: int) -> str:
    return f"[server.admin]\nport = {port}\n"


def post(
    relay: RelayProcess, key: str = ALICE, path: str = CHAT, body: Any = BODY, headers: dict[str, str] | None = None,
    client: httpx.Client | None = None,
) -> httpx.Response:
    sent = {"authorization": f"Bearer {key}", **(headers or {})}
    if client is not None:
        return client.post(relay.url(path), json=body, headers=sent)
    with httpx.Client(timeout=20) as own:
        return own.post(relay.url(path), json=body, headers=sent)


def usage(admin_port: int, by: str | None = None) -> dict[str, Any]:
    query = f"?by={by}" if by else ""
    answer = httpx.get(f"http://127.0.0.1:{admin_port}/usage{query}", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_four_workers_admit_exactly_the_limit_and_refuse_the_rest_in_openai_shape(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    config = KEYS + admin(port) + endpoints(mock) + rule("per-key", per="relay_key", requests_per_minute=10)
    relay = start_relay(config, workers=4)
    answers = run_load(lambda client, index: post(relay, client=client), count=50, concurrency=50)
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 40, statuses
    assert mock.count(path="/v1/chat/completions") == 10
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "10"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"]
    admitted = next(a for a in answers if a.status_code == 200)
    assert admitted.headers["x-ratelimit-limit-requests"] == "10"
    assert int(admitted.headers["x-ratelimit-remaining-requests"]) < 10
    # bob has a counter of his own
    assert post(relay, key=BOB).status_code == 200
    refusals = 'llmrelay_limit_refusals_total{endpoint="oai",rule="per-key"} 40.0'
    assert wait_until(lambda: refusals in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text, timeout=10)


def test_sdks_raise_their_rate_limit_errors_in_each_provider_shape(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    config = KEYS + endpoints(mock) + rule("one", per="endpoint", requests_per_minute=1)
    relay = start_relay(config, workers=2)
    oai = openai.OpenAI(base_url=relay.url("/oai/v1"), api_key=ALICE, timeout=10, max_retries=0)
    oai.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as raised:
        oai.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.response.headers["x-ratelimit-limit-requests"] == "1"
    claude = anthropic.Anthropic(base_url=relay.url("/claude"), api_key=ALICE, timeout=10, max_retries=0)
    claude.messages.create(model="claude-test", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.RateLimitError) as refused:
        claude.messages.create(model="claude-test", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    gem_path = "/gem/v1beta/models/gemini-test:generateContent"
    gem_body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    assert post(relay, path=gem_path, body=gem_body).status_code == 200
    answer = post(relay, path=gem_path, body=gem_body)
    assert answer.status_code == 429
    assert answer.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert answer.json()["error"]["code"] == 429


def test_the_openai_sdk_waits_for_retry_after_and_then_succeeds(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    config = KEYS + endpoints(mock) + rule("one-per-2s", per="relay_key", requests_per_minute=30)
    relay = start_relay(config)
    attempts: list[tuple[float, int, str | None]] = []

    def seen(response: httpx.Response) -> None:
        attempts.append((time.monotonic(), response.status_code, response.headers.get("retry-after")))

    http_client = httpx.Client(event_hooks={"response": [seen]})
    client = openai.OpenAI(base_url=relay.url("/oai/v1"), api_key=ALICE, timeout=10, max_retries=3, http_client=http_client)
    for _ in range(3):  # (the bucket may refill between the last refusal and the SDK's first try)
        while post(relay).status_code != 429:  # use up the bucket
            pass
        attempts.clear()
        completion = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content
        if attempts[0][1] == 429:
            break
    statuses = [status for _, status, _ in attempts]
    assert statuses[0] == 429 and statuses[-1] == 200, statuses
    refused_at, _, retry_after = attempts[0]
    assert retry_after is not None and 1 <= int(retry_after) <= 2
    assert attempts[1][0] - refused_at >= int(retry_after) * 0.9  # the SDK waited as told, then succeeded


def test_the_real_usage_replaces_the_estimate_and_usage_is_accounted_exactly(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    # a day budget of 600 tokens; each request reserves max_tokens=500 but really uses a few tokens
    config = KEYS + admin(port) + endpoints(mock) + rule("budget", per="relay_key", tokens_per_day=600)
    relay = start_relay(config, workers=2)
    body = {**BODY, "max_tokens": 500}
    real = []
    for _ in range(4):  # without the correction the second request would be refused (2 x 500 > 600)
        answer = post(relay, body=body)
        assert answer.status_code == 200, answer.text
        real.append(answer.json()["usage"])
    # streamed, OpenAI (usage in the last chunk), Anthropic (message_start + message_delta), Gemini
    oai = openai.OpenAI(base_url=relay.url("/oai/v1"), api_key=ALICE, timeout=10, max_retries=0)
    stream = oai.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "one two three"}], stream=True, stream_options={"include_usage": True}
    )
    streamed = [chunk.usage for chunk in stream if chunk.usage]
    claude = anthropic.Anthropic(base_url=relay.url("/claude"), api_key=ALICE, timeout=10, max_retries=0)
    with claude.messages.stream(model="claude-test", max_tokens=20, messages=[{"role": "user", "content": "a b c d"}]) as events:
        message = events.get_final_message()
    gem = post(
        relay, path="/gem/v1beta/models/gemini-test:streamGenerateContent?alt=sse",
        body={"contents": [{"role": "user", "parts": [{"text": "x y"}]}]},
    )
    assert gem.status_code == 200
    gem_usage = [line for line in gem.text.splitlines() if "usageMetadata" in line][-1]
    import json

    gem_counts = json.loads(gem_usage.removeprefix("data:").strip())["usageMetadata"]
    expected_in = sum(u["prompt_tokens"] for u in real) + streamed[0].prompt_tokens + message.usage.input_tokens + gem_counts["promptTokenCount"]
    expected_out = (
        sum(u["completion_tokens"] for u in real) + streamed[0].completion_tokens + message.usage.output_tokens
        + gem_counts["candidatesTokenCount"] + gem_counts.get("thoughtsTokenCount", 0)
    )

    def accounted() -> dict[str, Any] | None:
        document = usage(port, "key")
        rows = [r for r in document["rows"] if r["relay_key"] == "alice"]
        return rows[0] if rows and rows[0]["requests"] == 7 else None

    row = wait_until(accounted, timeout=10)
    assert row["input_tokens"] == expected_in
    assert row["output_tokens"] == expected_out
    assert row["errors"] == 0
    # the budget now holds 600 minus what was really used: a request reserving more than that is refused
    left = 600 - expected_in - expected_out
    refused = post(relay, body={**BODY, "max_tokens": left + 50})
    assert refused.status_code == 429, refused.text


def test_injected_stream_usage_is_invisible_to_the_client_and_still_counted(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    config = (
        KEYS + admin(port) + endpoints(mock) + "[limits]\ninject_stream_usage = true\n"
        + rule("tokens", per="relay_key", tokens_per_minute=100000)
    )
    relay = start_relay(config)
    body = {**BODY, "stream": True}
    through = post(relay, body=body)
    direct = httpx.post(mock.base_url + "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-x"}, timeout=10)
    assert mock.last().json()["stream"] is True
    relayed_request = mock.received()[-2].json()
    assert relayed_request["stream_options"] == {"include_usage": True}  # asked for by the relay

    def normal(text: str) -> str:
        import re

        return re.sub(r'"created":\d+', '"created":0', text)

    assert normal(through.text) == normal(direct.text)
    assert '"usage"' not in through.text

    def counted() -> dict[str, Any] | None:
        rows = [r for r in usage(port)["rows"] if r["relay_key"] == "alice"]
        return rows[0] if rows and rows[0]["output_tokens"] > 0 else None

    row = wait_until(counted, timeout=10)
    assert row["input_tokens"] == 2  # the mock counts words: "hello there"


@pytest.mark.parametrize("failure", ["timeout", "status_500", "client_gone"])
def test_a_concurrency_slot_is_released_on_every_path(mock: MockProvider, start_relay, failure: str) -> None:  # type: ignore[no-untyped-def]
    config = (
        KEYS
        + endpoint_config("oai", mock, "openai", "/v1", api_key="sk-openai-provider", first_byte_timeout=1.0, retries=0)
        + rule("one-at-a-time", per="relay_key", concurrent_requests=1)
    )
    relay = start_relay(config)
    if failure == "timeout":
        hang = mock.hang(path="/v1/chat/completions")
        assert post(relay).status_code == 504
        mock.remove_rule(hang)
    elif failure == "status_500":
        rule_500 = mock.answer(status=500, path="/v1/chat/completions")
        assert post(relay).status_code == 500
        mock.remove_rule(rule_500)
    else:
        with httpx.Client(timeout=20) as client:
            with client.stream(
                "POST", relay.url(CHAT), json={**BODY, "stream": True},
                headers={"authorization": f"Bearer {ALICE}", "x-mock-delay": "0.5", "x-mock-events": "20"},
            ) as streaming:
                assert streaming.status_code == 200
                chunks = streaming.iter_bytes()
                next(chunks)
                # a second request while the first holds the slot is refused
                assert post(relay).status_code == 429
                chunks.close()  # (the client goes away mid-stream)
        assert mock.wait_for_disconnect(10)
    assert wait_until(lambda: post(relay).status_code == 200, timeout=5)


def test_a_killed_worker_frees_its_concurrency_slots(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    config = KEYS + endpoints(mock) + rule("one-at-a-time", per="relay_key", concurrent_requests=1)
    relay = start_relay(config)
    holder = threading.Thread(
        target=lambda: _swallow(lambda: post(relay, body={**BODY, "stream": True}, headers={"x-mock-delay": "1", "x-mock-events": "30"}))
    )
    holder.start()
    assert wait_until(lambda: mock.count(path="/v1/chat/completions") == 1, timeout=10)
    assert post(relay).status_code == 429
    old = relay.worker_pids()
    import os

    os.kill(old[0], signal.SIGKILL)
    assert wait_until(lambda: relay.worker_pids() and relay.worker_pids() != old, timeout=15)
    relay.wait_ready(workers=1)
    assert wait_until(lambda: post(relay).status_code == 200, timeout=10)
    holder.join(30)


def _swallow(call: Any) -> None:
    try:
        call()
    except httpx.HTTPError:
        pass


def test_a_reload_keeps_the_counters_of_rules_it_leaves_alone(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    base = KEYS + endpoints(mock)
    relay = start_relay(base + rule("five", per="relay_key", requests_per_minute=5), workers=2)
    statuses = [post(relay).status_code for _ in range(8)]
    assert statuses.count(200) == 5
    assert relay.config_path is not None
    relay.config_path.write_text(
        base + rule("five", per="relay_key", requests_per_minute=5) + rule("other", per="client_ip", requests_per_minute=1000)
    )
    relay.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload ok" in relay.logs(), timeout=10)
    assert post(relay).status_code == 429  # the unchanged rule kept its counter
    relay.config_path.write_text(base + rule("five", per="relay_key", requests_per_minute=10))
    relay.send_signal(signal.SIGHUP)
    assert wait_until(lambda: relay.logs().count("reload ok") >= 2, timeout=10)
    assert post(relay).status_code == 200  # a changed rule starts afresh


@pytest.mark.parametrize("tokens_too", [False, True], ids=["requests", "requests-and-tokens"])
def test_rule_matches_by_model_and_relay_key(mock: MockProvider, start_relay, monkeypatch, tokens_too: bool) -> None:  # type: ignore[no-untyped-def]
    # (with tokens counted by every rule, one decode of the body gives both the model and the estimate)
    extra: dict[str, object] = {"tokens_per_minute": 1_000_000} if tokens_too else {}
    config = (
        KEYS.replace(f'key = "{BOB}"', 'key = "${INTERN_KEY}"')
        + endpoints(mock)
        + rule(
            "interns-gpt4o", per="relay_key", requests_per_minute=1, **extra,
            match={"endpoint": "oai", "model": "gpt-4o*", "relay_key": ["${INTERN_KEY}"]},
        )
    )
    relay = start_relay(config, env={"INTERN_KEY": BOB})
    big = {**BODY, "model": "gpt-4o-mini"}
    assert post(relay, key=BOB, body=big).status_code == 200
    assert post(relay, key=BOB, body=big).status_code == 429
    assert post(relay, key=BOB, body=BODY).status_code == 200  # another model: no rule
    assert post(relay, key=ALICE, body=big).status_code == 200  # another key: no rule
    assert post(relay, key=ALICE, body=big).status_code == 200


def test_a_large_body_cannot_hide_its_model_from_a_rule(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    """A body too large to be held whole (over 64 KiB, or chunked) is read ahead for its model when a
    rule looks at models; one too large even to keep for replay counts under every rule naming models."""
    config = (
        KEYS
        + endpoint_config("oai", mock, "openai", "/v1", api_key="sk-openai-provider", retry_body_limit=300_000)
        + rule("gpt4o", per="relay_key", requests_per_minute=1, match={"model": "gpt-4o*"})
    )
    relay = start_relay(config)
    padding = "x" * 70_000
    big = {"messages": [{"role": "user", "content": padding}], "model": "gpt-4o-mini"}  # (the model after 70 KB)
    assert post(relay, body=big).status_code == 200
    assert post(relay, body=big).status_code == 429
    other = {**big, "model": "gpt-3.5-turbo"}
    assert post(relay, body=other).status_code == 200  # another model: the rule does not apply
    assert mock.last().json()["messages"][0]["content"] == padding  # the body read ahead arrives whole

    def chunks() -> Any:
        import json

        text = json.dumps(big).encode()
        for start in range(0, len(text), 8192):
            yield text[start : start + 8192]

    with httpx.Client(timeout=20) as client:  # chunked, no Content-Length
        answer = client.post(relay.url(CHAT), content=chunks(), headers={"authorization": f"Bearer {ALICE}", "content-type": "application/json"})
    assert answer.status_code == 429
    huge = {"messages": [{"role": "user", "content": "y" * 400_000}], "model": "gpt-3.5-turbo"}
    assert post(relay, body=huge).status_code == 429  # too large to read ahead: every model rule applies
