"""`llmrelay import-config` on openproxy's YAML: the mapping of the example (endpoints per Host, one
upstream per provider, weights, keys, relay-key scopes, health checks, listeners), the report of every
key, openproxy's defaults and the differences that change behaviour, wrong-format input; then a relay
started on the imported example, its providers pointed at mocks, routing by Host and by host/prefix,
sharing requests by weight, falling back, checking relay keys and sending each provider its key."""

from __future__ import annotations

import functools
import os
import ssl
import stat
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from importtest import SOURCES, check_config, imported, leaf_paths, rewritten_source, run_import, write_source
from llmrelay.importing.sources import detect_format, parse_source
from mock_providers import MockProvider
from relaytest import free_port

write = functools.partial(write_source, name="openproxy.yml")  # (a source file in tmp_path)

pytestmark = pytest.mark.timeout(60)

EXAMPLE = SOURCES / "openproxy.yml"
OAI = "oai.relay.test"
TENANT_B = "oai.relay.test_tenant-b"
CHAT = {"model": "gpt-mock", "messages": [{"role": "user", "content": "hi"}]}
CLAUDE = {"model": "claude-mock", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
SUCCESS_STATUSES = [200, 201, 202, 203, 204, 205, 206, 207, 208, 226]




def named_in(report: str, path: str) -> bool:
    return any(line.strip().startswith((f"{path} ->", f"{path}:", f"{path}[")) for line in report.splitlines())


def changed_part(report: str) -> str:
    return report.split("CHANGES BEHAVIOUR:", 1)[1] if "CHANGES BEHAVIOUR:" in report else ""


# -- the mapping of the example ---------------------------------------------------------------


def test_the_example_is_told_apart_as_openproxy() -> None:
    assert detect_format(*parse_source(EXAMPLE)) == "openproxy"


def test_providers_sharing_a_host_are_one_endpoint_with_an_upstream_each() -> None:
    _, config, report, status = imported(EXAMPLE)
    assert status == 0, report
    endpoints = config["endpoints"]
    assert list(endpoints) == [OAI, TENANT_B, "claude.relay.test", "claude-oauth.relay.test", "gemini.relay.test", "internal.relay.test"]
    assert endpoints[OAI]["hosts"] == [OAI] and endpoints[TENANT_B]["hosts"] == ["oai.relay.test/tenant-b"]
    primary, eu, backup = endpoints[OAI]["upstreams"]
    assert (primary["target_base"], primary["provider"], primary["weight"], primary["api_key"]) == (
        "https://api.openai.com", "openai", 3.0, "sk-primary-0001")
    # openproxy makes one provider per key, each weighing its key's weight: the upstream weighs their sum
    assert eu["target_base"] == "https://eu.openai-compatible.test" and eu["weight"] == 4.0
    assert eu["api_keys"] == [{"key": "sk-eu-0001", "weight": 1.0}, {"key": "sk-eu-0002", "weight": 3.0}]
    assert backup["fallback"] is True and backup["api_key"] == "sk-backup-0001"
    assert "fallback" not in primary and "priority" not in primary
    (tenant_b,) = endpoints[TENANT_B]["upstreams"]
    assert tenant_b["priority"] == 10 and tenant_b["api_key"] == "sk-tenant-b-0001"
    gemini = endpoints["gemini.relay.test"]["upstreams"][0]
    assert (gemini["provider"], gemini["weight"], gemini["target_base"]) == ("gemini", 1.5, "https://generativelanguage.googleapis.com")
    forward = endpoints["internal.relay.test"]
    assert forward["upstreams"] == [{"target_base": "http://inference.internal:8000", "provider": "forward", "weight": 1.0}]


def test_relay_keys_follow_openproxy_which_accepts_the_top_level_keys_and_the_providers_own() -> None:
    _, config, _, _ = imported(EXAMPLE)
    assert config["auth_keys"] == ["team-key-alpha", "team-key-beta"]
    endpoints = config["endpoints"]
    assert endpoints[TENANT_B]["upstreams"][0]["auth_keys"] == ["team-key-alpha", "team-key-beta", "tenant-b-key"]
    for name in (OAI, "claude.relay.test", "gemini.relay.test"):  # the top-level keys, inherited
        assert "auth_keys" not in endpoints[name]
        assert all("auth_keys" not in upstream for upstream in endpoints[name]["upstreams"])
    assert endpoints["internal.relay.test"]["auth_keys"] == []  # forward checks no key


def test_health_checks_carry_openproxys_request_period_and_rules() -> None:
    _, config, _, _ = imported(EXAMPLE)
    endpoints = config["endpoints"]
    primary_check = endpoints[OAI]["upstreams"][0]["health_check"]
    assert primary_check == {
        "method": "GET", "path": "/v1/models", "interval": 45, "timeout": 30.0,
        "expected_status": SUCCESS_STATUSES, "healthy_threshold": 1, "unhealthy_threshold": 1,
    }
    claude_check = endpoints["claude.relay.test"]["upstreams"][0]["health_check"]
    assert claude_check["method"] == "POST" and claude_check["body"].startswith('{"model":"claude-3-5-haiku-latest"')
    assert claude_check["headers"] == {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
    assert "health_check" not in endpoints[OAI]["upstreams"][1]  # no block: openproxy only connects to it


def test_listeners_header_size_and_connect() -> None:
    _, config, _, _ = imported(EXAMPLE)
    server = config["server"]
    assert server["listen"] == [
        {"host": "0.0.0.0", "port": 8443, "tls": {"cert_file": "/etc/relay/tls/cert.pem", "key_file": "/etc/relay/tls/key.pem"}},
        {"host": "127.0.0.1", "port": 8080},
    ]
    assert server["max_header_bytes"] == 16384
    assert server["connect"] == {"enabled": False}


def test_secrets_are_kept_as_written_and_a_command_key_is_refreshed() -> None:
    text, config, report, _ = imported(EXAMPLE)
    oauth = config["endpoints"]["claude-oauth.relay.test"]["upstreams"][0]
    assert oauth["api_key"] == "$(cat /etc/relay/anthropic-oauth-token)"
    assert (oauth["key_type"], oauth["refresh_interval"]) == ("oauth", 300)
    assert 'api_key = "$(cat /etc/relay/anthropic-oauth-token)"' in text
    assert "note: providers[5].api_key: openproxy runs the command for every request" in report
    assert "refresh_interval = 300" in report


def test_every_key_of_the_example_is_in_the_report() -> None:
    source, _ = parse_source(EXAMPLE)
    _, _, report, _ = imported(EXAMPLE)
    missing = [path for path in leaf_paths(source) if not named_in(report, path)]
    assert missing == [], report
    assert "import-config: every setting has an equivalent" in report


def test_each_endpoint_and_upstream_says_which_provider_it_came_from() -> None:
    text, _, _, _ = imported(EXAMPLE)
    assert '# Host oai.relay.test: providers[0], providers[1], providers[2] of the openproxy file.\n[endpoints."oai.relay.test"]' in text
    assert "# providers[7]: forward inference.internal:8000\n[[endpoints.\"internal.relay.test\".upstreams]]" in text


def test_output_file_is_private(tmp_path: Path) -> None:
    out = tmp_path / "relay.toml"
    result = run_import(EXAMPLE, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert result.stdout == "" and tomllib.loads(out.read_text())["auth_keys"] == ["team-key-alpha", "team-key-beta"]


# -- openproxy's defaults and what has no equivalent ----------------------------------------------


def test_openproxy_defaults_https_on_443_every_address_and_checks_off(tmp_path: Path) -> None:
    source = write(tmp_path, """
cert_file: /certs/c.pem
private_key_file: /certs/k.pem
health_check:
  interval: 10
providers:
  - {type: openai, host: "a.test:8443", endpoint: api.openai.com, api_key: sk-a, health_check: {path: /v1/models}}
""")
    _, config, report, status = imported(source)
    assert status == 0, report
    assert config["server"]["listen"] == [{"host": "0.0.0.0", "port": 443, "tls": {"cert_file": "/certs/c.pem", "key_file": "/certs/k.pem"}}]
    endpoint = config["endpoints"]["a.test"]
    assert endpoint["hosts"] == ["a.test"]  # openproxy compares hosts without their port
    assert endpoint["public"] is True  # no auth_keys anywhere: openproxy serves anyone
    assert "health_check" not in endpoint["upstreams"][0]  # a health_check table without `enabled` is off
    assert "providers[0].health_check: health checks are off in this file" in report
    assert "max_header_bytes" not in config["server"] and "openproxy refuses request heads over 4096 bytes" in report


def test_the_older_health_check_interval_alone_turns_checks_on(tmp_path: Path) -> None:
    source = write(tmp_path, """
http_port: 8080
health_check_interval: 20
providers:
  - {type: gemini, host: g.test, endpoint: generativelanguage.googleapis.com, api_key: g, health_check: {path: /v1beta/models}}
""")
    _, config, report, status = imported(source)
    assert status == 0, report
    assert config["endpoints"]["g.test"]["upstreams"][0]["health_check"]["interval"] == 20
    assert config["server"]["listen"] == [{"host": "0.0.0.0", "port": 8080}]


def test_a_scoped_provider_scopes_every_upstream_of_its_host(tmp_path: Path) -> None:
    source = write(tmp_path, """
http_port: 8080
auth_keys: [global-key]
providers:
  - {type: openai, host: h.test, endpoint: a.test, api_key: sk-a, auth_keys: [tenant-key]}
  - {type: openai, host: h.test, endpoint: b.test, api_keys: [{key: sk-b1}, {key: sk-b2}], weight: 2}
""")
    _, config, report, status = imported(source)
    assert status == 0, report
    first, second = config["endpoints"]["h.test"]["upstreams"]
    assert first["auth_keys"] == ["global-key", "tenant-key"]
    assert second["auth_keys"] == ["global-key"]  # else the tenant key would reach it, which openproxy refuses
    assert second["weight"] == 4.0 and [entry["weight"] for entry in second["api_keys"]] == [2.0, 2.0]


def test_differences_that_change_behaviour_are_named_and_exit_1(tmp_path: Path) -> None:
    source = write(tmp_path, """
http_port: 8080
connect_tunnel_enabled: true
auth_keys: [k]
log_level: debug
providers:
  - {type: openai, host: h.test, endpoint: api.openai.com, api_key: "$(op read op://v/k | tr -d x)"}
  - {type: openai, host: h.test/v1, endpoint: other.test, api_key: sk-o, is_fallback: true}
  - {type: forward, host: f.test, endpoint: f.internal, tls: false, auth_keys: [ignored]}
""")
    _, config, report, status = imported(source)
    assert status == 1
    changed = changed_part(report)
    assert "  log_level: not a key this format is known to have" in changed
    assert "providers[0].api_key: the command uses shell syntax ('|')" in changed
    assert "providers[1].host: in openproxy providers[0] compete for paths under this prefix" in changed
    assert "providers[0].tls (CONNECT): openproxy wraps this provider's tunnels" in changed
    assert "providers[2].auth_keys: openproxy's forward providers ignore it" in report.split("CHANGES BEHAVIOUR:")[0]
    assert config["server"]["connect"] == {"enabled": True, "allow": ["h.test:443", "f.test:80"]}
    assert config["endpoints"]["h.test"]["upstreams"][0]["refresh_interval"] == 300
    assert "key_type" not in config["endpoints"]["h.test"]["upstreams"][0]  # openai: a plain Bearer key


def test_unusual_providers_still_give_a_config_check_config_accepts(tmp_path: Path) -> None:
    source = write(tmp_path, """
http_port: 8080
http_bind_address: 127.0.0.1
providers:
  - {type: openai, host: x.test, endpoint: x.test, auth_keys: []}
  - {type: anthropic, host: "[::1]:8080/claude/", endpoint: "::1", port: 9999, tls: false, api_key: [sk-a, sk-b]}
  - {type: gemini, host: g.test, endpoint: g.test, api_key: "$(echo gm-key)"}
  - {type: openai, host: e.test, endpoint: e.test, api_key: "${IMPORT_TEST_KEY}", weight: 0}
""")
    text, config, report, status = imported(source)
    assert status == 1
    endpoints = config["endpoints"]
    assert "x.test" not in endpoints  # `auth_keys: []` and no top-level keys: no client could reach it
    assert "providers[0].type: the provider has `auth_keys: []`" in report.split("CHANGES BEHAVIOUR:")[0]
    claude = endpoints["1_claude"]
    assert claude["hosts"] == ["[::1]/claude"] and claude["public"] is True
    assert claude["upstreams"][0]["target_base"] == "http://[::1]:9999"
    assert claude["upstreams"][0]["api_keys"] == [{"key": "sk-a", "weight": 1.0}, {"key": "sk-b", "weight": 1.0}]
    changed = changed_part(report)
    assert "providers[2].api_key: openproxy compares it as written; llmrelay runs it as a command" in changed
    assert "providers[3].api_key: openproxy takes `${...}` as written" in changed
    assert endpoints["e.test"]["upstreams"][0]["weight"] == 1.0  # a lone provider is served whatever its weight
    config_file = write_source(tmp_path, text, "imported.toml")
    os.chmod(config_file, 0o600)
    checked = check_config(config_file, env={"IMPORT_TEST_KEY": "sk-e"})
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(("text", "named"), [
    ("http_port: 8080\nproviders: {openai: {}}\n", "`providers` is a mapping"),
    ("http_port: 8080\nproviders: [openai]\n", "`providers[0]` is a string"),
    ("http_port: 8080\nproviders:\n  - {type: azure, host: a.test, endpoint: a.test}\n", "`providers[0].type` is 'azure'"),
    ("http_port: 8080\nproviders:\n  - {type: openai, endpoint: a.test}\n", "`providers[0].host` is missing"),
    ("http_port: 8080\nproviders:\n  - {type: gemini, host: g.test, endpoint: g.test}\n", "`providers[0].api_key` is missing"),
    ("http_port: 80800\nproviders: []\n", "`http_port` is 80800"),
])
def test_a_file_openproxy_would_not_load_is_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    result = run_import(write(tmp_path, text), "--format", "openproxy")
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and result.stdout == ""


def test_format_openproxy_on_a_toml_file_is_a_clear_error() -> None:
    result = run_import(SOURCES / "actix-llm-proxy.toml", "--format", "openproxy")
    assert result.returncode == 2
    assert "`providers` is missing: this is not an openproxy file" in result.stderr and result.stdout == ""


# -- end to end ---------------------------------------------------------------------------------


MOCKS = ("primary", "eu", "backup", "tenant_b", "anthropic", "oauth", "gemini", "internal")


@pytest.fixture
def mocks() -> Iterator[dict[str, MockProvider]]:
    started = {name: MockProvider().start() for name in MOCKS}
    yield started
    for mock in started.values():
        mock.stop()


def plain(port: int) -> str:
    return f'endpoint: "127.0.0.1"\n    port: {port}\n    tls: false'


def imported_example(tmp_path: Path, mocks: dict[str, MockProvider]) -> tuple[str, int, int, Path]:
    """The example with every provider on a mock, its listeners on free loopback ports and a trustme
    certificate, imported and accepted by check-config: (config, http port, https port, CA file)."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_cert = ca.issue_cert("127.0.0.1", "oai.relay.test")
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "cert.pem"))
    server_cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "oauth-token").write_text("oauth-token-0001\n")
    http_port, https_port = free_port(), free_port()
    port = {name: mock.port for name, mock in mocks.items()}
    source = rewritten_source(EXAMPLE, tmp_path / "openproxy.yml", {
        '"/etc/relay/tls/cert.pem"': f'"{tmp_path / "cert.pem"}"',
        '"/etc/relay/tls/key.pem"': f'"{tmp_path / "key.pem"}"',
        "https_port: 8443": f"https_port: {https_port}",
        'https_bind_address: "0.0.0.0"': 'https_bind_address: "127.0.0.1"',
        "http_port: 8080": f"http_port: {http_port}",
        'endpoint: "api.openai.com"\n    port: 443\n    tls: true': plain(port["primary"]),
        'endpoint: "eu.openai-compatible.test"\n    port: 443\n    tls: true': plain(port["eu"]),
        'endpoint: "backup.openai-compatible.test"': plain(port["backup"]),
        'host: "oai.relay.test/tenant-b"\n    endpoint: "api.openai.com"': f'host: "oai.relay.test/tenant-b"\n    {plain(port["tenant_b"])}',
        'host: "claude.relay.test"\n    endpoint: "api.anthropic.com"': f'host: "claude.relay.test"\n    {plain(port["anthropic"])}',
        'host: "claude-oauth.relay.test"\n    endpoint: "api.anthropic.com"': f'host: "claude-oauth.relay.test"\n    {plain(port["oauth"])}',
        "/etc/relay/anthropic-oauth-token": str(tmp_path / "oauth-token"),
        'endpoint: "generativelanguage.googleapis.com"': plain(port["gemini"]),
        'endpoint: "inference.internal:8000"': f'endpoint: "127.0.0.1:{port["internal"]}"',
    })
    text, _, report, status = imported(source)
    assert status == 0, report
    config = tmp_path / "imported.toml"
    config.write_text(text, "utf-8")
    os.chmod(config, 0o600)
    checked = check_config(config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return text, http_port, https_port, ca_file


@pytest.fixture
def relay(tmp_path: Path, mocks: dict[str, MockProvider], start_relay) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    text, http_port, https_port, ca_file = imported_example(tmp_path, mocks)
    process = start_relay(text, port=http_port, port_flag=False)
    process.https_url = f"https://127.0.0.1:{https_port}"
    process.ca_file = ca_file
    yield process


def chats(mock: MockProvider, since: int = 0) -> list[Any]:
    """The chat requests a mock received (its health checks left out)."""
    return mock.received(path="/v1/chat/completions", since=since)


def post_chat(client: httpx.Client, relay: Any, host: str, key: str | None, path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"host": host}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return client.post(relay.url(path), json=CHAT, headers=headers)


def test_hosts_route_to_their_providers_with_each_providers_key(relay: Any, mocks: dict[str, MockProvider]) -> None:
    relay_keys = {"team-key-alpha", "team-key-beta", "tenant-b-key"}
    with httpx.Client(timeout=10) as client:
        answer = client.post(relay.url("/v1/messages"), json=CLAUDE, headers={"host": "claude.relay.test", "x-api-key": "team-key-alpha"})
        assert answer.status_code == 200, answer.text
        (seen,) = mocks["anthropic"].received(path="/v1/messages", method="POST")[-1:]
        assert seen.headers["x-api-key"] == "sk-ant-0001" and "authorization" not in seen.headers

        answer = client.post(relay.url("/v1/messages"), json=CLAUDE, headers={"host": "claude-oauth.relay.test", "x-api-key": "team-key-beta"})
        assert answer.status_code == 200, answer.text
        seen = mocks["oauth"].received(path="/v1/messages")[-1]
        assert seen.headers["authorization"] == "Bearer oauth-token-0001" and "x-api-key" not in seen.headers
        assert "oauth-2025-04-20" in seen.headers["anthropic-beta"]

        answer = client.post(relay.url("/v1beta/models/gemini-mock:generateContent"), json={"contents": [{"parts": [{"text": "hi"}]}]},
                             headers={"host": "gemini.relay.test", "x-goog-api-key": "team-key-alpha"})
        assert answer.status_code == 200, answer.text
        assert mocks["gemini"].received(path="/v1beta/models/gemini-mock:generateContent")[-1].key == "gm-0001"

        answer = client.post(relay.url("/v1/chat/completions"), json=CHAT, headers={
            "host": "internal.relay.test", "authorization": "Bearer client-own-token", "x-team": "blue"})
        assert answer.status_code == 200, answer.text
        seen = chats(mocks["internal"])[-1]
        assert (seen.headers["authorization"], seen.headers["x-team"]) == ("Bearer client-own-token", "blue")

        answer = post_chat(client, relay, OAI, "team-key-alpha")
        assert answer.status_code == 200, answer.text
    for mock in mocks.values():  # no relay key ever reaches a provider
        assert not [r for r in mock.requests if relay_keys & {r.key, *r.headers.values()}]


def test_a_host_path_prefix_reaches_its_provider_without_the_prefix(relay: Any, mocks: dict[str, MockProvider]) -> None:
    with httpx.Client(timeout=10) as client:
        for key in ("tenant-b-key", "team-key-beta"):  # openproxy accepts the top-level keys there too
            answer = post_chat(client, relay, OAI, key, "/tenant-b/v1/chat/completions")
            assert answer.status_code == 200, answer.text
        assert [request.key for request in chats(mocks["tenant_b"])] == ["sk-tenant-b-0001"] * 2
        assert mocks["tenant_b"].count(path="/tenant-b/v1/chat/completions") == 0
        # the tenant key is the tenant's alone, and the plain host refuses it
        assert post_chat(client, relay, OAI, "tenant-b-key").status_code == 401
        assert post_chat(client, relay, OAI, "not-a-key").status_code == 401
        assert post_chat(client, relay, OAI, None).status_code == 401
        assert post_chat(client, relay, OAI, "not-a-key", "/tenant-b/v1/chat/completions").status_code == 401
    assert not chats(mocks["primary"]) and not chats(mocks["eu"]) and not chats(mocks["backup"])


def test_requests_are_shared_by_openproxys_weights(relay: Any, mocks: dict[str, MockProvider]) -> None:
    total, deadline = 1000, time.monotonic() + 30
    with httpx.Client(timeout=10) as client:
        for sent in range(total):
            assert time.monotonic() < deadline, f"only {sent} requests in 30 s"
            answer = post_chat(client, relay, OAI, "team-key-alpha" if sent % 2 else "team-key-beta")
            assert answer.status_code == 200, answer.text
    seen = Counter(request.key for name in ("primary", "eu", "backup") for request in chats(mocks[name]))
    assert sum(seen.values()) == total and seen["sk-backup-0001"] == 0
    # primary 3, eu 1 + 3 (openproxy: one provider per key, each with its key's weight): 3/7, 1/7, 3/7
    for key, share in (("sk-primary-0001", 3 / 7), ("sk-eu-0001", 1 / 7), ("sk-eu-0002", 3 / 7)):
        assert abs(seen[key] / total - share) <= 0.03, seen


def test_the_fallback_answers_when_the_primaries_fail(relay: Any, mocks: dict[str, MockProvider]) -> None:
    for name in ("primary", "eu"):
        mocks[name].answer(503, path="/v1/chat/completions")
    with httpx.Client(timeout=10) as client:
        for _ in range(5):
            answer = post_chat(client, relay, OAI, "team-key-alpha")
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-llmrelay-upstream"] == f"{OAI}#2"
    assert [request.key for request in chats(mocks["backup"])] == ["sk-backup-0001"] * 5


def test_the_https_listener_routes_by_host_too(relay: Any, mocks: dict[str, MockProvider]) -> None:
    context = ssl.create_default_context(cafile=str(relay.ca_file))
    with httpx.Client(timeout=10, verify=context) as client:
        answer = client.post(f"{relay.https_url}/v1/chat/completions", json=CHAT,
                             headers={"host": OAI, "authorization": "Bearer team-key-alpha"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-llmrelay-upstream"] in (f"{OAI}#0", f"{OAI}#1")
