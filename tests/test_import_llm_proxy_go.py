"""`llmrelay import-config` on the Go llm-proxy's YAML: the mapping (endpoints per provider prefix with
the client's own keys, CORS, logging, timeouts, one rate-limit rule per scope), the report of every key
left behind, wrong-format input; then a relay started on the imported example, pointed at mocks, serving
`/openai`, `/anthropic`, `/gemini` and `/groq` with each client's key untouched, refusing past the
requests-per-minute limit and answering CORS preflights."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from importtest import SOURCES, check_config, imported, leaf_paths, rewritten_source, run_import, write_source
from llmrelay.importing.sources import detect_format, parse_source
from mock_providers import MockProvider

write = functools.partial(write_source, name="llm-proxy.yml")  # (a source file in tmp_path)

pytestmark = pytest.mark.timeout(60)

EXAMPLE = SOURCES / "llm-proxy-go.yml"
APP = "https://app.relay.test"




# -- the mapping --------------------------------------------------------------------------------


def test_the_example_is_told_apart_as_llm_proxy_go() -> None:
    assert detect_format(*parse_source(EXAMPLE)) == "llm-proxy-go"


def test_each_provider_prefix_is_an_endpoint_of_the_same_name_passing_the_clients_key() -> None:
    _, config, report, status = imported(EXAMPLE)
    assert status == 0, report
    endpoints = config["endpoints"]
    assert sorted(endpoints) == ["anthropic", "gemini", "groq", "openai"]
    assert endpoints["openai"]["target_base"] == "https://api.openai.com"
    assert endpoints["groq"] == {**endpoints["groq"], "provider": "openai", "target_base": "https://api.groq.com/openai"}
    assert endpoints["anthropic"]["provider"] == "anthropic" and endpoints["gemini"]["provider"] == "gemini"
    for section in endpoints.values():
        assert section["auth_keys"] == [] and "api_key" not in section and "token_env" not in section
        assert section["first_byte_timeout"] == 300.0  # from write_timeout: 300s
    server = config["server"]
    assert (server["port"], server["host"], server["log_level"], server["log_format"]) == (9002, "0.0.0.0", "info", "json")
    assert (server["header_timeout"], server["body_idle_timeout"], server["write_timeout"]) == (30.0, 30.0, 300.0)
    assert server["cors"]["allow_origins"] == [APP]
    assert server["cors"]["allow_headers"] == ["Authorization", "Content-Type", "x-api-key", "anthropic-version"]
    assert "server.read_timeout -> server.header_timeout" in report and "Go bounds reading the whole request" in report


def test_rate_limiting_becomes_one_rule_per_scope_counting_input_tokens() -> None:
    _, config, report, _ = imported(EXAMPLE)
    limits = config["limits"]
    assert limits["backend"] == "local"
    assert limits["chars_per_token"] == {"openai": 5.0, "anthropic": 3.0, "gemini": 4.0, "default": 4.0}
    by_name = {rule["name"]: rule for rule in limits["rules"]}
    assert by_name["per-api-key"] == {
        "name": "per-api-key", "per": "header:authorization", "match": {"endpoint": ["openai", "groq"]},
        "requests_per_minute": 120, "input_tokens_per_minute": 60000,
    }
    assert by_name["per-model"] == {
        "name": "per-model", "per": "model", "match": {"model": "?*"},
        "requests_per_minute": 120, "input_tokens_per_minute": 60000,
    }
    assert "tokens_per_minute -> limits.rules[*].input_tokens_per_minute  (llm-proxy counts input tokens only)" in report
    for key in ("max_sample_bytes", "bytes_per_token"):  # estimation keys with no llmrelay counterpart
        assert f"features.rate_limiting.estimation.{key}:" in report


def test_every_key_of_the_example_is_in_the_report() -> None:
    _, _, report, _ = imported(EXAMPLE)
    source, _ = parse_source(EXAMPLE)
    for path in leaf_paths(source):
        assert f"  {path} ->" in report or f"  {path}:" in report or f"  {path}[0] ->" in report, path


def test_keys_without_an_equivalent_are_named_and_exit_1(tmp_path: Path) -> None:
    source = write(tmp_path, """
