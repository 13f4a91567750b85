"""`provider = "forward"`: a relay to any service (a plain-HTTP internal one here) that leaves
credentials alone: whatever the client presents (Authorization, x-api-key, x-goog-api-key, ?key=,
its own headers) arrives as sent; no relay key is asked unless auth_keys apply, and then only the
relay key is taken out."""

from __future__ import annotations

import httpx

from mock_providers import MockProvider
from relaytest import endpoint_config

RELAY_KEY = "relay-key-forward-9f2e"


def test_the_clients_credentials_pass_untouched(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    assert mock.base_url.startswith("http://")  # (a plain-HTTP target)
    relay = start_relay(endpoint_config("internal", mock, "forward", "/v1", auth_keys=[]))
    sent = {
        "authorization": "Bearer their-own-token",
        "x-api-key": "their-x-api-key",
        "x-goog-api-key": "their-goog-key",
        "x-custom-tenant": "blue",
    }
    answer = httpx.post(relay.url("/internal/v1/chat/completions?key=their-query-key&a=1"), json={"model": "m", "messages": []}, headers=sent)
    assert answer.status_code == 200, answer.text
    seen = mock.last()
    for name, value in sent.items():
        assert seen.headers[name] == value, name
    assert seen.path == "/v1/chat/completions?key=their-query-key&a=1"
    assert "their-own-token" not in relay.logs() and "their-query-key" not in relay.logs()


def test_with_auth_keys_only_the_relay_key_is_taken_out(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(f'auth_keys = ["{RELAY_KEY}"]\n' + endpoint_config("internal", mock, "forward", "/v1"))
    path = "/internal/v1/chat/completions"
    assert httpx.post(relay.url(path), json={"model": "m"}, headers={"x-custom-tenant": "blue"}).status_code == 401
    answer = httpx.post(relay.url(path), json={"model": "m"}, headers={"authorization": f"Bearer {RELAY_KEY}", "x-custom-tenant": "blue"})
    assert answer.status_code == 200, answer.text
    seen = mock.last()
    assert "authorization" not in seen.headers and seen.headers["x-custom-tenant"] == "blue"
    assert RELAY_KEY not in relay.logs()
