"""Fuzzes config loading (`llmrelay.config.load.load_config_text` and `llmrelay.config.decode`).

An operator's config file is decoded key by key so that every mistake is reported at once, each as a
`key.path: problem` line; a crash with a traceback instead, or a line that does not say which key is
wrong, is a failed deploy that is hard to diagnose. Documents are generated as Python dicts of right
and wrong shapes for `[server]`, `[endpoints.NAME]` and `auth_keys` (mostly plausible values, some of
any TOML type, unknown keys, bad endpoint names; `[[endpoints.NAME.upstreams]]` with their health
checks), serialized to TOML by a small serializer here (as tables or as inline tables), and loaded
with `environ={}` and random CLI overrides. The property: the result is a RelayConfig (whose endpoints
are the file's, and which survives the control pipe), or a ConfigError whose every error starts with a
key path of the document or schema followed by ": ", never any other exception; and a document built
valid always loads. Field strategies are derived from the schema, so a field added to it is fuzzed
without a change here. No value ever contains `$(`, so no key-source command is run. Valid documents
mix the one-upstream shorthand (flat keys) with lists of upstreams that inherit the endpoint's keys,
scope relay keys, and carry health checks. Regression tests pin two former bugs: error entries that
spanned several lines, and endpoint names with a trailing newline that passed the name check.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import math
import re
import tomllib
import types
import typing
from collections.abc import Iterator
from typing import Any

import certifi
import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from llmrelay.config.decode import printable
from llmrelay.config.errors import ConfigError
from llmrelay.config.load import Overrides, load_config_text
from llmrelay.config.resolved import RelayConfig
from llmrelay.config.schema import (
    AdminSection,
    ApiKeyEntry,
    CharsPerTokenSection,
    LimitRuleSection,
    LimitsSection,
    MatchSection,
    RelayKeyEntry,
    ConnectSection,
    CorsSection,
    MetricsSection,
    ProcessorSection,
    RewriteSection,
    EndpointSection,
    HealthCheckSection,
    Http2Section,
    ListenSection,
    ServerSection,
    TlsSection,
    UpstreamSection,
)
from llmrelay.config.secrets import is_command
from llmrelay.control import Config, FrameReader, encode_frame
from llmrelay.importing.toml_text import key_text, value_text

# -- a small TOML serializer (strings and keys written as import-config writes them) ----------------------

toml_key = key_text


def toml_value(value: Any) -> str:
    """import-config's `value_text`, plus the dates and times TOML has (inside lists and tables too)."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return value_text(value)


def _table_lines(path: list[str], table: dict[str, Any]) -> list[str]:
    lines = ["[" + ".".join(toml_key(part) for part in path) + "]"] if path else []
    lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines += _table_lines([*path, key], value)
    return lines


def toml_document(document: dict[str, Any], inline: bool) -> str:
    """`document` as TOML: `[tables]` for nested dicts, or every top-level value on one line."""
    if inline:
        return "\n".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in document.items()) + "\n"
    return "\n".join(_table_lines([], document)) + "\n"


# -- strategies ------------------------------------------------------------------------------------------


def _no_command(text: str) -> str:
    return text.replace("$(", "$ (")


safe_text = st.text(max_size=16).map(_no_command)
# Keys may hold anything but a line break (the regression tests at the end cover those).
keys_text = st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=10)
scalars = st.one_of(
    safe_text,
    st.integers(),
    st.floats(),
    st.booleans(),
    st.datetimes(timezones=st.one_of(st.none(), st.just(datetime.timezone.utc))),
    st.dates(),
    st.times(),
)
toml_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(keys_text, children, max_size=3)),
    max_leaves=8,
)
numbers = st.one_of(
    st.floats(-10, 1e6),
    st.integers(-5, 1000),
    st.sampled_from([0, 0.0, -0.0, math.inf, -math.inf, math.nan, 1e-300]),
)
counts = st.integers(-2, 70_000)
urls = st.one_of(
    st.sampled_from(
        [
            "http://127.0.0.1:8080",
            "https://api.openai.com/v1",
            "https://api.anthropic.com",
            "https://generativelanguage.googleapis.com/v1beta/",
            "http://[::1]:9000/base/",
            "ftp://example.com",
            "http://",
            "https://user:pw@example.com",
            "https://example.com/v1?x=1",
            "https://example.com#frag",
            "http://[::1",
            "http://example.com:99999",
            "http://example.com:0",
            "socks5://127.0.0.1:1080",
            "socks5h://user:pw@proxy:1080",
            "http://proxy:3128",
            "example.com",
            "",
        ]
    ),
    safe_text,
)
key_sources = st.one_of(
    st.sampled_from(["sk-test", "${OPENAI_API_KEY}", "${1BAD}", "${}", "", "  ", "$HOME", "${A}x"]),
    safe_text,
)
host_entries = st.one_of(
    st.sampled_from(["api.example.com", "Example.COM.", "", "a/b", "a b", "[::1]", "localhost"]),
    safe_text,
)