server: {port: 9002, read_timeout: 0, shutdown_grace: 10s}
providers:
  openai: {base_url: "https://api.openai.com", enabled: true, models: {gpt-4o: {enabled: true}}}
  mistral: {base_url: "https://api.mistral.ai"}
features:
  cost_tracking: {enabled: true}
  rate_limiting:
    enabled: true
    limits: {requests_per_minute: 10, requests_per_day: 1000}
    per: ["api_key", "user", "tenant"]
    overrides:
      per_model: {"gpt-4o": {requests_per_minute: 5}, "o3*": {requests_per_minute: 50}}
      per_key: {"sk-abc": {requests_per_minute: 1}}
""")
    _, config, report, status = imported(source)
    assert status == 1
    changed = report.split("CHANGES BEHAVIOUR:", 1)[1]
    for path in (
        "server.shutdown_grace", "providers.mistral", "features.cost_tracking", "features.rate_limiting.limits.requests_per_day",
        "features.rate_limiting.per[1]", "features.rate_limiting.per[2]", "features.rate_limiting.overrides.per_key",
    ):
        assert f"  {path}:" in changed, path
    assert "  features.rate_limiting.overrides.per_model.o3*: " in changed  # looser than the general limit
    assert "  server.read_timeout: 0 is no timeout" in report
    assert "providers.openai.models: llm-proxy reads it for cost tracking" in report.split("CHANGES BEHAVIOUR:", 1)[0]
    rules = {rule["name"]: rule for rule in config["limits"]["rules"]}
    assert set(rules) == {"per-api-key"}  # no model scope: the model override does not apply
    assert "mistral" not in config["endpoints"]


def test_without_per_every_scope_gets_its_rule_and_model_overrides_apply(tmp_path: Path) -> None:
    source = write(tmp_path, """
features:
  rate_limiting:
    enabled: true
    limits: {requests_per_minute: 100, tokens_per_minute: 0}
    overrides: {per_model: {"gpt-4o[mini]": {requests_per_minute: 5}}}
""")
    _, config, report, status = imported(source)
    assert status == 1  # the user scope has no equivalent
    rules = {rule["name"]: rule for rule in config["limits"]["rules"]}
    assert rules["global"] == {"name": "global", "per": "relay_key", "requests_per_minute": 100}
    assert rules["per-provider"]["per"] == "endpoint"
    assert rules["model-gpt-4o_mini"]["match"] == {"model": "gpt-4o[[]mini]"} and rules["model-gpt-4o_mini"]["requests_per_minute"] == 5
    assert "features.rate_limiting.per (absent: user):" in report
    # without providers:, llm-proxy's four built-in providers at their own addresses, and CORS for any origin
    assert config["endpoints"]["gemini"]["target_base"] == "https://generativelanguage.googleapis.com"
    assert config["server"]["cors"]["allow_origins"] == ["*"]


def test_secrets_are_written_as_they_were(tmp_path: Path) -> None:
    source = write(tmp_path, """
providers: {openai: {base_url: "https://api.openai.com"}}
features:
  rate_limiting:
    enabled: true
    backend: redis
    redis: {address: "redis.internal:6379", password: "${REDIS_PASSWORD}", db: 2}
    limits: {requests_per_minute: 10}
    per: [provider]
