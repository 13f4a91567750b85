"""Several upstreams per endpoint, the config side: how `[[endpoints.NAME.upstreams]]` resolves (names,
defaults inherited from the endpoint, key scopes, the union of relay keys, health checks, retries),
what `check-config` prints for it, and the mistakes it refuses, each named by its key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from llmrelay.config import ConfigError, load_config, load_config_text
from llmrelay.config.resolved import RelayConfig, ResolvedEndpoint, ResolvedUpstream
from llmrelay.control import Config, FrameReader, encode_frame
from relaytest import EXAMPLES
from test_cli import run_cli

# The issue's example (its health_check inline table on one line: TOML 1.0 has no multi-line ones).
CONTRACT = """
[endpoints.chat]
hosts = ["chat.relay.internal"]
auth_keys = ["${TEAM_KEY}"]
retries = 2
retry_deadline = 30
retry_body_limit = 1048576

[[endpoints.chat.upstreams]]
name = "openai-us"
provider = "openai"
target_base = "https://api.openai.com/v1"
weight = 2.0
priority = 0
api_keys = [{ key = "${OPENAI_KEY_A}", weight = 1.0 }, { key = "${OPENAI_KEY_B}", weight = 2.0 }]
health_check = { method = "GET", path = "/v1/models", interval = 30, timeout = 5, expected_status = [200], healthy_threshold = 2, unhealthy_threshold = 3, headers = { "x-probe" = "1" }, body = "" }

[[endpoints.chat.upstreams]]
name = "compat-eu"
target_base = "https://eu.example.com/v1"
proxy_url = "socks5://10.0.0.5:1080"
auth_keys = ["${TENANT_B_KEY}"]

