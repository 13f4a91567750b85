"""Building the runtime config (`resolved`) from the file's sections, collecting every error.

Secrets are resolved, the server's `target_base` and the global `auth_keys` are inherited, an
endpoint's per-upstream keys become its upstreams' defaults (the flat keys are the one-upstream
shorthand), the provider is inferred, URLs are parsed, and every cross-field rule is checked, each
error with its key path.

Relay keys are gathered in one `RelayKeyBook` as they are resolved, wherever they appear: a key's name
holds for the whole config (an unnamed mention of a named key's value is that name too), which is what
makes `auth_key_names` and the limit rules' `relay_key` matches mean one thing. `[limits]` is resolved
last, once every key, endpoint and upstream name is known.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, urlsplit

import msgspec

from llmrelay.config.decode import printable
from llmrelay.config.listeners import resolve_connect, resolve_listeners
from llmrelay.config.limits import PoolLimits, UpstreamTimeouts, client_limits
from llmrelay.config.resolved import (
    DEFAULT_CHARS_PER_TOKEN,
    RelayConfig,
    ResolvedEndpoint,
    ResolvedLimits,
    ResolvedRule,
    ResolvedUpstream,
    WeightedKey,
)
from llmrelay.config.schema import (
    CharsPerTokenSection,
    ConfigFile,
    EndpointSection,
    HealthCheckSection,
    LimitRuleSection,
    LimitsSection,
    Patterns,
    RelayKey,
    RelayKeyEntry,
    ServerSection,
    UpstreamSection,
)
from llmrelay.config.secrets import SecretError, resolve_secret
from llmrelay.config.values import (
    DEFAULT_UNHEALTHY_THRESHOLD,
    ENDPOINT_NAME,
    RESERVED_NAMES,
    UPSTREAM_NAME,
    check_ca_files,
    check_proxy_url,
    infer_provider,
    is_listen_host,
    is_loopback_host,
    parse_target,
    resolve_api_keys,
    resolve_health_check,
    resolve_hosts,
    resolve_keys,
)
from llmrelay.limits.types import Limits
from llmrelay.observe.requestinfo import relay_key_label

# A relay key's name: it is shown in logs, metrics and usage, and keys the limit counters.
RELAY_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.~@+-]{0,63}")
RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.~-]{0,63}")
PER_VALUES = ("relay_key", "client_ip", "endpoint", "upstream", "model")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_GLOB_CHARS = frozenset("*?[")
_MAX_PATTERN = 200
_ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")
REDIS_SCHEMES = ("redis", "rediss")


class RelayKeyBook:
    """Every relay key of the config, resolved once, with the name it goes by.

    A name belongs to one key value and a value to one name (the same `{ name, key }` may appear in
    several `auth_keys` lists); a name is never a key's value (names are logged, values never are),
    nor the label of an unnamed key (two keys would be shown alike). An unnamed key goes by its label.
    """

    def __init__(self, environ: Mapping[str, str] | None) -> None:
        self._environ = environ
        self._name_of: dict[str, str] = {}  # value -> name
        self._named: dict[str, tuple[str, str]] = {}  # name -> (value, key path of its first entry)
        self._values: set[str] = set()
        self._entries: list[tuple[str, str]] = []  # (name, key path) of every named entry, in order

    def resolve(self, entries: list[RelayKey], path: str, errors: list[str]) -> list[str]:
        """The values of `entries` (an `auth_keys` list at `path`), in order."""
        values: list[str] = []
        for index, entry in enumerate(entries):
            where = f"{path}[{index}]"
            source = entry if isinstance(entry, str) else entry.key
            try:
                value = resolve_secret(source, self._environ)
            except SecretError as exc:
                errors.append(f"{where}{'' if isinstance(entry, str) else '.key'}: {exc}")
                continue
            values.append(value)
            self._values.add(value)
            if isinstance(entry, RelayKeyEntry):
                self._name(entry, value, where, errors)
        return values

    def _name(self, entry: RelayKeyEntry, value: str, where: str, errors: list[str]) -> None:
        name = entry.name
        if not RELAY_KEY_NAME.fullmatch(name):
            errors.append(
                f"{where}.name: invalid relay key name {printable(name)!r} (letters, digits, '_', '.', '~', '@', '+', "
                "'-'; at most 64)"
            )
            return
        self._entries.append((name, where))
        known = self._named.get(name)
        if known is not None and known[0] != value:
            errors.append(f"{where}.name: {name!r} already names another key ({known[1]})")
            return
        other = self._name_of.get(value)
        if other is not None and other != name:
            errors.append(f"{where}.name: this key is already named {other!r} ({self._named[other][1]})")
            return
        self._named.setdefault(name, (value, where))
        self._name_of[value] = name

    def check(self, errors: list[str]) -> None:
        """The checks that need every key: a name that is a key value, or an unnamed key's label."""
        labels = {relay_key_label(value) for value in self._values if value not in self._name_of}
        for name, where in self._entries:
            if name in self._values:
                errors.append(f"{where}.name: a relay key's name must not be a key value (names are logged)")
            elif name in labels:
                errors.append(f"{where}.name: {name!r} is the label of an unnamed key; choose another name")

    def name(self, value: str) -> str:
        """What logs, usage and limits call the key `value`: its name, else its label."""
        return self._name_of.get(value) or relay_key_label(value)

    def name_matched(self, entry: str) -> str | None:
        """The name of the key a rule's `relay_key` entry means: a key (a literal, `${NAME}` or
        `$(command)`, resolved like `auth_keys`; SecretError when it cannot be) or a key's name.
        None: neither, so the rule would never match it."""
        value = resolve_secret(entry, self._environ)
        if value in self._values:
            return self.name(value)
        if value == entry and entry in self._named:
            return entry
        return None


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
    if upstream.api_key is not None or upstream.api_keys is not None:
        api_keys = resolve_api_keys(upstream.api_key, upstream.api_keys or [], path, errors, environ)
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
    if section.auth_keys is None:
        auth, auth_source = global_auth, "global" if file.auth_keys else "none"
    else:
        auth = book.resolve(section.auth_keys, f"{path}.auth_keys", errors)
        auth_source = "endpoint" if section.auth_keys else "none"
    check_ca_files((("ca_file", section.ca_file), ("proxy_ca_file", section.proxy_ca_file)), path, errors)
    default_keys = resolve_api_keys(section.api_key, section.api_keys, path, errors, environ)
    if isinstance(section.health_check, HealthCheckSection):  # judged here once, whoever inherits it
        resolve_health_check(section.health_check, section.provider or "openai", f"{path}.health_check", errors)
    context = _EndpointContext(name=name, path=path, section=section, default_keys=default_keys)
    upstreams: list[ResolvedUpstream] = []
    paths: list[str] = []
    seen: dict[str, str] = {}
    for index, (upstream_path, upstream_section) in enumerate(_upstream_sections(name, path, section, server, errors)):
        resolved = _resolve_upstream(context, index, upstream_path, upstream_section, errors, environ, book)
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
    if not accepted and exposed is not None and not section.public:
        for resolved, upstream_path in zip(upstreams, paths):
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