@functools.lru_cache(maxsize=None)
def _sometimes(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `strategy`, one time in eight a TOML value of any shape."""
    return st.integers(0, 7).flatmap(lambda roll: toml_values if roll == 0 else strategy)


@st.composite
def sections(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """A subset of `fields` with plausible (and sometimes any) values, sometimes with unknown keys."""
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))
    section = {name: draw(_sometimes(fields[name])) for name in chosen}
    if draw(st.integers(0, 7)) == 0:
        section.update(draw(st.dictionaries(keys_text, toml_values, min_size=1, max_size=2)))
    return section


def plausible(tp: Any) -> st.SearchStrategy[Any]:
    """Values near the shape of schema type `tp`: right type with bad ranges and enum values included."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return plausible(args[0])
    if origin is typing.Literal:
        return st.sampled_from([*args, "", "other", str(args[0]).upper()])
    if origin in (typing.Union, types.UnionType):
        return st.one_of([plausible(arg) for arg in args if arg is not type(None)])
    if origin is list:
        return st.lists(plausible(args[0]), max_size=3)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):  # a nested table: its own fields
        return sections(schema_fields(tp, {}))
    if tp is bool:
        return st.booleans()
    if tp is int:
        return counts
    if tp is float:
        return numbers
    if tp is str:
        return safe_text
    return toml_values


def schema_fields(
    section: type[msgspec.Struct], special: dict[str, st.SearchStrategy[Any]]
) -> dict[str, st.SearchStrategy[Any]]:
    """A strategy for every field of `section` (so new schema fields are fuzzed too), `special` first."""
    return {f.name: special.get(f.name, plausible(f.type)) for f in msgspec.structs.fields(section)}


SERVER_FIELDS = schema_fields(
    ServerSection,
    {
        "host": st.one_of(
            st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "localhost", "example.com", "", "::"]), safe_text
        ),
        "target_base": urls,
    },
)
API_KEY_ENTRY_FIELDS = schema_fields(
    ApiKeyEntry, {"key": key_sources, "name": st.one_of(st.sampled_from(["k0", "0", "a b", ""]), safe_text)}
)
HEALTH_CHECK_FIELDS = schema_fields(
    HealthCheckSection,
    {
        "method": st.one_of(st.sampled_from(["GET", "HEAD", "POST", "get", "", "G T"]), safe_text),
        "path": st.one_of(st.sampled_from(["/v1/models", "/", "v1/models", "", "/a b"]), safe_text),
        "headers": st.dictionaries(
            st.one_of(st.sampled_from(["x-probe", "bad name", ""]), keys_text), st.one_of(st.just("1"), safe_text), max_size=2
        ),
        "expected_status": st.lists(st.integers(0, 700), max_size=3),
    },
)
health_checks = st.one_of(st.booleans(), sections(HEALTH_CHECK_FIELDS))
UPSTREAM_SPECIAL: dict[str, st.SearchStrategy[Any]] = {
    "name": st.one_of(st.sampled_from(["a", "b", "x#0", "a b", "", "-a"]), safe_text),
    "target_base": urls,
    "proxy_url": urls,
    "auth_keys": st.lists(key_sources, max_size=3),
    "api_key": key_sources,
    "api_keys": st.lists(_sometimes(sections(API_KEY_ENTRY_FIELDS)), max_size=3),
    "health_check": health_checks,
}
UPSTREAM_FIELDS = schema_fields(UpstreamSection, UPSTREAM_SPECIAL)
ENDPOINT_FIELDS = schema_fields(
    EndpointSection,
    {
        "target_base": urls,
        "proxy_url": urls,
        "hosts": st.lists(host_entries, max_size=3),
        "auth_keys": st.lists(key_sources, max_size=3),
        "api_key": key_sources,
        "api_keys": st.lists(_sometimes(sections(API_KEY_ENTRY_FIELDS)), max_size=3),
        "health_check": health_checks,
        "upstreams": st.lists(_sometimes(sections(UPSTREAM_FIELDS)), max_size=3),
    },
)


ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
endpoint_names = st.one_of(
    st.builds(str.__add__, st.sampled_from(ALNUM), st.text(alphabet=ALNUM + "_.~-", max_size=8)),
    st.sampled_from(["health", "-x", "a b", "a/b", "caf\u00e9", "a.b", "_x", ""]),
    keys_text,
)


