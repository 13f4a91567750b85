"""`llmrelay import-config` on llmrelay's own format as the Rust llm-api-proxy writes it: every key the
schema knows carried over unchanged at its path, unknown keys and refused values left out and reported
(with the schema's did-you-mean), secrets as written, wrong-format input refused; then a relay started
on the imported example, pointed at a mock, reaching it through a real HTTP proxy (pproxy) for
`/anthropic_dev/...` and directly for the endpoint that inherits `server.target_base`."""

from __future__ import annotations

import functools
from pathlib import Path

import httpx
import pytest

from importtest import SOURCES, check_config, imported, rewritten_source, run_import, write_source
from llmrelay.importing.sources import detect_format, parse_source
from mock_providers import MockProvider

write = functools.partial(write_source, name="llm-api-proxy.toml")  # (a source file in tmp_path)

pytestmark = pytest.mark.timeout(60)

EXAMPLE = SOURCES / "llm-api-proxy.toml"
MESSAGE = {"model": "claude-mock", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}



def test_the_example_is_told_apart_as_llmrelay() -> None:
    assert detect_format(*parse_source(EXAMPLE)) == "llmrelay"


def test_every_key_is_carried_over_unchanged_at_its_path() -> None:
    text, config, report, status = imported(EXAMPLE)
    assert status == 0, report
    source, _ = parse_source(EXAMPLE)
    assert config == source
    for path in ("server.port", "server.target_base", "endpoints.anthropic_dev.proxy_url", "endpoints.openai_prod.target_base"):
        assert f"  {path} -> {path}\n" in report
    assert "  endpoints.default_target -> endpoints.default_target\n" in report  # empty: inherits server.target_base
    assert "# From [endpoints.anthropic_dev]." in text


def test_unknown_keys_and_refused_values_are_dropped_and_named(tmp_path: Path) -> None:
    source = write(tmp_path, """
auth_keys = ["${TEAM_KEY}", "$(pass show relay/key)"]

[server]
port = 8811
target_bse = "https://api.anthropic.com"

[endpoints.prod]
target_base = "https://api.openai.com/v1"
api_key = "sk-literal-0001"
proxy = "http://proxy.internal:3128"
retries = -1
cors = { allow_origins = ["*"], allow_credentials = true }

[endpoints."with.dot"]
target_base = "https://api.anthropic.com"
colour = "blue"

[[endpoints.prod.processors]]
max_tokens_cap = 100
max_token_cap = 5
""")
    text, config, report, status = imported(source)
    assert status == 1
    changed = report.split("CHANGES BEHAVIOUR:", 1)[1]
    assert "  server.target_bse: unknown key (did you mean 'target_base'?)" in changed
    assert "  endpoints.prod.proxy: unknown key (did you mean 'proxy_url'?)" in changed
    assert "  endpoints.prod.retries: refused by llmrelay's schema: expected `int` >= 0" in changed
    assert "  endpoints.prod.cors: refused by llmrelay's schema: allow_origins" in changed
    assert "  endpoints.with.dot.colour: unknown key" in changed
    assert "  endpoints.prod.processors[0].max_token_cap: unknown key (did you mean 'max_tokens_cap'?)" in changed
    assert config["endpoints"]["prod"] == {
        "target_base": "https://api.openai.com/v1", "api_key": "sk-literal-0001", "processors": [{"max_tokens_cap": 100}],
    }
    assert config["endpoints"]["with.dot"] == {"target_base": "https://api.anthropic.com"}
    assert config["auth_keys"] == ["${TEAM_KEY}", "$(pass show relay/key)"]  # secrets as written, nothing run
    assert "sk-literal-0001" in text and "  endpoints.prod.processors[0].max_tokens_cap -> " in report


@pytest.mark.parametrize(("text", "named"), [
    ("listen = 8080\n[[route]]\npath_prefix = \"/v1\"\n", "`endpoints`, `server`"),
    ("server = 8811\n", "`server`"),
    ('endpoints = ["a", "b"]\n', "`endpoints`"),
])
def test_a_file_of_another_format_is_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    result = run_import(write(tmp_path, text), "--format", "llmrelay")
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "not a llmrelay / llm-api-proxy file" in result.stderr


# -- end to end: through a real HTTP proxy --------------------------------------------------------


def test_the_imported_relay_reaches_the_mock_through_the_proxy(tmp_path: Path, mock: MockProvider, http_proxy: tuple[int, Path], start_relay) -> None:  # type: ignore[no-untyped-def]
    proxy_port, proxy_log = http_proxy
    source = rewritten_source(EXAMPLE, tmp_path / "llm-api-proxy.toml", {
        "http://127.0.0.1:3128": f"http://127.0.0.1:{proxy_port}",
        "https://api.anthropic.com": mock.base_url,
    })
    text, _, report, status = imported(source)
    assert status == 0, report
    config = tmp_path / "imported.toml"
    config.write_text(text, "utf-8")
    checked = check_config(config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    relay = start_relay(text)
    headers = {"x-api-key": "sk-ant-client-0042", "anthropic-version": "2023-06-01"}
    with httpx.Client(timeout=10) as client:
        proxied = client.post(relay.url("/anthropic_dev/v1/messages"), json=MESSAGE, headers=headers)
        assert proxied.status_code == 200, proxied.text
        proxy_lines = [line for line in proxy_log.read_text().splitlines() if line.rstrip().endswith(f"-> 127.0.0.1:{mock.port}")]
        direct = client.post(relay.url("/default_target/v1/messages"), json=MESSAGE, headers=headers)
        assert direct.status_code == 200, direct.text
    assert proxy_lines, proxy_log.read_text()  # the first request went through pproxy
    assert [(r.route_path, r.key) for r in mock.requests] == [("/v1/messages", "sk-ant-client-0042")] * 2
    assert len([line for line in proxy_log.read_text().splitlines() if f"-> 127.0.0.1:{mock.port}" in line]) == len(proxy_lines)
