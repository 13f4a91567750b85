"""Anthropic OAuth tokens (`key_type = "oauth"`): sent as `Authorization: Bearer` with
`anthropic-beta: oauth-2025-04-20` merged into the client's own beta values; the config accepts it on
Anthropic upstreams (and api_keys entries) only; the token never reaches a log."""

from __future__ import annotations

import anthropic
import pytest

from mock_providers import MockProvider
from relaytest import endpoint_config

from llmrelay.config import ConfigError, load_config_text
from llmrelay.relay.providers import OAUTH_BETA, inject_key

TOKEN = "sk-ant-oat01-Secret-oauth-token-0123"
RELAY_KEY = "relay-key-for-oauth-tests"


@pytest.mark.parametrize(
    ("client_betas", "merged"),
    [
        ([], b"oauth-2025-04-20"),
        ([b"prompt-caching-2024-07-31"], b"prompt-caching-2024-07-31,oauth-2025-04-20"),
        ([b"a-1, b-2", b"c-3"], b"a-1,b-2,c-3,oauth-2025-04-20"),  # (two fields become one)
        ([b"oauth-2025-04-20,x-9"], b"oauth-2025-04-20,x-9"),  # (asked already: not repeated)
    ],
)
def test_an_oauth_token_is_a_bearer_with_the_beta_merged(client_betas: list[bytes], merged: bytes) -> None:
    headers = [(b"content-type", b"application/json")] + [(b"anthropic-beta", value) for value in client_betas]
    inject_key("anthropic", headers, TOKEN, oauth=True)
    assert (b"authorization", b"Bearer " + TOKEN.encode()) in headers
    assert [value for name, value in headers if name == b"anthropic-beta"] == [merged]
    assert not any(name == b"x-api-key" for name, _ in headers)
    plain = [(b"anthropic-beta", b"x-1")]
    inject_key("anthropic", plain, "sk-ant-api-key")
    assert plain == [(b"anthropic-beta", b"x-1"), (b"x-api-key", b"sk-ant-api-key")]
    assert OAUTH_BETA == b"oauth-2025-04-20"


def test_the_config_marks_oauth_keys_on_anthropic_upstreams_only() -> None:
    target = 'target_base = "https://api.anthropic.com"\n'
    config = load_config_text(f'[endpoints.c]\n{target}key_type = "oauth"\napi_key = "tok"\n', "t", environ={})
    assert [key.oauth for key in config.endpoints[0].upstreams[0].api_keys] == [True]
    entries = (
        f'[endpoints.c]\n{target}api_keys = [{{ key = "tok", key_type = "oauth" }}, {{ key = "sk-ant-key" }}]\n'
    )
    assert [key.oauth for key in load_config_text(entries, "t", environ={}).endpoints[0].upstreams[0].api_keys] == [True, False]
    with pytest.raises(ConfigError) as info:
        load_config_text('[endpoints.o]\ntarget_base = "https://api.openai.com/v1"\nkey_type = "oauth"\napi_key = "x"\n', "t", environ={})
    assert info.value.errors == ['endpoints.o: key_type = "oauth" is for Anthropic OAuth tokens; this upstream\'s provider is openai']


def test_the_sdk_call_reaches_anthropic_with_the_token(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    config = f'auth_keys = ["{RELAY_KEY}"]\n' + endpoint_config("claude", mock, "anthropic", "", api_key=TOKEN, key_type="oauth")
    relay = start_relay(config)
    client = anthropic.Anthropic(base_url=relay.url("/claude"), api_key=RELAY_KEY, max_retries=0)
    message = client.messages.create(
        model="claude-3-5-haiku-latest", max_tokens=16, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    assert message.content
    seen = mock.last()
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert "x-api-key" not in seen.headers  # (the relay key the SDK sent there was taken out)
    assert [value for name, value in seen.raw_headers if name.lower() == "anthropic-beta"] == [
        "prompt-caching-2024-07-31,oauth-2025-04-20"
    ]
    assert TOKEN not in relay.logs() and RELAY_KEY not in relay.logs()
