"""One openproxy provider (an entry of `providers:`) as one llmrelay upstream.

What openproxy does with a provider (its src/lib.rs `Program::from_config` and src/provider/mod.rs):
- `endpoint`, `port` and `tls` name the target: TLS unless `tls: false`, port 443 with TLS, else 80.
- Every key (`api_keys` entries, then `api_key`, a string or a list) becomes a provider of its own
  whose weight is the key's `weight`, else the provider's. The upstream therefore weighs the sum of
  its keys' weights, and its `api_keys` keep each key's weight: the shares come out the same.
- A `$(command)` key of an openai or anthropic provider runs through `sh -c` for every request (an
  anthropic one is an OAuth token: `Authorization: Bearer` and `anthropic-beta: oauth-2025-04-20`);
  llmrelay runs it at load, every REFRESH_INTERVAL seconds and on a 401. A gemini key is sent as
  written, whatever it looks like.
- A `health_check` block is sent every round while checks are on; any 2xx passes, one failure makes
  the provider unhealthy until one check passes, and a round gives each check 30 s. A provider without
  a block is only connected to.
- A forward provider ignores `api_key`, `api_keys` and `auth_keys`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import msgspec

from llmrelay.config.secrets import is_command
from llmrelay.importing.formats.openproxy_server import HealthPolicy
from llmrelay.importing.formats.openproxy_values import (
    literal_difference,
    optional_bool,
    optional_int,
    optional_text,
    optional_weight,
    refused,
    required_text,
    shell_difference,
    split_host_port,
    sub_table,
    text_list,
)
from llmrelay.importing.formats.source_keys import SourceTable
from llmrelay.importing.report import Report

REFRESH_INTERVAL = 300  # seconds between two runs of a `$(command)` key
CHECK_ROUND_LIMIT = 30.0  # openproxy gives each check this long
SUCCESS_STATUSES = [200, 201, 202, 203, 204, 205, 206, 207, 208, 226]  # openproxy passes any 2xx
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_METHOD = re.compile(r"[A-Z]+")
_IGNORED_BY_FORWARD = "openproxy's forward providers ignore it (they pass the client's request untouched)"


class ProviderKey(msgspec.Struct, frozen=True):
    value: str
    weight: float  # its share: its own weight, else the provider's
    source: str  # where it was written ("providers[1].api_keys[0].key")
    weight_source: str | None  # its own `weight`, when it has one


class Target(msgspec.Struct, frozen=True):
    host: str  # the endpoint's host name or address, without its port
    port: int
    tls: bool

    @property
    def base_url(self) -> str:
        scheme, default_port = ("https", 443) if self.tls else ("http", 80)
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{scheme}://{host}" if self.port == default_port else f"{scheme}://{host}:{self.port}"


class ConvertedProvider(msgspec.Struct):
    index: int
    kind: str
    upstream: dict[str, Any]  # the `[[endpoints.NAME.upstreams]]` table
    destination: str  # its path: "endpoints.NAME.upstreams[i]"
    target: Target
    own_auth_keys: list[str] | None  # the provider's `auth_keys` (openproxy also accepts the top-level ones)
    fallback: bool
    priority: int
    injects_key: bool

    @property
    def source(self) -> str:
        return f"providers[{self.index}]"

    @property
    def authenticates(self) -> bool:
        return self.kind != "forward"

    @property
    def rank(self) -> tuple[bool, int]:
        """openproxy's order of preference: non-fallback first, then the higher priority."""
        return (not self.fallback, self.priority)


def convert_provider(
    table: SourceTable, index: int, kind: str, destination: str, policy: HealthPolicy, report: Report
) -> ConvertedProvider:
    """The upstream for one provider; its `type` and `host` were taken already (they chose the endpoint)."""
    report.moved(table.at("type"), f"{destination}.provider")
    target = _target(table, destination, report)
    upstream: dict[str, Any] = {"target_base": target.base_url, "provider": kind}
    weight = optional_weight(table, "weight")
    priority = optional_int(table, "priority", -(2**31), 2**31 - 1) or 0
    fallback = bool(optional_bool(table, "is_fallback"))
    keys = _provider_keys(table, kind, 1.0 if weight is None else weight)
    upstream["weight"] = sum(key.weight for key in keys) if keys and kind != "forward" else (1.0 if weight is None else weight)
    _report_weight(table, weight, keys, kind, destination, upstream["weight"], report)
    if priority:
        upstream["priority"] = priority
    if table.has("priority"):
        report.moved(table.at("priority"), f"{destination}.priority", "the highest tier wins, as in openproxy")
    if fallback:
        upstream["fallback"] = True
    if table.has("is_fallback"):
        report.moved(table.at("is_fallback"), f"{destination}.fallback")
    upstream["auth_keys"] = None  # set with the endpoint's other upstreams in view
    own_auth_keys = text_list(table, "auth_keys")
    if kind == "forward":
        _drop_forward_credentials(table, keys, own_auth_keys, report)
        own_auth_keys = None
    else:
        _place_keys(upstream, keys, kind, destination, report)
    check = _health_check(table, policy, destination, report)
    if check is not None:
        upstream["health_check"] = check
        if len(keys) > 1 and kind != "forward":
            report.note(
                f"{destination}.health_check: openproxy checks each of the provider's keys as a provider of its own;"
                " llmrelay checks the upstream with its first key (a key the provider refuses is disabled on its own)"
            )
    table.drop_rest()
    return ConvertedProvider(
        index, kind, upstream, destination, target, own_auth_keys, fallback, priority,
        injects_key=bool(keys) and kind != "forward",
    )


