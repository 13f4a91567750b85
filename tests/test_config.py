"""Config loading: the original format, precedence, key sources, and errors that name their key."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import trustme

from relaytest import EXAMPLES
from llmrelay.config import ConfigError, load_config, load_config_text
from llmrelay.config.load import EMBEDDED_SOURCE, Overrides, find_config_path

ENV = {
    "LLMRELAY_TEAM_KEY": "team-key",
    "OPENAI_KEY_PRIMARY": "sk-1",
    "OPENAI_KEY_SECONDARY": "sk-2",
    "GEMINI_API_KEY": "g-1",
    "GROQ_API_KEY": "gq-1",
    "TEAM_KEY": "team-key",
    "TENANT_B_KEY": "tenant-b",
    "OPENAI_KEY_A": "sk-a",
    "OPENAI_KEY_B": "sk-b",
    "COMPAT_EU_KEY": "eu-1",
    "OPENAI_API_KEY": "sk-o",
    "ANTHROPIC_API_KEY": "sk-ant",
}


def errors_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "test.toml", environ=environ or {})
    return info.value.errors


def test_original_format_loads_unchanged() -> None:
    config = load_config(EXAMPLES / "original.toml", environ={})
    by_name = {e.name: e for e in config.endpoints}
    assert config.server.port == 8811
    # The flat keys are the one-upstream shorthand: one upstream named "<endpoint>#0".
    upstream = {name: endpoint.upstreams[0] for name, endpoint in by_name.items()}
    assert all(len(e.upstreams) == 1 for e in config.endpoints)
    assert [u.name for u in upstream.values()] == ["anthropic_dev#0", "openai_prod#0", "direct#0"]
    assert upstream["anthropic_dev"].proxy_url == "http://localhost:8080"
    assert str(upstream["anthropic_dev"].target) == "https://api.anthropic.com"
    assert by_name["anthropic_dev"].provider == upstream["anthropic_dev"].provider == "anthropic"
    assert str(upstream["openai_prod"].target) == "https://api.openai.com/v1"
    assert upstream["openai_prod"].target.base_path == "/v1"
    assert by_name["openai_prod"].provider == "openai"
    assert upstream["direct"].proxy_url is None
    assert str(upstream["direct"].target) == "https://api.anthropic.com"  # inherited from [server]
    assert all(not u.api_keys for u in upstream.values()) and all(not e.auth_keys for e in config.endpoints)
    assert all((e.retries, e.retry_deadline, e.retry_body_limit) == (2, 30.0, 1048576) for e in config.endpoints)


def example_text(path: Path, ca_file: Path) -> str:
    """An example as the tests can load it: secrets from commands and files that exist here."""
    text = path.read_text().replace("$(cat /run/secrets/anthropic_key)", "literal-key")
    text = text.replace("/etc/llmrelay/local-ca.pem", str(ca_file)).replace("/etc/llmrelay/client-ca.pem", str(ca_file))
    return text.replace("/etc/llmrelay/", f"{ca_file.parent}/")  # cert.pem and key.pem, made beside it


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(path))
    server = ca.issue_cert("localhost")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    return path


def test_every_example_loads(ca_file: Path) -> None:
    files = sorted(EXAMPLES.glob("*.toml"))
    assert len(files) >= 3
    for path in files:
        text = example_text(path, ca_file)
        config = load_config_text(text, str(path), environ=ENV)
        assert config.endpoints


def test_the_edge_gateway_example_has_its_listeners_and_protocols(ca_file: Path) -> None:
    path = EXAMPLES / "edge-gateway.toml"
    config = load_config_text(example_text(path, ca_file), str(path), environ=ENV)
    assert [(l.port, l.tls is not None) for l in config.listeners] == [(8080, False), (8443, True), (9443, True)]
    assert config.listeners[2].tls is not None and config.listeners[2].tls.client_ca_file == str(ca_file)
    assert config.server.http2.max_concurrent_streams == 200
    assert config.server.connect.enabled and config.connect_keys == [ENV["LLMRELAY_TEAM_KEY"]]
    by_name = {e.name: e for e in config.endpoints}
    assert by_name["openai"].upstreams[0].http2 and by_name["openai"].websocket_idle_timeout == 600
    assert not by_name["anthropic"].allow_websocket and not by_name["anthropic"].upstreams[0].http2


def test_team_gateway_resolves_keys_and_weights() -> None:
    text = (EXAMPLES / "team-gateway.toml").read_text().replace("$(cat /run/secrets/anthropic_key)", "lit")
    config = load_config_text(text, "x", environ=ENV)
    by_name = {e.name: e for e in config.endpoints}
    assert [(k.key, k.weight) for k in by_name["openai"].upstreams[0].api_keys] == [("sk-1", 3.0), ("sk-2", 1.0)]
    assert by_name["openai"].auth_keys == ["team-key"]  # global auth_keys inherited
    assert by_name["anthropic"].upstreams[0].api_keys[0].key == "lit"
    assert by_name["gemini"].provider == "gemini"
    assert by_name["groq"].hosts == ["groq.relay.internal"]
    assert "sk-1" not in repr(config) and "team-key" not in repr(by_name["openai"])


def test_embedded_default_serves_four_providers() -> None:
    config = load_config(None, environ={})
    assert config.source == EMBEDDED_SOURCE
    names = {e.name: (e.provider, str(e.upstreams[0].target)) for e in config.endpoints}
    assert names == {
        "openai": ("openai", "https://api.openai.com/v1"),
        "anthropic": ("anthropic", "https://api.anthropic.com"),
        "gemini": ("gemini", "https://generativelanguage.googleapis.com"),
        "groq": ("openai", "https://api.groq.com/openai/v1"),
    }
    assert config.server.port == 8811 and config.server.host == "127.0.0.1"
    assert all(len(e.upstreams) == 1 and not e.upstreams[0].api_keys for e in config.endpoints)


def test_precedence_file_then_port_env_then_cli(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9000\nworkers = 2\n[endpoints.a]\ntarget_base = "http://127.0.0.1:1"\n')
    assert load_config(path, environ={}).server.port == 9000
    assert load_config(path, environ={"PORT": "9100"}).server.port == 9100
    config = load_config(path, Overrides(host="::1", port=9200, workers=3), environ={"PORT": "9100"})
    assert (config.server.host, config.server.port, config.server.workers) == ("::1", 9200, 3)


def test_find_config_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config_path(None, environ={}) is None
    (tmp_path / "llmrelay.toml").write_text("")
    assert find_config_path(None, environ={}) == Path("llmrelay.toml")
    assert find_config_path(None, environ={"CONFIG_PATH": "/etc/x.toml"}) == Path("/etc/x.toml")
    assert find_config_path("given.toml", environ={"CONFIG_PATH": "/etc/x.toml"}) == Path("given.toml")


def test_all_errors_reported_at_once_with_key_paths() -> None:
    errors = errors_of(
        """
        auth_keys = "not-a-list"
        [server]
        port = "eighty"
        workers = 0
        colour = "blue"
        [endpoints.a]
        target_base = "ftp://example.com"
        api_keys = [{ key = "k", weight = -1 }]
        [endpoints.b]
        proxy_url = "gopher://proxy:70"
        """
    )
    text = "\n".join(errors)
    for expected in (
        "auth_keys:",
        "server.port:",
        "server.workers:",
        "server.colour: unknown key",
        "endpoints.a.api_keys[0].weight:",
    ):
        assert expected in text, text
    assert len(errors) >= 5


def test_semantic_errors_name_their_endpoint() -> None:
    errors = errors_of(
        """
        [endpoints.a]
        target_base = "ftp://example.com"
        [endpoints.b]
        proxy_url = "gopher://proxy:70"
        target_base = "https://api.openai.com/v1"
        [endpoints.c]
        [endpoints.d]
        target_base = "https://api.openai.com"
        api_key = "x"
        api_keys = [{ key = "y" }]
        [endpoints.health]
        target_base = "https://api.openai.com"
        """
    )
    text = "\n".join(errors)
    assert "endpoints.a.target_base: expected an http:// or https:// URL" in text
    assert "endpoints.b.proxy_url: expected a scheme among" in text
    assert "endpoints.c.target_base: required" in text
    assert "endpoints.d: set api_key or api_keys, not both" in text
    assert "endpoints.health: invalid endpoint name" in text


def test_socks5_credentials_longer_than_the_protocol_allows_are_refused() -> None:
    long = "u" * 256
    errors = errors_of(
        f"""
        [endpoints.a]
        target_base = "https://api.openai.com/v1"
        proxy_url = "socks5://{long}:p@127.0.0.1:1080"
        [endpoints.b]
        target_base = "https://api.openai.com/v1"
        proxy_url = "http://{long}:p@127.0.0.1:3128"
        """
    )
    assert errors == ["endpoints.a.proxy_url: a SOCKS5 user name or password is at most 255 bytes"]


def test_duplicate_hosts_are_refused() -> None:
    errors = errors_of(
        """
        [endpoints.a]
        target_base = "https://api.openai.com"
        hosts = ["x.example"]
        [endpoints.b]
        target_base = "https://api.openai.com"
        hosts = ["X.example"]
        """
    )
    assert any("endpoints.b.hosts[0]: x.example is already routed to endpoint a" in e for e in errors)


def test_open_relay_is_refused_unless_public() -> None:
    text = '[server]\nhost = "0.0.0.0"\n[endpoints.a]\ntarget_base = "https://api.openai.com"\napi_key = "sk"\n'
    errors = errors_of(text)
    assert any(e.startswith("endpoints.a: injects an api_key on non-loopback listener") for e in errors)
    load_config_text(text + "public = true\n", "t", environ={})
    load_config_text(text + 'auth_keys = ["relay"]\n', "t", environ={})
    load_config_text('auth_keys = ["relay"]\n' + text, "t", environ={})
    loopback = text.replace("0.0.0.0", "127.0.0.1")
    load_config_text(loopback, "t", environ={})


def test_env_key_source() -> None:
    text = '[endpoints.a]\ntarget_base = "https://api.openai.com"\napi_key = "${MY_KEY}"\n'
    config = load_config_text(text, "t", environ={"MY_KEY": "sk-env"})
    assert config.endpoints[0].upstreams[0].api_keys[0].key == "sk-env"
    errors = errors_of(text, environ={})
    assert errors == ["endpoints.a.api_key: environment variable MY_KEY is not set"]


def test_command_key_source_runs_without_shell(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("sk-from-file\n")
    text = f'[endpoints.a]\ntarget_base = "https://api.openai.com"\napi_key = "$(cat {secret})"\n'
    config = load_config_text(text, "t", environ={})
    assert config.endpoints[0].upstreams[0].api_keys[0].key == "sk-from-file"
    # No shell: a `;` is an argument to cat, not a second command.
    marker = tmp_path / "pwned"
    text = f'[endpoints.a]\ntarget_base = "https://api.openai.com"\napi_key = "$(cat {secret}; touch {marker})"\n'
    errors = errors_of(text)
    assert not marker.exists()
    assert len(errors) == 1
    assert errors[0].startswith("endpoints.a.api_key: command cat exited with status 1: cat: ")  # stderr's first line


def test_command_key_source_failures_never_show_output(tmp_path: Path) -> None:
    script = tmp_path / "fail.sh"
    script.write_text("#!/bin/sh\necho sk-secret-output\nexit 3\n")
    script.chmod(0o755)
    errors = errors_of(f'[endpoints.a]\ntarget_base = "https://api.openai.com"\napi_key = "$({script})"\n')
    assert errors == [f"endpoints.a.api_key: command {script} exited with status 3"]
    assert "sk-secret-output" not in "".join(errors)
    errors = errors_of('[endpoints.a]\ntarget_base = "https://api.openai.com"\napi_key = "$(no-such-tool-xyz)"\n')
    assert errors == ["endpoints.a.api_key: command not found: no-such-tool-xyz"]


def test_command_key_source_is_time_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llmrelay.config.secrets as secrets

    monkeypatch.setattr(secrets, "COMMAND_TIMEOUT", 0.5)
    errors = errors_of(f'[endpoints.a]\ntarget_base = "https://api.openai.com"\napi_key = "$({sys.executable} -c \'import time; time.sleep(30)\')"\n')
    assert len(errors) == 1 and "timed out" in errors[0]


def test_commands_refused_from_a_world_writable_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[endpoints.a]\ntarget_base = "https://api.openai.com"\napi_key = "$(echo sk)"\n')
    os.chmod(path, 0o666)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "writable by other users" in info.value.errors[0]
    os.chmod(path, 0o600)
    assert load_config(path, environ={}).endpoints[0].upstreams[0].api_keys[0].key == "sk"
    assert not stat.S_IWOTH & path.stat().st_mode


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    assert errors_of("[server\nport = 1")[0].startswith("TOML syntax:")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml", environ={})
    assert "config file not found" in info.value.errors[0]


def test_provider_inference() -> None:
    text = "\n".join(
        f'[endpoints.e{i}]\ntarget_base = "{url}"'
        for i, url in enumerate(
            [
                "https://api.openai.com/v1",
                "https://api.anthropic.com",
                "https://generativelanguage.googleapis.com/v1beta",
                "https://api.groq.com/openai/v1",
                "http://10.0.0.1:8000/v1",
            ]
        )
    )
    providers = [e.provider for e in load_config_text(text, "t", environ={}).endpoints]
    assert providers == ["openai", "anthropic", "gemini", "openai", "forward"]


def test_keys_that_cannot_be_sent_in_a_header_are_refused() -> None:
    errors = errors_of(
        '[endpoints.a]\ntarget_base = "https://api.openai.com"\napi_key = "sk-abc\\ndef"\n'
        'auth_keys = ["relay key", "ok-key", "ключ"]\n'
    )
    assert sorted(errors) == [
        "endpoints.a.api_key: the key holds spaces, control or non-ASCII characters, which cannot be sent in a header",
        "endpoints.a.auth_keys[0]: the key holds spaces, control or non-ASCII characters, which cannot be sent in a header",
        "endpoints.a.auth_keys[2]: the key holds spaces, control or non-ASCII characters, which cannot be sent in a header",
    ]
    assert not any("sk-abc" in e or "ключ" in e for e in errors)
