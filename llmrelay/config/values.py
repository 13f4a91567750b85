"""Checking and resolving the config's single values: target and proxy URLs, listen hosts, relay and
provider keys, `hosts` entries, health checks, CA files. Each appends its problems to `errors`, named
by their key path, and returns what it could resolve (`resolve` assembles the whole).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from urllib.parse import unquote, urlsplit

from llmrelay.config.decode import printable
from llmrelay.config.files import ca_file_problem
from llmrelay.config.hosts import HostEntryError, canonical_host_entry, canonical_path_prefix
from llmrelay.config.resolved import HealthCheck, Target, WeightedKey
from llmrelay.config.schema import ApiKeyEntry, HealthCheckSection
from llmrelay.config.secrets import SecretError, is_command, resolve_secret

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


def infer_provider(host: str) -> str:
    host = host.lower().rstrip(".")
    for domain, provider in _PROVIDER_BY_DOMAIN:
        if host == domain or host.endswith("." + domain):
            return provider
    return "forward"


_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")


def is_listen_host(host: str) -> bool:
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


def check_proxy_url(url: str, path: str, errors: list[str]) -> None:
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


def resolve_keys(
    values: list[str], path: str, errors: list[str], environ: Mapping[str, str] | None
) -> list[str]:
    keys: list[str] = []
    for index, value in enumerate(values):
        try:
            keys.append(resolve_secret(value, environ))
        except SecretError as exc:
            errors.append(f"{path}[{index}]: {exc}")
    return keys


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def resolve_api_keys(
    api_key: str | None,
    api_keys: list[ApiKeyEntry],
    path: str,
    errors: list[str],
    environ: Mapping[str, str] | None,
    token_env: str | None = None,
    key_type: str | None = None,
    refresh: float | None = None,
) -> list[WeightedKey]:
    """The keys of `api_key`, `token_env` (a synonym of `api_key = "${NAME}"`) or `api_keys`; an
    entry's `key_type` (else `key_type`) "oauth" marks an Anthropic OAuth token; `refresh` (the
    `refresh_interval` beside `api_key`, or an entry's own) re-runs a `$(command)` key that often."""
    field = "api_key"
    if refresh is not None and (api_key is None or token_env is not None):
        where = "api_keys entries" if api_keys else "a $(command) api_key"
        errors.append(f"{path}.refresh_interval: refreshes {where} only (set it beside the api_key it refreshes)")
        return []
    if token_env is not None:
        if api_key is not None:
            errors.append(f"{path}: set api_key or token_env, not both")
            return []
        if not ENV_NAME.fullmatch(token_env):
            errors.append(f"{path}.token_env: {printable(token_env)!r} is not an environment variable name")
            return []
        api_key, field = "${" + token_env + "}", "token_env"
    if api_key is not None and api_keys:
        errors.append(f"{path}: set {field} or api_keys, not both")
        return []
    if api_key is not None:
        if not _refreshable(api_key, refresh, path, errors):
            return []
        try:
            value = resolve_secret(api_key, environ)
        except SecretError as exc:
            errors.append(f"{path}.{field}: {exc}")
            return []
        return [WeightedKey(value, 1.0, "0", key_type == "oauth", refresh or 0.0, api_key.strip() if refresh else "")]
    keys: list[WeightedKey] = []
    for index, entry in enumerate(api_keys):
        every = entry.refresh_interval
        if not _refreshable(entry.key, every, f"{path}.api_keys[{index}]", errors):
            continue
        try:
            oauth = (entry.key_type or key_type) == "oauth"
            value = resolve_secret(entry.key, environ)
            command = entry.key.strip() if every else ""
            keys.append(WeightedKey(value, entry.weight, entry.name or str(index), oauth, every or 0.0, command))
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


def _refreshable(source: str, refresh: float | None, path: str, errors: list[str]) -> bool:
    """False (with the error) when `refresh_interval` is set beside a key that is not a `$(command)`."""
    if refresh is not None and not is_command(source):
        errors.append(f"{path}.refresh_interval: only a $(command) key can be refreshed (re-running it is what a refresh does)")
        return False
    return True


def resolve_health_check(
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


def check_ca_files(values: tuple[tuple[str, str | None], ...], path: str, errors: list[str]) -> None:
    for key, ca_path in values:
        problem = ca_file_problem(ca_path) if ca_path is not None else None
        if problem is not None:
            errors.append(f"{path}.{key}: {printable(problem)}")


def resolve_paths(
    entries: list[str], name: str, path: str, owner: dict[str, str], errors: list[str]
) -> list[str]:
    """The canonical `paths` of endpoint `name` (`/v1/messages`); each may be routed to one endpoint only
    (`owner` is shared with `hosts`: a path is kept there as `path:/...`)."""

    def canonical(entry: str) -> str:
        if not entry.startswith("/"):
            raise HostEntryError(f"{printable(entry)!r} must start with '/'")
        return canonical_path_prefix(entry)

    return _claimed(entries, name, f"{path}.paths", owner, errors, canonical, "path:", "{problem}")


def resolve_hosts(
    entries: list[str], name: str, path: str, host_owner: dict[str, str], errors: list[str]
) -> list[str]:
    """The canonical `hosts` entries of endpoint `name`; each one may be routed to one endpoint only."""
    shown = "{entry!r} is not a host or host:port ({problem})"
    return _claimed(entries, name, f"{path}.hosts", host_owner, errors, canonical_host_entry, "", shown)


def _claimed(
    entries: list[str],
    name: str,
    path: str,
    owner: dict[str, str],
    errors: list[str],
    canonical: Callable[[str], str],
    kind: str,
    shown: str,
) -> list[str]:
    """Each entry in canonical form, claimed for endpoint `name` in `owner` (under `kind` + the form);
    an entry that is not valid (`shown` says how) or claimed already is an error at its index."""
    claimed: list[str] = []
    for index, entry in enumerate(entries):
        where = f"{path}[{index}]"
        try:
            form = canonical(entry)
        except HostEntryError as exc:
            errors.append(f"{where}: " + shown.format(entry=printable(entry), problem=exc))
            continue
        if kind + form in owner:
            errors.append(f"{where}: {form} is already routed to endpoint {printable(owner[kind + form])}")
            continue
        owner[kind + form] = name
        claimed.append(form)
    return claimed
