"""Relay keys and provider keys through a real relay: checked, stripped, injected, never leaked."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from relaytest import endpoint_config
from mock_providers import MockProvider

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def relay(mock: MockProvider, start_relay):  # type: ignore[no-untyped-def]
    config = (
        'auth_keys = ["global-relay-key"]\n'
        + endpoint_config("guarded", mock, "openai", "/v1", auth_keys=["relay-A", "relay-B"], api_key="sk-guarded")
        + endpoint_config("shared", mock, "anthropic", "", api_key="sk-ant-shared")
        + endpoint_config(
            "weighted",
            mock,
            "openai",
            "/v1",
            auth_keys=["relay-W"],
            api_keys=[{"key": "sk-heavy", "weight": 3.0}, {"key": "sk-light", "weight": 1.0}, {"key": "sk-off", "weight": 0}],
        )
        + endpoint_config("gated_only", mock, "openai", "/v1", auth_keys=["relay-G"])
    )
    open_config = endpoint_config("passthrough", mock, "openai", "/v1")
    return start_relay(config + open_config)


def post(relay, path: str, headers: dict[str, str], body: object = BODY) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(relay.url(path), json=body, headers=headers, timeout=10)


def test_valid_relay_key_is_swapped_for_the_provider_key(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    for key in ("relay-A", "relay-B"):
        response = post(relay, "/guarded/v1/chat/completions", {"authorization": f"Bearer {key}"})
        assert response.status_code == 200
        seen = mock.last()
        assert seen.headers["authorization"] == "Bearer sk-guarded"
        assert key not in repr(seen.raw_headers) and key.encode() not in seen.body


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": "Bearer relay-"},
        {"authorization": "Bearer relay-AA"},
        {"authorization": "Bearer"},
        {"authorization": "Basic cmVsYXktQQ=="},
        {"authorization": "Bearer relay-A", "x-api-key": "relay-B"},  # two different keys
        {"authorization": "Bearer global-relay-key"},  # the endpoint's own list takes precedence
    ],
)
def test_bad_relay_keys_get_a_uniform_401(relay, mock: MockProvider, headers: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    before = len(mock.requests)
    response = post(relay, "/guarded/v1/chat/completions", headers)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "invalid or missing relay key"
    for value in headers.values():
        if value.strip():
            assert value.split()[-1] not in response.text
    assert len(mock.requests) == before  # nothing reached the provider


def test_same_key_presented_twice_is_accepted(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    response = post(relay, "/guarded/v1/chat/completions", {"authorization": "Bearer relay-A", "x-api-key": "relay-A"})
    assert response.status_code == 200
    assert "x-api-key" not in mock.last().headers


def test_global_auth_keys_apply_to_endpoints_without_their_own(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    response = post(relay, "/shared/v1/messages", {"x-api-key": "global-relay-key"})
    assert response.status_code == 200
    assert mock.last().headers["x-api-key"] == "sk-ant-shared"
    response = post(relay, "/shared/v1/messages", {"x-api-key": "nope"})
    assert response.status_code == 401
    assert response.json() == {"type": "error", "error": {"type": "authentication_error", "message": "invalid or missing relay key"}}


def test_weighted_provider_keys(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(timeout=10) as client:
        for _ in range(120):
            response = client.post(relay.url("/weighted/v1/chat/completions"), json=BODY, headers={"authorization": "Bearer relay-W"})
            assert response.status_code == 200
    used = Counter(r.headers["authorization"] for r in mock.requests[-120:])
    assert set(used) == {"Bearer sk-heavy", "Bearer sk-light"}  # weight 0 is never used
    assert used == {"Bearer sk-heavy": 90, "Bearer sk-light": 30}  # 3:1, exactly (one worker)


def test_relay_key_without_provider_key_is_removed(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    response = post(relay, "/gated_only/v1/chat/completions", {"authorization": "Bearer relay-G"})
    assert response.status_code == 200
    assert "authorization" not in mock.last().headers


def test_without_auth_keys_or_api_key_the_client_credential_passes_untouched(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    # The global auth_keys do apply here: the endpoint injects nothing, but it is guarded.
    response = post(relay, "/passthrough/v1/chat/completions", {"authorization": "Bearer global-relay-key"})
    assert response.status_code == 200
    assert "authorization" not in mock.last().headers


def test_passthrough_endpoint(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("open", mock, "gemini", "/v1beta"))
    response = httpx.post(
        relay.url("/open/v1beta/models/g:generateContent?key=client-own-key"),
        json={"contents": []},
        headers={"x-goog-api-key": "client-own-header"},
        timeout=10,
    )
    assert response.status_code == 200
    seen = mock.last()
    assert seen.path == "/v1beta/models/g:generateContent?key=client-own-key"
    assert seen.headers["x-goog-api-key"] == "client-own-header"


def test_secrets_never_reach_the_logs(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    post(relay, "/guarded/v1/chat/completions?key=relay-A", {"authorization": "Bearer relay-A"})
    post(relay, "/guarded/v1/chat/completions", {"authorization": "Bearer wrong-secret-guess"})
    post(relay, "/guarded/v1/chat/completions", {"authorization": "Bearer relay-A", "x-mock-status": "500"})
    logs = relay.logs()
    assert "/guarded/v1/chat/completions" in logs
    for secret in ("relay-A", "relay-B", "sk-guarded", "sk-heavy", "wrong-secret-guess", "global-relay-key", "sk-ant-shared"):
        assert secret not in logs


def test_a_key_offered_as_a_websocket_subprotocol() -> None:
    from llmrelay.relay.credentials import KeyRing, identify_relay_key, subprotocol_key, without_subprotocol_key

    ring = KeyRing(["relay-1", "relay-2"])
    headers = [(b"sec-websocket-protocol", b"realtime, openai-insecure-api-key.relay-2, openai-beta.realtime-v1")]
    assert subprotocol_key(headers) == b"relay-2"
    assert identify_relay_key(ring, headers, "", websocket=True) == 1
    assert identify_relay_key(ring, headers, "") is None  # only an upgrade offers subprotocols
    assert without_subprotocol_key(headers) == [(b"sec-websocket-protocol", b"realtime, openai-beta.realtime-v1")]
    only_key = [(b"sec-websocket-protocol", b"openai-insecure-api-key.relay-1"), (b"host", b"h")]
    assert without_subprotocol_key(only_key) == [(b"host", b"h")]
    # two different credentials (a header and a subprotocol) are refused, as two headers are
    both = [*headers, (b"authorization", b"Bearer relay-1")]
    assert identify_relay_key(ring, both, "", websocket=True) is None
    assert subprotocol_key([(b"sec-websocket-protocol", b"openai-insecure-api-key.")]) is None
