"""openproxy's `connect_tunnel_enabled` as llmrelay's `[server.connect]`.

openproxy (its README, "HTTP CONNECT Tunnel") routes `CONNECT host:port` like a request: to a
provider whose `host` is that host and whose port is that port, authenticated by that provider's
keys (the top-level `auth_keys` and its own; a forward provider by none), and it opens the tunnel to
the provider's `endpoint`, wrapped in TLS when the provider has `tls: true`. llmrelay tunnels to the
destination the client names, from an allow list, with one set of relay keys for every tunnel. The
allow list is each provider's host and port; what cannot be said that way is reported.
"""

from __future__ import annotations

from typing import Any

from llmrelay.importing.formats.openproxy_providers import ConvertedProvider
from llmrelay.importing.formats.openproxy_values import unique
from llmrelay.importing.report import Report


def connect_section(
    enabled: bool | None, routes: list[tuple[str, ConvertedProvider]], global_keys: list[str], report: Report
) -> dict[str, Any]:
    """`[server.connect]`; `routes` pairs each provider with the bare host clients name (no path prefix)."""
    if not enabled:
        if enabled is not None:
            report.moved("connect_tunnel_enabled", "server.connect.enabled")
        return {"enabled": False}
    allow: list[str] = []
    for host, provider in routes:
        allow.append(f"{host}:{provider.target.port}")
        _report_destination(host, provider, report)
    section: dict[str, Any] = {"enabled": True, "allow": unique(allow)}
    providers = [provider for _, provider in routes]
    _tunnel_auth(section, providers, global_keys, report)
    report.moved("connect_tunnel_enabled", "server.connect.enabled", "the allow list is each provider's host:port")
    report.note(
        "llmrelay refuses tunnels to names that resolve to private, loopback or link-local addresses"
        " (openproxy does not check); list such a destination as an IP literal to allow it"
    )
    return section


def _report_destination(host: str, provider: ConvertedProvider, report: Report) -> None:
    if provider.target.host.lower() != host:
        report.dropped(
            f"{provider.source}.endpoint (CONNECT)",
            f"openproxy tunnels CONNECT {host} to {provider.target.host}; llmrelay tunnels to the host the client names",
        )
    if provider.target.tls:
        report.dropped(
            f"{provider.source}.tls (CONNECT)",
            "openproxy wraps this provider's tunnels in its own TLS to the endpoint; llmrelay's tunnels carry the"
            " client's bytes as they are (the client speaks TLS inside the tunnel)",
        )


def _tunnel_auth(section: dict[str, Any], providers: list[ConvertedProvider], global_keys: list[str], report: Report) -> None:
    open_to_all = [provider for provider in providers if not provider.authenticates or not (global_keys or provider.own_auth_keys)]
    if len(open_to_all) == len(providers):
        section["auth"] = False
        report.note("server.connect.auth = false: openproxy asks no key for these tunnels")
        return
    if open_to_all:
        names = ", ".join(provider.source for provider in open_to_all)
        report.dropped(
            "connect_tunnel_enabled (auth)",
            f"openproxy opens tunnels to {names} without a key; llmrelay asks every tunnel for a relay key",
        )
    scoped = [provider for provider in providers if provider.own_auth_keys]
    if scoped:
        section["auth_keys"] = unique([*global_keys, *(key for p in scoped for key in p.own_auth_keys or [])])
        names = ", ".join(provider.source for provider in scoped)
        report.dropped(
            "connect_tunnel_enabled (auth_keys)",
            f"the auth_keys of {names} admit tunnels to that provider only in openproxy; llmrelay has one list"
            " for every tunnel, so those keys now open tunnels to every allowed destination",
        )
