"""The runtime config: what a worker runs on, built from the file's sections.

Secrets are resolved, the server's `target_base` and the global `auth_keys` are inherited, the
provider is inferred, URLs are parsed, and every cross-field rule is checked here, collecting every
error with its key path. A `RelayConfig` is what the supervisor sends to its workers (msgpack over the
control pipe): workers never read the file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

import msgspec

from llmrelay.config.decode import printable
from llmrelay.config.files import ca_file_problem
from llmrelay.config.hosts import HostEntryError, canonical_host_entry
from llmrelay.config.limits import ClientLimits, PoolLimits, UpstreamTimeouts, client_limits
from llmrelay.config.schema import (
    ApiKeyEntry,
    ConfigFile,
    EndpointSection,
    HealthCheckSection,
    ServerSection,
    UpstreamSection,
)
from llmrelay.config.secrets import SecretError, resolve_secret

ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.~-]*")
RESERVED_NAMES = frozenset({"health"})
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")

# Hosts whose provider is known; any other target is relayed as `forward` (OpenAI-style errors).
_PROVIDER_BY_DOMAIN = (
    ("anthropic.com", "anthropic"),
    ("googleapis.com", "gemini"),
    ("openai.com", "openai"),
    ("openai.azure.com", "openai"),
    ("groq.com", "openai"),
)


# The check `health_check = true` runs, per provider (joined with the target's path like a request).
DEFAULT_CHECK_PATHS = {"openai": "/v1/models", "anthropic": "/v1/models", "gemini": "/v1beta/models", "forward": "/v1/models"}
DEFAULT_UNHEALTHY_THRESHOLD = 3  # passive health, when an upstream has no health_check of its own
UPSTREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.~#-]*")
_METHOD = re.compile(r"[A-Z]+")


class WeightedKey(msgspec.Struct, frozen=True):
    key: str
    weight: float
    name: str = ""  # how /health and the logs name it: its configured name, else its index

    def __repr__(self) -> str:
        return f"WeightedKey(key=<redacted>, weight={self.weight}, name={self.name!r})"


class HealthCheck(msgspec.Struct, frozen=True, kw_only=True):
    """An upstream's active check, as the supervisor runs it."""

    method: str
    path: str  # joined with the target's base path when sent
    interval: float
    timeout: float
    expected_status: list[int]
    healthy_threshold: int
    unhealthy_threshold: int
    headers: list[tuple[str, str]]
    body: str


