"""openproxy's YAML (x5iu/openproxy: `providers:` chosen by the Host header) as an llmrelay config.

openproxy matches a request to every provider whose `host` is the request's Host (ports left out of
the comparison on both sides), or whose `host/prefix` also has the path at or below the prefix; among
the healthy ones that accept the client's key, non-fallback first, then the highest priority, then by
weight. The providers sharing a host become one llmrelay endpoint with `hosts = [host]` and one
upstream each (`openproxy_providers`); a `host/prefix` becomes an endpoint of its own, which llmrelay
routes as openproxy does (the prefix taken off) and before the plain host.

Relay keys: an openproxy provider accepts the top-level `auth_keys` and its own `auth_keys` together;
with none of either it accepts any client. An llmrelay upstream with `auth_keys` accepts only those
(and one without, every key of its endpoint), so a provider with keys of its own gets the top-level
keys and its own as its upstream's `auth_keys`, and so does every other upstream of that endpoint
(the top-level keys alone), so that no scoped key reaches a provider that would refuse it. Forward
providers authenticate nobody: their endpoints have `auth_keys = []`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llmrelay.config.hosts import HostEntryError, canonical_host_entry, split_path_prefix
from llmrelay.importing.formats import Converted, endpoint_name
from llmrelay.importing.formats.openproxy_connect import connect_section
from llmrelay.importing.formats.openproxy_providers import ConvertedProvider, convert_provider
from llmrelay.importing.formats.openproxy_server import HealthPolicy, health_policy, server_section
from llmrelay.importing.formats.openproxy_values import (
    FORMAT_LABEL,
    kind_of,
    literal_difference,
    optional_bool,
    refused,
    required_text,
    split_host_port,
    text_list,
    unique,
)
from llmrelay.importing.formats.source_keys import SourceTable
from llmrelay.importing.report import Report
from llmrelay.importing.sources import ImportSourceError

PROVIDER_TYPES = ("openai", "gemini", "anthropic", "forward")


class Route(msgspec.Struct, frozen=True):
    """One openproxy `host`, as llmrelay's `hosts` entry."""

    entry: str  # canonical: "oai.relay.test/tenant-b"
    host: str  # without port or prefix: "oai.relay.test"
    prefix: str  # "/tenant-b", or "" for none


class PlannedEndpoint(msgspec.Struct):
    name: str
    route: Route
    provider_indices: list[int]
    converted: list[ConvertedProvider] = []


def convert(data: dict[str, Any], report: Report) -> Converted:
    items = _provider_items(data)
    root = SourceTable(data, "", report)
    root.take("providers")
    server = server_section(root, report)
    policy = health_policy(root, report)
    global_keys = _global_auth_keys(root, report)
    tunnels = optional_bool(root, "connect_tunnel_enabled")
    plans = _plan_endpoints(items, report)
    comments: dict[str, str] = {}
    endpoints: dict[str, Any] = {}
    for plan in plans:
        endpoint = _endpoint(plan, items, policy, global_keys, report, comments)
        if endpoint is not None:
            endpoints[plan.name] = endpoint
    _report_wider_routes(plans, global_keys, report)
    routes = [(plan.route.host, provider) for plan in plans if not plan.route.prefix for provider in plan.converted]
    server["connect"] = connect_section(tunnels, routes, global_keys, report)
    root.drop_rest()
    _general_notes(policy, plans, report)
    out: dict[str, Any] = {"server": server}
    if global_keys:
        out["auth_keys"] = global_keys
    out["endpoints"] = endpoints
    comments["server"] = "From openproxy's listeners (https_port, http_port), header size and CONNECT settings."
    return Converted(out, comments)


# -- the file and its providers ---------------------------------------------------------------


def _provider_items(data: dict[str, Any]) -> list[dict[str, Any]]:
    providers = data.get("providers")
    if providers is None:
        raise ImportSourceError(f"`providers` is missing: this is not an {FORMAT_LABEL} file (name the format with --format)")
    if not isinstance(providers, list):
        raise ImportSourceError(
            f"`providers` is {kind_of(providers)}, where {FORMAT_LABEL} has a list: this is not an {FORMAT_LABEL}"
            " file (name the format with --format)"
        )
    for index, item in enumerate(providers):
        if not isinstance(item, dict):
            raise refused(f"providers[{index}]", f"is {kind_of(item)}, where a provider mapping (type, host, endpoint) is expected")
    return providers


def _global_auth_keys(root: SourceTable, report: Report) -> list[str]:
    keys = unique(text_list(root, "auth_keys") or [])
    if root.has("auth_keys"):
        report.moved("auth_keys", "auth_keys", "accepted by every openai, gemini and anthropic endpoint, as in openproxy")
    _report_literal_keys("auth_keys", keys, report)
    return keys


def _report_literal_keys(source: str, keys: list[str], report: Report) -> None:
    for position, key in enumerate(keys):
        difference = literal_difference(key)
        if difference is not None:
            report.dropped(f"{source}[{position}]", difference, changes_behaviour=True)


