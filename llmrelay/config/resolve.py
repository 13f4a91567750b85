"""Building the runtime config (`resolved`) from the file's sections, collecting every error.

Secrets are resolved, the server's `target_base` and the global `auth_keys` are inherited, an
endpoint's per-upstream keys become its upstreams' defaults (the flat keys are the one-upstream
shorthand), the provider is inferred, URLs are parsed, and every cross-field rule is checked, each
error with its key path.

Relay keys are gathered in one `RelayKeyBook` (`relay_keys`) as they are resolved, wherever they
appear: a key's name holds for the whole config (an unnamed mention of a named key's value is that
name too), which is what makes `auth_key_names` and the limit rules' `relay_key` matches mean one
thing. `[limits]` is resolved last (`limit_rules`), once every key, endpoint and upstream name is known.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from llmrelay.config.decode import printable
from llmrelay.config.listeners import resolve_connect, resolve_listeners
from llmrelay.config.limits import PoolLimits, UpstreamTimeouts, client_limits
from llmrelay.config.resolved import RelayConfig, ResolvedEndpoint, ResolvedUpstream, WeightedKey
from llmrelay.config.schema import (
    ConfigFile,
    EndpointSection,
    HealthCheckSection,
    ServerSection,
    UpstreamSection,
)
from llmrelay.config.values import (
    DEFAULT_UNHEALTHY_THRESHOLD,
    ENDPOINT_NAME,
    RESERVED_NAMES,
    UPSTREAM_NAME,
    check_ca_files,
    check_proxy_url,
    infer_provider,
    is_loopback_host,
    parse_target,
    resolve_api_keys,
    resolve_health_check,
    resolve_hosts,
    resolve_paths,
    resolve_keys,
)

from llmrelay.config.limit_rules import resolve_limits
from llmrelay.config.relay_keys import RelayKeyBook

# A relay key's name: it is shown in logs, metrics and usage, and keys the limit counters.
class _EndpointContext(msgspec.Struct, frozen=True):
    """What resolving an endpoint's upstreams needs to know about the endpoint and the server."""

    name: str
    path: str
    section: EndpointSection
    default_keys: list[WeightedKey]  # the endpoint's api_key / api_keys: its upstreams' default


def _upstream_sections(
    name: str, path: str, section: EndpointSection, server: ServerSection, errors: list[str]
) -> list[tuple[str, UpstreamSection]]:
    """The endpoint's upstreams with their key paths: its `upstreams`, or the flat shorthand as one."""
    if section.upstreams:
        if section.target_base is not None:
            errors.append(
                f"{path}.target_base: the one-upstream shorthand cannot be combined with {path}.upstreams "
                "(move it into an upstream)"
            )
        return [(f"{path}.upstreams[{index}]", upstream) for index, upstream in enumerate(section.upstreams)]
    base = section.target_base or server.target_base
    if base is None:
        errors.append(f"{path}.target_base: required (no server.target_base to inherit, and no upstreams)")
        return []
    return [(path, UpstreamSection(target_base=base))]


