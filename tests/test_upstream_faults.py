"""A provider that refuses, hangs, resets, answers garbage or stalls mid-stream: the client gets a
proper status or an honest cut, the operator a log line, and the worker keeps serving."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import pytest

from relaytest import endpoint_config, free_port
from mock_providers import MockProvider

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def relay(mock: MockProvider, start_relay):  # type: ignore[no-untyped-def]
    dead_port = free_port()
    config = (
        endpoint_config("oai", mock, "openai", "/v1", first_byte_timeout=1.0, idle_timeout=1.0)
        + endpoint_config("claude", mock, "anthropic", "", first_byte_timeout=1.0)
        + f'[endpoints.dead]\ntarget_base = "http://127.0.0.1:{dead_port}/v1"\nprovider = "openai"\n'
    )
    return start_relay(config)


def test_refused_connection_is_a_fast_502(relay) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    response = httpx.post(relay.url("/dead/v1/chat/completions"), json=CHAT, timeout=10)
    assert response.status_code == 502
    assert time.monotonic() - started < 2
    assert response.json()["error"]["message"].startswith("cannot connect to the upstream")
    assert "reason=connect_failed" in relay.logs()


def test_no_headers_is_a_504_at_the_first_byte_timeout(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    response = httpx.post(relay.url("/oai/v1/chat/completions"), json=CHAT, headers={"x-mock-hang": "1"}, timeout=10)
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert 0.9 < elapsed < 3
    assert mock.wait_for_disconnect(2.0)  # the hung upstream request was closed
    client = openai.OpenAI(base_url=relay.url("/oai/v1"), api_key="x", max_retries=0, timeout=10)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], extra_headers={"x-mock-hang": "1"})
    assert info.value.status_code == 504


def test_reset_and_garbage_are_502(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    for header in ("x-mock-reset", "x-mock-garbage"):
        response = httpx.post(relay.url("/claude/v1/messages"), json=CHAT, headers={header: "1"}, timeout=10)
        assert response.status_code == 502, header
        body = response.json()
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert httpx.post(relay.url("/claude/v1/messages"), json=CHAT, timeout=10).status_code == 200


def test_stall_mid_stream_is_an_unclean_end(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    # Events 2.5 s apart with a 1 s idle timeout: the relay must cut the stream, never end it cleanly.
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream(
            "POST",
            relay.url("/oai/v1/chat/completions"),
            json={**CHAT, "stream": True},
            headers={"x-mock-delay": "2.5", "x-mock-events": "3"},
            timeout=10,
        ) as response:
            assert response.status_code == 200
            for _ in response.iter_lines():
                pass
    assert "reason=timeout" in relay.logs()
    assert httpx.get(relay.url("/oai/v1/models"), timeout=5).status_code == 200


def test_long_gaps_within_the_idle_timeout_are_fine(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock, "openai", "/v1", idle_timeout=3.0))
    with httpx.stream(
        "POST",
        relay.url("/oai/v1/chat/completions"),
        json={**CHAT, "stream": True},
        headers={"x-mock-delay": "1.2", "x-mock-events": "3"},
        timeout=10,
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"


def test_a_bad_upstream_does_not_disturb_other_requests(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(
        endpoint_config("slow", mock, "openai", "/v1", first_byte_timeout=8.0) + endpoint_config("claude", mock, "anthropic", "")
    )
    results: list[int] = []

    def hang() -> None:
        results.append(
            httpx.post(relay.url("/slow/v1/chat/completions"), json=CHAT, headers={"x-mock-hang": "1"}, timeout=20).status_code
        )

    threads = [threading.Thread(target=hang) for _ in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    for _ in range(10):
        assert httpx.post(relay.url("/claude/v1/messages"), json=CHAT, timeout=5).status_code == 200
    assert results == []  # every other request was served while the hung ones were still waiting
    for thread in threads:
        thread.join(20)
    assert results == [504] * 5


def test_upstream_that_closes_mid_body_is_cut(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve_short() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"partial\":")
        conn.close()

    thread = threading.Thread(target=serve_short, daemon=True)
    thread.start()
    relay = start_relay(f'[endpoints.short]\ntarget_base = "http://127.0.0.1:{port}"\nprovider = "openai"\n')
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(relay.url("/short/x"), timeout=5)
    thread.join(5)
    listener.close()
    assert "reason=bad_response" in relay.logs()