@st.composite
def any_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Documents of any shape: plausible values, values of any TOML type, unknown keys."""
    document: dict[str, Any] = {}
    if draw(st.booleans()):
        document["server"] = draw(_sometimes(sections(SERVER_FIELDS)))
    if draw(st.integers(0, 7)) != 0:
        endpoints = st.dictionaries(endpoint_names, _sometimes(sections(ENDPOINT_FIELDS)), max_size=3)
        document["endpoints"] = draw(_sometimes(endpoints))
    if draw(st.integers(0, 3)) == 0:
        document["auth_keys"] = draw(_sometimes(st.lists(key_sources, max_size=3)))
    if draw(st.integers(0, 15)) == 0:
        document.update(draw(st.dictionaries(keys_text, toml_values, min_size=1, max_size=2)))
    order = draw(st.permutations(list(document)))
    return {key: document[key] for key in order}


positive = st.one_of(st.floats(1e-3, 1e6), st.integers(1, 1000), st.just(math.inf))
VALID_SERVER_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "host": st.sampled_from(["127.0.0.1", "::1", "localhost", "0.0.0.0", "example.com"]),
    "port": st.integers(0, 65535),
    "workers": st.integers(1, 64),
    "drain_timeout": st.one_of(positive, st.just(0)),
    "header_timeout": positive,
    "body_idle_timeout": positive,
    "keepalive_timeout": positive,
    "write_timeout": positive,
    "max_requests_per_connection": st.integers(1, 10**6),
    "max_connections": st.integers(1, 10**6),
    "max_request_line": st.integers(256, 10**6),
    "max_header_bytes": st.integers(1024, 10**6),
    "max_header_count": st.integers(1, 1000),
    "heartbeat_interval": st.one_of(st.floats(1e-3, 10), st.integers(1, 10)),  # below heartbeat_timeout
    "heartbeat_timeout": st.one_of(st.floats(30, 1e6), st.integers(30, 1000)),
    "drain_keepalive_interval": positive,
    "worker_ready_timeout": positive,
    "max_worker_rss": st.integers(0, 2**40),
    "access_log": st.booleans(),
    "forwarded_headers": st.sampled_from(["append", "replace", "none"]),
    "log_level": st.sampled_from(["debug", "info", "warning", "error"]),
}
valid_targets = st.sampled_from(
    [
        "https://api.openai.com/v1",
        "https://api.anthropic.com",
        "https://generativelanguage.googleapis.com/v1beta/",
        "http://127.0.0.1:8080",
        "http://[::1]:9000/base/",
        "https://gateway.example.com/openai/v1",
    ]
)
VALID_ENDPOINT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "proxy_url": st.sampled_from(["http://proxy:3128", "socks5://127.0.0.1:1080", "socks5h://u:p@proxy:1080"]),
    "provider": st.sampled_from(["openai", "anthropic", "gemini", "forward"]),
    "connect_timeout": positive,
    "first_byte_timeout": positive,
    "idle_timeout": positive,
    "ca_file": st.just(certifi.where()),  # a file that loads: a bad one is an error at load time
    "forwarded_headers": st.sampled_from(["append", "replace", "none"]),
    "max_connections": st.integers(1, 10**6),
    "keepalive_expiry": st.one_of(positive, st.just(0.0)),
    "pool_timeout": positive,
    "max_body_size": st.integers(1, 2**40),
}
interval_and_timeout = st.tuples(st.integers(1, 3600), st.floats(1e-3, 1)).map(
    lambda pair: {"interval": pair[0], "timeout": pair[0] * pair[1]}
)


@st.composite
def valid_health_checks(draw: st.DrawFn) -> bool | dict[str, Any]:
    """`true`, `false`, or a table whose every field is valid (timeout within interval)."""
    if draw(st.booleans()):
        return draw(st.booleans())
    fields: dict[str, st.SearchStrategy[Any]] = {
        "method": st.sampled_from(["GET", "HEAD", "POST"]),
        "path": st.sampled_from(["/v1/models", "/health", "/", "/v1beta/models"]),
        "expected_status": st.lists(st.integers(100, 599), min_size=1, max_size=3),
        "healthy_threshold": st.integers(1, 10),
        "unhealthy_threshold": st.integers(1, 10),
        "headers": st.dictionaries(st.sampled_from(["x-probe", "X-Check", "accept"]), st.sampled_from(["1", "a b", ""])),
        "body": st.sampled_from(["", "{}"]),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))
    table = {name: draw(fields[name]) for name in chosen}
    if draw(st.booleans()):
        table.update(draw(interval_and_timeout))
    return table


VALID_ENDPOINT_FIELDS |= {
    "retries": st.integers(0, 10),
    "retry_deadline": positive,
    "retry_body_limit": st.integers(0, 2**40),
    "health_check": valid_health_checks(),
}
# What an upstream may set for itself (the endpoint's value is the default).
VALID_UPSTREAM_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    name: VALID_ENDPOINT_FIELDS[name]
    for name in (
        "proxy_url",
        "provider",
        "connect_timeout",
        "first_byte_timeout",
        "idle_timeout",
        "ca_file",
        "max_connections",
        "keepalive_expiry",
        "pool_timeout",
        "max_body_size",
        "health_check",
    )
} | {
    "weight": st.one_of(st.floats(0, 100), st.integers(0, 10)),
    "priority": st.integers(-5, 5),
    "fallback": st.booleans(),
}
literal_keys = st.text(alphabet=ALNUM + "-_", min_size=1, max_size=12)
valid_names = st.builds(str.__add__, st.sampled_from(ALNUM), st.text(alphabet=ALNUM + "_.~-", max_size=8)).filter(
    lambda name: name != "health"
)


@st.composite
def valid_provider_keys(draw: st.DrawFn) -> dict[str, Any]:
    """Nothing, an `api_key`, or `api_keys` (at least one with a weight; names, when given, unique)."""
    injects = draw(st.sampled_from(["none", "api_key", "api_keys"]))
    if injects == "api_key":
        return {"api_key": draw(literal_keys)}
    if injects == "api_keys":
        weights = draw(st.lists(st.floats(0, 100), min_size=1, max_size=3))
        entries: list[dict[str, Any]] = [{"key": draw(literal_keys), "weight": w} for w in weights] + [{"key": "k"}]
        for index, entry in enumerate(entries):
            if draw(st.booleans()):
                entry["name"] = f"key-{index}"
        return {"api_keys": entries}
    return {}


@st.composite
def valid_upstreams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One to three `[[upstreams]]` tables: unique names (or none: the default), own keys or not."""
    upstreams: list[dict[str, Any]] = []
    for index in range(draw(st.integers(1, 3))):
        fields = draw(st.lists(st.sampled_from(sorted(VALID_UPSTREAM_FIELDS)), unique=True, max_size=5))
        upstream = {field: draw(VALID_UPSTREAM_FIELDS[field]) for field in fields}
        upstream["target_base"] = draw(valid_targets)
        if draw(st.booleans()):
            upstream["name"] = f"{draw(valid_names)}-{index}"  # unique in its endpoint
        if draw(st.booleans()):
            upstream["auth_keys"] = draw(st.lists(literal_keys, min_size=1, max_size=2))
        if draw(st.booleans()):
            upstream |= draw(valid_provider_keys())
        order = draw(st.permutations(list(upstream)))
        upstreams.append({key: upstream[key] for key in order})
    if not any(u.get("weight", 1) > 0 or u.get("fallback") for u in upstreams):
        upstreams[0]["weight"] = 1  # (all parked: nothing could be served, a config error)
    return upstreams


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A document that must load: valid values only, at least one endpoint, no open relay."""
    chosen = draw(st.lists(st.sampled_from(sorted(VALID_SERVER_FIELDS)), unique=True))
    server = {name: draw(VALID_SERVER_FIELDS[name]) for name in chosen}
    if draw(st.booleans()):
        server["target_base"] = draw(valid_targets)
    document: dict[str, Any] = {"server": server, "endpoints": {}}
    if draw(st.integers(0, 3)) == 0:
        document["auth_keys"] = draw(st.lists(literal_keys, min_size=1, max_size=2))
    for index, name in enumerate(draw(st.lists(valid_names, min_size=1, max_size=3, unique=True))):
        fields = draw(st.lists(st.sampled_from(sorted(VALID_ENDPOINT_FIELDS)), unique=True, max_size=4))
        section = {field: draw(VALID_ENDPOINT_FIELDS[field]) for field in fields}
        several = draw(st.booleans())
        if several:
            section["upstreams"] = draw(valid_upstreams())
        elif "target_base" not in server or draw(st.booleans()):
            section["target_base"] = draw(valid_targets)
        section["hosts"] = [f"h{index}-{n}.example.com" for n in range(draw(st.integers(0, 2)))]
        if draw(st.booleans()):
            section["hosts"].append(draw(st.sampled_from([f"h{index}.example.com:8443", f"[::{index + 1}]", f"::{index + 1}:7"])))
        if draw(st.booleans()):
            section["auth_keys"] = draw(st.lists(literal_keys, min_size=1, max_size=2))
        section |= draw(valid_provider_keys())
        upstreams = section.get("upstreams", [section])
        injects = any("api_key" in u or "api_keys" in u for u in [section, *upstreams])
        scoped = any("auth_keys" in u for u in upstreams)
        if injects and "auth_keys" not in section and "auth_keys" not in document and not scoped:
            section["public"] = True  # else an open relay on a non-loopback listener
        document["endpoints"][name] = section
    return document


@st.composite
def faulty_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with one to three faults: a bad or misshapen value, an unknown key, a bad name."""
    document = draw(valid_documents())
    for _ in range(draw(st.integers(1, 3))):
        fault = draw(st.sampled_from(["server value", "endpoint value", "upstream value", "unknown key", "endpoint name"]))
        endpoint = document["endpoints"][draw(st.sampled_from(sorted(document["endpoints"])))]
        upstreams = endpoint.get("upstreams")
        if fault == "upstream value" and isinstance(upstreams, list) and upstreams:
            upstream = draw(st.sampled_from(upstreams))
            if isinstance(upstream, dict):
                field = draw(st.sampled_from(sorted(UPSTREAM_FIELDS)))
                upstream[field] = draw(_sometimes(UPSTREAM_FIELDS[field]))
        elif fault == "upstream value":
            endpoint["upstreams"] = draw(_sometimes(ENDPOINT_FIELDS["upstreams"]))
        elif fault == "server value":
            field = draw(st.sampled_from(sorted(SERVER_FIELDS)))
            document["server"][field] = draw(_sometimes(SERVER_FIELDS[field]))
        elif fault == "endpoint value":
            field = draw(st.sampled_from(sorted(ENDPOINT_FIELDS)))
            endpoint[field] = draw(_sometimes(ENDPOINT_FIELDS[field]))
        elif fault == "unknown key":
            table = draw(st.sampled_from([document, document["server"], endpoint]))
            table[draw(keys_text)] = draw(toml_values)
        else:
            document["endpoints"][draw(endpoint_names)] = dict(endpoint)
    return document


