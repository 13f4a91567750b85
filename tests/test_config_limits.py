"""The `[limits]` config and named relay keys: decoding, resolution, every error at its key path, rule
versions that change exactly when a rule does, and the example that `check-config` accepts."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import httpx
import pytest

from llmrelay.config import ConfigError, RelayConfig, load_config, load_config_text
from llmrelay.config.resolved import DEFAULT_CHARS_PER_TOKEN, ResolvedLimits, ResolvedRule, redact_password
from llmrelay.control import Config, FrameReader, encode_frame
from llmrelay.limits.types import Limits
from llmrelay.observe.requestinfo import relay_key_label
from mock_providers import MockProvider
from relaytest import EXAMPLES, ROOT, endpoint_config

ENDPOINT = '[endpoints.openai]\ntarget_base = "https://api.openai.com/v1"\n'
EXAMPLE_ENV = {"LLMRELAY_TEAM_KEY": "relay-team", "TENANT_B_KEY": "relay-b", "OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-ant"}


def load(text: str, environ: dict[str, str] | None = None) -> RelayConfig:
    return load_config_text(text, "test.toml", environ=environ or {})


def errors_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, environ)
    return info.value.errors


def rule(body: str, name: str = "r") -> str:
    return f'[[limits.rules]]\nname = "{name}"\n{body}\n'


def only_rule(text: str, environ: dict[str, str] | None = None) -> ResolvedRule:
    (resolved,) = load(text, environ).limits.rules
    return resolved


# -- decoding and defaults ---------------------------------------------------------------------------


def test_without_limits_nothing_is_limited() -> None:
    limits = load(ENDPOINT).limits
    assert limits == ResolvedLimits()
    assert (limits.backend, limits.redis_url, limits.on_backend_error, limits.inject_stream_usage) == ("local", "", "allow", False)
    assert limits.rules == [] and limits.chars_per_token == DEFAULT_CHARS_PER_TOKEN
    assert DEFAULT_CHARS_PER_TOKEN == {"openai": 4.0, "anthropic": 3.5, "gemini": 4.0, "forward": 4.0, "default": 4.0}


def test_a_rule_is_resolved_whole() -> None:
    text = 'auth_keys = ["k1", { name = "alice", key = "${ALICE}" }]\n' + ENDPOINT + rule(
        'match = { endpoint = "open*", model = ["gpt-4o*", "o1"], relay_key = ["alice", "k1"], client_ip = ["10.0.0.0/8", "192.0.2.7", "2001:db8::1/64"] }\n'
        'per = "header:X-End-User"\n'
        "requests_per_minute = 600\ntokens_per_minute = 200000\ninput_tokens_per_minute = 1\n"
        "output_tokens_per_minute = 2\nconcurrent_requests = 20\ntokens_per_day = 3",
        name="per-user",
    )
    resolved = only_rule(text, {"ALICE": "relay-alice"})
    assert resolved.name == "per-user"
    assert resolved.endpoints == ["open*"] and resolved.models == ["gpt-4o*", "o1"] and resolved.upstreams == []
    assert resolved.relay_keys == ["alice", relay_key_label("k1")]
    assert resolved.client_ips == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/64"]
    assert (resolved.per, resolved.per_header) == ("header", "x-end-user")
    assert resolved.limits == Limits(600, 200000, 1, 2, 20, 3)
    assert len(resolved.version) == 12 and int(resolved.version, 16) >= 0


def test_match_fields_absent_are_empty_and_a_single_string_is_a_list_of_one() -> None:
    resolved = only_rule(ENDPOINT + rule('match = { model = "*" }\nrequests_per_minute = 1'))
    assert (resolved.endpoints, resolved.models, resolved.upstreams, resolved.relay_keys, resolved.client_ips) == ([], ["*"], [], [], [])
    assert (resolved.per, resolved.per_header) == ("relay_key", "")  # the default `per`
    assert only_rule(ENDPOINT + rule("requests_per_minute = 1")).models == []


@pytest.mark.parametrize("per", ["relay_key", "client_ip", "endpoint", "upstream", "model"])
def test_every_per_value(per: str) -> None:
    resolved = only_rule(ENDPOINT + rule(f'per = "{per}"\nconcurrent_requests = 5'))
    assert (resolved.per, resolved.per_header) == (per, "")


def test_upstream_globs_name_the_upstreams_of_the_config() -> None:
    text = (
        '[endpoints.pool]\n[[endpoints.pool.upstreams]]\nname = "eu"\ntarget_base = "https://eu.example.com"\n'
        '[[endpoints.pool.upstreams]]\ntarget_base = "https://us.example.com"\n'
        + ENDPOINT
        + rule('match = { upstream = ["eu", "pool#1", "openai#0", "e*"] }\nrequests_per_minute = 1')
    )
    assert only_rule(text).upstreams == ["eu", "pool#1", "openai#0", "e*"]


def test_repeated_match_entries_count_once() -> None:
    resolved = only_rule('auth_keys = ["k"]\n' + ENDPOINT + rule('match = { model = ["a", "a"], relay_key = ["k", "k"] }\nrequests_per_minute = 1'))
    assert resolved.models == ["a"] and resolved.relay_keys == [relay_key_label("k")]


def test_backend_redis_and_the_other_limits_keys() -> None:
    text = ENDPOINT + (
        '[limits]\nbackend = "redis"\nredis_url = "rediss://user:${REDIS_PASSWORD}@redis.internal:6380/2"\n'
        'on_backend_error = "deny"\ninject_stream_usage = true\n'
        "chars_per_token = { anthropic = 3.0, gemini = 4.5, default = 3.8 }\n"
    )
    limits = load(text, {"REDIS_PASSWORD": "p@ss:w/rd"}).limits
    assert (limits.backend, limits.on_backend_error, limits.inject_stream_usage) == ("redis", "deny", True)
    assert limits.redis_url == "rediss://user:p%40ss%3Aw%2Frd@redis.internal:6380/2"  # percent-encoded into the URL
    assert limits.redacted_url() == "rediss://user:***@redis.internal:6380/2"
    assert "p%40ss" not in repr(limits) and "p%40ss" not in repr(load(text, {"REDIS_PASSWORD": "p@ss:w/rd"}))
    # openai keeps its default; forward (Groq and every compatible service) takes `default`
    assert limits.chars_per_token == {"openai": 4.0, "anthropic": 3.0, "gemini": 4.5, "forward": 3.8, "default": 3.8}
    assert limits.chars_per_token_for("forward") == 3.8 and limits.chars_per_token_for("other") == 3.8


def test_a_whole_redis_url_may_come_from_the_environment() -> None:
    text = ENDPOINT + '[limits]\nbackend = "redis"\nredis_url = "${REDIS_URL}"\n'
    assert load(text, {"REDIS_URL": "redis://:s3cret@127.0.0.1:6379/0"}).limits.redis_url == "redis://:s3cret@127.0.0.1:6379/0"
    assert load(ENDPOINT + '[limits]\nbackend = "redis"\nredis_url = "redis://127.0.0.1"\n').limits.redacted_url() == "redis://127.0.0.1"


def test_chars_per_token_forward_takes_openai_without_a_default() -> None:
    limits = load(ENDPOINT + "[limits]\nchars_per_token = { openai = 3.2 }\n").limits
    assert limits.chars_per_token == {"openai": 3.2, "anthropic": 3.5, "gemini": 4.0, "forward": 3.2, "default": 3.2}
    assert load(ENDPOINT + "[limits]\nchars_per_token = { forward = 2.5 }\n").limits.chars_per_token["forward"] == 2.5


def test_redact_password() -> None:
    assert redact_password("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert redact_password("redis://u@h:1") == "redis://u@h:1"
    assert redact_password("") == ""
    assert redact_password("redis://:pw@h:99999") == "<unparsable URL>"


def test_the_config_with_limits_crosses_the_control_pipe() -> None:
    config = load_config(EXAMPLES / "limits.toml", environ=EXAMPLE_ENV)
    message = Config(config=config, generation=3)
    (decoded,) = FrameReader().feed(encode_frame(message))
    assert decoded == message and decoded.config.limits == config.limits


# -- errors, each at its key path ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[limits]\nbakend = "local"', "limits.bakend: unknown key (did you mean 'backend'?)"),
        ('[limits]\nbackend = "memcached"', "limits.backend: 'memcached' is not one of local, redis"),
        ('[limits]\non_backend_error = "retry"', "limits.on_backend_error: 'retry' is not one of allow, deny"),
        ('[limits]\ninject_stream_usage = "yes"', "limits.inject_stream_usage: expected `bool`, got `str`"),
        ("[limits]\nchars_per_token = { groq = 4.0 }", "limits.chars_per_token.groq: unknown key"),
        ("[limits]\nchars_per_token = { openai = 0 }", "limits.chars_per_token.openai: expected `float` > 0.0"),
        ("[limits]\nchars_per_token = { anthropic = nan }", "limits.chars_per_token.anthropic: expected `float` > 0.0"),
        ('[limits]\nbackend = "redis"', 'limits.redis_url: required when limits.backend = "redis"'),
        ('[limits]\nredis_url = "http://127.0.0.1:6379"', "limits.redis_url: expected a redis:// or rediss:// URL, got the scheme 'http'"),
        ('[limits]\nredis_url = "127.0.0.1:6379"', "limits.redis_url: expected a redis:// or rediss:// URL"),
        ('[limits]\nredis_url = "redis://"', "limits.redis_url: the URL has no host"),
        ('[limits]\nredis_url = "redis://h:99999/0"', "limits.redis_url: not a valid URL"),
        ('[limits]\nredis_url = "redis://h/zero"', "limits.redis_url: the path must be a database number (/0)"),
        ('[limits]\nredis_url = "redis://h/0?ssl=1"', "limits.redis_url: a query or fragment is not supported"),
        ('[limits]\nredis_url = "redis://:${NO_SUCH_PASSWORD}@h/0"', "limits.redis_url: environment variable NO_SUCH_PASSWORD is not set"),
        ('[limits]\nredis_url = "${NO_SUCH_URL}"', "limits.redis_url: environment variable NO_SUCH_URL is not set"),
        ("[limits]\nrules = 3", "limits.rules: expected `array`, got `int`"),
        (rule("request_per_minute = 1"), "limits.rules[0].request_per_minute: unknown key (did you mean 'requests_per_minute'?)"),
        ("[[limits.rules]]\nrequests_per_minute = 1", "limits.rules[0].name: required key is missing"),
        (rule("requests_per_minute = -1"), "limits.rules[0].requests_per_minute: expected `int` >= 0"),
        (rule("tokens_per_day = 1.5"), "limits.rules[0].tokens_per_day: expected `int`, got `float`"),
        (rule("tokens_per_minute = 1_000_000_000_001"), "limits.rules[0].tokens_per_minute: expected `int` <= 1000000000000"),
        (rule("per = 'relay_key'"), "limits.rules[0]: no limit set"),
        (rule("requests_per_minute = 0\nconcurrent_requests = 0"), "limits.rules[0]: no limit set"),
        (rule('per = "user"\nrequests_per_minute = 1'), "limits.rules[0].per: 'user' is not one of relay_key, client_ip, endpoint, upstream, model, header:NAME"),
        (rule('per = "header:"\nrequests_per_minute = 1'), "limits.rules[0].per: '' is not a header name"),
        (rule('per = "header:x user"\nrequests_per_minute = 1'), "limits.rules[0].per: 'x user' is not a header name"),
        (rule("per = 3\nrequests_per_minute = 1"), "limits.rules[0].per: expected `str`, got `int`"),
        (rule("requests_per_minute = 1", name="a b"), "limits.rules[0].name: invalid rule name 'a b'"),
        (rule("requests_per_minute = 1", name=""), "limits.rules[0].name: invalid rule name ''"),
        (rule('match = { modle = "x" }\nrequests_per_minute = 1'), "limits.rules[0].match.modle: unknown key (did you mean 'model'?)"),
        (rule("match = { model = [] }\nrequests_per_minute = 1"), "limits.rules[0].match.model: empty, so the rule would match nothing"),
        (rule('match = { model = ["a", ""] }\nrequests_per_minute = 1'), "limits.rules[0].match.model[1]: expected a non-empty pattern"),
        (rule('match = { model = ["a", 2] }\nrequests_per_minute = 1'), "limits.rules[0].match.model[1]: expected `str`, got `int`"),
        (rule('match = { endpoint = "anthropic" }\nrequests_per_minute = 1'), "limits.rules[0].match.endpoint: the name 'anthropic' matches no endpoint of this config"),
        (rule('match = { endpoint = ["openai", "anth*"] }\nrequests_per_minute = 1'), "limits.rules[0].match.endpoint[1]: the glob 'anth*' matches no endpoint of this config"),
        (rule('match = { upstream = "openai" }\nrequests_per_minute = 1'), "limits.rules[0].match.upstream: the name 'openai' matches no upstream of this config"),
        (rule('match = { client_ip = ["10.0.0.0/8", "10.0.0.0/33"] }\nrequests_per_minute = 1'), "limits.rules[0].match.client_ip[1]: '10.0.0.0/33' is not an IP address or CIDR"),
        (rule('match = { client_ip = "office" }\nrequests_per_minute = 1'), "limits.rules[0].match.client_ip: 'office' is not an IP address or CIDR"),
        (rule('match = { relay_key = ["${NOT_SET}"] }\nrequests_per_minute = 1'), "limits.rules[0].match.relay_key[0]: environment variable NOT_SET is not set"),
        (rule('match = { relay_key = "carol" }\nrequests_per_minute = 1'), "limits.rules[0].match.relay_key: neither a relay key of this config (auth_keys) nor a key's name"),
    ],
)
def test_each_error_names_its_key(body: str, expected: str) -> None:
    errors = errors_of(ENDPOINT + body + "\n")
    assert any(error.startswith(expected) for error in errors), errors


def test_duplicate_rule_names_and_every_rule_problem_at_once() -> None:
    text = ENDPOINT + rule("requests_per_minute = 1", "a") + rule("per = 'x'", "b") + rule("requests_per_minute = 2", "a")
    errors = errors_of(text)
    assert "limits.rules[2].name: duplicate rule name 'a' (also limits.rules[0])" in errors
    assert any(error.startswith("limits.rules[1].per: 'x' is not one of") for error in errors)
    assert any(error.startswith("limits.rules[1]: no limit set") for error in errors)
    assert len(errors) == 3, errors


def test_limits_errors_come_with_the_other_resolution_errors() -> None:
    text = 'auth_keys = ["${NO_KEY}"]\n' + ENDPOINT + '[limits]\nbackend = "redis"\n' + rule("requests_per_minute = 1")
    errors = errors_of(text)
    assert "auth_keys[0]: environment variable NO_KEY is not set" in errors
    assert any(error.startswith("limits.redis_url: required") for error in errors)


def test_a_redis_password_never_appears_in_an_error() -> None:
    for url in ("http://:hunter2@h/0", "redis://:hunter2@h:99999/0", "redis://:hunter2@h/x", "redis://:hunter2@/0", "redis://:hunter2@h/0?a=1"):
        errors = errors_of(ENDPOINT + f'[limits]\nbackend = "redis"\nredis_url = "{url}"\n')
        assert errors and all("hunter2" not in error for error in errors), errors
    errors = errors_of(ENDPOINT + '[limits]\nredis_url = "${URL}"\n', {"URL": "memcache://:hunter2@h"})
    assert errors and all("hunter2" not in error for error in errors)


# -- named relay keys --------------------------------------------------------------------------------


def test_named_and_unnamed_keys_everywhere_have_names() -> None:
    text = (
        'auth_keys = [{ name = "alice", key = "${ALICE}" }, "plain-global"]\n'
        + ENDPOINT
        + '[endpoints.own]\ntarget_base = "https://api.openai.com/v1"\n'
        'auth_keys = ["${ALICE}", { name = "bob", key = "relay-bob" }, "plain-own"]\n'
        '[endpoints.scoped]\nauth_keys = []\n[[endpoints.scoped.upstreams]]\ntarget_base = "https://a.example.com"\n'
        'auth_keys = [{ name = "carol", key = "relay-carol" }, { name = "bob", key = "relay-bob" }]\n'
    )
    by_name = {endpoint.name: endpoint for endpoint in load(text, {"ALICE": "relay-alice"}).endpoints}
    assert by_name["openai"].auth_keys == ["relay-alice", "plain-global"]
    assert by_name["openai"].auth_key_names == ["alice", relay_key_label("plain-global")]
    # an unnamed mention of a named key's value goes by its name
    assert by_name["own"].auth_keys == ["relay-alice", "relay-bob", "plain-own"]
    assert by_name["own"].auth_key_names == ["alice", "bob", relay_key_label("plain-own")]
    assert by_name["scoped"].auth_keys == ["relay-carol", "relay-bob"] and by_name["scoped"].auth_source == "upstreams"
    assert by_name["scoped"].auth_key_names == ["carol", "bob"]
    assert by_name["scoped"].upstreams[0].scope == ["relay-carol", "relay-bob"]
    assert relay_key_label("plain-own") == hashlib.sha256(b"plain-own").hexdigest()[:8]


def test_string_keys_behave_as_before() -> None:
    endpoint = load('auth_keys = ["a", "b"]\n' + ENDPOINT).endpoints[0]
    assert endpoint.auth_keys == ["a", "b"] and endpoint.auth_source == "global"
    assert endpoint.auth_key_names == [relay_key_label("a"), relay_key_label("b")]
    assert load(ENDPOINT).endpoints[0].auth_key_names == []


def test_a_rule_names_a_key_by_value_or_by_name() -> None:
    text = 'auth_keys = [{ name = "intern", key = "${INTERN_KEY}" }, "${CI_KEY}"]\n' + ENDPOINT + rule(
        'match = { relay_key = ["${INTERN_KEY}", "intern", "${CI_KEY}", "relay-ci"] }\nrequests_per_minute = 10'
    )
    resolved = only_rule(text, {"INTERN_KEY": "relay-intern", "CI_KEY": "relay-ci"})
    assert resolved.relay_keys == ["intern", relay_key_label("relay-ci")]  # never a key's value


def test_a_rule_may_name_a_key_that_only_an_upstream_scope_holds() -> None:
    text = (
        '[endpoints.e]\n[[endpoints.e.upstreams]]\ntarget_base = "https://a.example.com"\n'
        'auth_keys = [{ name = "acme", key = "relay-b" }]\n' + rule('match = { relay_key = "acme" }\nrequests_per_minute = 1')
    )
    assert only_rule(text).relay_keys == ["acme"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('auth_keys = [{ name = "a", key = "k1" }, { name = "a", key = "k2" }]', "auth_keys[1].name: 'a' already names another key (auth_keys[0])"),
        ('auth_keys = [{ name = "a", key = "k1" }, { name = "b", key = "k1" }]', "auth_keys[1].name: this key is already named 'a' (auth_keys[0])"),
        ('auth_keys = [{ name = "k2", key = "k1" }, "k2"]', "auth_keys[0].name: a relay key's name must not be a key value"),
        ('auth_keys = [{ name = "k1", key = "k1" }]', "auth_keys[0].name: a relay key's name must not be a key value"),
        (f'auth_keys = [{{ name = "{relay_key_label("k2")}", key = "k1" }}, "k2"]', f"auth_keys[0].name: '{relay_key_label('k2')}' is the label of an unnamed key"),
        ('auth_keys = [{ name = "a b", key = "k1" }]', "auth_keys[0].name: invalid relay key name 'a b'"),
        ('auth_keys = [{ name = "${A}", key = "k1" }]', "auth_keys[0].name: invalid relay key name '${A}'"),
        ('auth_keys = [{ name = "a", key = "${NOPE}" }]', "auth_keys[0].key: environment variable NOPE is not set"),
        ('auth_keys = [{ name = "a" }]', "auth_keys[0].key: required key is missing"),
        ('auth_keys = [{ nam = "a", key = "k" }]', "auth_keys[0].nam: unknown key (did you mean 'name'?)"),
        ("auth_keys = [3]", "auth_keys[0]: expected `str | object`, got `int`"),
    ],
)
def test_named_key_errors(text: str, expected: str) -> None:
    errors = errors_of(text + "\n" + ENDPOINT)
    assert any(error.startswith(expected) for error in errors), errors


def test_named_key_errors_on_endpoints_and_upstreams_name_their_path() -> None:
    text = (
        'auth_keys = [{ name = "a", key = "k1" }]\n'
        '[endpoints.e]\ntarget_base = "https://api.openai.com/v1"\nauth_keys = [{ name = "a", key = "k2" }]\n'
        '[endpoints.f]\n[[endpoints.f.upstreams]]\ntarget_base = "https://a.example.com"\n'
        'auth_keys = [{ name = "z", key = "k1" }, { name = "q", ky = "k" }]\n'
    )
    errors = errors_of(text)
    assert "endpoints.f.upstreams[0].auth_keys[1].ky: unknown key (did you mean 'key'?)" in errors
    text = text.replace(', { name = "q", ky = "k" }', "")
    errors = errors_of(text)
    assert "endpoints.e.auth_keys[0].name: 'a' already names another key (auth_keys[0])" in errors
    assert "endpoints.f.upstreams[0].auth_keys[0].name: this key is already named 'a' (auth_keys[0])" in errors


def test_the_same_named_entry_may_appear_in_several_lists() -> None:
    entry = '{ name = "alice", key = "${ALICE}" }'
    text = f"auth_keys = [{entry}]\n" + ENDPOINT + f'[endpoints.b]\ntarget_base = "https://b.example.com"\nauth_keys = [{entry}, "other"]\n'
    endpoints = load(text, {"ALICE": "relay-alice"}).endpoints
    assert [e.auth_key_names[0] for e in endpoints] == ["alice", "alice"]


def test_a_named_key_authenticates_like_a_plain_one(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    config = 'auth_keys = [{ name = "alice", key = "relay-alice" }, "relay-plain"]\n' + endpoint_config(
        "oai", mock, "openai", "/v1", api_key="sk-provider"
    )
    relay = start_relay(config)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for key in ("relay-alice", "relay-plain"):
        response = httpx.post(relay.url("/oai/v1/chat/completions"), json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)
        assert response.status_code == 200
        assert mock.last().headers["authorization"] == "Bearer sk-provider"
    response = httpx.post(relay.url("/oai/v1/chat/completions"), json=body, headers={"authorization": "Bearer alice"}, timeout=10)
    assert response.status_code == 401  # a name is not a key


# -- versions ----------------------------------------------------------------------------------------


BASE_RULE = 'match = { endpoint = "openai", model = ["a*", "b"] }\nper = "relay_key"\nrequests_per_minute = 10\n'


def version_of(body: str, name: str = "r", prefix: str = "") -> str:
    return only_rule(prefix + ENDPOINT + rule(body, name)).version


def test_the_same_rule_keeps_its_version() -> None:
    first = version_of(BASE_RULE)
    assert version_of(BASE_RULE) == first
    assert version_of(BASE_RULE, name="renamed") == first  # (the name is the counter's other half)
    assert version_of(BASE_RULE.replace('["a*", "b"]', '["b", "a*"]')) == first  # order does not matter
    assert version_of("requests_per_minute = 10\n" + BASE_RULE.replace("requests_per_minute = 10\n", "")) == first
    assert version_of(BASE_RULE + "tokens_per_day = 0\n") == first  # 0 is the default: the same rule
    assert first == version_of(BASE_RULE, prefix="auth_keys = ['k']\n")  # other keys do not matter
    # pinned: a version computed differently (a new release, another process, another hash seed)
    # would start every counter afresh, in Redis for every machine
    assert first == "a1377be11040"
    child = subprocess.run(
        [sys.executable, "-c", "from test_config_limits import *; print(version_of(BASE_RULE))"],
        cwd=ROOT / "tests", capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert child.stdout.strip() == first, child.stderr


@pytest.mark.parametrize(
    "changed",
    [
        BASE_RULE.replace("requests_per_minute = 10", "requests_per_minute = 11"),
        BASE_RULE + "concurrent_requests = 1\n",
        BASE_RULE.replace('per = "relay_key"', 'per = "model"'),
        BASE_RULE.replace('per = "relay_key"', 'per = "header:x-user"'),
        BASE_RULE.replace('["a*", "b"]', '["a*"]'),
        BASE_RULE.replace('endpoint = "openai"', 'endpoint = "open*"'),
        BASE_RULE.replace("}", ', client_ip = "10.0.0.0/8" }'),
        BASE_RULE.replace("}", ", relay_key = \"k\" }"),
    ],
)
def test_a_changed_rule_gets_a_new_version(changed: str) -> None:
    assert version_of(changed, prefix="auth_keys = ['k']\n") != version_of(BASE_RULE)


def test_per_header_versions_ignore_the_header_names_case() -> None:
    assert version_of(BASE_RULE.replace('"relay_key"', '"header:X-User"')) == version_of(BASE_RULE.replace('"relay_key"', '"header:x-user"'))


# -- the example and check-config ---------------------------------------------------------------------


def test_the_example_loads() -> None:
    config = load_config(EXAMPLES / "limits.toml", environ=EXAMPLE_ENV)
    limits = config.limits
    assert limits.backend == "local" and limits.inject_stream_usage
    assert [r.name for r in limits.rules] == ["per-key", "gpt-4o-for-acme", "team-output", "office", "per-user"]
    rules = {r.name: r for r in limits.rules}
    assert rules["gpt-4o-for-acme"].relay_keys == ["acme"]
    assert rules["team-output"].relay_keys == [relay_key_label("relay-team")]
    assert rules["office"].client_ips == ["10.20.0.0/16", "2001:db8::/48"]
    assert rules["per-user"].per_header == "x-end-user"
    assert config.endpoints[0].auth_key_names == [relay_key_label("relay-team"), "acme"]


def test_check_config_accepts_the_example() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "PORT")} | EXAMPLE_ENV
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "llmrelay"), "check-config", "examples/limits.toml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
    assert all(value not in result.stdout for value in EXAMPLE_ENV.values())
    assert "limits: 5 rule(s)  backend=local  on_backend_error=allow" in result.stdout
    assert "  rule per-user: per header:x-end-user" in result.stdout


def test_check_config_names_a_limits_error() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "PORT")} | EXAMPLE_ENV
    del env["LLMRELAY_TEAM_KEY"]
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "llmrelay"), "check-config", "examples/limits.toml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "auth_keys[0]: environment variable LLMRELAY_TEAM_KEY is not set" in result.stderr
    assert "limits.rules[2].match.relay_key: environment variable LLMRELAY_TEAM_KEY is not set" in result.stderr


def test_the_configuration_examples_in_docs_limits_load() -> None:
    """The complete configs in docs/limits.md's configuration part load (its one-line `match`
    illustration is a fragment, not a config)."""
    text = (ROOT / "docs" / "limits.md").read_text()
    configuration = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    blocks = [block for block in re.findall(r"```toml\n(.*?)```", configuration, re.DOTALL) if "[endpoints." in block]
    assert len(blocks) == 2
    for block in blocks:
        environ = {name: f"value-of-{name}" for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", block)}
        block = block.replace("$(cat /run/secrets/ci_key)", "ci-key")
        config = load(block, environ)
        assert config.endpoints and all(config.endpoints[0].auth_key_names)
