"""Which counters a request falls under: matching by globs, key names and networks, the key of each
`per`, and keys that never hold a secret or grow without bound."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from llmrelay.config.resolved import ResolvedRule
from llmrelay.limits.rules import MAX_KEY, RequestFacts, RuleSet, hashed, parse_ip
from llmrelay.limits.types import CounterId, Limits


def make_rule(name: str, **fields: Any) -> ResolvedRule:
    """A resolved rule that matches anything unless told otherwise."""
    base: dict[str, Any] = {
        "version": "v1", "endpoints": [], "models": [], "upstreams": [], "relay_keys": [], "client_ips": [],
        "per": "relay_key", "per_header": "", "limits": Limits(requests_per_minute=10),
    }  # fmt: skip
    base.update(fields)
    return ResolvedRule(name=name, **base)


def facts(**fields: object) -> RequestFacts:
    base: dict[str, object] = {"endpoint": "openai", "model": "gpt-4o-mini", "relay_key": "alice", "client_ip": "192.0.2.7", "upstream": "main"}
    base.update(fields)
    return msgspec.convert(base, RequestFacts)


def keys(rules: RuleSet, request: RequestFacts) -> list[str]:
    return [f"{cid.rule}={cid.key}" for cid, _ in rules.counters(request)]


def test_no_rules_no_counters() -> None:
    rules = RuleSet([])
    assert not rules
    assert rules.counters(facts()) == []


def test_every_matching_rule_in_config_order_with_its_limits() -> None:
    limits = Limits(tokens_per_minute=1000)
    rules = RuleSet([make_rule(name="all"), make_rule(name="other", endpoints=["anthropic"]), make_rule(name="tok", per="endpoint", limits=limits, version="x")])
    assert rules.counters(facts()) == [
        (CounterId("all", "v1", "alice"), Limits(requests_per_minute=10)),
        (CounterId("tok", "x", "openai"), limits),
    ]
    assert rules.versions() == {("all", "v1"), ("other", "v1"), ("tok", "x")}


@pytest.mark.parametrize(
    "globs, model, matches",
    [
        (["gpt-4o*"], "gpt-4o-mini", True),
        (["gpt-4o*"], "gpt-4", False),
        (["gpt-4o*"], "GPT-4o", False),  # case-sensitive
        (["gpt-4o*"], None, False),  # no model never bypasses a model rule
        (["claude-*", "gpt-4o"], "gpt-4o", True),
        (["gpt-4o"], "gpt-4o-mini", False),
        (["*"], None, True),
        (["gpt-[34]*"], "gpt-3.5", True),
        ([], None, True),
    ],
)
def test_model_globs(globs: list[str], model: str | None, matches: bool) -> None:
    rules = RuleSet([make_rule(name="m", models=globs)])
    assert bool(rules.counters(facts(model=model))) is matches


def test_endpoint_and_upstream_globs() -> None:
    rules = RuleSet([make_rule(name="e", endpoints=["open*", "groq"], upstreams=["main", "backup-*"])])
    assert rules.counters(facts(endpoint="openai", upstream="backup-eu"))
    assert not rules.counters(facts(endpoint="anthropic"))
    assert not rules.counters(facts(upstream="other"))
    assert not rules.counters(facts(upstream=""))  # not chosen yet: a rule naming upstreams does not apply


def test_relay_key_names() -> None:
    rules = RuleSet([make_rule(name="interns", relay_keys=["bob", "carol"])])
    assert rules.counters(facts(relay_key="bob"))
    assert not rules.counters(facts(relay_key="alice"))
    assert not rules.counters(facts(relay_key=None))


@pytest.mark.parametrize(
    "ip, matches",
    [
        ("10.1.2.3", True),
        ("10.255.0.1", True),
        ("192.0.2.7", False),
        ("::ffff:10.0.0.9", True),  # an IPv4-mapped address is its IPv4 form
        ("2001:db8::5", True),
        ("2001:db9::5", False),
        ("fe80::1%eth0", False),
        ("not an ip", False),
        ("", False),
    ],
)
def test_client_networks(ip: str, matches: bool) -> None:
    rules = RuleSet([make_rule(name="n", client_ips=["10.0.0.0/8", "2001:db8::/32"])])
    assert bool(rules.counters(facts(client_ip=ip))) is matches


def test_the_key_of_each_per() -> None:
    def key(per: str, **fields: object) -> str:
        [(cid, _)] = RuleSet([make_rule(name="r", per=per, per_header="x-team")]).counters(facts(**fields))
        return cid.key

    assert key("relay_key") == "alice"
    assert key("relay_key", relay_key=None) == "-"
    assert key("client_ip") == "192.0.2.7"
    assert key("endpoint") == "openai"
    assert key("upstream") == "main"
    assert key("upstream", upstream="") == "-"
    assert key("model") == "gpt-4o-mini"
    assert key("model", model=None) == "-"
    assert key("header", headers=[]) == "-"
    team = key("header", headers=[(b"X-Team", b"research")])
    assert team == hashed(b"research") and "research" not in team
    assert key("header", headers=[(b"x-team", b"a"), (b"x-other", b"z"), (b"x-team", b"b")]) == hashed(b"a, b")


def test_header_keys_never_hold_the_value_and_are_the_same_everywhere() -> None:
    secret = b"sk-live-" + b"9" * 40
    assert hashed(secret) == hashed(secret)
    assert hashed(secret) != hashed(secret + b"0")
    assert b"sk-live" not in hashed(secret).encode() and len(hashed(secret)) == 26


def test_client_supplied_keys_are_bounded_and_stay_distinct() -> None:
    rules = RuleSet([make_rule(name="r", per="model")])
    long_a, long_b = "m" * 5000 + "a", "m" * 5000 + "b"
    [(a, _)] = rules.counters(facts(model=long_a))
    [(b, _)] = rules.counters(facts(model=long_b))
    assert len(a.key) == MAX_KEY and len(b.key) == MAX_KEY and a.key != b.key
    [(short, _)] = rules.counters(facts(model="m" * MAX_KEY))
    assert short.key == "m" * MAX_KEY
    [(odd, _)] = rules.counters(facts(model="\udcff" * 200))  # a lone surrogate does not raise
    assert len(odd.key) == MAX_KEY


def test_an_unknown_per_is_refused_when_compiled() -> None:
    with pytest.raises(ValueError, match="unknown per"):
        RuleSet([make_rule(name="r", per="nonsense")])


def test_parse_ip_caches_and_maps() -> None:
    assert str(parse_ip("::ffff:192.0.2.1")) == "192.0.2.1"
    assert parse_ip("999.1.1.1") is None