def _route(table: SourceTable, report: Report) -> Route | None:
    """The provider's `host` as a `hosts` entry: its port left out (openproxy compares hosts without it)."""
    text = required_text(table, "host")
    slash = text.find("/")
    host_port, prefix = (text, "") if slash == -1 else (text[:slash], text[slash:].rstrip("/"))
    host, port = split_host_port(host_port)
    try:
        entry = canonical_host_entry(host + prefix)
    except HostEntryError as exc:
        report.dropped(table.at("host"), f"{text!r} cannot be an llmrelay hosts entry ({exc}); the provider is left out")
        return None
    if port is not None:
        report.note(f"{table.at('host')}: openproxy matches {host} on any port, so the port {port} is left out of hosts")
    bare, canonical_prefix = split_path_prefix(entry)
    return Route(entry, bare, canonical_prefix)


def _plan_endpoints(items: list[dict[str, Any]], report: Report) -> list[PlannedEndpoint]:
    """One endpoint per distinct route, in the order the file first names it."""
    plans: dict[str, PlannedEndpoint] = {}
    taken: set[str] = set()
    for index, item in enumerate(items):
        table = SourceTable(item, f"providers[{index}]", report)
        kind = required_text(table, "type")
        if kind not in PROVIDER_TYPES:
            raise refused(table.at("type"), f"is {kind!r}, where openproxy knows {', '.join(PROVIDER_TYPES)}")
        route = _route(table, report)
        if route is None:
            continue
        if route.entry not in plans:
            name = endpoint_name(route.entry, taken)
            taken.add(name)
            plans[route.entry] = PlannedEndpoint(name, route, [])
        plans[route.entry].provider_indices.append(index)
    return list(plans.values())


# -- one endpoint ----------------------------------------------------------------------------


def _endpoint(
    plan: PlannedEndpoint, items: list[dict[str, Any]], policy: HealthPolicy, global_keys: list[str],
    report: Report, comments: dict[str, str],
) -> dict[str, Any] | None:
    """The endpoint of one route; None when none of its providers can be reached."""
    where = f"endpoints.{plan.name}"
    for index in plan.provider_indices:
        table = SourceTable(items[index], f"providers[{index}]", report)
        if _unreachable(items[index], global_keys):
            table.drop_rest("the provider has `auth_keys: []` and the file no top-level auth_keys: no client can reach"
                            " it in openproxy, and it is left out", changes_behaviour=False)
            continue
        table.take("type")
        table.take("host")
        report.moved(table.at("host"), f"{where}.hosts")
        position = len(plan.converted)
        converted = convert_provider(table, index, items[index]["type"], f"{where}.upstreams[{position}]", policy, report)
        plan.converted.append(converted)
        comments[converted.destination] = _upstream_comment(converted, items[index])
    if not plan.converted:
        return None
    _weigh_lone_tiers(plan, report)
    endpoint: dict[str, Any] = {"hosts": [plan.route.entry]}
    _relay_keys(endpoint, plan, global_keys, report)
    endpoint["upstreams"] = [provider.upstream for provider in plan.converted]
    sources = ", ".join(provider.source for provider in plan.converted)
    comments[where] = f"Host {plan.route.entry}: {sources} of the openproxy file."
    return endpoint


def _weigh_lone_tiers(plan: PlannedEndpoint, report: Report) -> None:
    """openproxy weighs only among two or more candidates: a provider alone in its tier is chosen whatever
    its weight, where llmrelay never chooses a weight-0 upstream by weight."""
    parked = [provider for provider in plan.converted if provider.upstream["weight"] == 0]
    if not parked:
        return
    if len(parked) == len(plan.converted) and not any(provider.fallback for provider in parked):
        for provider in parked:
            provider.upstream["weight"] = 1.0
        report.note(f"endpoints.{plan.name}: every provider weighs 0; openproxy still serves a lone one (and fails to"
                    " weigh several), so each upstream weighs 1")
        return
    for provider in parked:
        report.dropped(
            f"{provider.source}.weight",
            "0: openproxy still chooses this provider when it is the only one left in its tier; llmrelay never"
            " chooses a weight-0 upstream by weight (it is parked, used only as a fallback)",
        )


def _unreachable(item: dict[str, Any], global_keys: list[str]) -> bool:
    return item.get("type") != "forward" and item.get("auth_keys") == [] and not global_keys


def _upstream_comment(provider: ConvertedProvider, item: dict[str, Any]) -> str:
    keys = provider.upstream.get("api_keys")
    detail = f", {len(keys)} keys (one openproxy provider each)" if keys else ""
    return f"{provider.source}: {provider.kind} {item.get('endpoint')}{detail}"


