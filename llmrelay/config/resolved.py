"""The runtime config: what a worker runs on, as frozen Structs.

`resolve.resolve_config` builds a `RelayConfig` from the file's sections (secrets resolved, defaults
inherited, every cross-field rule checked). A `RelayConfig` is what the supervisor sends to its
workers (msgpack over the control pipe): workers never read the file.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import msgspec

from llmrelay.config.limits import ClientLimits, PoolLimits, UpstreamTimeouts
from llmrelay.config.schema import CorsSection, ListenSection, ProcessorSection, ServerSection
from llmrelay.limits.types import Limits

# Characters of message text per token, per provider, when a request's tokens are estimated before
# it is sent (the real usage read from the response replaces the estimate). "default" applies to a
# provider without an entry of its own.
DEFAULT_CHARS_PER_TOKEN = {"openai": 4.0, "anthropic": 3.5, "gemini": 4.0, "forward": 4.0, "default": 4.0}


class WeightedKey(msgspec.Struct, frozen=True):
    key: str
    weight: float
    name: str = ""  # how /health and the logs name it: its configured name, else its index
    oauth: bool = False  # an Anthropic OAuth token: sent as Authorization: Bearer, with its anthropic-beta
    refresh: float = 0.0  # seconds between re-runs of its `$(command)` in the supervisor (0: never)
    command: str = ""  # the `$(command)` source it came from, when `refresh` is set

    def __repr__(self) -> str:
        return (
            f"WeightedKey(key=<redacted>, weight={self.weight}, name={self.name!r}, oauth={self.oauth}, "
            f"refresh={self.refresh})"
        )


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
    http2: bool = False  # offer h2 in ALPN (https targets only)

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
    paths: list[str] = []  # canonical path prefixes routed here on any Host
    auth_keys: list[str]  # its own (or the global ones), and every upstream's scoped keys
    auth_source: str  # "endpoint" (its own auth_keys), "global" (inherited) or "none" (pass-through)
    forwarded_headers: str  # "append", "replace" or "none"
    public: bool
    upstreams: list[ResolvedUpstream]
    retries: int
    retry_deadline: float
    retry_body_limit: int
    allow_websocket: bool = True
    websocket_idle_timeout: float = 300.0
    cors: CorsSection | None = None  # its own, else `[server.cors]`
    processors: list[ProcessorSection] = []  # the request policy, in order
    # parallel to `auth_keys`: each key's configured name, else its label (`relay_key_label`): what
    # the logs, the usage rows and the limit counters call the key (never its value)
    auth_key_names: list[str] = []

    @property
    def max_body_size(self) -> int:
        """The largest body some upstream of this endpoint takes."""
        return max(upstream.max_body_size for upstream in self.upstreams)

    def __repr__(self) -> str:
        return (
            f"ResolvedEndpoint(name={self.name!r}, provider={self.provider!r}, "
            f"upstreams={[u.name for u in self.upstreams]}, auth_keys={len(self.auth_keys)})"
        )


class ResolvedRule(msgspec.Struct, frozen=True):
    """One `[[limits.rules]]` table: which requests it applies to, what it counts them by, its limits.

    Every list is a set of alternatives, and an empty one matches anything. `version` changes exactly
    when the match, the `per` or the limits change, so a reload that leaves a rule alone keeps its
    counters and one that changes it starts fresh ones."""

    name: str
    version: str  # 12 hex digits: hash of match, per and limits (a changed rule gets new counters)
    endpoints: list[str]  # globs; [] = any
    models: list[str]  # globs; [] = any ("*" given explicitly also matches a request with no model)
    upstreams: list[str]  # globs; [] = any
    relay_keys: list[str]  # relay key NAMES (values in the file are turned into the key's name/label); [] = any
    client_ips: list[str]  # CIDRs; [] = any
    per: str  # "relay_key" | "client_ip" | "endpoint" | "upstream" | "model" | "header"
    per_header: str  # lower-case header name when per == "header", else ""
    limits: Limits


class ResolvedLimits(msgspec.Struct, frozen=True):
    """`[limits]`: where the counters live, what happens when that store fails, and the rules."""

    backend: str = "local"  # "local" (the supervisor) or "redis"
    redis_url: str = ""  # secrets resolved: never log it whole (`redacted_url()`)
    on_backend_error: str = "allow"  # or "deny"
    inject_stream_usage: bool = False
    chars_per_token: dict[str, float] = msgspec.field(default_factory=lambda: dict(DEFAULT_CHARS_PER_TOKEN))
    rules: list[ResolvedRule] = []

    def redacted_url(self) -> str:
        """`redis_url` without its password (user names stay: they say which account is used)."""
        return redact_password(self.redis_url)

    def chars_per_token_for(self, provider: str) -> float:
        """How many characters of a request to count as one token for `provider` (its own entry,
        else the "default" one)."""
        return self.chars_per_token.get(provider, self.chars_per_token.get("default", 4.0))

    def __repr__(self) -> str:
        return (
            f"ResolvedLimits(backend={self.backend!r}, redis_url={self.redacted_url()!r}, "
            f"on_backend_error={self.on_backend_error!r}, rules={[rule.name for rule in self.rules]})"
        )


class RelayConfig(msgspec.Struct, frozen=True, kw_only=True):
    server: ServerSection
    client: ClientLimits  # `server`'s client-connection keys, grouped for the protocol drivers
    endpoints: list[ResolvedEndpoint]
    source: str
    listeners: list[ListenSection] = []  # `server.listen`, or the one `server.host`/`server.port` names
    connect_keys: list[str] = []  # relay keys a CONNECT tunnel accepts (`server.connect`)
    limits: ResolvedLimits = ResolvedLimits()  # `[limits]`: no rules, nothing limited

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


def redact_password(url: str) -> str:
    """A URL with its password (if any) replaced by `***`, its user name kept; "" stays ""."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        password, username, host, port = parts.password, parts.username, parts.hostname or "", parts.port
    except ValueError:  # (a URL that does not parse is never shown: it may hold anything)
        return "<unparsable URL>"
    if password is None:
        return url
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{username or ''}:***@{host}" + (f":{port}" if port else "")
    return parts._replace(netloc=netloc).geturl()