[[endpoints.chat.upstreams]]
name = "backup"
target_base = "https://backup.example.com/v1"
fallback = true
"""
CONTRACT_ENV = {"TEAM_KEY": "team", "OPENAI_KEY_A": "sk-a", "OPENAI_KEY_B": "sk-b", "TENANT_B_KEY": "tenant-b"}
EXAMPLE = EXAMPLES / "multi-upstream.toml"
EXAMPLE_ENV = {
    "TEAM_KEY": "team-secret",
    "TENANT_B_KEY": "tenant-b-secret",
    "OPENAI_KEY_A": "sk-secret-a",
    "OPENAI_KEY_B": "sk-secret-b",
    "COMPAT_EU_KEY": "eu-secret",
}
OPENAI = 'target_base = "https://api.openai.com/v1"\n'


def load(text: str, environ: dict[str, str] | None = None) -> RelayConfig:
    return load_config_text(text, "test.toml", environ=environ or {})


def errors_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, environ)
    return info.value.errors


def only_endpoint(text: str, environ: dict[str, str] | None = None) -> ResolvedEndpoint:
    (endpoint,) = load(text, environ).endpoints
    return endpoint


def by_name(endpoint: ResolvedEndpoint) -> dict[str, ResolvedUpstream]:
    return {upstream.name: upstream for upstream in endpoint.upstreams}


# -- the issue's example -------------------------------------------------------------------------------


def test_the_issue_example_resolves_as_described() -> None:
    chat = only_endpoint(CONTRACT, CONTRACT_ENV)
    assert chat.name == "chat" and chat.hosts == ["chat.relay.internal"]
    assert [u.name for u in chat.upstreams] == ["openai-us", "compat-eu", "backup"]
    assert (chat.retries, chat.retry_deadline, chat.retry_body_limit) == (2, 30.0, 1048576)
    # The endpoint accepts its own keys and every upstream's scoped ones.
    assert chat.auth_keys == ["team", "tenant-b"] and chat.auth_source == "endpoint"
    assert chat.provider == "openai"  # the first upstream's: the shape of the relay's own errors
    us, eu, backup = chat.upstreams

    assert (us.provider, str(us.target), us.proxy_url, us.scope) == ("openai", "https://api.openai.com/v1", None, None)
    assert (us.weight, us.priority, us.fallback) == (2.0, 0, False)
    assert [(k.key, k.weight, k.name) for k in us.api_keys] == [("sk-a", 1.0, "0"), ("sk-b", 2.0, "1")]
    check = us.health_check
    assert check is not None
    assert (check.method, check.path, check.interval, check.timeout) == ("GET", "/v1/models", 30.0, 5.0)
    assert (check.expected_status, check.healthy_threshold, check.unhealthy_threshold) == ([200], 2, 3)
    assert (check.headers, check.body) == ([("x-probe", "1")], "")
    assert us.unhealthy_threshold == 3

    assert (eu.provider, str(eu.target), eu.proxy_url) == ("forward", "https://eu.example.com/v1", "socks5://10.0.0.5:1080")
    assert eu.scope == ["tenant-b"]  # only clients presenting this relay key may use it
    assert (eu.weight, eu.priority, eu.fallback, eu.api_keys, eu.health_check) == (1.0, 0, False, [], None)
    assert eu.unhealthy_threshold == 3  # passive health without a check of its own

    assert (backup.name, backup.fallback, backup.scope, backup.weight) == ("backup", True, None, 1.0)
    for secret in CONTRACT_ENV.values():
        assert secret not in repr(chat) and secret not in repr(us)


def test_the_config_with_upstreams_crosses_the_control_pipe() -> None:
    config = load(CONTRACT, CONTRACT_ENV)
    message = Config(config=config, generation=7)
    assert FrameReader().feed(encode_frame(message)) == [message]


# -- names ---------------------------------------------------------------------------------------------


def test_unnamed_upstreams_are_named_after_their_endpoint_and_index() -> None:
    text = (
        f"[endpoints.mix]\n[[endpoints.mix.upstreams]]\n{OPENAI}"
        f'[[endpoints.mix.upstreams]]\nname = "second"\n{OPENAI}[[endpoints.mix.upstreams]]\n{OPENAI}'
    )
    assert [u.name for u in only_endpoint(text).upstreams] == ["mix#0", "second", "mix#2"]


def test_the_flat_keys_are_one_upstream_named_endpoint_hash_zero() -> None:
    text = (
        '[endpoints.flat]\ntarget_base = "https://api.anthropic.com"\nproxy_url = "http://127.0.0.1:3128"\n'
        'api_key = "sk"\nconnect_timeout = 3\nhealth_check = true\n'
    )
    flat = only_endpoint(text)
    (upstream,) = flat.upstreams
    assert (upstream.name, upstream.provider, str(upstream.target)) == ("flat#0", "anthropic", "https://api.anthropic.com")
    assert (upstream.proxy_url, [k.key for k in upstream.api_keys], upstream.timeouts.connect) == (
        "http://127.0.0.1:3128",
        ["sk"],
        3.0,
    )
    assert upstream.health_check is not None and upstream.health_check.path == "/v1/models"
    assert flat.max_body_size == upstream.max_body_size == 32 * 1024 * 1024


def test_provider_keys_are_named_by_their_name_else_their_index() -> None:
    text = f'[endpoints.a]\n{OPENAI}api_keys = [{{ key = "k1", name = "primary" }}, {{ key = "k2" }}]\n'
    assert [k.name for k in only_endpoint(text).upstreams[0].api_keys] == ["primary", "1"]
    text = f'[endpoints.a]\n{OPENAI}api_keys = [{{ key = "k1", name = "x" }}, {{ key = "k2", name = "x" }}]\n'
    assert errors_of(text) == ["endpoints.a.api_keys: the key name 'x' is used twice (a key without a name is named by its index)"]


# -- defaults and inheritance ----------------------------------------------------------------------------


def test_defaults_of_an_endpoint_and_of_its_upstreams() -> None:
    endpoint = only_endpoint(f"[endpoints.a]\n[[endpoints.a.upstreams]]\n{OPENAI}")
    assert (endpoint.retries, endpoint.retry_deadline, endpoint.retry_body_limit) == (2, 30.0, 1024 * 1024)
    (upstream,) = endpoint.upstreams
    assert (upstream.weight, upstream.priority, upstream.fallback, upstream.scope) == (1.0, 0, False, None)
    assert (upstream.timeouts.connect, upstream.timeouts.first_byte, upstream.timeouts.idle) == (10.0, 600.0, 120.0)
    assert (upstream.pool.max_connections, upstream.pool.keepalive_expiry, upstream.pool.wait) == (100, 30.0, 10.0)
    assert (upstream.max_body_size, upstream.ca_file, upstream.proxy_ca_file, upstream.proxy_url) == (
        32 * 1024 * 1024,
        None,
        None,
        None,
    )
    assert (upstream.health_check, upstream.unhealthy_threshold, upstream.api_keys) == (None, 3, [])


@pytest.fixture
def ca_files(tmp_path: Path) -> tuple[Path, Path]:
    paths = tmp_path / "a.pem", tmp_path / "b.pem"
    for path in paths:
        trustme.CA().cert_pem.write_to_path(str(path))
    return paths


def test_every_per_upstream_key_set_on_the_endpoint_is_its_upstreams_default(ca_files: tuple[Path, Path]) -> None:
    endpoint_ca, upstream_ca = ca_files
    text = f"""
    [endpoints.e]
    provider = "anthropic"
    proxy_url = "http://127.0.0.1:3128"
    api_keys = [{{ key = "${{EP_KEY}}", weight = 3, name = "shared" }}]
    connect_timeout = 1
    first_byte_timeout = 2
    idle_timeout = 3
    ca_file = "{endpoint_ca}"
    proxy_ca_file = "{endpoint_ca}"
    max_connections = 4
    keepalive_expiry = 5
    pool_timeout = 6
    max_body_size = 7000
    health_check = true

    [[endpoints.e.upstreams]]
    name = "inherits"
    target_base = "https://one.example.com"

    [[endpoints.e.upstreams]]
    name = "overrides"
    target_base = "https://generativelanguage.googleapis.com"
    provider = "gemini"
    proxy_url = "socks5h://10.0.0.1:1080"
    api_key = "own-key"
    connect_timeout = 11
    first_byte_timeout = 12
    idle_timeout = 13
    ca_file = "{upstream_ca}"
    proxy_ca_file = "{upstream_ca}"
    max_connections = 14
    keepalive_expiry = 15
    pool_timeout = 16
    max_body_size = 17000
    health_check = {{ interval = 60, unhealthy_threshold = 5 }}

    [[endpoints.e.upstreams]]
    name = "opts-out"
    target_base = "https://three.example.com"
    api_keys = []
    health_check = false
    """
    endpoint = only_endpoint(text, {"EP_KEY": "sk-endpoint"})
    inherits, overrides, opts_out = endpoint.upstreams

    assert (inherits.provider, inherits.proxy_url) == ("anthropic", "http://127.0.0.1:3128")
    assert [(k.key, k.weight, k.name) for k in inherits.api_keys] == [("sk-endpoint", 3.0, "shared")]
    assert (inherits.timeouts.connect, inherits.timeouts.first_byte, inherits.timeouts.idle) == (1.0, 2.0, 3.0)
    assert (inherits.ca_file, inherits.proxy_ca_file) == (str(endpoint_ca), str(endpoint_ca))
    assert (inherits.pool.max_connections, inherits.pool.keepalive_expiry, inherits.pool.wait) == (4, 5.0, 6.0)
    assert inherits.max_body_size == 7000
    assert inherits.health_check is not None
    assert (inherits.health_check.method, inherits.health_check.path) == ("GET", "/v1/models")

    assert (overrides.provider, overrides.proxy_url) == ("gemini", "socks5h://10.0.0.1:1080")
    assert [(k.key, k.weight, k.name) for k in overrides.api_keys] == [("own-key", 1.0, "0")]
    assert (overrides.timeouts.connect, overrides.timeouts.first_byte, overrides.timeouts.idle) == (11.0, 12.0, 13.0)
    assert (overrides.ca_file, overrides.proxy_ca_file) == (str(upstream_ca), str(upstream_ca))
    assert (overrides.pool.max_connections, overrides.pool.keepalive_expiry, overrides.pool.wait) == (14, 15.0, 16.0)
    assert overrides.max_body_size == 17000
    check = overrides.health_check
    assert check is not None and (check.path, check.interval, check.unhealthy_threshold) == ("/v1beta/models", 60.0, 5)
    assert overrides.unhealthy_threshold == 5  # a check's threshold is also the passive one

    assert (opts_out.api_keys, opts_out.health_check, opts_out.unhealthy_threshold) == ([], None, 3)
    assert endpoint.provider == "anthropic"
    assert endpoint.max_body_size == 17000  # the largest body some upstream takes


@pytest.mark.parametrize(
    ("target", "provider", "path"),
    [
        ("https://api.openai.com/v1", "openai", "/v1/models"),
        ("https://api.anthropic.com", "anthropic", "/v1/models"),
        ("https://generativelanguage.googleapis.com", "gemini", "/v1beta/models"),
        ("http://10.0.0.7:8000/v1", "forward", "/v1/models"),
    ],
)
def test_health_check_true_is_the_providers_default_check(target: str, provider: str, path: str) -> None:
    (upstream,) = only_endpoint(f'[endpoints.a]\n[[endpoints.a.upstreams]]\ntarget_base = "{target}"\nhealth_check = true\n').upstreams
    check = upstream.health_check
    assert upstream.provider == provider and check is not None
    assert (check.method, check.path, check.interval, check.timeout, check.expected_status) == ("GET", path, 30.0, 5.0, [200])
    assert (check.healthy_threshold, check.unhealthy_threshold, check.headers, check.body) == (2, 3, [], "")


# -- relay keys: scopes and their union ------------------------------------------------------------------


def test_an_endpoint_accepts_its_keys_and_every_upstreams_scoped_keys() -> None:
    upstreams = (
        f'[[endpoints.a.upstreams]]\n{OPENAI}auth_keys = ["tenant-b", "team"]\n'
        f'[[endpoints.a.upstreams]]\n{OPENAI}auth_keys = ["tenant-c"]\n[[endpoints.a.upstreams]]\n{OPENAI}'
    )
    inherited = only_endpoint('auth_keys = ["team"]\n[endpoints.a]\n' + upstreams)
    assert (inherited.auth_keys, inherited.auth_source) == (["team", "tenant-b", "tenant-c"], "global")
    assert [u.scope for u in inherited.upstreams] == [["tenant-b", "team"], ["tenant-c"], None]
    own = only_endpoint('auth_keys = ["team"]\n[endpoints.a]\nauth_keys = ["mine"]\n' + upstreams)
    assert (own.auth_keys, own.auth_source) == (["mine", "tenant-b", "team", "tenant-c"], "endpoint")
    # Without keys of its own, the endpoint still checks the scoped ones.
    scoped_only = only_endpoint("[endpoints.a]\nauth_keys = []\n" + upstreams)
    assert (scoped_only.auth_keys, scoped_only.auth_source) == (["tenant-b", "team", "tenant-c"], "upstreams")


def test_scoped_keys_come_from_key_sources_and_name_their_key_when_missing() -> None:
    text = f'[endpoints.a]\n[[endpoints.a.upstreams]]\n{OPENAI}auth_keys = ["${{TENANT}}", "${{MISSING}}"]\n'
    assert errors_of(text, {"TENANT": "t"}) == ["endpoints.a.upstreams[0].auth_keys[1]: environment variable MISSING is not set"]
    assert only_endpoint(text, {"TENANT": "t", "MISSING": "m"}).upstreams[0].scope == ["t", "m"]


def test_a_scoped_key_keeps_an_injecting_endpoint_from_being_an_open_relay() -> None:
    listener = '[server]\nhost = "0.0.0.0"\n'
    text = f'{listener}[endpoints.a]\napi_key = "sk"\n[[endpoints.a.upstreams]]\n{OPENAI}auth_keys = ["tenant"]\n'
    assert only_endpoint(text).auth_keys == ["tenant"]
    open_relay = f'{listener}[endpoints.a]\napi_key = "sk"\n[[endpoints.a.upstreams]]\n{OPENAI}[[endpoints.a.upstreams]]\n{OPENAI}api_keys = []\n'
    (error,) = errors_of(open_relay)  # only the upstream that injects a key
    assert error.startswith("endpoints.a.upstreams[0]: injects an api_key on non-loopback listener 0.0.0.0 without auth_keys")
    public = open_relay.replace('api_key = "sk"\n', 'api_key = "sk"\npublic = true\n', 1)
    assert only_endpoint(public).public


# -- mistakes, each named by its key path (through the real command) --------------------------------------

UP0 = f"[[endpoints.x.upstreams]]\n{OPENAI}"
UP1 = '[[endpoints.x.upstreams]]\ntarget_base = "https://backup.example.com/v1"\n'
REFUSED = {
    "shorthand and upstreams": (
        f'[endpoints.x]\ntarget_base = "https://a.example.com"\n{UP0}',
        "endpoints.x.target_base: the one-upstream shorthand cannot be combined with endpoints.x.upstreams",
    ),
    "duplicate upstream names": (
        f'[endpoints.x]\n{UP0}name = "a"\n{UP1}name = "a"\n',
        "endpoints.x.upstreams[1].name: duplicate upstream name 'a' (also endpoints.x.upstreams[0])",
    ),
    "a name that is another's default": (
        f'[endpoints.x]\n{UP0}{UP1}name = "x#0"\n',
        "endpoints.x.upstreams[1].name: duplicate upstream name 'x#0'",
    ),
    "an unreachable upstream": (
        f"[endpoints.x]\n{UP0}{UP1}auth_keys = []\n",
        "endpoints.x.upstreams[1].auth_keys: empty, so no client key could ever reach this upstream",
    ),
    "a check path without a leading slash": (
        f'[endpoints.x]\n{UP0}health_check = {{ path = "v1/models" }}\n',
        "endpoints.x.upstreams[0].health_check.path: must start with '/'",
    ),
    "healthy_threshold below 1": (
        f"[endpoints.x]\n{UP0}health_check = {{ healthy_threshold = 0 }}\n",
        "endpoints.x.upstreams[0].health_check.healthy_threshold: expected `int` >= 1",
    ),
    "unhealthy_threshold below 1": (
        f"[endpoints.x]\n{UP0}[endpoints.x.upstreams.health_check]\nunhealthy_threshold = 0\n",
        "endpoints.x.upstreams[0].health_check.unhealthy_threshold: expected `int` >= 1",
    ),
    "interval below 1": (
        f"[endpoints.x]\n{UP0}health_check = {{ interval = 0.5, timeout = 0.25 }}\n",
        "endpoints.x.upstreams[0].health_check.interval: expected `float` >= 1.0",
    ),
    "an unknown key in a check": (
        f"[endpoints.x]\n{UP0}{UP1}health_check = {{ intervall = 10 }}\n",
        "endpoints.x.upstreams[1].health_check.intervall: unknown key (did you mean 'interval'?)",
    ),
    "a check timeout longer than its interval": (
        f"[endpoints.x]\n{UP0}health_check = {{ interval = 2 }}\n",
        "endpoints.x.upstreams[0].health_check.timeout: must not be longer than its interval (2 s)",
    ),
    "a lower-case check method": (
        f'[endpoints.x]\n{UP0}health_check = {{ method = "get" }}\n',
        "endpoints.x.upstreams[0].health_check.method: expected an upper-case HTTP method",
    ),
    "no expected status": (
        f"[endpoints.x]\n{UP0}health_check = {{ expected_status = [] }}\n",
        "endpoints.x.upstreams[0].health_check.expected_status:",
    ),
    "a bad proxy_url on an upstream": (
        f'[endpoints.x]\n{UP0}{UP1}proxy_url = "gopher://proxy:70"\n',
        "endpoints.x.upstreams[1].proxy_url: expected a scheme among http, https, socks5, socks5h, got 'gopher'",
    ),
    "a bad target_base on an upstream": (
        f'[endpoints.x]\n{UP0}[[endpoints.x.upstreams]]\ntarget_base = "ftp://x.example.com"\n',
        "endpoints.x.upstreams[1].target_base: expected an http:// or https:// URL",
    ),
    "an upstream without target_base": (
        '[endpoints.x]\n[[endpoints.x.upstreams]]\nname = "a"\n',
        "endpoints.x.upstreams[0].target_base: required key is missing",
    ),
    "an invalid upstream name": (
        f'[endpoints.x]\n{UP0}name = "a b"\n',
        "endpoints.x.upstreams[0].name: invalid upstream name 'a b'",
    ),
    "an injected key on a non-loopback listener without auth keys": (
        f'[server]\nhost = "0.0.0.0"\n[endpoints.x]\n{UP0}{UP1}api_key = "sk-injected"\n',
        "endpoints.x.upstreams[1]: injects an api_key on non-loopback listener 0.0.0.0 without auth_keys",
    ),
    "an inherited injected key on a non-loopback listener": (
        f'[server]\nhost = "0.0.0.0"\n[endpoints.x]\napi_keys = [{{ key = "sk-injected" }}]\n{UP0}',
        "endpoints.x.upstreams[0]: injects an api_key on non-loopback listener 0.0.0.0 without auth_keys",
    ),
    "an infinite weight": (
        f"[endpoints.x]\n{UP0}weight = inf\n",
        "endpoints.x.upstreams[0].weight: expected `float` <= 1000000.0",
    ),
    "only parked upstreams": (
        f"[endpoints.x]\n{UP0}weight = 0\n{UP1}weight = 0\n",
        "endpoints.x.upstreams: every upstream has weight 0 and none is a fallback",
    ),
    "a key name that is another key's index": (
        f'[endpoints.x]\n{UP0}api_keys = [{{ key = "sk-injected", name = "1" }}, {{ key = "sk-2" }}]\n',
        "endpoints.x.upstreams[0].api_keys: the key name '1' is used twice",
    ),
    "an invalid key name": (
        f'[endpoints.x]\n{UP0}api_keys = [{{ key = "sk-injected", name = "a b" }}]\n',
        "endpoints.x.upstreams[0].api_keys[0].name: invalid key name 'a b'",
    ),
    "a bad endpoint check that every upstream overrides": (
        f'[endpoints.x]\nhealth_check = {{ path = "models" }}\n{UP0}health_check = true\n',
        "endpoints.x.health_check.path: must start with '/'",
    ),
    "bad retry keys": (
        f"[endpoints.x]\nretries = -1\n{UP0}",
        "endpoints.x.retries: expected `int` >= 0",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_check_config_refuses_with_the_key_path(case: str, tmp_path: Path) -> None:
    text, expected = REFUSED[case]
    path = tmp_path / "c.toml"
    path.write_text(text)
    result = run_cli("check-config", str(path))
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    assert f"  {expected}" in result.stderr, result.stderr
    assert "sk-injected" not in result.stderr


def test_an_endpoints_check_inherited_by_several_upstreams_is_reported_once() -> None:
    text = f'[endpoints.x]\nhealth_check = {{ path = "models" }}\n{UP0}{UP1}'
    assert errors_of(text) == ["endpoints.x.health_check.path: must start with '/', got 'models'"]


def test_a_bad_check_header_is_named_by_its_header() -> None:
    text = f'[endpoints.x]\n{UP0}health_check = {{ headers = {{ "x-probe" = 1, "bad name" = "v", ok = "a\\u0001" }} }}\n'
    assert sorted(errors_of(text)) == [
        "endpoints.x.upstreams[0].health_check.headers.x-probe: expected `str`, got `int`",
    ]
    text = text.replace('"x-probe" = 1, ', "")
    assert sorted(errors_of(text)) == [
        "endpoints.x.upstreams[0].health_check.headers.ok: control characters are not allowed",
        "endpoints.x.upstreams[0].health_check.headers: 'bad name' is not a header name",
    ]


def test_retry_keys_are_checked() -> None:
    errors = errors_of(f"[endpoints.x]\nretries = -1\nretry_deadline = 0\nretry_body_limit = -1\n{OPENAI}")
    assert errors == [
        "endpoints.x.retries: expected `int` >= 0",
        "endpoints.x.retry_deadline: expected `float` > 0.0",
        "endpoints.x.retry_body_limit: expected `int` >= 0",
    ]
    endpoint = only_endpoint(f"[endpoints.x]\nretries = 0\nretry_deadline = 0.5\nretry_body_limit = 0\n{OPENAI}")
    assert (endpoint.retries, endpoint.retry_deadline, endpoint.retry_body_limit) == (0, 0.5, 0)


def test_every_mistake_in_one_file_is_reported_at_once() -> None:
    text = (
        f'[endpoints.x]\ntarget_base = "https://a.example.com"\n{UP0}name = "a"\nhealth_check = {{ path = "p" }}\n'
        f'{UP1}name = "a"\nproxy_url = "gopher://p:70"\nauth_keys = []\n'
    )
    assert sorted(error.split(":")[0] for error in errors_of(text)) == [
        "endpoints.x.target_base",
        "endpoints.x.upstreams[0].health_check.path",
        "endpoints.x.upstreams[1].auth_keys",
        "endpoints.x.upstreams[1].name",
        "endpoints.x.upstreams[1].proxy_url",
    ]


# -- the example and what check-config prints -----------------------------------------------------------


def test_the_example_resolves_as_its_comments_say() -> None:
    config = load_config(EXAMPLE, environ=EXAMPLE_ENV)
    assert [e.name for e in config.endpoints] == ["chat", "anthropic"]
    chat, anthropic = config.endpoints
    upstreams = by_name(chat)
    assert list(upstreams) == ["openai-us", "openai-us-proxied", "compat-eu", "backup"]
    assert chat.auth_keys == ["team-secret", "tenant-b-secret"] and chat.auth_source == "global"
    assert (chat.retries, chat.retry_deadline, chat.retry_body_limit) == (2, 30.0, 1048576)
    for upstream in upstreams.values():  # the endpoint's defaults
        assert (upstream.provider, upstream.timeouts.first_byte, upstream.pool.max_connections) == ("openai", 300.0, 200)
    us = upstreams["openai-us"]
    assert [(k.name, k.weight) for k in us.api_keys] == [("key-a", 1.0), ("key-b", 2.0)]
    assert us.health_check is not None and us.health_check.headers == [("x-probe", "1")]
    proxied = upstreams["openai-us-proxied"]
    assert proxied.proxy_url == "http://proxy.company.com:3128"
    assert proxied.health_check is not None and (proxied.health_check.path, proxied.health_check.interval) == ("/v1/models", 30.0)
    eu = upstreams["compat-eu"]
    assert (eu.scope, eu.priority, [k.key for k in eu.api_keys]) == (["tenant-b-secret"], 1, ["eu-secret"])
    backup = upstreams["backup"]
    assert (backup.fallback, backup.api_keys, backup.timeouts.connect) == (True, [], 2.0)
    assert backup.health_check is not None and (backup.health_check.interval, backup.health_check.timeout) == (10.0, 2.0)
    (direct,) = anthropic.upstreams
    assert (direct.name, direct.provider, anthropic.auth_source, anthropic.retries) == ("anthropic#0", "anthropic", "none", 1)
    assert direct.health_check is not None and direct.health_check.expected_status == [200, 401]


def test_check_config_prints_every_upstream_of_the_example_and_no_key() -> None:
    result = run_cli("check-config", str(EXAMPLE), env=EXAMPLE_ENV)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = out.splitlines()
    assert lines[:4] == [f"config: {EXAMPLE}", "listener: http://0.0.0.0:8811", "workers: 2  http2: on", "endpoints:"]
    assert lines[4].startswith(
        "  /chat/ hosts=chat.relay.internal  provider=openai"
        "  relay_keys=2 (inherited from top-level auth_keys, and upstream auth_keys)"
        "  retries=2  retry_deadline=30s  retry_body_limit=1048576"
    )
    assert lines[5:9] == [
        "    upstream openai-us  provider=openai  target=https://api.openai.com/v1  proxy=direct  weight=2"
        "  priority=0  fallback=false  api_keys=2  check=GET /v1/models every 30s",
        "    upstream openai-us-proxied  provider=openai  target=https://api.openai.com/v1"
        "  proxy=http://proxy.company.com:3128  weight=1  priority=0  fallback=false  api_keys=2"
        "  check=GET /v1/models every 30s",
        "    upstream compat-eu  provider=openai  target=https://eu.example.com/v1  proxy=socks5://10.0.0.5:1080"
        "  weight=1  priority=1  fallback=false  api_keys=1  scope=1 relay key(s)  check=GET /v1/models every 30s",
        "    upstream backup  provider=openai  target=http://10.0.0.7:8000/v1  proxy=direct  weight=1  priority=0"
        "  fallback=true  api_keys=0  check=GET /v1/models every 10s",
    ]
    assert lines[9].startswith(
        "  /anthropic/  provider=anthropic  relay_keys=none (client credentials pass through)  retries=1"
    )
    assert lines[10].startswith("    upstream anthropic#0  provider=anthropic  target=https://api.anthropic.com  proxy=direct")
    assert lines[10].endswith("  check=GET /v1/models every 15s")
    assert lines[11:] == ["ok"]
    for secret in EXAMPLE_ENV.values():
        assert secret not in out + result.stderr


def test_check_config_redacts_an_upstreams_proxy_and_shows_a_check_less_upstream(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        f'[endpoints.x]\n{UP0}proxy_url = "socks5://user:proxy-pass@10.0.0.5:1080"\n'
        f'{UP1}weight = 0.5\npriority = -1\nfallback = true\napi_keys = [{{ key = "a" }}, {{ key = "b" }}]\n'
    )
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "    upstream x#0  provider=openai  target=https://api.openai.com/v1  proxy=socks5://***@10.0.0.5:1080" in result.stdout
    assert (
        "    upstream x#1  provider=forward  target=https://backup.example.com/v1  proxy=direct  weight=0.5"
        "  priority=-1  fallback=true  api_keys=2  check=none" in result.stdout
    )
    assert "proxy-pass" not in result.stdout
    assert "relay_keys=none (client credentials pass through to the upstreams without api_keys)" in result.stdout
