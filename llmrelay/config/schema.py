"""The config file's schema, as frozen msgspec Structs.

These types mirror the TOML file one to one (the operator's words, before secrets are resolved and
defaults are inherited). `decode.py` decodes raw TOML into them collecting every error, and
`resolved.py` turns them into what a worker runs on.

An endpoint's upstreams are either the flat keys (`target_base`, `proxy_url`, `api_key`, timeouts...:
the one-upstream shorthand) or a list of `[[endpoints.NAME.upstreams]]` tables; every per-upstream key
set on the endpoint is the default of its upstreams (`None` on an upstream: inherit).

`auth_keys` entries (top level, endpoint, upstream scope) are a key value, or `{ name, key }`: a name
is what logs, usage rows and limit counters call the key. `[limits]` holds the rate limiter's backend
and its `[[limits.rules]]`; what a rule's `per` and `match` mean is checked when resolving (`resolve`).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

NonNegativeFloat = Annotated[float, Meta(ge=0)]
Weight = Annotated[float, Meta(ge=0, le=1_000_000)]  # finite: the balancer adds them up
PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Port = Annotated[int, Meta(ge=0, le=65535)]
ProviderName = Literal["openai", "anthropic", "gemini", "forward"]
KeyType = Literal["api_key", "oauth"]  # oauth: an Anthropic OAuth token (Authorization: Bearer + its beta)
LogLevel = Literal["debug", "info", "warning", "error"]
ForwardedHeaders = Literal["append", "replace", "none"]
HttpStatus = Annotated[int, Meta(ge=100, le=599)]
TlsVersion = Literal["1.2", "1.3"]
WindowSize = Annotated[int, Meta(ge=65535, le=2**31 - 1)]
LogFormat = Literal["text", "json"]
PromptMode = Literal["prepend", "replace", "if_absent"]
LimitsBackend = Literal["local", "redis"]
BackendErrorPolicy = Literal["allow", "deny"]
# A rate limit or budget: 0 is no limit. Bounded so that every store (the Redis script counts in
# doubles) holds it exactly.
LimitCount = Annotated[int, Meta(ge=0, le=10**12)]
CharsPerToken = Annotated[float, Meta(gt=0, le=100)]
Patterns = str | list[str]
RefreshInterval = Annotated[float, Meta(ge=1, le=31 * 86400)]  # one glob (or CIDR, or key) or a list of them


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ApiKeyEntry(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One provider key with its share of the traffic."""

    key: str
    weight: Weight = 1.0
    name: str | None = None  # how /health and the logs name it (default: its index)
    key_type: KeyType | None = None  # None: the upstream's key_type
    refresh_interval: RefreshInterval | None = None  # a `$(command)` key: re-run this often (s) and on a 401


