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
from llmrelay.config.limits import ClientLimits, PoolLimits, UpstreamTimeouts, client_limits, pool_limits, upstream_timeouts
from llmrelay.config.schema import ConfigFile, EndpointSection, ServerSection
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


class WeightedKey(msgspec.Struct, frozen=True):
    key: str
    weight: float

    def __repr__(self) -> str:
        return f"WeightedKey(key=<redacted>, weight={self.weight})"


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


class ResolvedEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    provider: str
    target: Target
    proxy_url: str | None
    hosts: list[str]  # canonical entries (`config.hosts`)
    auth_keys: list[str]
    auth_source: str  # "endpoint" (its own auth_keys), "global" (inherited) or "none" (pass-through)
    api_keys: list[WeightedKey]
    forwarded_headers: str  # "append", "replace" or "none"
    public: bool
    timeouts: UpstreamTimeouts
    ca_file: str | None
    proxy_ca_file: str | None
    pool: PoolLimits
    max_body_size: int

    def __repr__(self) -> str:
        return (
            f"ResolvedEndpoint(name={self.name!r}, provider={self.provider!r}, target={str(self.target)!r}, "
            f"proxy={redact_url(self.proxy_url)!r}, auth_keys={len(self.auth_keys)}, api_keys={len(self.api_keys)})"
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
    section: EndpointSection, path: str, errors: list[str], environ: Mapping[str, str] | None
) -> list[WeightedKey]:
    if section.api_key is not None and section.api_keys:
        errors.append(f"{path}: set api_key or api_keys, not both")
        return []
    if section.api_key is not None:
        try:
            return [WeightedKey(resolve_secret(section.api_key, environ), 1.0)]
        except SecretError as exc:
            errors.append(f"{path}.api_key: {exc}")
            return []
    keys: list[WeightedKey] = []
    for index, entry in enumerate(section.api_keys):
        try:
            keys.append(WeightedKey(resolve_secret(entry.key, environ), entry.weight))
        except SecretError as exc:
            errors.append(f"{path}.api_keys[{index}].key: {exc}")
    if section.api_keys and not any(entry.weight > 0 for entry in section.api_keys):
        errors.append(f"{path}.api_keys: at least one key needs a weight > 0")
    return keys


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
    loopback = is_loopback_host(server.host)
    if not _is_listen_host(server.host):
        errors.append(f"server.host: expected an IP address or a host name, got {printable(server.host)!r}")
    endpoints: list[ResolvedEndpoint] = []
    host_owner: dict[str, str] = {}
    for name, section in file.endpoints.items():
        path = f"endpoints.{printable(name)}"
        if not ENDPOINT_NAME.fullmatch(name) or name in RESERVED_NAMES:
            errors.append(f"{path}: invalid endpoint name (letters, digits, '_', '.', '~', '-'; not 'health')")
        base = section.target_base or server.target_base
        if base is None:
            errors.append(f"{path}.target_base: required (no server.target_base to inherit)")
            continue
        target = parse_target(base, f"{path}.target_base", errors)
        if section.proxy_url is not None:
            _check_proxy_url(section.proxy_url, f"{path}.proxy_url", errors)
        hosts = _resolve_hosts(section.hosts, name, path, host_owner, errors)
        if section.auth_keys is None:
            auth, auth_source = global_auth, "global" if file.auth_keys else "none"
        else:
            auth = _resolve_keys(section.auth_keys, f"{path}.auth_keys", errors, environ)
            auth_source = "endpoint" if section.auth_keys else "none"
        for key, ca_path in (("ca_file", section.ca_file), ("proxy_ca_file", section.proxy_ca_file)):
            problem = ca_file_problem(ca_path) if ca_path is not None else None
            if problem is not None:
                errors.append(f"{path}.{key}: {printable(problem)}")
        api_keys = _resolve_api_keys(section, path, errors, environ)
        if api_keys and not auth and not loopback and not section.public:
            errors.append(
                f"{path}: injects an api_key on non-loopback listener {printable(server.host)} without auth_keys; "
                "that is an open relay spending your key (set auth_keys, or public = true to allow it)"
            )
        if target is None:
            continue
        endpoints.append(
            ResolvedEndpoint(
                name=name,
                provider=section.provider or infer_provider(target.host),
                target=target,
                proxy_url=section.proxy_url,
                hosts=hosts,
                auth_keys=auth,
                auth_source=auth_source,
                api_keys=api_keys,
                forwarded_headers=section.forwarded_headers or server.forwarded_headers,
                public=section.public,
                timeouts=upstream_timeouts(section),
                ca_file=section.ca_file,
                proxy_ca_file=section.proxy_ca_file,
                pool=pool_limits(section),
                max_body_size=section.max_body_size,
            )
        )
    if len(errors) > before:
        return None
    return RelayConfig(server=server, client=client_limits(server), endpoints=endpoints, source=source)
