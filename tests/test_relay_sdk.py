"""The official SDKs, pointed at a real relay, get the provider's answers, streamed and not."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest

from relaytest import endpoint_config
from mock_providers import MockProvider


@pytest.fixture
def relay(mock: MockProvider, start_relay):  # type: ignore[no-untyped-def]
    config = (
        endpoint_config("oai", mock, "openai", "/v1", api_key="sk-openai-provider")
        + endpoint_config("claude", mock, "anthropic", "", api_key="sk-ant-provider")
        + endpoint_config("gem", mock, "gemini", "/v1beta", api_key="g-provider")
    )
    return start_relay(config)


def test_openai_sdk_non_streamed(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=relay.url("/oai/v1"), api_key="client-ignored", timeout=10, max_retries=0)
    completion = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "Hello from mock openai"
    assert completion.model == "gpt-test"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    seen = mock.last()
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer sk-openai-provider"
    assert seen.headers["host"] == f"127.0.0.1:{mock.port}"
    assert seen.headers["x-forwarded-for"] == "127.0.0.1"
    assert seen.headers["x-forwarded-proto"] == "http"
    assert seen.headers["x-forwarded-host"] == f"127.0.0.1:{relay.port}"
    assert len(seen.headers["x-request-id"]) >= 16


def test_openai_sdk_streamed_events_arrive_as_sent(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=relay.url("/oai/v1"), api_key="x", timeout=20, max_retries=0)
    received: list[float] = []
    pieces: list[str] = []
    stream = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-delay": "0.25", "x-mock-events": "5"},
    )
    usage = None
    for chunk in stream:
        received.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == "w0 w1 w2 w3 w4"
    assert usage is not None
    index = int(mock.requests.index(mock.last()))
    sent = mock.event_times[index]
    # Every event reached the client before the mock even sent the next one: nothing was buffered.
    assert len(received) == len(sent) - 1  # the SDK does not surface [DONE]
    for i in range(len(received) - 1):
        assert received[i] < sent[i + 1], f"event {i} was held back until event {i + 1} was sent"


def test_anthropic_sdk_non_streamed(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    client = anthropic.Anthropic(base_url=relay.url("/claude"), api_key="client-ignored", timeout=10, max_retries=0)
    message = client.messages.create(
        model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text == "Hello from mock anthropic"  # type: ignore[union-attr]
    seen = mock.last()
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == "sk-ant-provider"
    assert "authorization" not in seen.headers
    assert seen.headers.get("anthropic-version")  # provider headers pass through


def test_anthropic_sdk_streamed_events_arrive_as_sent(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    client = anthropic.Anthropic(base_url=relay.url("/claude"), api_key="x", timeout=20, max_retries=0)
    received: list[float] = []
    with client.messages.stream(
        model="claude-test",
        max_tokens=50,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-delay": "0.2", "x-mock-events": "4"},
    ) as stream:
        text = []
        for event in stream:
            received.append(time.monotonic())
            if event.type == "content_block_delta":
                text.append(event.delta.text)  # type: ignore[union-attr]
        final = stream.get_final_message()
    assert "".join(text) == "w0 w1 w2 w3"
    assert final.stop_reason == "end_turn"
    sent = mock.event_times[mock.requests.index(mock.last())]
    assert len(sent) >= 8
    first_delta_sent = sent[3]  # message_start, content_block_start, ping, then the first delta
    assert min(t for t in received if t > first_delta_sent) < sent[4]


def test_gemini_with_httpx_streamed_and_not(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=relay.base_url, timeout=10) as client:
        response = client.post(
            "/gem/v1beta/models/gemini-test:generateContent",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": "client-key"},
        )
        assert response.status_code == 200
        assert response.json()["candidates"][0]["content"]["parts"][0]["text"] == "Hello from mock gemini"
        seen = mock.last()
        assert seen.headers["x-goog-api-key"] == "g-provider"
        assert seen.path == "/v1beta/models/gemini-test:generateContent"
        with client.stream(
            "POST",
            "/gem/v1beta/models/gemini-test:streamGenerateContent?alt=sse&key=client-key",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            headers={"x-mock-events": "3"},
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert len(events) == 3
        seen = mock.last()
        assert seen.path == "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"  # ?key= removed
        assert seen.headers["x-goog-api-key"] == "g-provider"


def test_provider_errors_pass_through_and_relay_errors_look_native(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=relay.url("/oai/v1"), api_key="x", timeout=10, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-mock-status": "429"}
        )
    missing = openai.OpenAI(base_url=relay.url("/nope/v1"), api_key="x", timeout=10, max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        missing.models.list()
    assert "no endpoint matches" in str(info.value)
    claude = anthropic.Anthropic(base_url=relay.url("/nope"), api_key="x", timeout=10, max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as ainfo:
        claude.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert ainfo.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
