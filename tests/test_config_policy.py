"""Config errors of the operator's side and the request policy: every one reported at once, each at
its own key path (cross-field checks included), and cross-references checked at load."""

from __future__ import annotations

import pytest

from llmrelay.config import load_config_text
from llmrelay.config.errors import ConfigError


def errors_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "test.toml", environ=environ or {})
    return caught.value.errors


def test_cross_field_problems_of_several_tables_are_all_reported_at_their_paths() -> None:
    errors = errors_of(
        """
[endpoints.openai]
target_base = "https://api.openai.com/v1"
[[endpoints.openai.processors]]
set_headers = { authorization = "x" }
[[endpoints.openai.processors]]
max_tokens_cap = 100
[[endpoints.openai.processors]]
plugin = "no-such-plugin"
[endpoints.other]
target_base = "https://api.openai.com/v1"
cors = { allow_origins = ["*"], allow_credentials = true }
[server.admin]
host = "0.0.0.0"
"""
    )
    assert len(errors) == 4, errors
    assert errors[0].startswith("server.admin: auth_keys is required")
    assert any(e.startswith("endpoints.openai.processors[0]: set_headers: 'authorization'") for e in errors)
    assert any(e.startswith("endpoints.openai.processors[2]: unknown plugin 'no-such-plugin'") for e in errors)
    assert "endpoints.other.cors: allow_origins = [\"*\"] cannot be combined with allow_credentials = true" in errors


def test_rewrite_with_names_an_endpoint_and_admin_keys_resolve_at_load() -> None:
    errors = errors_of(
        """
[endpoints.openai]
target_base = "https://api.openai.com/v1"
[[endpoints.openai.processors]]
rewrite_with = { endpoint = "rewriter", model = "m", prompt = "p" }
[server.admin]
auth_keys = ["${ADMIN_KEY}"]
"""
    )
    assert errors == [
        "server.admin.auth_keys[0]: environment variable ADMIN_KEY is not set",
        "endpoints.openai.processors[0].rewrite_with.endpoint: no endpoint named 'rewriter'",
    ]
    config = load_config_text(
        """
[endpoints.openai]
target_base = "https://api.openai.com/v1"
[[endpoints.openai.processors]]
rewrite_with = { endpoint = "rewriter", model = "m", prompt = "p" }
[endpoints.rewriter]
target_base = "https://api.openai.com/v1"
api_key = "sk-x"
[server.admin]
auth_keys = ["${ADMIN_KEY}"]
""",
        "test.toml",
        environ={"ADMIN_KEY": "adm"},
    )
    assert [e.name for e in config.endpoints] == ["openai", "rewriter"]
