"""Fuzzes the `[limits]` config and named relay keys through `load_config_text`.

Documents carry relay keys (plain and `{ name, key }`, at the top level, on endpoints and on upstream
scopes), endpoints with flat or listed upstreams, and a `[limits]` table whose rules match those
endpoints, upstreams and keys (by value, by `${ENV}` reference and by name). Three kinds are drawn:
valid documents, which must load; valid documents with one to three faults (a bad value anywhere in
`[limits]`, a rule without a limit, a duplicate rule name, a match that could never apply, a name
clash between keys); and `[limits]` tables of any shape derived from the schema. The properties: the
result is a RelayConfig or a ConfigError whose every line starts with a key path of the document or
the schema (never another exception); a valid document's rules are its own, in order, each with a
12-hex-digit version that does not depend on the order of match entries, its relay key matches hold
names and never key values, `auth_key_names` runs parallel to `auth_keys`, and the whole survives the
control pipe.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from llmrelay.config.errors import ConfigError
from llmrelay.config.load import load_config_text
from llmrelay.config.resolved import RelayConfig
from llmrelay.config.schema import CharsPerTokenSection, LimitRuleSection, LimitsSection, MatchSection
from llmrelay.control import Config, FrameReader, encode_frame
from llmrelay.observe.requestinfo import relay_key_label
from test_fuzz_config import _sometimes, key_paths, plausible, schema_fields, sections, toml_document, toml_values

ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
key_values = st.text(alphabet=ALNUM + "-_", min_size=1, max_size=10).map(lambda text: "k" + text)  # never a name
key_names = st.text(alphabet=ALNUM + "_.~@+-", max_size=10).map(lambda text: "n" + text)  # never hex: never a label
endpoint_names = st.text(alphabet=ALNUM, min_size=1, max_size=6).map(lambda text: "e" + text)
DIMENSIONS = [f.name for f in msgspec.structs.fields(LimitRuleSection) if f.name not in ("name", "match", "per")]
PER_VALUES = ["relay_key", "client_ip", "endpoint", "upstream", "model", "header:X-End-User", "header:x_team"]
CIDRS = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1", "0.0.0.0/0"]
MODEL_GLOBS = ["*", "gpt-4o*", "claude-?-*", "[ab]*", "gemini-1.5-pro"]
REDIS_URLS = ["redis://127.0.0.1:6379/0", "rediss://:${REDIS_PASSWORD}@redis.internal:6380/1", "${REDIS_URL}", "redis://[::1]"]
ENVIRON_BASE = {"REDIS_PASSWORD": "p@ss:w/rd", "REDIS_URL": "redis://u:pw@h:6379/3"}


class Drawn(msgspec.Struct):
    """A document and what loading it needs: its environment, and whether it must load."""

    document: dict[str, Any]
    environ: dict[str, str]
    valid: bool


def _one_or_list(draw: st.DrawFn, entries: list[str]) -> str | list[str]:
    return entries[0] if len(entries) == 1 and draw(st.booleans()) else entries


@st.composite
def relay_keys(draw: st.DrawFn, env_names: list[str], environ: dict[str, str]) -> tuple[list[Any], list[tuple[str, str | None]]]:
    """An `auth_keys` list (plain values, `${ENV}` references, named tables) and its (value, name)s."""
    entries: list[Any] = []
    keys: list[tuple[str, str | None]] = []
    for value in draw(st.lists(key_values, min_size=1, max_size=3, unique=True)):
        source = value
        if draw(st.booleans()):
            env_name = f"RELAY_{len(env_names)}"
            env_names.append(env_name)
            environ[env_name] = value
            source = "${" + env_name + "}"
        if draw(st.booleans()):
            name = draw(key_names)
            entries.append({"name": name, "key": source})
            keys.append((value, name))
        else:
            entries.append(source)
            keys.append((value, None))
    return entries, keys


@st.composite
def valid_limits_documents(draw: st.DrawFn) -> Drawn:
    environ = dict(ENVIRON_BASE)
    env_names: list[str] = []
    document: dict[str, Any] = {"endpoints": {}}
    all_keys: list[tuple[str, str | None]] = []
    upstream_names: list[str] = []

    def take(entries_keys: tuple[list[Any], list[tuple[str, str | None]]]) -> list[Any]:
        entries, keys = entries_keys
        kept = []
        for entry, (value, name) in zip(entries, keys):
            # one value, one name; one name, one value (a clash is a fault, drawn elsewhere)
            if any(v == value and n != name and n is not None and name is not None for v, n in all_keys):
                continue
            if name is not None and any(n == name and v != value for v, n in all_keys):
                continue
            kept.append(entry)
            all_keys.append((value, name))
        return kept

    if draw(st.booleans()):
        document["auth_keys"] = take(draw(relay_keys(env_names, environ)))
    for name in draw(st.lists(endpoint_names, min_size=1, max_size=3, unique=True)):
        section: dict[str, Any] = {}
        if draw(st.booleans()):
            upstreams = []
            for index in range(draw(st.integers(1, 2))):
                upstream: dict[str, Any] = {"target_base": f"https://u{index}.example.com"}
                if draw(st.booleans()):
                    upstream["name"] = f"{name}-u{index}"
                if draw(st.booleans()):
                    scope = take(draw(relay_keys(env_names, environ)))
                    if scope:
                        upstream["auth_keys"] = scope
                upstream_names.append(upstream.get("name", f"{name}#{index}"))
                upstreams.append(upstream)
            section["upstreams"] = upstreams
        else:
            section["target_base"] = "https://api.openai.com/v1"
            upstream_names.append(f"{name}#0")
        if draw(st.booleans()):
            section["auth_keys"] = take(draw(relay_keys(env_names, environ)))
        document["endpoints"][name] = section
    endpoints = list(document["endpoints"])
    limits: dict[str, Any] = {}
    if draw(st.booleans()):
        limits["backend"] = "redis"
        limits["redis_url"] = draw(st.sampled_from(REDIS_URLS))
    if draw(st.booleans()):
        limits["on_backend_error"] = draw(st.sampled_from(["allow", "deny"]))
    if draw(st.booleans()):
        limits["inject_stream_usage"] = draw(st.booleans())
    if draw(st.booleans()):
        providers = draw(st.lists(st.sampled_from(["openai", "anthropic", "gemini", "forward", "default"]), unique=True))
        limits["chars_per_token"] = {provider: draw(st.floats(0.5, 100)) for provider in providers}
    rules = []
    for index in range(draw(st.integers(0, 4))):
        rule: dict[str, Any] = {"name": f"rule-{index}"}
        match: dict[str, Any] = {}
        if draw(st.booleans()):
            match["endpoint"] = _one_or_list(draw, draw(st.lists(st.sampled_from([*endpoints, "*", "e*"]), min_size=1, max_size=2)))
        if draw(st.booleans()):
            match["model"] = _one_or_list(draw, draw(st.lists(st.sampled_from(MODEL_GLOBS), min_size=1, max_size=3)))
        if draw(st.booleans()):
            match["upstream"] = _one_or_list(draw, draw(st.lists(st.sampled_from(upstream_names), min_size=1, max_size=2)))
        if draw(st.booleans()) and all_keys:
            picked = draw(st.lists(st.sampled_from(all_keys), min_size=1, max_size=3))
            refs = {value: "${" + env + "}" for env, value in environ.items() if env.startswith("RELAY_")}
            entries = [
                draw(st.sampled_from([value, *([name] if name else []), *([refs[value]] if value in refs else [])]))
                for value, name in picked
            ]
            match["relay_key"] = _one_or_list(draw, entries)
        if draw(st.booleans()):
            match["client_ip"] = _one_or_list(draw, draw(st.lists(st.sampled_from(CIDRS), min_size=1, max_size=2)))
        if match:
            rule["match"] = match
        if draw(st.booleans()):
            rule["per"] = draw(st.sampled_from(PER_VALUES))
        chosen = draw(st.lists(st.sampled_from(DIMENSIONS), min_size=1, max_size=3, unique=True))
        for dimension in chosen:
            rule[dimension] = draw(st.integers(0, 10**12))
        rule[chosen[0]] = draw(st.integers(1, 10**12))  # at least one limit
        rules.append(rule)
    if rules:
        limits["rules"] = rules
    if draw(st.booleans()) or limits:
        document["limits"] = limits
    return Drawn(document, environ, True)


@st.composite
def faulty_limits_documents(draw: st.DrawFn) -> Drawn:
    drawn = draw(valid_limits_documents())
    document = drawn.document
    limits = document.setdefault("limits", {})
    limits.setdefault("rules", [{"name": "base", "requests_per_minute": 1}])
    for _ in range(draw(st.integers(1, 3))):
        rules = limits["rules"]
        rule = draw(st.sampled_from(rules))
        fault = draw(
            st.sampled_from(
                ["limits value", "rule value", "match value", "no limit", "duplicate", "never matches", "key clash", "redis"]
            )
        )
        if fault == "limits value":
            field = draw(st.sampled_from(sorted(set(LIMITS_FIELDS) - {"rules"})))  # (the rules stay a list)
            limits[field] = draw(_sometimes(LIMITS_FIELDS[field]))
        elif fault == "rule value":
            field = draw(st.sampled_from(sorted(set(RULE_FIELDS) - {"match"})))  # (match faults: below)
            rule[field] = draw(_sometimes(RULE_FIELDS[field]))
        elif fault == "match value":
            field = draw(st.sampled_from(sorted(MATCH_FIELDS)))
            rule.setdefault("match", {})[field] = draw(_sometimes(MATCH_FIELDS[field]))
        elif fault == "no limit":
            for dimension in DIMENSIONS:
                rule.pop(dimension, None)
        elif fault == "duplicate":
            rules.append(dict(rule))
        elif fault == "never matches":
            field, value = draw(st.sampled_from([("endpoint", "nowhere"), ("upstream", "nowhere#9"), ("relay_key", "not-a-key"), ("relay_key", "${UNSET}")]))
            rule.setdefault("match", {})[field] = value
        elif fault == "key clash":
            document["auth_keys"] = [{"name": "nsame", "key": "ka"}, {"name": "nsame", "key": "kb"}, {"name": "ka", "key": "kc"}]
        else:
            limits["backend"] = "redis"
            limits["redis_url"] = draw(st.sampled_from(["http://h:1", "redis://", "redis://h/x", "redis://h:99999", "${UNSET}"]))
    return Drawn(document, drawn.environ, False)


LIMITS_FIELDS = schema_fields(LimitsSection, {"redis_url": st.sampled_from([*REDIS_URLS, "http://h", "redis://", ""])})
RULE_FIELDS = schema_fields(LimitRuleSection, {"per": st.sampled_from([*PER_VALUES, "user", "header:", "header:a b", ""])})
MATCH_FIELDS = schema_fields(
    MatchSection,
    {
        "client_ip": st.one_of(st.sampled_from(["10.0.0.0/33", "office", ""]), st.lists(st.sampled_from(CIDRS + ["x"]), max_size=2)),
        "relay_key": st.one_of(st.sampled_from(["kx", "${NOPE}", ""]), st.lists(st.sampled_from(["kx", "nx"]), max_size=2)),
    },
)


@st.composite
def any_limits_documents(draw: st.DrawFn) -> Drawn:
    """A valid document whose `[limits]` is of any shape (schema-derived, with unknown keys)."""
    drawn = draw(valid_limits_documents())
    limits = draw(sections(LIMITS_FIELDS))
    if draw(st.booleans()):
        limits["rules"] = draw(st.lists(_sometimes(sections(RULE_FIELDS | {"match": sections(MATCH_FIELDS)})), max_size=3))
    if draw(st.integers(0, 3)) == 0:
        limits["chars_per_token"] = draw(_sometimes(sections(schema_fields(CharsPerTokenSection, {}))))
    drawn.document["limits"] = draw(st.one_of(st.just(limits), toml_values))
    return Drawn(drawn.document, drawn.environ, False)


documents = st.one_of(valid_limits_documents(), faulty_limits_documents(), any_limits_documents())


def _configured_keys(document: dict[str, Any], environ: dict[str, str]) -> set[tuple[str, str | None]]:
    """(value, name) of every relay key a valid document lists, anywhere; a value named anywhere
    goes by that name everywhere."""
    tables = [document, *document["endpoints"].values()]
    tables += [upstream for section in document["endpoints"].values() for upstream in section.get("upstreams", [])]
    keys: list[tuple[str, str | None]] = []
    for table in tables:
        for entry in table.get("auth_keys", []):
            source, name = (entry, None) if isinstance(entry, str) else (entry["key"], entry["name"])
            value = environ[source[2:-1]] if source.startswith("${") else source
            keys.append((value, name))
    named = {value: name for value, name in keys if name is not None}
    return {(value, named.get(value)) for value, _name in keys}


def _shuffled(document: dict[str, Any]) -> dict[str, Any]:
    """The document with every rule's match lists reversed (a rule's version must not change)."""
    copy = msgspec.json.decode(msgspec.json.encode(document))
    for rule in copy.get("limits", {}).get("rules", []):
        for field, value in rule.get("match", {}).items():
            if isinstance(value, list):
                rule["match"][field] = value[::-1]
    return copy  # type: ignore[no-any-return]


@given(drawn=documents, inline=st.booleans())
def test_limits_load_or_every_error_names_its_key(drawn: Drawn, inline: bool) -> None:
    text = toml_document(drawn.document, inline)
    try:
        config = load_config_text(text, "fuzz.toml", environ=drawn.environ)
    except ConfigError as exc:
        assert not drawn.valid, exc.errors
        allowed = key_paths(drawn.document)
        for error in exc.errors:
            assert any(error.startswith(path + ": ") for path in allowed), error
            assert "p%40ss" not in error and "pw@" not in error  # never a Redis password
        return
    assert isinstance(config, RelayConfig)
    values = {value for endpoint in config.endpoints for value in endpoint.auth_keys}
    for endpoint in config.endpoints:
        assert len(endpoint.auth_key_names) == len(endpoint.auth_keys)
        assert not set(endpoint.auth_key_names) & values
    if not drawn.valid:
        return  # (a fault may leave a valid document: a key set to a value it may take)
    rules = drawn.document.get("limits", {}).get("rules", [])
    assert [rule.name for rule in config.limits.rules] == [rule["name"] for rule in rules]
    configured = _configured_keys(drawn.document, drawn.environ)  # (top-level keys no endpoint uses too)
    names = {name or relay_key_label(value) for value, name in configured}
    for rule in config.limits.rules:
        assert re.fullmatch(r"[0-9a-f]{12}", rule.version)
        assert set(rule.relay_keys) <= names
        assert not set(rule.relay_keys) & {value for value, _name in configured}
        assert any(msgspec.structs.astuple(rule.limits))
    shuffled = load_config_text(toml_document(_shuffled(drawn.document), inline), "fuzz.toml", environ=drawn.environ)
    assert [rule.version for rule in shuffled.limits.rules] == [rule.version for rule in config.limits.rules]
    for endpoint in config.endpoints:  # a configured name ("n..."), else the key's label
        assert all(name.startswith("n") or name == relay_key_label(key) for key, name in zip(endpoint.auth_keys, endpoint.auth_key_names))
    message = Config(config=config, generation=1)
    assert FrameReader().feed(encode_frame(message)) == [message]