def resolve_limits(
    file: ConfigFile, book: RelayKeyBook, errors: list[str], environ: Mapping[str, str] | None
) -> ResolvedLimits:
    """`[limits]` resolved: the Redis URL's secrets, the chars-per-token table, and every rule."""
    section = file.limits
    redis_url = _redis_url(section, errors, environ)
    endpoint_names = list(file.endpoints)
    upstream_names = [name for endpoint, table in file.endpoints.items() for name in _upstream_names(endpoint, table)]
    rules: list[ResolvedRule] = []
    seen: dict[str, str] = {}
    for index, rule_section in enumerate(section.rules):
        path = f"limits.rules[{index}]"
        if rule_section.name in seen:
            errors.append(f"{path}.name: duplicate rule name {printable(rule_section.name)!r} (also {seen[rule_section.name]})")
        seen.setdefault(rule_section.name, path)
        rule = _resolve_rule(rule_section, path, endpoint_names, upstream_names, book, errors)
        if rule is not None:
            rules.append(rule)
    return ResolvedLimits(
        backend=section.backend,
        redis_url=redis_url,
        on_backend_error=section.on_backend_error,
        inject_stream_usage=section.inject_stream_usage,
        chars_per_token=chars_per_token(section.chars_per_token),
        rules=rules,
    )