class Target(msgspec.Struct, frozen=True):
    """The parsed `target_base`: where an endpoint's requests go."""

    scheme: str
    host: str
    port: int
    base_path: str  # without a trailing slash; "" for the root

    @property
    def origin(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")

    @property
    def host_header(self) -> str:
        return self.origin.split("://", 1)[1]

    def __str__(self) -> str:
        return self.origin + self.base_path


class ResolvedUpstream(msgspec.Struct, frozen=True, kw_only=True):
    """One upstream of an endpoint, with the endpoint's defaults filled in."""

    name: str
    provider: str
    target: Target
    proxy_url: str | None
    api_keys: list[WeightedKey]
    scope: list[str] | None  # the relay keys that may use it; None: every key of its endpoint
    weight: float
    priority: int
    fallback: bool
    timeouts: UpstreamTimeouts
    ca_file: str | None
    proxy_ca_file: str | None
    pool: PoolLimits
    max_body_size: int
    health_check: HealthCheck | None
    unhealthy_threshold: int  # failures in a row that eject it (passive health)

    def __repr__(self) -> str:
        scope = "all" if self.scope is None else len(self.scope)
        return (
            f"ResolvedUpstream(name={self.name!r}, provider={self.provider!r}, target={str(self.target)!r}, "
            f"proxy={redact_url(self.proxy_url)!r}, api_keys={len(self.api_keys)}, scope={scope})"
        )


class ResolvedEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    provider: str  # the shape of the relay's own errors on this route
    hosts: list[str]  # canonical entries (`config.hosts`)
    auth_keys: list[str]  # its own (or the global ones), and every upstream's scoped keys
    auth_source: str  # "endpoint" (its own auth_keys), "global" (inherited) or "none" (pass-through)
    forwarded_headers: str  # "append", "replace" or "none"
    public: bool
    upstreams: list[ResolvedUpstream]
    retries: int
    retry_deadline: float
    retry_body_limit: int

    @property
    def max_body_size(self) -> int:
        """The largest body some upstream of this endpoint takes."""
        return max(upstream.max_body_size for upstream in self.upstreams)

    def __repr__(self) -> str:
        return (
            f"ResolvedEndpoint(name={self.name!r}, provider={self.provider!r}, "
            f"upstreams={[u.name for u in self.upstreams]}, auth_keys={len(self.auth_keys)})"
        )


class RelayConfig(msgspec.Struct, frozen=True, kw_only=True):
    server: ServerSection
    client: ClientLimits  # `server`'s client-connection keys, grouped for the protocol drivers
    endpoints: list[ResolvedEndpoint]
    source: str

    def __repr__(self) -> str:
        return f"RelayConfig(source={self.source!r}, endpoints={[e.name for e in self.endpoints]})"


def redact_url(url: str | None) -> str | None:
    """Drop any `user:password@` part of a URL, for logs and summaries."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def infer_provider(host: str) -> str:
    host = host.lower().rstrip(".")
    for domain, provider in _PROVIDER_BY_DOMAIN:
        if host == domain or host.endswith("." + domain):
            return provider
    return "forward"


_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")


def _is_listen_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return _HOST_NAME.fullmatch(host) is not None


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_target(url: str, path: str, errors: list[str]) -> Target | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        errors.append(f"{path}: not a valid URL ({exc})")
        return None
    if parts.scheme not in ("http", "https"):
        errors.append(f"{path}: expected an http:// or https:// URL, got {url!r}")
        return None
    if not parts.hostname:
        errors.append(f"{path}: the URL has no host")
        return None
    if parts.username or parts.password:
        errors.append(f"{path}: credentials in target_base are not supported; use api_key")
        return None
    if parts.query or parts.fragment:
        errors.append(f"{path}: target_base must not have a query or fragment")
        return None
    default = 443 if parts.scheme == "https" else 80
    return Target(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or default,
        base_path=parts.path.rstrip("/"),
    )


def _check_proxy_url(url: str, path: str, errors: list[str]) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        errors.append(f"{path}: not a valid URL ({exc})")
        return
    if parts.scheme not in PROXY_SCHEMES:
        errors.append(f"{path}: expected a scheme among {', '.join(PROXY_SCHEMES)}, got {parts.scheme or 'none'!r}")
    elif not parts.hostname:
        errors.append(f"{path}: the proxy URL has no host")
    elif parts.scheme.startswith("socks5") and any(
        len(unquote(part or "").encode()) > 255 for part in (parts.username, parts.password)
    ):
        errors.append(f"{path}: a SOCKS5 user name or password is at most 255 bytes")


def _resolve_keys(
    values: list[str], path: str, errors: list[str], environ: Mapping[str, str] | None
) -> list[str]:
    keys: list[str] = []
    for index, value in enumerate(values):
        try:
            keys.append(resolve_secret(value, environ))
        except SecretError as exc:
            errors.append(f"{path}[{index}]: {exc}")
    return keys


def _resolve_api_keys(
    api_key: str | None,
    api_keys: list[ApiKeyEntry],
    path: str,
    errors: list[str],
    environ: Mapping[str, str] | None,
) -> list[WeightedKey]:
    if api_key is not None and api_keys:
        errors.append(f"{path}: set api_key or api_keys, not both")
        return []
    if api_key is not None:
        try:
            return [WeightedKey(resolve_secret(api_key, environ), 1.0, "0")]
        except SecretError as exc:
            errors.append(f"{path}.api_key: {exc}")
            return []
    keys: list[WeightedKey] = []
    for index, entry in enumerate(api_keys):
        try:
            keys.append(WeightedKey(resolve_secret(entry.key, environ), entry.weight, entry.name or str(index)))
        except SecretError as exc:
            errors.append(f"{path}.api_keys[{index}].key: {exc}")
    if api_keys and not any(entry.weight > 0 for entry in api_keys):
        errors.append(f"{path}.api_keys: at least one key needs a weight > 0")
    names = [entry.name if entry.name is not None else str(index) for index, entry in enumerate(api_keys)]
    for index, entry in enumerate(api_keys):
        if entry.name is not None and not UPSTREAM_NAME.fullmatch(entry.name):
            errors.append(f"{path}.api_keys[{index}].name: invalid key name {printable(entry.name)!r} (letters, digits, '_', '.', '~', '#', '-')")
    for name in sorted({name for name in names if names.count(name) > 1}):
        errors.append(f"{path}.api_keys: the key name {printable(name)!r} is used twice (a key without a name is named by its index)")
    return keys


def _resolve_health_check(
    value: bool | HealthCheckSection | None, provider: str, path: str, errors: list[str]
) -> HealthCheck | None:
    if value is None or value is False:
        return None
    section = HealthCheckSection() if value is True else value
    check_path = section.path if section.path is not None else DEFAULT_CHECK_PATHS.get(provider, "/v1/models")
    if not check_path.startswith("/"):
        errors.append(f"{path}.path: must start with '/', got {printable(check_path)!r}")
    if not _METHOD.fullmatch(section.method):
        errors.append(f"{path}.method: expected an upper-case HTTP method, got {printable(section.method)!r}")
    for name, text in section.headers.items():
        if not name or not all(33 <= ord(c) < 127 and c not in '()<>@,;:\\"/[]?={} ' for c in name):
            errors.append(f"{path}.headers: {printable(name)!r} is not a header name")
        elif any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in text):
            errors.append(f"{path}.headers.{printable(name)}: control characters are not allowed")
    if section.timeout > section.interval:
        errors.append(f"{path}.timeout: must not be longer than its interval ({section.interval:g} s)")
    return HealthCheck(
        method=section.method,
        path=check_path,
        interval=section.interval,
        timeout=section.timeout,
        expected_status=sorted(set(section.expected_status)),
        healthy_threshold=section.healthy_threshold,
        unhealthy_threshold=section.unhealthy_threshold,
        headers=list(section.headers.items()),
        body=section.body,
    )


def _check_ca_files(values: tuple[tuple[str, str | None], ...], path: str, errors: list[str]) -> None:
    for key, ca_path in values:
        problem = ca_file_problem(ca_path) if ca_path is not None else None
        if problem is not None:
            errors.append(f"{path}.{key}: {printable(problem)}")


def _resolve_hosts(
    entries: list[str], name: str, path: str, host_owner: dict[str, str], errors: list[str]
) -> list[str]:
    """The canonical `hosts` entries of endpoint `name`; each one may be routed to one endpoint only."""
    hosts: list[str] = []
    for index, entry in enumerate(entries):
        where = f"{path}.hosts[{index}]"
        try:
            host = canonical_host_entry(entry)
        except HostEntryError as exc:
            errors.append(f"{where}: {printable(entry)!r} is not a host or host:port ({exc})")
            continue
        if host in host_owner:
            errors.append(f"{where}: {host} is already routed to endpoint {printable(host_owner[host])}")
            continue
        host_owner[host] = name
        hosts.append(host)
    return hosts


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
        _check_proxy_url(upstream.proxy_url, f"{path}.proxy_url", errors)
    ca_file = upstream.ca_file if upstream.ca_file is not None else endpoint.ca_file
    proxy_ca_file = upstream.proxy_ca_file if upstream.proxy_ca_file is not None else endpoint.proxy_ca_file
    if not flat:
        _check_ca_files((("ca_file", upstream.ca_file), ("proxy_ca_file", upstream.proxy_ca_file)), path, errors)
    if upstream.api_key is not None or upstream.api_keys is not None:
        api_keys = _resolve_api_keys(upstream.api_key, upstream.api_keys or [], path, errors, environ)
    else:
        api_keys = context.default_keys
    scope: list[str] | None = None
    if upstream.auth_keys is not None:
        scope = _resolve_keys(upstream.auth_keys, f"{path}.auth_keys", errors, environ)
        if not upstream.auth_keys:
            errors.append(
                f"{path}.auth_keys: empty, so no client key could ever reach this upstream "
                "(remove the key to accept every key of the endpoint)"
            )
    if target is None:
        return None
    provider = upstream.provider or endpoint.provider or infer_provider(target.host)
    check_value = upstream.health_check if upstream.health_check is not None else endpoint.health_check
    check_path = f"{path}.health_check" if upstream.health_check is not None else f"{context.path}.health_check"
    # (an endpoint's own check was judged once, with the endpoint: its mistakes are reported there)
    check = _resolve_health_check(check_value, provider, check_path, errors if upstream.health_check is not None else [])

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
        health_check=check,
        unhealthy_threshold=check.unhealthy_threshold if check else DEFAULT_UNHEALTHY_THRESHOLD,
    )


def _resolve_endpoint(
    name: str,
    section: EndpointSection,
    file: ConfigFile,
    global_auth: list[str],
    host_owner: dict[str, str],
    errors: list[str],
    environ: Mapping[str, str] | None,
) -> ResolvedEndpoint | None:
    server = file.server
    path = f"endpoints.{printable(name)}"
    before = len(errors)
    if not ENDPOINT_NAME.fullmatch(name) or name in RESERVED_NAMES:
        errors.append(f"{path}: invalid endpoint name (letters, digits, '_', '.', '~', '-'; not 'health')")
    if section.proxy_url is not None:
        _check_proxy_url(section.proxy_url, f"{path}.proxy_url", errors)
    hosts = _resolve_hosts(section.hosts, name, path, host_owner, errors)
    if section.auth_keys is None:
        auth, auth_source = global_auth, "global" if file.auth_keys else "none"
    else:
        auth = _resolve_keys(section.auth_keys, f"{path}.auth_keys", errors, environ)
        auth_source = "endpoint" if section.auth_keys else "none"
    _check_ca_files((("ca_file", section.ca_file), ("proxy_ca_file", section.proxy_ca_file)), path, errors)
    default_keys = _resolve_api_keys(section.api_key, section.api_keys, path, errors, environ)
    if isinstance(section.health_check, HealthCheckSection):  # judged here once, whoever inherits it
        _resolve_health_check(section.health_check, section.provider or "openai", f"{path}.health_check", errors)
    context = _EndpointContext(name=name, path=path, section=section, default_keys=default_keys)
    upstreams: list[ResolvedUpstream] = []
    paths: list[str] = []
    seen: dict[str, str] = {}
    for index, (upstream_path, upstream_section) in enumerate(_upstream_sections(name, path, section, server, errors)):
        resolved = _resolve_upstream(context, index, upstream_path, upstream_section, errors, environ)
        if resolved is None:
            continue
        if resolved.name in seen:
            errors.append(f"{upstream_path}.name: duplicate upstream name {printable(resolved.name)!r} (also {seen[resolved.name]})")
        seen.setdefault(resolved.name, upstream_path)
        upstreams.append(resolved)
        paths.append(upstream_path)
    accepted = list(auth)  # the union of the endpoint's keys and every upstream's scoped keys
    for resolved in upstreams:
        accepted += [key for key in resolved.scope or () if key not in accepted]
    if not accepted and not is_loopback_host(server.host) and not section.public:
        for resolved, upstream_path in zip(upstreams, paths):
            if resolved.api_keys:
                errors.append(
                    f"{upstream_path}: injects an api_key on non-loopback listener {printable(server.host)} without "
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
        auth_keys=accepted,
        auth_source=auth_source,
        forwarded_headers=section.forwarded_headers or server.forwarded_headers,
        public=section.public,
        upstreams=upstreams,
        retries=section.retries,
        retry_deadline=section.retry_deadline,
        retry_body_limit=section.retry_body_limit,
    )


def resolve_config(
    file: ConfigFile, source: str, errors: list[str], environ: Mapping[str, str] | None = None
) -> RelayConfig | None:
    """Build the runtime config, appending every problem to `errors`."""
    before = len(errors)
    server = file.server
    global_auth = _resolve_keys(file.auth_keys, "auth_keys", errors, environ)
    if server.target_base is not None:
        parse_target(server.target_base, "server.target_base", errors)
    if server.heartbeat_timeout <= server.heartbeat_interval:
        errors.append("server.heartbeat_timeout: must be longer than server.heartbeat_interval")
    if not _is_listen_host(server.host):
        errors.append(f"server.host: expected an IP address or a host name, got {printable(server.host)!r}")
    endpoints: list[ResolvedEndpoint] = []
    host_owner: dict[str, str] = {}
    for name, section in file.endpoints.items():
        endpoint = _resolve_endpoint(name, section, file, global_auth, host_owner, errors, environ)
        if endpoint is not None:
            endpoints.append(endpoint)
    if len(errors) > before:
        return None
    return RelayConfig(server=server, client=client_limits(server), endpoints=endpoints, source=source)