# (document, whether it must load): a third each of valid, faulty and any-shape documents.
documents = st.one_of(
    valid_documents().map(lambda document: (document, True)),
    faulty_documents().map(lambda document: (document, False)),
    any_documents().map(lambda document: (document, False)),
)
overrides = st.builds(
    Overrides,
    host=st.one_of(st.none(), st.sampled_from(["0.0.0.0", "127.0.0.1"]), safe_text),
    port=st.one_of(st.none(), st.integers(-10, 70_000)),
    workers=st.one_of(st.none(), st.integers(-2, 64)),
)

# -- oracles ---------------------------------------------------------------------------------------------


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _comparable(value: Any) -> Any:
    """`value` with NaN replaced by a marker, so that documents compare with ==."""
    if isinstance(value, float) and math.isnan(value):
        return "<nan>"
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    return value


def _document_paths(value: Any, path: str = "", top: bool = True) -> set[str]:
    """The paths of everything inside `value` (an empty TOML key has the empty path at the top)."""
    children: list[tuple[str, Any]] = []
    if isinstance(value, dict):  # errors show keys as printable text, escaped like the loader does
        children = [(printable(key) if top else f"{path}.{printable(key)}", item) for key, item in value.items()]
    elif isinstance(value, list):
        children = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    paths = {child for child, _ in children}
    for child, item in children:
        paths |= _document_paths(item, child, top=False)
    return paths