def _relay_keys(endpoint: dict[str, Any], plan: PlannedEndpoint, global_keys: list[str], report: Report) -> None:
    """The endpoint's and its upstreams' `auth_keys`, so each upstream takes the keys its provider took."""
    authenticating = [provider for provider in plan.converted if provider.authenticates]
    if not authenticating:
        endpoint["auth_keys"] = []  # forward: the client's own credentials pass, whatever the top level says
        report.note(f"endpoints.{plan.name}.auth_keys = []: openproxy's forward providers check no key and pass the client's")
        return
    forwards = [provider for provider in plan.converted if not provider.authenticates]
    for provider in forwards:
        report.dropped(
            f"{provider.source}.type",
            f"a forward provider shares its host with providers that check keys; in llmrelay the endpoint asks every"
            f" client for a relay key, where openproxy let any client reach {provider.source}",
        )
    scoped = [provider for provider in authenticating if provider.own_auth_keys is not None]
    for provider in scoped:
        _report_literal_keys(f"{provider.source}.auth_keys", provider.own_auth_keys or [], report)
    if scoped:
        _scope_upstreams(authenticating, global_keys, report)
    elif not global_keys and any(provider.injects_key for provider in authenticating):
        endpoint["public"] = True
        report.note(
            f"endpoints.{plan.name}.public = true: openproxy serves these providers to any client (no auth_keys"
            " anywhere) and spends their keys; add auth_keys to close it"
        )


def _scope_upstreams(providers: list[ConvertedProvider], global_keys: list[str], report: Report) -> None:
    for provider in providers:
        scope = unique([*global_keys, *(provider.own_auth_keys or [])])
        if provider.own_auth_keys is not None:
            provider.upstream["auth_keys"] = scope
            report.moved(f"{provider.source}.auth_keys", f"{provider.destination}.auth_keys",
                         "with the top-level auth_keys, which openproxy accepts there too" if global_keys else "")
        elif global_keys:
            provider.upstream["auth_keys"] = list(global_keys)
        else:
            report.dropped(
                f"{provider.source}.auth_keys (absent)",
                "with no top-level auth_keys openproxy lets any client reach this provider; in llmrelay its endpoint"
                " asks for a relay key, because another provider of the same host has auth_keys",
            )


# -- differences across endpoints ------------------------------------------------------------


def _report_wider_routes(plans: list[PlannedEndpoint], global_keys: list[str], report: Report) -> None:
    """openproxy also offers a request under `host/prefix` to the providers of `host` (and of shorter
    prefixes), with the prefix left in the path; llmrelay gives it to the longest prefix alone."""
    for plan in plans:
        if not plan.route.prefix or not plan.converted:
            continue
        wider = [
            provider for other in plans
            if other.route.host == plan.route.host and _is_wider(other.route.prefix, plan.route.prefix)
            for provider in other.converted
        ]
        if not wider:
            continue
        reason = _wider_difference(plan.converted, wider, global_keys)
        source = f"{plan.converted[0].source}.host"
        if reason is not None:
            report.dropped(source, reason)
        else:
            names = ", ".join(provider.source for provider in wider)
            report.note(
                f"{source}: in openproxy {names} also match paths under {plan.route.prefix} (the prefix left in),"
                f" and would take them only when every provider of {plan.route.entry} is unhealthy; llmrelay then"
                " answers 503"
            )


def _is_wider(prefix: str, narrower: str) -> bool:
    return prefix != narrower and (prefix == "" or narrower.startswith(prefix + "/"))


def _wider_difference(prefixed: list[ConvertedProvider], wider: list[ConvertedProvider], global_keys: list[str]) -> str | None:
    outranking = [provider for provider in wider if provider.rank >= min(p.rank for p in prefixed)]
    if outranking:
        names = ", ".join(provider.source for provider in outranking)
        return (
            f"in openproxy {names} compete for paths under this prefix (non-fallback first, then priority) and get"
            " them with the prefix left in the path; llmrelay sends those paths to this host/prefix endpoint alone"
        )
    if _accepted(wider, global_keys) - _accepted(prefixed, global_keys):
        return (
            "some relay keys are accepted by the providers of the wider host but not by these: openproxy sends such"
            " a client's requests under this prefix there, llmrelay refuses them (401)"
        )
    return None


_ANY_KEY = "\x00any client"


def _accepted(providers: list[ConvertedProvider], global_keys: list[str]) -> set[str]:
    """The relay keys that reach at least one of `providers` (with _ANY_KEY when no key is needed)."""
    accepted: set[str] = set()
    for provider in providers:
        keys = [*global_keys, *(provider.own_auth_keys or [])]
        if not provider.authenticates or (not keys and provider.own_auth_keys is None):
            return {_ANY_KEY}
        accepted.update(keys)
    return accepted


def _general_notes(policy: HealthPolicy, plans: list[PlannedEndpoint], report: Report) -> None:
    if policy.enabled:
        unchecked = [provider.source for plan in plans for provider in plan.converted if "health_check" not in provider.upstream]
        if unchecked:
            report.note(
                f"{', '.join(unchecked)}: no health_check block; openproxy only connects to them each round, llmrelay"
                " sees a failed connection in the requests themselves (passive health)"
            )
    report.note(
        "llmrelay also takes an upstream out after failed requests (passive health) and retries a failed attempt on"
        " another upstream (retries = 2), which openproxy does not: a request openproxy would fail may now succeed"
    )