def _resolve_upstream(
    context: _EndpointContext,
    index: int,
    path: str,
    upstream: UpstreamSection,
    errors: list[str],
    environ: Mapping[str, str] | None,
    book: RelayKeyBook,
) -> ResolvedUpstream | None:
    endpoint = context.section
    flat = path == context.path
    where = "target_base" if not flat or endpoint.target_base is not None else "server.target_base"
    target = parse_target(upstream.target_base, f"{path}.target_base" if where == "target_base" else where, errors)
    name = upstream.name if upstream.name is not None else f"{context.name}#{index}"
    if upstream.name is not None and not UPSTREAM_NAME.fullmatch(upstream.name):
        errors.append(f"{path}.name: invalid upstream name {printable(upstream.name)!r} (letters, digits, '_', '.', '~', '#', '-')")
    proxy_url = upstream.proxy_url if upstream.proxy_url is not None else endpoint.proxy_url
    if upstream.proxy_url is not None:
        check_proxy_url(upstream.proxy_url, f"{path}.proxy_url", errors)
    ca_file = upstream.ca_file if upstream.ca_file is not None else endpoint.ca_file
    proxy_ca_file = upstream.proxy_ca_file if upstream.proxy_ca_file is not None else endpoint.proxy_ca_file
    if not flat:
        check_ca_files((("ca_file", upstream.ca_file), ("proxy_ca_file", upstream.proxy_ca_file)), path, errors)
    key_type = upstream.key_type or endpoint.key_type
    if upstream.api_key is not None or upstream.token_env is not None or upstream.api_keys is not None:
        api_keys = resolve_api_keys(
            upstream.api_key, upstream.api_keys or [], path, errors, environ, upstream.token_env, key_type, upstream.refresh_interval
        )
    elif upstream.refresh_interval is not None:
        errors.append(f"{path}.refresh_interval: set it beside the $(command) api_key it refreshes")
        api_keys = context.default_keys
    else:
        api_keys = context.default_keys
    scope: list[str] | None = None
    if upstream.auth_keys is not None:
        scope = book.resolve(upstream.auth_keys, f"{path}.auth_keys", errors)
        if not upstream.auth_keys:
            errors.append(
                f"{path}.auth_keys: empty, so no client key could ever reach this upstream "
                "(remove the key to accept every key of the endpoint)"
            )
    if target is None:
        return None
    provider = upstream.provider or endpoint.provider or infer_provider(target.host)
    if provider != "anthropic" and any(key.oauth for key in api_keys):
        errors.append(f'{path}: key_type = "oauth" is for Anthropic OAuth tokens; this upstream\'s provider is {provider}')
    check_value = upstream.health_check if upstream.health_check is not None else endpoint.health_check
    check_path = f"{path}.health_check" if upstream.health_check is not None else f"{context.path}.health_check"
    # (an endpoint's own check was judged once, with the endpoint: its mistakes are reported there)
    check = resolve_health_check(check_value, provider, check_path, errors if upstream.health_check is not None else [])

    def chosen(own: float | None, default: float) -> float:
        return default if own is None else own

    return ResolvedUpstream(
        name=name,
        provider=provider,
        target=target,
        proxy_url=proxy_url,
        api_keys=api_keys,
        scope=scope,
        weight=upstream.weight,
        priority=upstream.priority,
        fallback=upstream.fallback,
        timeouts=UpstreamTimeouts(
            connect=chosen(upstream.connect_timeout, endpoint.connect_timeout),
            first_byte=chosen(upstream.first_byte_timeout, endpoint.first_byte_timeout),
            idle=chosen(upstream.idle_timeout, endpoint.idle_timeout),
        ),
        ca_file=ca_file,
        proxy_ca_file=proxy_ca_file,
        pool=PoolLimits(
            max_connections=int(chosen(upstream.max_connections, endpoint.max_connections)),
            keepalive_expiry=chosen(upstream.keepalive_expiry, endpoint.keepalive_expiry),
            wait=chosen(upstream.pool_timeout, endpoint.pool_timeout),
        ),
        max_body_size=int(chosen(upstream.max_body_size, endpoint.max_body_size)),
        http2=bool(chosen(upstream.http2, endpoint.http2)),
        health_check=check,
        unhealthy_threshold=check.unhealthy_threshold if check else DEFAULT_UNHEALTHY_THRESHOLD,
    )