def chars_per_token(section: CharsPerTokenSection) -> dict[str, float]:
    """Every provider's factor: its own entry, else its documented default; a provider without a
    default of its own (`forward`: Groq, vLLM, every OpenAI-compatible service) takes `default`, else
    openai's."""
    openai = section.openai if section.openai is not None else DEFAULT_CHARS_PER_TOKEN["openai"]
    default = section.default if section.default is not None else openai
    return {
        "openai": openai,
        "anthropic": section.anthropic if section.anthropic is not None else DEFAULT_CHARS_PER_TOKEN["anthropic"],
        "gemini": section.gemini if section.gemini is not None else DEFAULT_CHARS_PER_TOKEN["gemini"],
        "forward": section.forward if section.forward is not None else default,
        "default": default,
    }


def _redis_url(section: LimitsSection, errors: list[str], environ: Mapping[str, str] | None) -> str:
    """The Redis URL with its secrets resolved: a whole `${NAME}` / `$(command)`, or `${NAME}` inside
    the URL (percent-encoded, so a password may hold '@' or ':'); its scheme and host checked."""
    path = "limits.redis_url"
    if section.redis_url is None:
        if section.backend == "redis":
            errors.append(f'{path}: required when limits.backend = "redis" (redis://host:6379/0 or rediss://...)')
        return ""
    text = section.redis_url.strip()
    try:
        if _ENV_REFERENCE.fullmatch(text) or text.startswith("$("):
            url = resolve_secret(text, environ)
        else:
            url = _ENV_REFERENCE.sub(lambda match: quote(resolve_secret(match.group(0), environ), safe=""), text)
    except SecretError as exc:
        errors.append(f"{path}: {exc}")
        return ""
    problem = _redis_url_problem(url)
    if problem is not None:
        errors.append(f"{path}: {problem}")
        return ""
    return url


def _redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL, never quoting it (it may hold a password)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in REDIS_SCHEMES:
        return f"expected a redis:// or rediss:// URL, got the scheme {printable(parts.scheme) or 'none'!r}"
    if not parts.hostname:
        return "the URL has no host"
    if parts.query or parts.fragment:
        return "a query or fragment is not supported in the URL"
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        return "the path must be a database number (/0)"
    return None


def _upstream_names(endpoint: str, section: EndpointSection) -> list[str]:
    """The names an endpoint's upstreams go by (as `_resolve_upstream` names them)."""
    if not section.upstreams:
        return [f"{endpoint}#0"]
    return [upstream.name or f"{endpoint}#{index}" for index, upstream in enumerate(section.upstreams)]


def _patterns(value: Patterns | None, path: str, errors: list[str]) -> tuple[list[str], list[str]]:
    """A match field's entries (deduplicated, in order) and their key paths."""
    if value is None:
        return [], []
    if isinstance(value, str):
        entries, paths = [value], [path]
    else:
        entries, paths = list(value), [f"{path}[{index}]" for index in range(len(value))]
        if not entries:
            errors.append(f"{path}: empty, so the rule would match nothing (leave the key out to match any)")
    kept: list[str] = []
    kept_paths: list[str] = []
    for entry, where in zip(entries, paths):
        if not entry.strip() or not entry.isprintable() or len(entry) > _MAX_PATTERN:
            errors.append(f"{where}: expected a non-empty pattern of at most {_MAX_PATTERN} printable characters")
        elif entry not in kept:
            kept.append(entry)
            kept_paths.append(where)
    return kept, kept_paths


def _globs_matching(
    value: Patterns | None, path: str, names: list[str], what: str, errors: list[str]
) -> list[str]:
    """Globs of endpoint or upstream names; one that matches none of the config's would never apply."""
    globs, paths = _patterns(value, path, errors)
    for glob, where in zip(globs, paths):
        if not any(fnmatch.fnmatchcase(name, glob) for name in names):
            kind = "glob" if _GLOB_CHARS & set(glob) else "name"
            errors.append(f"{where}: the {kind} {printable(glob)!r} matches no {what} of this config, so the rule would never apply")
    return globs