class RelayKeyEntry(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`{ name = "alice", key = "${ALICE_KEY}" }` in `auth_keys`: a relay key with a name, which the
    access log, the usage rows and the limit counters show instead of its label."""

    name: str
    key: str


RelayKey = str | RelayKeyEntry


class HealthCheckSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`health_check = { ... }`: the active check of an upstream, run by the supervisor."""

    method: str = "GET"
    path: str | None = None  # None: the provider's default (`GET /v1/models` for OpenAI...)
    interval: Annotated[float, Meta(ge=1)] = 30.0
    timeout: PositiveFloat = 5.0
    expected_status: Annotated[list[HttpStatus], Meta(min_length=1)] = msgspec.field(default_factory=lambda: [200])
    healthy_threshold: PositiveInt = 2
    unhealthy_threshold: PositiveInt = 3
    headers: dict[str, str] = {}
    body: str = ""


class CorsSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`cors = { ... }` on an endpoint (or `[server.cors]`, every endpoint's default): what browsers
    calling the relay directly may do. Preflight OPTIONS is answered by the relay itself."""

    allow_origins: list[str] = []  # exact origins ("https://app.example.com"), or "*"
    allow_methods: list[str] = msgspec.field(default_factory=lambda: ["GET", "POST", "OPTIONS"])
    allow_headers: list[str] = msgspec.field(
        default_factory=lambda: ["authorization", "content-type", "x-api-key", "x-goog-api-key", "anthropic-version", "anthropic-beta", "openai-organization", "openai-project", "x-stainless-*"]
    )
    expose_headers: list[str] = []
    allow_credentials: bool = False
    max_age: Annotated[int, Meta(ge=0)] = 600

    def __post_init__(self) -> None:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("allow_origins = [\"*\"] cannot be combined with allow_credentials = true")


class RewriteSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`rewrite_with = { ... }` in a processor: an endpoint of this relay rewrites the last user message."""

    endpoint: str
    model: str
    prompt: str
    timeout: PositiveFloat = 10.0
    fail_open: bool = True  # False: a failed rewrite answers 502 instead of forwarding the original


class ProcessorSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[[endpoints.NAME.processors]]`: one step of the request policy, holding that step's keys."""

    allow_streaming: bool | None = None
    allow_non_streaming: bool | None = None
    set_headers: dict[str, str] = {}
    remove_headers: list[str] = []
    set_response_headers: dict[str, str] = {}
    remove_response_headers: list[str] = []
    model_map: dict[str, str] = {}
    default_model: str | None = None
    allowed_models: list[str] | None = None  # globs; a model outside them is answered 403
    max_tokens_cap: PositiveInt | None = None
    system_prompt: str | None = None
    mode: PromptMode = "prepend"
    rewrite_with: RewriteSection | None = None
    plugin: str | None = None  # a processor registered under the `llmrelay.processors` entry points
    options: dict[str, Any] = {}  # the plugin's own keys

    def __post_init__(self) -> None:
        from llmrelay.relay.policy.processors import section_problem  # (the rules live with the processors)

        problem = section_problem(self)
        if problem is not None:
            raise ValueError(problem)


class AdminSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[server.admin]`: the supervisor's own HTTP listener (metrics, health, status, reload, restart)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9811
    auth_keys: list[str] = []  # bearer keys; required when `host` is not a loopback address

    def __post_init__(self) -> None:
        if self.enabled and not self.auth_keys and not _loopback(self.host):
            raise ValueError(f"auth_keys is required when the admin listener is bound to {self.host} (not loopback)")


class MetricsSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[server.metrics]`: the Prometheus metrics served by the admin listener."""

    enabled: bool = True
    models: list[str] = []  # globs: a model label outside them is "other" (bounded cardinality)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class UpstreamSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[[endpoints.NAME.upstreams]]`: one of an endpoint's upstreams; `None`: the endpoint's value."""

    name: str | None = None  # None: "<endpoint>#<index>"
    target_base: str
    provider: ProviderName | None = None
    weight: Weight = 1.0
    priority: int = 0
    fallback: bool = False
    auth_keys: list[RelayKey] | None = None  # None: every key the endpoint accepts; a list: only these
    api_key: str | None = None
    token_env: str | None = None  # the name of an environment variable: api_key = "${NAME}"
    key_type: KeyType | None = None  # None: "api_key" (an upstream: the endpoint's)
    refresh_interval: RefreshInterval | None = None  # a `$(command)` api_key: re-run this often (s) and on a 401
    api_keys: list[ApiKeyEntry] | None = None
    proxy_url: str | None = None
    health_check: bool | HealthCheckSection | None = None
    connect_timeout: PositiveFloat | None = None
    first_byte_timeout: PositiveFloat | None = None
    idle_timeout: PositiveFloat | None = None
    ca_file: str | None = None
    proxy_ca_file: str | None = None
    max_connections: PositiveInt | None = None
    keepalive_expiry: NonNegativeFloat | None = None
    pool_timeout: PositiveFloat | None = None
    max_body_size: PositiveInt | None = None
    http2: bool | None = None


class EndpointSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[endpoints.NAME]`: one named route to one upstream (the flat keys) or to several (`upstreams`)."""

    target_base: str | None = None
    proxy_url: str | None = None
    provider: ProviderName | None = None
    hosts: list[str] = []
    paths: list[str] = []  # path prefixes routed here on any Host, forwarded whole ("/v1/messages")
    auth_keys: list[RelayKey] | None = None  # None: inherit the top-level auth_keys; []: none (pass-through)
    api_key: str | None = None
    token_env: str | None = None  # the name of an environment variable: api_key = "${NAME}"
    key_type: KeyType | None = None  # None: "api_key" (an upstream: the endpoint's)
    refresh_interval: RefreshInterval | None = None  # a `$(command)` api_key: re-run this often (s) and on a 401
    api_keys: list[ApiKeyEntry] = []
    public: bool = False
    connect_timeout: PositiveFloat = 10.0
    first_byte_timeout: PositiveFloat = 600.0  # what the OpenAI and Anthropic SDKs wait
    idle_timeout: PositiveFloat = 120.0
    ca_file: str | None = None
    proxy_ca_file: str | None = None  # verifies an https:// proxy_url
    forwarded_headers: ForwardedHeaders | None = None  # None: server.forwarded_headers
    max_connections: PositiveInt = 100
    keepalive_expiry: NonNegativeFloat = 30.0
    pool_timeout: PositiveFloat = 10.0
    max_body_size: PositiveInt = 32 * 1024 * 1024
    health_check: bool | HealthCheckSection = False
    upstreams: list[UpstreamSection] = []
    retries: Annotated[int, Meta(ge=0)] = 2
    retry_deadline: PositiveFloat = 30.0
    retry_body_limit: Annotated[int, Meta(ge=0)] = 1024 * 1024
    http2: bool = False  # offer h2 in ALPN to an https target; HTTP/1.1 when it does not take it
    allow_websocket: bool = True  # False: `Upgrade: websocket` (and RFC 8441 CONNECT) answered 403
    websocket_idle_timeout: PositiveFloat = 300.0
    cors: CorsSection | None = None  # None: `[server.cors]`
    processors: list[ProcessorSection] = []


class TlsSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`tls = { ... }` on a listener: its certificate, and what it asks of clients."""

    cert_file: str
    key_file: str
    min_version: TlsVersion = "1.2"
    client_ca_file: str | None = None  # set: a client certificate signed by it is required (mTLS)
    handshake_timeout: PositiveFloat = 10.0


class ListenSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[[server.listen]]`: one listening address, plain (HTTP/1.1 and h2c) or TLS (ALPN h2, http/1.1)."""

    host: str = "127.0.0.1"
    port: Port
    tls: TlsSection | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Http2Section(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[server.http2]`: the HTTP/2 server's settings (h2c on plain listeners, ALPN h2 on TLS ones)."""

    enabled: bool = True
    max_concurrent_streams: PositiveInt = 100
    initial_window_size: WindowSize = 65535  # per stream: what a client may send before we read it
    connection_window_size: WindowSize = 1024 * 1024  # all streams of a connection together
    max_frame_size: Annotated[int, Meta(ge=16384, le=16777215)] = 16384


class ConnectSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[server.connect]`: `CONNECT host:port` tunnels (forward-proxy mode), off by default."""

    enabled: bool = False
    allow: list[str] = []  # "host:port" patterns; `*` in the host matches any run of characters
    auth: bool = True  # a relay key in Proxy-Authorization (Bearer, or Basic with the key as password)
    auth_keys: list[str] | None = None  # None: the top-level auth_keys
    via_endpoint: str | None = None  # tunnel through this endpoint's proxy_url
    connect_timeout: PositiveFloat = 10.0
    idle_timeout: PositiveFloat = 300.0


class ServerSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[server]`: the listeners, the worker processes and the protocol limits."""

    host: str | None = None  # the one-listener shorthand (default 127.0.0.1:8811); or `listen`
    port: Port | None = None
    listen: list[ListenSection] = []
    http2: Http2Section = Http2Section()
    connect: ConnectSection = ConnectSection()
    target_base: str | None = None
    workers: PositiveInt = 1
    drain_timeout: NonNegativeFloat = 600.0
    drain_keepalive_interval: PositiveFloat = 15.0
    header_timeout: PositiveFloat = 15.0
    body_idle_timeout: PositiveFloat = 60.0
    keepalive_timeout: PositiveFloat = 75.0
    write_timeout: PositiveFloat = 60.0
    max_requests_per_connection: PositiveInt = 1000
    max_connections: PositiveInt = 4096
    max_request_line: Annotated[int, Meta(ge=256)] = 8 * 1024
    max_header_bytes: Annotated[int, Meta(ge=1024)] = 32 * 1024
    max_header_count: PositiveInt = 100
    failing_retry_interval: PositiveFloat = 30.0
    heartbeat_interval: PositiveFloat = 5.0
    heartbeat_timeout: PositiveFloat = 30.0
    worker_ready_timeout: PositiveFloat = 30.0
    max_worker_rss: Annotated[int, Meta(ge=0)] = 0
    access_log: bool = True
    forwarded_headers: ForwardedHeaders = "append"
    log_level: LogLevel = "info"
    log_format: LogFormat | None = None  # None: $LLMRELAY_LOG_FORMAT, else "text"
    access_log_file: str | None = None  # None: stderr
    error_log_file: str | None = None  # None: stderr
    trusted_proxies: list[str] = []  # CIDRs whose X-Forwarded-For is believed for client_ip
    admin: AdminSection = AdminSection()
    metrics: MetricsSection = MetricsSection()
    cors: CorsSection | None = None  # every endpoint's default

    def __post_init__(self) -> None:
        for cidr in self.trusted_proxies:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {cidr!r} is not an IP address or CIDR") from None


class MatchSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`match = { ... }` of a limit rule: which requests it applies to. An absent field matches any
    request; a present one matches when one of its entries does."""

    endpoint: Patterns | None = None  # globs of endpoint names
    model: Patterns | None = None  # globs of model names ("*" also matches a request naming none)
    upstream: Patterns | None = None  # globs of upstream names
    relay_key: Patterns | None = None  # relay key values ("${INTERN_KEY}") or key names
    client_ip: Patterns | None = None  # CIDRs (a bare address is its /32 or /128)


class LimitRuleSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[[limits.rules]]`: one counter per value of `per` among the requests `match` selects."""

    name: str
    match: MatchSection = MatchSection()
    per: str = "relay_key"  # relay_key | client_ip | endpoint | upstream | model | header:NAME
    requests_per_minute: LimitCount = 0
    tokens_per_minute: LimitCount = 0  # input + output
    input_tokens_per_minute: LimitCount = 0
    output_tokens_per_minute: LimitCount = 0
    concurrent_requests: LimitCount = 0
    tokens_per_day: LimitCount = 0  # input + output, per UTC day


class CharsPerTokenSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`chars_per_token = { ... }`: characters of message text counted as one token when a request's
    tokens are estimated before it is sent. `None`: the documented default."""

    openai: CharsPerToken | None = None  # 4.0
    anthropic: CharsPerToken | None = None  # 3.5
    gemini: CharsPerToken | None = None  # 4.0
    forward: CharsPerToken | None = None  # `default`, else openai's
    default: CharsPerToken | None = None  # every provider without an entry or a default of its own


class LimitsSection(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[limits]`: where the counters live, what a failing store means, and the rules."""

    backend: LimitsBackend = "local"
    redis_url: str | None = None  # required with backend = "redis"; `${NAME}` inside is substituted
    on_backend_error: BackendErrorPolicy = "allow"
    inject_stream_usage: bool = False
    chars_per_token: CharsPerTokenSection = CharsPerTokenSection()
    rules: list[LimitRuleSection] = []


class ConfigFile(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole file."""

    server: ServerSection = ServerSection()
    endpoints: dict[str, EndpointSection] = {}
    auth_keys: list[RelayKey] = []
    limits: LimitsSection = LimitsSection()