def key_paths(document: dict[str, Any]) -> set[str]:
    """Every key path an error about `document` may name: the document's own and the schema's."""
    paths = {"the file", "server", "endpoints", "auth_keys"} | _document_paths(document)
    paths |= _relay_key_paths(document, "") | _limits_paths(document.get("limits"))
    paths |= {f"server.{field.name}" for field in msgspec.structs.fields(ServerSection)}
    paths |= _schema_paths(Http2Section, "server.http2") | _schema_paths(ConnectSection, "server.connect")
    paths |= _schema_paths(AdminSection, "server.admin") | _schema_paths(MetricsSection, "server.metrics")
    paths |= _schema_paths(CorsSection, "server.cors")
    server = document.get("server")
    listen = server.get("listen") if isinstance(server, dict) else None
    for index, _listener in enumerate(listen if isinstance(listen, list) else []):
        where = f"server.listen[{index}]"
        paths |= {where} | _schema_paths(ListenSection, where) | _schema_paths(TlsSection, f"{where}.tls")
    endpoints = document.get("endpoints")
    if isinstance(endpoints, dict):
        for name, section in endpoints.items():
            base = f"endpoints.{printable(name)}"
            paths |= {base} | _schema_paths(EndpointSection, base)
            if not isinstance(section, dict):
                continue
            paths |= _schema_paths(HealthCheckSection, f"{base}.health_check")
            paths |= _api_key_paths(section, base) | _relay_key_paths(section, base)
            paths |= _schema_paths(CorsSection, f"{base}.cors")
            processors = section.get("processors")
            for index, _processor in enumerate(processors if isinstance(processors, list) else []):
                where = f"{base}.processors[{index}]"
                paths |= {where} | _schema_paths(ProcessorSection, where) | _schema_paths(RewriteSection, f"{where}.rewrite_with")
            upstreams = section.get("upstreams")
            for index, upstream in enumerate(upstreams if isinstance(upstreams, list) else []):
                where = f"{base}.upstreams[{index}]"
                paths |= {where} | _schema_paths(UpstreamSection, where)
                paths |= _schema_paths(HealthCheckSection, f"{where}.health_check")
                if isinstance(upstream, dict):
                    paths |= _api_key_paths(upstream, where) | _relay_key_paths(upstream, where)
    return paths