def _resolve_endpoint(
    name: str,
    section: EndpointSection,
    file: ConfigFile,
    global_auth: list[str],
    host_owner: dict[str, str],
    exposed: str | None,  # the first non-loopback listener's host
    errors: list[str],
    environ: Mapping[str, str] | None,
    book: RelayKeyBook,
) -> ResolvedEndpoint | None:
    server = file.server
    path = f"endpoints.{printable(name)}"
    before = len(errors)
    if not ENDPOINT_NAME.fullmatch(name) or name in RESERVED_NAMES:
        errors.append(f"{path}: invalid endpoint name (letters, digits, '_', '.', '~', '-'; not 'health')")
    if section.proxy_url is not None:
        check_proxy_url(section.proxy_url, f"{path}.proxy_url", errors)
    hosts = resolve_hosts(section.hosts, name, path, host_owner, errors)
    paths = resolve_paths(section.paths, name, path, host_owner, errors)
    if section.auth_keys is None:
        auth, auth_source = global_auth, "global" if file.auth_keys else "none"
    else:
        auth = book.resolve(section.auth_keys, f"{path}.auth_keys", errors)
        auth_source = "endpoint" if section.auth_keys else "none"
    check_ca_files((("ca_file", section.ca_file), ("proxy_ca_file", section.proxy_ca_file)), path, errors)
    default_keys = resolve_api_keys(
        section.api_key, section.api_keys, path, errors, environ, section.token_env, section.key_type, section.refresh_interval
    )
    if isinstance(section.health_check, HealthCheckSection):  # judged here once, whoever inherits it
        resolve_health_check(section.health_check, section.provider or "openai", f"{path}.health_check", errors)
    context = _EndpointContext(name=name, path=path, section=section, default_keys=default_keys)
    upstreams: list[ResolvedUpstream] = []
    upstream_paths: list[str] = []
    seen: dict[str, str] = {}
    for index, (upstream_path, upstream_section) in enumerate(_upstream_sections(name, path, section, server, errors)):
        resolved = _resolve_upstream(context, index, upstream_path, upstream_section, errors, environ, book)
        if resolved is None:
            continue
        if resolved.name in seen:
            errors.append(f"{upstream_path}.name: duplicate upstream name {printable(resolved.name)!r} (also {seen[resolved.name]})")
        seen.setdefault(resolved.name, upstream_path)
        upstreams.append(resolved)
        upstream_paths.append(upstream_path)
    accepted = list(auth)  # the union of the endpoint's keys and every upstream's scoped keys
    for resolved in upstreams:
        accepted += [key for key in resolved.scope or () if key not in accepted]
    if not accepted and exposed is not None and not section.public:
        for resolved, upstream_path in zip(upstreams, upstream_paths):
            if resolved.api_keys:
                errors.append(
                    f"{upstream_path}: injects an api_key on non-loopback listener {printable(exposed)} without "
                    "auth_keys; that is an open relay spending your key (set auth_keys, or public = true to allow it)"
                )
    if upstreams and not any(u.weight > 0 or u.fallback for u in upstreams):
        errors.append(
            f"{path}.upstreams: every upstream has weight 0 and none is a fallback, so no request could be served "
            "(weight 0 parks an upstream; give one a weight, or make it a fallback)"
        )
    if len(errors) > before or not upstreams:
        return None
    if accepted and auth_source == "none":
        auth_source = "upstreams"
    return ResolvedEndpoint(
        name=name,
        provider=section.provider or upstreams[0].provider,
        hosts=hosts,
        paths=paths,
        auth_keys=accepted,
        auth_source=auth_source,
        forwarded_headers=section.forwarded_headers or server.forwarded_headers,
        public=section.public,
        upstreams=upstreams,
        retries=section.retries,
        retry_deadline=section.retry_deadline,
        retry_body_limit=section.retry_body_limit,
        allow_websocket=section.allow_websocket,
        websocket_idle_timeout=section.websocket_idle_timeout,
        cors=section.cors if section.cors is not None else server.cors,
        processors=section.processors,
    )


def resolve_config(
    file: ConfigFile, source: str, errors: list[str], environ: Mapping[str, str] | None = None
) -> RelayConfig | None:
    """Build the runtime config, appending every problem to `errors`."""
    before = len(errors)
    server = file.server
    book = RelayKeyBook(environ)
    global_auth = book.resolve(file.auth_keys, "auth_keys", errors)
    if server.target_base is not None:
        parse_target(server.target_base, "server.target_base", errors)
    if server.heartbeat_timeout <= server.heartbeat_interval:
        errors.append("server.heartbeat_timeout: must be longer than server.heartbeat_interval")
    listeners = resolve_listeners(file, errors)
    exposed = next((listener.host for listener in listeners if not is_loopback_host(listener.host)), None)
    endpoints: list[ResolvedEndpoint] = []
    host_owner: dict[str, str] = {}
    for name, section in file.endpoints.items():
        endpoint = _resolve_endpoint(name, section, file, global_auth, host_owner, exposed, errors, environ, book)
        if endpoint is not None:
            endpoints.append(endpoint)
    connect_keys = resolve_connect(file, global_auth, errors, environ)
    # (checked here so that a key that cannot be resolved is a config error; the supervisor resolves
    # them again for its admin listener)
    resolve_keys(server.admin.auth_keys, "server.admin.auth_keys", errors, environ)
    for name, section in file.endpoints.items():
        for index, processor in enumerate(section.processors):
            rewrite = processor.rewrite_with
            if rewrite is not None and rewrite.endpoint not in file.endpoints:
                errors.append(
                    f"endpoints.{name}.processors[{index}].rewrite_with.endpoint: no endpoint named {rewrite.endpoint!r}"
                )
    book.check(errors)
    limits = resolve_limits(file, book, errors, environ)
    if len(errors) > before:
        return None
    endpoints = [
        msgspec.structs.replace(endpoint, auth_key_names=[book.name(key) for key in endpoint.auth_keys])
        for endpoint in endpoints
    ]
    return RelayConfig(
        server=server,
        client=client_limits(server),
        endpoints=endpoints,
        source=source,
        listeners=listeners,
        connect_keys=connect_keys,
        limits=limits,
    )


# -- [limits] ---------------------------------------------------------------------------------------
