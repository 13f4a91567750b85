"""What `llmrelay check-config` prints of a valid config: its listeners, workers and limits, each endpoint
(route, hosts, paths, provider, relay keys, retries) and under it one line per upstream. Counts and
names only: never a key value, a proxy password or a Redis password."""

from __future__ import annotations

from llmrelay.config.resolved import RelayConfig, ResolvedEndpoint, ResolvedUpstream, redact_url


def _relay_keys(endpoint: ResolvedEndpoint) -> str:
    """How many relay keys an endpoint checks, and where they come from."""
    scoped = any(upstream.scope is not None for upstream in endpoint.upstreams)
    if endpoint.auth_source == "none":
        injecting = [bool(upstream.api_keys) for upstream in endpoint.upstreams]
        if not any(injecting):
            return "none (client credentials pass through)"
        if all(injecting):
            return "none"
        return "none (client credentials pass through to the upstreams without api_keys)"
    if endpoint.auth_source == "upstreams":
        return f"{len(endpoint.auth_keys)} (upstream auth_keys only)"
    origin = "own" if endpoint.auth_source == "endpoint" else "inherited from top-level auth_keys"
    if scoped:
        origin += ", and upstream auth_keys"
    return f"{len(endpoint.auth_keys)} ({origin})"


def _health_check(upstream: ResolvedUpstream) -> str:
    check = upstream.health_check
    if check is None:
        return "check=none"
    return f"check={check.method} {check.path} every {check.interval:g}s"


def _upstream_line(upstream: ResolvedUpstream) -> str:
    scope = "" if upstream.scope is None else f"  scope={len(upstream.scope)} relay key(s)"
    return (
        f"    upstream {upstream.name}  provider={upstream.provider}  target={upstream.target}"
        f"  proxy={redact_url(upstream.proxy_url) or 'direct'}"
        f"  weight={upstream.weight:g}  priority={upstream.priority}"
        f"  fallback={'true' if upstream.fallback else 'false'}"
        + ("  http2" if upstream.http2 else "")
        + f"  api_keys={len(upstream.api_keys)}{_refreshed(upstream)}{scope}  {_health_check(upstream)}"
    )


def _refreshed(upstream: ResolvedUpstream) -> str:
    """` (1 oauth, 1 refreshed every 300s)`: how its keys are presented and renewed, when not plainly."""
    notes = []
    oauth = sum(1 for key in upstream.api_keys if key.oauth)
    if oauth:
        notes.append(f"{oauth} oauth")
    periods = sorted({key.refresh for key in upstream.api_keys if key.refresh > 0})
    if periods:
        count = sum(1 for key in upstream.api_keys if key.refresh > 0)
        notes.append(f"{count} refreshed every {'/'.join(f'{p:g}' for p in periods)}s")
    return f" ({', '.join(notes)})" if notes else ""


def summary(config: RelayConfig) -> list[str]:
    """What check-config prints: listeners, endpoints and their upstreams, never a key value."""
    server = config.server
    lines = [f"config: {config.source}"]
    for listener in config.listeners:
        scheme = "http" if listener.tls is None else "https"
        line = f"listener: {scheme}://{listener.address}"
        if listener.tls is not None:
            line += f"  tls>={listener.tls.min_version}" + ("  mtls" if listener.tls.client_ca_file else "")
        lines.append(line)
    lines.append(
        f"workers: {server.workers}  http2: {'on' if server.http2.enabled else 'off'}"
        + (f"  connect: {len(server.connect.allow)} destinations" if server.connect.enabled else "")
    )
    limits = config.limits
    if limits.rules or limits.backend != "local":
        lines.append(
            f"limits: {len(limits.rules)} rule(s)  backend={limits.backend}"
            + (f" ({limits.redacted_url()})" if limits.backend == "redis" else "")
            + f"  on_backend_error={limits.on_backend_error}"
            + ("  inject_stream_usage" if limits.inject_stream_usage else "")
        )
        lines += [f"  rule {rule.name}: per {rule.per}{':' + rule.per_header if rule.per_header else ''}" for rule in limits.rules]
    lines.append("endpoints:")
    for endpoint in config.endpoints:
        route = f"/{endpoint.name}/"
        if endpoint.hosts:
            route += " hosts=" + ",".join(endpoint.hosts)
        if endpoint.paths:
            route += " paths=" + ",".join(endpoint.paths)
        lines.append(
            f"  {route}  provider={endpoint.provider}  relay_keys={_relay_keys(endpoint)}"
            f"  retries={endpoint.retries}  retry_deadline={endpoint.retry_deadline:g}s"
            f"  retry_body_limit={endpoint.retry_body_limit}"
            + (f"  forwarded_headers={endpoint.forwarded_headers}" if endpoint.forwarded_headers != "append" else "")
            + ("  public" if endpoint.public else "")
            + ("" if endpoint.allow_websocket else "  websocket=off")
        )
        lines += [_upstream_line(upstream) for upstream in endpoint.upstreams]
    return lines
