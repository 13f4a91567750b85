"""CORS on a real relay: preflights answered locally (never forwarded, no relay key needed), and the
CORS headers on actual responses (upstream answers, the relay's own errors, streamed SSE)."""

from __future__ import annotations

import httpx
import pytest

from mock_providers import MockProvider
from relaytest import endpoint_config

APP = "https://app.example.com"
RELAY_KEY = "rk-browser-app"


def cors_config(mock: MockProvider) -> str:
    return (
        f'auth_keys = ["{RELAY_KEY}"]\n'
        + endpoint_config(
            "oai",
            mock,
            "openai",
            "/v1",
            api_key="sk-provider",
            cors={"allow_origins": [APP], "expose_headers": ["x-request-id"], "max_age": 120},
        )
        + endpoint_config("plain", mock, "openai", "/v1", api_key="sk-provider")
    )


@pytest.fixture
def relay(mock: MockProvider, start_relay):  # type: ignore[no-untyped-def]
    return start_relay(cors_config(mock))


def preflight(relay, origin: str, method: str = "POST", headers: str = "authorization, content-type") -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.options(
        relay.url("/oai/v1/chat/completions"),
        headers={"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers},
        timeout=10,
    )


def test_preflight_answered_locally_without_a_relay_key(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    answer = preflight(relay, APP)
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == APP
    assert answer.headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
    assert answer.headers["access-control-allow-headers"] == "authorization, content-type"
    assert answer.headers["access-control-max-age"] == "120"
    assert answer.headers["vary"] == "origin"
    assert answer.content == b""
    assert mock.count() == 0


@pytest.mark.parametrize(
    ("origin", "method", "headers"),
    [("https://evil.example.com", "POST", "content-type"), (APP, "DELETE", "content-type"), (APP, "POST", "x-secret")],
)
def test_disallowed_preflight_is_403_without_cors_headers(relay, mock: MockProvider, origin: str, method: str, headers: str) -> None:  # type: ignore[no-untyped-def]
    answer = preflight(relay, origin, method, headers)
    assert answer.status_code == 403
    assert not [name for name in answer.headers if name.startswith("access-control-")]
    assert answer.json()["error"]["message"].startswith("CORS preflight refused")
    assert mock.count() == 0


def test_actual_responses_get_cors_headers(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"Authorization": f"Bearer {RELAY_KEY}", "Origin": APP}
    ok = httpx.post(relay.url("/oai/v1/chat/completions"), json=body, headers=auth, timeout=10)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == APP
    assert ok.headers["access-control-expose-headers"] == "x-request-id"
    assert ok.headers["vary"] == "origin"
    # the relay's own 401 (no relay key), a streamed answer, an upstream's 429
    unauthorized = httpx.post(relay.url("/oai/v1/chat/completions"), json=body, headers={"Origin": APP}, timeout=10)
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == APP
    with httpx.stream(
        "POST", relay.url("/oai/v1/chat/completions"), json={**body, "stream": True}, headers=auth, timeout=10
    ) as streamed:
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert streamed.headers["access-control-allow-origin"] == APP
        assert b"[DONE]" in b"".join(streamed.iter_raw())
    limited = httpx.post(  # (last: the provider key cools down after it)
        relay.url("/oai/v1/chat/completions"), json=body, headers={**auth, "x-mock-status": "429"}, timeout=10
    )
    assert limited.status_code == 429
    assert limited.headers["access-control-allow-origin"] == APP


def test_other_origins_and_routes_get_no_cors(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"Authorization": f"Bearer {RELAY_KEY}"}
    evil = httpx.post(
        relay.url("/oai/v1/chat/completions"), json=body, headers={**auth, "Origin": "https://evil.example.com"}, timeout=10
    )
    assert evil.status_code == 200
    assert "access-control-allow-origin" not in evil.headers
    no_route = httpx.post(relay.url("/nowhere/v1/chat/completions"), json=body, headers={"Origin": APP}, timeout=10)
    assert no_route.status_code == 404
    assert "access-control-allow-origin" not in no_route.headers
    no_cors = httpx.post(relay.url("/plain/v1/chat/completions"), json=body, headers={**auth, "Origin": APP}, timeout=10)
    assert no_cors.status_code == 200
    assert "access-control-allow-origin" not in no_cors.headers


def test_options_on_a_route_without_cors_is_forwarded(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    answer = httpx.options(
        relay.url("/plain/v1/chat/completions"),
        headers={"Origin": APP, "Access-Control-Request-Method": "POST", "Authorization": f"Bearer {RELAY_KEY}"},
        timeout=10,
    )
    assert mock.count(method="OPTIONS") == 1
    assert answer.status_code == 404  # (the mock's answer to OPTIONS on that path)


def test_upstream_cors_headers_never_reach_the_client(relay, mock: MockProvider) -> None:  # type: ignore[no-untyped-def]
    mock.answer(200, path="/v1/models", headers={"Access-Control-Allow-Origin": "*"})
    auth = {"Authorization": f"Bearer {RELAY_KEY}"}
    evil = httpx.get(relay.url("/oai/v1/models"), headers={**auth, "Origin": "https://evil.example.com"}, timeout=10)
    assert evil.status_code == 200
    assert "access-control-allow-origin" not in evil.headers
    app = httpx.get(relay.url("/oai/v1/models"), headers={**auth, "Origin": APP}, timeout=10)
    assert app.headers.get_list("access-control-allow-origin") == [APP]