# -- where requests go ---------------------------------------------------------------------------


def _target(table: SourceTable, destination: str, report: Report) -> Target:
    endpoint = required_text(table, "endpoint")
    tls = optional_bool(table, "tls")
    port = optional_int(table, "port", 0, 65535)
    host, endpoint_port = split_host_port(endpoint)
    if not _is_host(host):
        raise refused(table.at("endpoint"), f"is {endpoint!r}, where a host name or address is expected")
    use_tls = True if tls is None else tls
    note = ""
    if endpoint_port is not None and port is None:
        port = endpoint_port
        note = "its port taken as the target's port (openproxy expects it in `port`)"
    elif endpoint_port is not None:
        note = f"the port in it is ignored for `port: {port}`"
    chosen = port if port is not None else (443 if use_tls else 80)
    report.moved(table.at("endpoint"), f"{destination}.target_base", note)
    if table.has("port"):
        report.moved(table.at("port"), f"{destination}.target_base")
    if table.has("tls"):
        report.moved(table.at("tls"), f"{destination}.target_base", "https://" if use_tls else "http://")
    return Target(host, chosen, use_tls)


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return _HOST_NAME.fullmatch(text) is not None


# -- weights and provider keys -------------------------------------------------------------------


def _provider_keys(table: SourceTable, kind: str, provider_weight: float) -> list[ProviderKey]:
    """The provider's keys in openproxy's order (`api_keys`, then `api_key`), each with its share."""
    keys: list[ProviderKey] = []
    entries = table.take("api_keys")
    if entries is not None and not isinstance(entries, list):
        raise refused(table.at("api_keys"), "is not a list of { key, weight }")
    for position, entry in enumerate(entries or []):
        path = f"{table.at('api_keys')}[{position}]"
        if not isinstance(entry, dict):
            raise refused(path, "is not a mapping with a `key`")
        entry_table = SourceTable(entry, path, table.report)
        value = required_text(entry_table, "key")
        weight = optional_weight(entry_table, "weight")
        entry_table.drop_rest()
        own = entry_table.at("weight") if weight is not None else None
        keys.append(ProviderKey(value, provider_weight if weight is None else weight, entry_table.at("key"), own))
    single = table.take("api_key")
    values = single if isinstance(single, list) else ([] if single is None else [single])
    for position, value in enumerate(values):
        path = table.at("api_key") + (f"[{position}]" if isinstance(single, list) else "")
        if not isinstance(value, str) or not value:
            raise refused(path, "is not a non-empty string")
        keys.append(ProviderKey(value, provider_weight, path, None))
    if not keys and kind in ("gemini", "anthropic"):
        raise refused(table.at("api_key"), f"is missing (openproxy requires it on a {kind} provider)")
    return keys


def _report_weight(
    table: SourceTable, weight: float | None, keys: list[ProviderKey], kind: str, destination: str,
    upstream_weight: float, report: Report,
) -> None:
    split = kind != "forward" and (len(keys) > 1 or any(key.weight_source for key in keys))
    if table.has("weight"):
        note = (
            f"openproxy makes one provider per key, weighing the key's own weight or this one; the upstream"
            f" weighs their sum, {upstream_weight:g}" if split else ""
        )
        report.moved(table.at("weight"), f"{destination}.weight", note)
    elif split:
        report.note(f"{destination}.weight = {upstream_weight:g}: the sum of its keys' weights (one openproxy provider per key)")