""")
    text, config, report, status = imported(source)
    assert status == 0, report
    assert config["limits"]["redis_url"] == "redis://:${REDIS_PASSWORD}@redis.internal:6379/2"
    assert "${REDIS_PASSWORD}" in text


@pytest.mark.parametrize(("text", "named"), [
    ("providers:\n  - type: openai\n    host: a.test\n", "`providers`"),
    ("listen: 8080\nupstreams: []\n", "`providers`"),
    ("server: 9002\n", "`server`"),
])
def test_a_file_of_another_format_is_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    result = run_import(write(tmp_path, text), "--format", "llm-proxy-go")
    assert result.returncode == 2
    assert named in result.stderr and "not a llm-proxy (Go) file" in result.stderr
    assert result.stdout == ""


# -- end to end ---------------------------------------------------------------------------------


@pytest.fixture
def mocks() -> Any:
    started = {name: MockProvider().start() for name in ("openai", "anthropic", "gemini", "groq")}
    yield started
    for mock in started.values():
        mock.stop()


def imported_example(tmp_path: Path, mocks: dict[str, MockProvider]) -> str:
    source = rewritten_source(EXAMPLE, tmp_path / "llm-proxy-go.yml", {
        '"https://api.openai.com"': f'"{mocks["openai"].base_url}"',
        '"https://api.anthropic.com"': f'"{mocks["anthropic"].base_url}"',
        '"https://generativelanguage.googleapis.com"': f'"{mocks["gemini"].base_url}"',
        '"https://api.groq.com/openai"': f'"{mocks["groq"].base_url}/openai"',
        "requests_per_minute: 120": "requests_per_minute: 3",
    })
    text, _, report, status = imported(source)
    assert status == 0, report
    config = tmp_path / "imported.toml"
    config.write_text(text, "utf-8")
    checked = check_config(config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return text


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


def test_the_imported_relay_serves_each_prefix_with_the_clients_own_key(tmp_path: Path, mocks: dict[str, MockProvider], start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(imported_example(tmp_path, mocks))
    with httpx.Client(timeout=10) as client:
        answer = client.post(relay.url("/openai/v1/chat/completions"), json=chat("m-openai"), headers={"authorization": "Bearer sk-client-openai"})
        assert answer.status_code == 200, answer.text
        answer = client.post(
            relay.url("/anthropic/v1/messages"), json={**chat("m-claude"), "max_tokens": 8},
            headers={"x-api-key": "sk-ant-client", "anthropic-version": "2023-06-01"},
        )
        assert answer.status_code == 200, answer.text
        answer = client.post(relay.url("/gemini/v1beta/models/gemini-mock:generateContent?key=g-client"), json={"contents": [{"parts": [{"text": "hi"}]}]})
        assert answer.status_code == 200, answer.text
        answer = client.post(relay.url("/groq/v1/chat/completions"), json=chat("m-groq"), headers={"authorization": "Bearer gsk-client"})
        assert answer.status_code == 200, answer.text
    assert [(r.route_path, r.key) for r in mocks["openai"].requests] == [("/v1/chat/completions", "sk-client-openai")]
    assert [(r.route_path, r.key) for r in mocks["anthropic"].requests] == [("/v1/messages", "sk-ant-client")]
    assert mocks["anthropic"].requests[0].headers["anthropic-version"] == "2023-06-01"
    assert [(r.route_path, r.key) for r in mocks["gemini"].requests] == [("/v1beta/models/gemini-mock:generateContent", "g-client")]
    assert [(r.route_path, r.key) for r in mocks["groq"].requests] == [("/openai/v1/chat/completions", "gsk-client")]


def test_the_imported_relay_limits_per_key_and_per_model_and_answers_preflights(tmp_path: Path, mocks: dict[str, MockProvider], start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(imported_example(tmp_path, mocks))
    url = relay.url("/openai/v1/chat/completions")
    with httpx.Client(timeout=10) as client:
        # one key, four models: the key's counter (3 a minute) refuses the fourth
        same_key = [client.post(url, json=chat(f"m{i}"), headers={"authorization": "Bearer sk-busy"}).status_code for i in range(4)]
        # four keys, one model: the model's counter refuses the fourth
        same_model = [client.post(url, json=chat("shared"), headers={"authorization": f"Bearer sk-{i}"}).status_code for i in range(4)]
        refused = client.post(url, json=chat("m9"), headers={"authorization": "Bearer sk-busy", "origin": APP})
        preflight = client.options(url, headers={"Origin": APP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"})
        foreign = client.options(url, headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "POST"})
    assert same_key == [200, 200, 200, 429] and same_model == [200, 200, 200, 429]
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["access-control-allow-origin"] == APP  # the relay's own refusal carries CORS too
    assert mocks["openai"].count(path="/v1/chat/completions") == 6
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == APP
    assert foreign.status_code == 403 and "access-control-allow-origin" not in foreign.headers
    assert mocks["openai"].count(method="OPTIONS") == 0


def test_the_report_of_the_example_reads_back(tmp_path: Path) -> None:
    output = tmp_path / "out.toml"
    result = run_import(EXAMPLE, "-o", str(output))
    assert result.returncode == 0 and result.stdout == ""
    assert output.stat().st_mode & 0o777 == 0o600
    assert tomllib.loads(output.read_text())["endpoints"]["openai"]["auth_keys"] == []
