"""Config semantics and messages: files checked at validation, `auth_keys` inheritance, host entries,
forwarded_headers, defaults, and errors that say what to do."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trustme

from llmrelay.config import ConfigError, load_config, load_config_text
from llmrelay.config.hosts import HostEntryError, canonical_host_entry
from llmrelay.config.schema import EndpointSection
from test_cli import run_cli

TARGET = 'target_base = "https://api.openai.com/v1"\n'


def errors_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "test.toml", environ=environ or {})
    return info.value.errors


# -- item 1: what a worker will load is loaded at validation time ------------------------------------


@pytest.mark.parametrize("kind", ["missing", "directory", "not-pem", "empty", "unreadable"])
def test_a_ca_file_that_does_not_load_is_a_config_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "ca.pem"
    if kind == "directory":
        path.mkdir()
    elif kind == "not-pem":
        path.write_text("this is not a certificate\n")
    elif kind == "empty":
        path.write_text("")
    elif kind == "unreadable":
        trustme.CA().cert_pem.write_to_path(str(path))
        path.chmod(0)
        if os.access(path, os.R_OK):  # root reads anything: a FIFO nobody writes to stands in
            path.unlink()
            path.mkdir()
    errors = errors_of(f'[endpoints.a]\n{TARGET}ca_file = "{path}"\n')
    assert len(errors) == 1
    assert errors[0].startswith(f"endpoints.a.ca_file: {path} ")


def test_a_ca_file_that_loads_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    config = load_config_text(f'[endpoints.a]\n{TARGET}ca_file = "{path}"\n', "t", environ={})
    assert config.endpoints[0].upstreams[0].ca_file == str(path)


def test_check_config_refuses_a_missing_ca_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[endpoints.a]\n{TARGET}ca_file = "{tmp_path}/nope.pem"\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert f"endpoints.a.ca_file: {tmp_path}/nope.pem does not exist" in result.stderr


# -- item 5: absent auth_keys inherit, empty auth_keys mean none -------------------------------------


def test_absent_auth_keys_inherit_and_empty_ones_mean_none() -> None:
    text = f'auth_keys = ["team"]\n[endpoints.inherits]\n{TARGET}[endpoints.open]\n{TARGET}auth_keys = []\n'
    text += f'[endpoints.own]\n{TARGET}auth_keys = ["mine"]\n'
    by_name = {e.name: e for e in load_config_text(text, "t", environ={}).endpoints}
    assert (by_name["inherits"].auth_keys, by_name["inherits"].auth_source) == (["team"], "global")
    assert (by_name["open"].auth_keys, by_name["open"].auth_source) == ([], "none")
    assert (by_name["own"].auth_keys, by_name["own"].auth_source) == (["mine"], "endpoint")


def test_empty_auth_keys_with_an_injected_key_on_a_public_listener_is_still_an_open_relay() -> None:
    text = f'auth_keys = ["team"]\n[server]\nhost = "0.0.0.0"\n[endpoints.a]\n{TARGET}auth_keys = []\napi_key = "sk"\n'
    (error,) = errors_of(text)
    assert error.startswith("endpoints.a: injects an api_key on non-loopback listener 0.0.0.0 without auth_keys")


def test_check_config_shows_where_relay_keys_come_from(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        f'auth_keys = ["team"]\n[endpoints.inherits]\n{TARGET}[endpoints.open]\n{TARGET}auth_keys = []\n'
        f'[endpoints.own]\n{TARGET}auth_keys = ["a", "b"]\n'
    )
    out = run_cli("check-config", str(path)).stdout
    assert "/inherits/  provider=openai" in out and "relay_keys=1 (inherited from top-level auth_keys)" in out
    assert "relay_keys=none (client credentials pass through)" in out
    assert "relay_keys=2 (own)" in out


# -- item 6: no follow-on errors -----------------------------------------------------------------------


def test_endpoints_with_errors_do_not_also_report_that_none_exist() -> None:
    errors = errors_of(f"[endpoints.a]\n{TARGET}colour = 1\n[endpoints.b]\n{TARGET}provider = 'x'\n")
    assert not any("at least one endpoint" in e for e in errors)
    assert [e.split(":")[0] for e in errors] == ["endpoints.a.colour", "endpoints.b.provider"]


@pytest.mark.parametrize("text", ["", "[endpoints]\n", "[server]\nport = 1\n"])
def test_a_file_without_endpoints_says_so(text: str) -> None:
    assert "endpoints: at least one endpoint is required" in errors_of(text)


# -- item 7: messages that help ------------------------------------------------------------------------


def test_an_invalid_enum_lists_the_allowed_values() -> None:
    errors = errors_of(f'[server]\nlog_level = "loud"\n[endpoints.a]\n{TARGET}provider = "azure"\n')
    assert "endpoints.a.provider: 'azure' is not one of openai, anthropic, gemini, forward" in errors
    assert "server.log_level: 'loud' is not one of debug, info, warning, error" in errors


def test_an_unknown_key_suggests_the_closest_valid_one() -> None:
    errors = errors_of('[server]\nprot = 1\n[endpoints.a]\ntarget_bse = "https://api.openai.com/v1"\nzzz = 1\n')
    assert "server.prot: unknown key (did you mean 'port'?)" in errors
    assert "endpoints.a.target_bse: unknown key (did you mean 'target_base'?)" in errors
    assert "endpoints.a.zzz: unknown key" in errors  # nothing close: no list of every key either


def test_a_failing_command_shows_the_first_line_of_its_stderr(tmp_path: Path) -> None:
    script = tmp_path / "vault"
    script.write_text("#!/bin/sh\necho 'vault: secret/openai not found' >&2\necho 'detail' >&2\nexit 2\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    (error,) = errors_of(f'[endpoints.a]\n{TARGET}api_key = "$({script})"\n')
    assert error == f"endpoints.a.api_key: command {script} exited with status 2: vault: secret/openai not found"


# -- item 11 and 12: forwarded_headers and defaults ----------------------------------------------------


def test_forwarded_headers_default_to_append_and_inherit_from_server() -> None:
    text = f'[endpoints.a]\n{TARGET}[endpoints.b]\n{TARGET}forwarded_headers = "none"\n'
    by_name = {e.name: e for e in load_config_text(text, "t", environ={}).endpoints}
    assert (by_name["a"].forwarded_headers, by_name["b"].forwarded_headers) == ("append", "none")
    text = '[server]\nforwarded_headers = "replace"\n' + text
    by_name = {e.name: e for e in load_config_text(text, "t", environ={}).endpoints}
    assert (by_name["a"].forwarded_headers, by_name["b"].forwarded_headers) == ("replace", "none")


def test_first_byte_timeout_defaults_to_what_the_sdks_wait() -> None:
    assert EndpointSection().first_byte_timeout == 600.0
    assert load_config(None, environ={}).endpoints[0].upstreams[0].timeouts.first_byte == 600.0


# -- item 23: host entries -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "canonical"),
    [
        ("api.example.com", "api.example.com"),
        ("API.Example.COM.", "api.example.com"),
        ("localhost:8080", "localhost:8080"),
        ("localhost:08080", "localhost:8080"),
        ("::1", "[::1]"),
        ("[::1]", "[::1]"),
        ("[0:0::1]:9000", "[::1]:9000"),
        ("127.0.0.1:80", "127.0.0.1:80"),
        ("my_service", "my_service"),
    ],
)
def test_host_entries_have_one_canonical_form(entry: str, canonical: str) -> None:
    assert canonical_host_entry(entry) == canonical


@pytest.mark.parametrize(
    "entry", ["", "a b", "a/", "a//b", "a/b/../c", "a/%2e", "a/b?c", "a/b#c", "/b", "evil@a", "a:", "a:0", "a:99999", "a:x", "[::1", "[::1]x", "[nope]", "-a", "a..b", "a\n"]
)
def test_bad_host_entries_are_refused(entry: str) -> None:
    with pytest.raises(HostEntryError):
        canonical_host_entry(entry)


def test_bad_host_entries_name_their_key() -> None:
    errors = errors_of(f'[endpoints.a]\n{TARGET}hosts = ["ok.example", "a b", "x:99999"]\n')
    assert [e.split(":")[0] for e in errors] == ["endpoints.a.hosts[1]", "endpoints.a.hosts[2]"]


def test_the_same_host_written_two_ways_is_one_entry() -> None:
    errors = errors_of(f'[endpoints.a]\n{TARGET}hosts = ["::1"]\n[endpoints.b]\n{TARGET}hosts = ["[::1]"]\n')
    assert errors == ["endpoints.b.hosts[0]: [::1] is already routed to endpoint a"]


def test_a_host_entry_may_carry_a_path_prefix() -> None:
    config = load_config_text(
        f'[endpoints.a]\n{TARGET}hosts = ["OAI.example/tenant-b/", "oai.example"]\n'
        f'[endpoints.b]\n{TARGET}hosts = ["oai.example:8443/api/v1"]\n',
        "t",
    )
    assert [e.hosts for e in config.endpoints] == [["oai.example/tenant-b", "oai.example"], ["oai.example:8443/api/v1"]]
    errors = errors_of(f'[endpoints.a]\n{TARGET}hosts = ["x.example/p"]\n[endpoints.b]\n{TARGET}hosts = ["x.example/p/"]\n')
    assert errors == ["endpoints.b.hosts[0]: x.example/p is already routed to endpoint a"]


def test_paths_route_prefixes_to_one_endpoint_each() -> None:
    config = load_config_text(f'[endpoints.a]\n{TARGET}paths = ["/v1/messages", "/v1/complete/"]\n', "t")
    assert config.endpoints[0].paths == ["/v1/messages", "/v1/complete"]
    errors = errors_of(
        f'[endpoints.a]\n{TARGET}paths = ["/v1/messages", "v1/x", "/v1/../x", "/"]\n'
        f'[endpoints.b]\n{TARGET}paths = ["/v1/messages"]\n'
    )
    assert [e.split(":")[0] for e in errors] == ["endpoints.a.paths[1]", "endpoints.a.paths[2]", "endpoints.a.paths[3]", "endpoints.b.paths[0]"]
    assert errors[-1].endswith("/v1/messages is already routed to endpoint a")


# -- token_env: the seed format's spelling of api_key = "${NAME}" ------------------------------------


def test_token_env_is_api_key_from_that_variable() -> None:
    environ = {"OPENAI_TOKEN": "sk-from-env-123"}
    spelled = load_config_text(f'[endpoints.a]\n{TARGET}token_env = "OPENAI_TOKEN"\n', "t", environ=environ)
    explicit = load_config_text(f'[endpoints.a]\n{TARGET}api_key = "${{OPENAI_TOKEN}}"\n', "t", environ=environ)
    assert [k.key for k in spelled.endpoints[0].upstreams[0].api_keys] == ["sk-from-env-123"]
    assert spelled.endpoints[0].upstreams[0].api_keys == explicit.endpoints[0].upstreams[0].api_keys
    several = (
        f'[endpoints.b]\nprovider = "anthropic"\n[[endpoints.b.upstreams]]\nname = "one"\n{TARGET}token_env = "OPENAI_TOKEN"\n'
        f'[[endpoints.b.upstreams]]\nname = "two"\n{TARGET}'
    )
    upstreams = load_config_text(several, "t", environ=environ).endpoints[0].upstreams
    assert [k.key for k in upstreams[0].api_keys] == ["sk-from-env-123"] and upstreams[1].api_keys == []


def test_token_env_errors_name_the_key() -> None:
    assert errors_of(f'[endpoints.a]\n{TARGET}token_env = "NOPE_NOT_SET"\n') == [
        "endpoints.a.token_env: environment variable NOPE_NOT_SET is not set"
    ]
    assert errors_of(f'[endpoints.a]\n{TARGET}token_env = "X"\napi_key = "sk"\n', {"X": "1"}) == [
        "endpoints.a: set api_key or token_env, not both"
    ]
    assert errors_of(f'[endpoints.a]\n{TARGET}token_env = "not a name"\n') == [
        "endpoints.a.token_env: 'not a name' is not an environment variable name"
    ]
