"""Resolving `[limits]`: the counters' backend (the Redis URL with its secrets), chars per token, and
each `[[limits.rules]]` table into a `ResolvedRule` (patterns checked against the config's endpoints,
upstreams and relay keys, `per`, and the rule's version), every error with its key path. Run last,
once every key, endpoint and upstream name of the config is known.
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
from llmrelay.config.resolved import DEFAULT_CHARS_PER_TOKEN, ResolvedLimits, ResolvedRule
from llmrelay.config.schema import (
    CharsPerTokenSection,
    ConfigFile,
    EndpointSection,
    LimitRuleSection,
    LimitsSection,
    Patterns,
)
from llmrelay.config.relay_keys import RelayKeyBook
from llmrelay.config.secrets import SecretError, resolve_secret
from llmrelay.limits.types import Limits

RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.~-]{0,63}")
PER_VALUES = ("relay_key", "client_ip", "endpoint", "upstream", "model")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_GLOB_CHARS = frozenset("*?[")
_MAX_PATTERN = 200
_ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")
REDIS_SCHEMES = ("redis", "rediss")


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