def _relay_key_names(value: Patterns | None, path: str, book: RelayKeyBook, errors: list[str]) -> list[str]:
    """The names of the relay keys a rule matches: an entry is a key (a literal or a secret source,
    resolved like `auth_keys`) or a key's name; one that is neither would never match."""
    entries, paths = _patterns(value, path, errors)
    names: list[str] = []
    for entry, where in zip(entries, paths):
        try:
            name = book.name_matched(entry)
        except SecretError as exc:
            errors.append(f"{where}: {exc}")
            continue
        if name is None:
            errors.append(f"{where}: neither a relay key of this config (auth_keys) nor a key's name, so it would never match")
        elif name not in names:
            names.append(name)
    return names


def _client_ips(value: Patterns | None, path: str, errors: list[str]) -> list[str]:
    entries, paths = _patterns(value, path, errors)
    networks: list[str] = []
    for entry, where in zip(entries, paths):
        try:
            network = str(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            errors.append(f"{where}: {printable(entry)!r} is not an IP address or CIDR")
            continue
        if network not in networks:
            networks.append(network)
    return networks


def _per(text: str, path: str, errors: list[str]) -> tuple[str, str] | None:
    """`per` as (kind, lower-case header name)."""
    if text in PER_VALUES:
        return text, ""
    if text.startswith("header:"):
        header = text[len("header:") :].strip()
        if _HEADER_NAME.fullmatch(header):
            return "header", header.lower()
        errors.append(f"{path}: {printable(header)!r} is not a header name (per = \"header:NAME\")")
        return None
    errors.append(f"{path}: {printable(text)!r} is not one of {', '.join(PER_VALUES)}, header:NAME")
    return None


def rule_version(
    endpoints: Iterable[str],
    models: Iterable[str],
    upstreams: Iterable[str],
    relay_keys: Iterable[str],
    client_ips: Iterable[str],
    per: str,
    per_header: str,
    limits: Limits,
) -> str:
    """12 hex digits that change exactly when what a rule matches, counts by, or allows changes (the
    order of a match list's entries does not matter; the rule's name is not part of it)."""
    shape = [sorted(endpoints), sorted(models), sorted(upstreams), sorted(relay_keys), sorted(client_ips), per, per_header, limits]
    return hashlib.sha256(msgspec.json.encode(shape)).hexdigest()[:12]


def _resolve_rule(
    section: LimitRuleSection,
    path: str,
    endpoint_names: list[str],
    upstream_names: list[str],
    book: RelayKeyBook,
    errors: list[str],
) -> ResolvedRule | None:
    before = len(errors)
    if not RULE_NAME.fullmatch(section.name):
        errors.append(f"{path}.name: invalid rule name {printable(section.name)!r} (letters, digits, '_', '.', '~', '-'; at most 64)")
    match = section.match
    where = f"{path}.match"
    endpoints = _globs_matching(match.endpoint, f"{where}.endpoint", endpoint_names, "endpoint", errors)
    upstreams = _globs_matching(match.upstream, f"{where}.upstream", upstream_names, "upstream", errors)
    models, _ = _patterns(match.model, f"{where}.model", errors)
    relay_keys = _relay_key_names(match.relay_key, f"{where}.relay_key", book, errors)
    client_ips = _client_ips(match.client_ip, f"{where}.client_ip", errors)
    per = _per(section.per, f"{path}.per", errors)
    limits = Limits(
        requests_per_minute=section.requests_per_minute,
        tokens_per_minute=section.tokens_per_minute,
        input_tokens_per_minute=section.input_tokens_per_minute,
        output_tokens_per_minute=section.output_tokens_per_minute,
        concurrent_requests=section.concurrent_requests,
        tokens_per_day=section.tokens_per_day,
    )
    if not any(msgspec.structs.astuple(limits)):
        errors.append(
            f"{path}: no limit set (requests_per_minute, tokens_per_minute, input_tokens_per_minute, "
            "output_tokens_per_minute, concurrent_requests or tokens_per_day must be > 0)"
        )
    if len(errors) > before or per is None:
        return None
    kind, header = per
    return ResolvedRule(
        name=section.name,
        version=rule_version(endpoints, models, upstreams, relay_keys, client_ips, kind, header, limits),
        endpoints=endpoints,
        models=models,
        upstreams=upstreams,
        relay_keys=relay_keys,
        client_ips=client_ips,
        per=kind,
        per_header=header,
        limits=limits,
    )