def _relay_key_paths(table: dict[str, Any], base: str) -> set[str]:
    """`auth_keys[i].name` and `.key` of a table's `auth_keys` entries (`{ name, key }` tables)."""
    entries = table.get("auth_keys")
    where = f"{base}.auth_keys" if base else "auth_keys"
    return {
        path
        for index in range(len(entries) if isinstance(entries, list) else 0)
        for path in _schema_paths(RelayKeyEntry, f"{where}[{index}]")
    }


def _limits_paths(limits: Any) -> set[str]:
    """The keys of `[limits]`, its `chars_per_token`, and of each rule and its `match`."""
    paths = {"limits"} | _schema_paths(LimitsSection, "limits") | _schema_paths(CharsPerTokenSection, "limits.chars_per_token")
    rules = limits.get("rules") if isinstance(limits, dict) else None
    for index, _rule in enumerate(rules if isinstance(rules, list) else []):
        where = f"limits.rules[{index}]"
        paths |= {where} | _schema_paths(LimitRuleSection, where) | _schema_paths(MatchSection, f"{where}.match")
    return paths


def _schema_paths(section: type[msgspec.Struct], base: str) -> set[str]:
    return {f"{base}.{field.name}" for field in msgspec.structs.fields(section)}


def _api_key_paths(table: dict[str, Any], base: str) -> set[str]:
    entries = table.get("api_keys")
    return {
        path
        for index in range(len(entries) if isinstance(entries, list) else 0)
        for path in _schema_paths(ApiKeyEntry, f"{base}.api_keys[{index}]")
    }


