"""`[[server.listen]]`, `[server.http2]` and `[server.connect]`: what resolves, and what is refused by
key path."""

from __future__ import annotations

import pytest

from llmrelay.config import load_config_text
from llmrelay.config.errors import ConfigError

ENDPOINT = '\n[endpoints.openai]\ntarget_base = "https://api.openai.com/v1"\n'


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "test.toml", environ={"KEY": "relay-key"})
    return info.value.errors


def test_the_flat_shorthand_is_one_plain_listener() -> None:
    config = load_config_text(ENDPOINT, "t.toml", environ={})
    assert [(l.host, l.port, l.tls) for l in config.listeners] == [("127.0.0.1", 8811, None)]
    config = load_config_text('[server]\nhost = "::1"\nport = 9000\n' + ENDPOINT, "t.toml", environ={})
    assert [(l.host, l.port) for l in config.listeners] == [("::1", 9000)]
    assert config.listeners[0].address == "[::1]:9000"


def test_several_listeners_keep_their_order() -> None:
    text = '[[server.listen]]\nport = 8000\n\n[[server.listen]]\nhost = "0.0.0.0"\nport = 8001\nauth_keys = []\n'
    assert any("server.listen[1].auth_keys: unknown key" in e for e in errors_of(text + ENDPOINT))
    text = '[[server.listen]]\nport = 8000\n\n[[server.listen]]\nhost = "::1"\nport = 8001\n'
    config = load_config_text(text + ENDPOINT, "t.toml", environ={})
    assert [(l.host, l.port) for l in config.listeners] == [("127.0.0.1", 8000), ("::1", 8001)]


def test_port_overrides_move_the_first_listener() -> None:
    from llmrelay.config.load import Overrides

    text = '[[server.listen]]\nport = 8000\n\n[[server.listen]]\nport = 8001\n' + ENDPOINT
    config = load_config_text(text, "t.toml", Overrides(port=9100), environ={})
    assert [l.port for l in config.listeners] == [9100, 8001]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[server]\nport = 8000\n[[server.listen]]\nport = 8001\n', "server.listen: cannot be combined with server.host / server.port"),
        ('[[server.listen]]\nport = 8000\n[[server.listen]]\nport = 8000\n', "server.listen[1]: 127.0.0.1:8000 is already server.listen[0]"),
        ('[[server.listen]]\nhost = "not a host"\nport = 8000\n', "server.listen[0].host: expected an IP address or a host name"),
        ('[[server.listen]]\nport = 8000\ntls = { cert_file = "c.pem" }\n', "server.listen[0].tls.key_file"),
        ('[[server.listen]]\nport = 8000\ntls = { cert_file = "c", key_file = "k", min_version = "1.1" }\n', "server.listen[0].tls.min_version"),
        ('[server.http2]\nmax_concurrent_streams = 0\n', "server.http2.max_concurrent_streams"),
        ('[server.http2]\ninitial_window_size = 1000\n', "server.http2.initial_window_size"),
        ('[server.connect]\nenabled = true\nallow = ["api.openai.com:443"]\n', "server.connect.auth: no relay key to check"),
        ('auth_keys = ["k"]\n[server.connect]\nenabled = true\n', "server.connect.allow: empty"),
        ('auth_keys = ["k"]\n[server.connect]\nenabled = true\nallow = ["api.openai.com"]\n', "server.connect.allow[0]: expected \"host:port\""),
        ('auth_keys = ["k"]\n[server.connect]\nenabled = true\nallow = ["a.com:99999"]\n', "server.connect.allow[0]"),
        ('auth_keys = ["k"]\n[server.connect]\nenabled = true\nallow = ["a.com:443"]\nvia_endpoint = "nope"\n', "server.connect.via_endpoint: no endpoint named 'nope'"),
    ],
)
def test_refusals_name_their_key(text: str, expected: str) -> None:
    errors = errors_of(text + ENDPOINT)
    assert any(expected in error for error in errors), errors


def test_connect_keys_default_to_the_top_level_ones_and_auth_false_needs_none() -> None:
    text = 'auth_keys = ["${KEY}"]\n[server.connect]\nenabled = true\nallow = ["*.openai.com:443", "[::1]:8443", "*:*"]\n'
    config = load_config_text(text + ENDPOINT, "t.toml", environ={"KEY": "relay-key"})
    assert config.connect_keys == ["relay-key"]
    text = '[server.connect]\nenabled = true\nauth = false\nallow = ["api.openai.com:443"]\nauth_keys = ["own"]\n'
    config = load_config_text(text + ENDPOINT, "t.toml", environ={})
    assert config.connect_keys == ["own"]
    assert load_config_text(ENDPOINT, "t.toml", environ={}).connect_keys == []