def _place_keys(upstream: dict[str, Any], keys: list[ProviderKey], kind: str, destination: str, report: Report) -> None:
    if len(keys) == 1:
        key = keys[0]
        fields = _key_fields(key, kind, f"{destination}.api_key", report)
        upstream.update({"api_key": key.value, **fields})
        if key.weight_source:
            report.moved(key.weight_source, f"{destination}.weight")
        return
    entries: list[dict[str, Any]] = []
    for position, key in enumerate(keys):
        where = f"{destination}.api_keys[{position}]"
        entries.append({"key": key.value, "weight": key.weight, **_key_fields(key, kind, f"{where}.key", report)})
        if key.weight_source:
            report.moved(key.weight_source, f"{where}.weight")
    if entries:
        upstream["api_keys"] = entries


def _key_fields(key: ProviderKey, kind: str, where: str, report: Report) -> dict[str, Any]:
    """Report where one key went; the `key_type` and `refresh_interval` it needs beside it."""
    runs_command = is_command(key.value) and kind != "gemini"
    if not runs_command:
        report.moved(key.source, where)
        difference = literal_difference(key.value)
        if difference is not None:
            report.dropped(key.source, f"{difference}: check the key before serving", changes_behaviour=True)
        return {}
    fields: dict[str, Any] = {"refresh_interval": REFRESH_INTERVAL}
    how = "an OAuth token sent as Authorization: Bearer with anthropic-beta: oauth-2025-04-20"
    if kind == "anthropic":
        fields = {"key_type": "oauth", **fields}
    else:
        how = "sent as Authorization: Bearer"
    report.moved(key.source, where, f"$(command) kept as written; {how}")
    report.note(
        f"{key.source}: openproxy runs the command for every request; llmrelay runs it at load, again every"
        f" {REFRESH_INTERVAL} s (refresh_interval = {REFRESH_INTERVAL}) and when the provider answers 401"
    )
    shell = shell_difference(key.value.strip()[2:-1])
    if shell is not None:
        report.dropped(key.source, shell, changes_behaviour=True)
    return fields


def _drop_forward_credentials(
    table: SourceTable, keys: list[ProviderKey], own_auth_keys: list[str] | None, report: Report
) -> None:
    for key in keys:
        report.dropped(key.source, _IGNORED_BY_FORWARD, changes_behaviour=False)
    if own_auth_keys is not None:
        report.dropped(table.at("auth_keys"), _IGNORED_BY_FORWARD, changes_behaviour=False)


# -- health checks ----------------------------------------------------------------------------


def _health_check(table: SourceTable, policy: HealthPolicy, destination: str, report: Report) -> dict[str, Any] | None:
    if not policy.enabled:
        if table.has("health_check"):
            table.take("health_check")
            report.dropped(table.at("health_check"), "health checks are off in this file; openproxy does not run it either",
                           changes_behaviour=False)
        return None
    block = sub_table(table, "health_check")
    if block is None:
        return None
    where = f"{destination}.health_check"
    path = required_text(block, "path")
    method = optional_text(block, "method") or "GET"
    body = optional_text(block, "body")
    header_lines = text_list(block, "headers") or []
    block.drop_rest()
    if not path.startswith("/") or _METHOD.fullmatch(method.upper()) is None:
        report.dropped(block.path, f"`{method} {path}` is not a request llmrelay can send (a method and a path starting with /)")
        return None
    check: dict[str, Any] = {"method": method.upper(), "path": path}
    for key in ("method", "path"):
        if block.has(key):
            report.moved(block.at(key), f"{where}.{key}")
    if body:
        check["body"] = body
        report.moved(block.at("body"), f"{where}.body")
    headers = _check_headers(block, header_lines, where, report)
    if headers:
        check["headers"] = headers
    check.update({
        "interval": policy.interval,
        "timeout": min(CHECK_ROUND_LIMIT, float(policy.interval)),
        "expected_status": SUCCESS_STATUSES,
        "healthy_threshold": 1,
        "unhealthy_threshold": 1,
    })
    report.moved(block.path, where, "any 2xx passes; one failure makes it unhealthy and one pass usable again, as in openproxy")
    return check


def _check_headers(block: SourceTable, lines: list[str], where: str, report: Report) -> dict[str, str]:
    headers: dict[str, str] = {}
    for position, line in enumerate(lines):
        name, colon, value = line.strip().partition(":")
        source = f"{block.at('headers')}[{position}]"
        if not colon or not name.strip():
            report.dropped(source, f"{line!r} is not `Name: value`", changes_behaviour=True)
            continue
        headers[name.strip()] = value.strip()
        report.moved(source, f"{where}.headers.{name.strip()}")
    return headers