def _listenable(host: str) -> bool:
    """An IP address or a host name: what `server.host` accepts."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?", host) is not None


DOCUMENTED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.~-]*")  # "letters, digits, '_', '.', '~', '-'"

# -- properties ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _ca_files_loaded_once() -> Iterator[None]:
    """A CA file's check is memoized for this module: the valid documents name certifi's bundle on
    endpoints and upstreams alike, and loading it (about 70 ms each time) would take most of the run."""
    import llmrelay.config.files as files
    import llmrelay.config.values as resolved

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(resolved, "ca_file_problem", functools.lru_cache(maxsize=None)(files.ca_file_problem))
        yield


@pytest.mark.timeout(600)  # the dev profile's 2000 documents take about a minute of CPU, more on a busy machine
@given(document_validity=documents, inline=st.booleans(), cli=overrides)
def test_load_returns_a_config_or_errors_that_name_their_key(
    document_validity: tuple[dict[str, Any], bool], inline: bool, cli: Overrides
) -> None:
    document, valid = document_validity
    assert not any(is_command(s) for s in _strings(document))  # never run a key-source command
    text = toml_document(document, inline)
    assert _comparable(tomllib.loads(text)) == _comparable(document)  # the serializer is faithful
    must_load = (
        valid
        and cli.port in (None, *range(65536))
        and (cli.workers is None or cli.workers >= 1)
        and (cli.host is None or _listenable(cli.host))
    )
    try:
        config = load_config_text(text, "fuzz.toml", cli, environ={})
    except ConfigError as exc:
        assert not must_load, exc.errors
        assert exc.errors
        allowed = key_paths(document)
        for error in exc.errors:
            assert any(error.startswith(path + ": ") for path in allowed), error
        return
    assert isinstance(config, RelayConfig)
    assert [endpoint.name for endpoint in config.endpoints] == list(document["endpoints"])
    assert all(DOCUMENTED_NAME.fullmatch(endpoint.name) for endpoint in config.endpoints)
    for endpoint in config.endpoints:  # the flat keys are one upstream, else one per [[upstreams]] table
        tables = document["endpoints"][endpoint.name].get("upstreams") or [{}]
        names = [table.get("name", f"{endpoint.name}#{index}") for index, table in enumerate(tables)]
        assert [upstream.name for upstream in endpoint.upstreams] == names
        assert len(set(names)) == len(names)
    server = document.get("server", {})
    assert [l.port for l in config.listeners] == [cli.port if cli.port is not None else server.get("port", 8811)]
    message = Config(config=config, generation=1)
    assert FrameReader().feed(encode_frame(message)) == [message]


# -- regressions ---------------------------------------------------------------------------------------


@given(
    key=safe_text.filter(bool).map(lambda s: s[:1] + "\n" + s[1:]),
    where=st.sampled_from(["endpoint name", "unknown server key", "server.host"]),
)
@example(key="a\nb", where="endpoint name")
@example(key="a\nb", where="server.host")
def test_every_error_entry_is_a_single_line(key: str, where: str) -> None:
    endpoint = {"target_base": "https://api.example.com", "api_key": "sk-test"}
    document: dict[str, Any] = {"server": {"host": "0.0.0.0"}, "endpoints": {"ok": dict(endpoint)}}
    if where == "endpoint name":
        document["endpoints"][key] = endpoint
    elif where == "unknown server key":
        document["server"][key] = 1
    else:
        document["server"]["host"] = key
    with pytest.raises(ConfigError) as info:
        load_config_text(toml_document(document, inline=False), "fuzz.toml", environ={})
    for error in info.value.errors:
        assert "\n" not in error, error


@given(name=valid_names)
@example(name="openai")
def test_endpoint_names_with_a_trailing_newline_are_refused(name: str) -> None:
    document = {"endpoints": {name + "\n": {"target_base": "https://api.openai.com/v1"}}}
    with pytest.raises(ConfigError) as info:
        load_config_text(toml_document(document, inline=False), "fuzz.toml", environ={})
    assert any("invalid endpoint name" in error for error in info.value.errors)
