"""llm-proxy's `features.rate_limiting` as llmrelay's `[limits]`.

llm-proxy keeps one counter per scope a request falls in (global; its provider; its model; the key in
its Authorization header; the user its body names) and applies the same limits to each, separately:
a request passes when every one of its counters admits it. That is exactly llmrelay's "every rule
that matches must admit", with one rule per scope: global -> `per = "relay_key"` (these endpoints take
no relay key, so every request shares the one counter "-"), provider -> `per = "endpoint"` (one
endpoint per provider), model -> `per = "model"` for requests naming a model (llm-proxy skips the
scope for the others), api_key -> `per = "header:authorization"` on the endpoints whose clients send
their key there (OpenAI and Groq; llm-proxy skips the scope without that header), user -> none
(llmrelay cannot count per a value read from the body). `per:` lists the scopes; without it, llm-proxy
uses all of them. llm-proxy counts input tokens only, hence `input_tokens_per_minute`.
"""

from __future__ import annotations

from typing import Any

from llmrelay.importing.formats import endpoint_name
from llmrelay.importing.formats.source_keys import SourceTable
from llmrelay.importing.report import Report

ALL_SCOPES = ("global", "provider", "model", "api_key", "user")
SCOPE_ALIASES = {"key": "api_key", "apikey": "api_key", "api-key": "api_key", "user_id": "user"}
BEARER_PROVIDERS = ("openai", "groq")  # their SDKs send the key as Authorization: Bearer
MINUTE_LIMITS = {"requests_per_minute": "requests_per_minute", "tokens_per_minute": "input_tokens_per_minute"}
DAY_LIMITS = {
    "requests_per_day": "llmrelay has no requests-per-day limit",
    "tokens_per_day": "llmrelay's tokens_per_day counts input and output tokens, llm-proxy's input tokens only",
}
MAX_RULE_NAME = 64


def limits_section(
    table: SourceTable | None, endpoints: dict[str, str], report: Report, comments: dict[str, str]
) -> dict[str, Any] | None:
    """`[limits]` for `features.rate_limiting`, None when it is absent or disabled. `endpoints` maps
    each llm-proxy provider name to its llmrelay endpoint."""
    if table is None:
        return None
    if table.take("enabled") is not True:
        report.dropped(table.path, "rate limiting is not enabled: nothing is limited", changes_behaviour=False)
        table.drop_rest("rate limiting is not enabled", changes_behaviour=False)
        return None
    report.moved(table.at("enabled"), "limits")
    limits: dict[str, Any] = {"backend": _backend(table, report)}
    if limits["backend"] == "redis":
        redis_url = _redis_url(table, report)
        if redis_url is None:
            limits["backend"] = "local"
        else:
            limits["redis_url"] = redis_url
    chars = _chars_per_token(table.table("estimation"), report)
    if chars:
        limits["chars_per_token"] = chars
    counts = _minute_limits(table.table("limits"), report)
    rules = _rules(table, counts, endpoints, report) if counts else []
    if rules:
        limits["rules"] = rules
        for index, rule in enumerate(rules):
            comments[f"limits.rules[{index}]"] = f"llm-proxy's {rule.pop('_scope')} scope."
    elif table.has("per"):
        table.take("per")
        report.dropped(table.at("per"), "no limit above 0: nothing is counted", changes_behaviour=False)
    comments["limits"] = "From features.rate_limiting."
    report.note(
        "llm-proxy counts fixed minutes and lets the first request of a minute through whatever its tokens; "
        "llmrelay's buckets refill continuously (never twice the limit across a minute's boundary)"
    )
    table.drop_rest()
    return limits


def _backend(table: SourceTable, report: Report) -> str:
    backend = table.take("backend", "memory")
    if backend == "memory":
        if table.has("backend"):
            report.moved(table.at("backend"), "limits.backend", '"local": the supervisor holds the counters')
        return "local"
    if backend == "redis":
        report.moved(table.at("backend"), "limits.backend")
        return "redis"
    report.dropped(table.at("backend"), f"{backend!r} is not a backend llm-proxy has; the local backend is used")
    return "local"


def _redis_url(table: SourceTable, report: Report) -> str | None:
    redis = table.table("redis")
    address = redis.take("address") if redis is not None else None
    if redis is None or not isinstance(address, str) or not address:
        report.dropped(table.at("redis"), "the redis backend needs redis.address; the local backend is used")
        return None
    password = redis.take("password") or ""
    database = redis.take("db", 0)
    if not isinstance(password, str) or any(ch in password for ch in "@/?#") and not password.startswith("${"):
        report.dropped(redis.at("password"), "cannot be written inside a URL as it is; set limits.redis_url by hand")
        password = ""
    auth = f":{password}@" if password else ""
    url = f"redis://{auth}{address}/{database}"
    for key in ("address", "password", "db"):
        if redis.has(key):
            report.moved(redis.at(key), "limits.redis_url")
    redis.drop_rest()
    return url


def _chars_per_token(table: SourceTable | None, report: Report) -> dict[str, float]:
    if table is None:
        return {}
    chars: dict[str, float] = {}
    general = _ratio(table, "chars_per_token", report)
    overrides = table.table("provider_chars_per_token")
    per_provider = {name: _ratio(overrides, name, report) for name in list(overrides.data)} if overrides else {}
    if general is not None:
        for provider in ("openai", "anthropic", "gemini", "default"):
            chars[provider] = general
        report.moved(table.at("chars_per_token"), "limits.chars_per_token (openai, anthropic, gemini, default)")
    for name, value in per_provider.items():
        if value is None or overrides is None:
            continue
        if name in ("openai", "anthropic", "gemini"):
            chars[name] = value
            report.moved(overrides.at(name), f"limits.chars_per_token.{name}")
        elif name == "groq":
            _groq_ratio(overrides, value, per_provider.get("openai") or general, report)
        else:
            report.dropped(overrides.at(name), "not a provider llm-proxy serves", changes_behaviour=False)
    for key, reason in (
        ("max_sample_bytes", "llmrelay reads the messages of bodies up to 64 KiB"),
        ("bytes_per_token", "llmrelay counts a body it does not read as its length / chars_per_token"),
    ):
        if table.has(key):
            table.take(key)
            report.dropped(table.at(key), f"{reason}; every estimate is replaced by the usage the provider reports", changes_behaviour=False)
    table.drop_rest()
    return chars


def _groq_ratio(overrides: SourceTable, value: float, openai_value: float | None, report: Report) -> None:
    if value == openai_value:
        report.moved(overrides.at("groq"), "limits.chars_per_token.openai", "groq is an openai endpoint")
    else:
        report.dropped(
            overrides.at("groq"),
            "groq is an openai endpoint in llmrelay, so its requests are estimated with openai's chars_per_token",
        )


def _ratio(table: SourceTable, key: str, report: Report) -> float | None:
    value = table.take(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
        report.dropped(table.at(key), f"{value!r}: llmrelay takes a number above 0 and at most 100; its default applies")
        return None
    return float(value)


def _minute_limits(table: SourceTable | None, report: Report) -> dict[str, int]:
    if table is None:
        return {}
    counts: dict[str, int] = {}
    for source_key, key in MINUTE_LIMITS.items():
        value = table.take(source_key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            counts[key] = value
            note = "llm-proxy counts input tokens only" if key.startswith("input") else ""
            report.moved(table.at(source_key), f"limits.rules[*].{key}", note)
        elif value is not None:
            report.dropped(table.at(source_key), "0 or less: no limit", changes_behaviour=False)
    for source_key, reason in DAY_LIMITS.items():
        value = table.take(source_key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            report.dropped(table.at(source_key), reason)
        elif value is not None:
            report.dropped(table.at(source_key), "0 or less: no limit", changes_behaviour=False)
    table.drop_rest()
    return counts


def _scopes(table: SourceTable, report: Report) -> list[tuple[str, str]]:
    """(scope, source path) for each scope the limits apply to."""
    if not table.has("per"):
        report.note("no per: llm-proxy applies its limits to each of its scopes (global, provider, model, api_key, user)")
        return [(scope, f"{table.at('per')} (absent: {scope})") for scope in ALL_SCOPES]
    per = table.take("per")
    items = per if isinstance(per, list) else [per]
    scopes: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        path = f"{table.at('per')}[{index}]" if isinstance(per, list) else table.at("per")
        scope = SCOPE_ALIASES.get(str(item).lower(), str(item).lower())
        if scope not in ALL_SCOPES:
            report.dropped(path, f"{item!r} is not one of llm-proxy's scopes ({', '.join(ALL_SCOPES)})")
        elif scope not in (found for found, _ in scopes):
            scopes.append((scope, path))
    return scopes


def _rules(table: SourceTable, counts: dict[str, int], endpoints: dict[str, str], report: Report) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for scope, path in _scopes(table, report):
        rule = _scope_rule(scope, endpoints)
        if rule is None:
            report.dropped(path, "the user is read from the request body (user, metadata.user_id); llmrelay cannot count per it")
            continue
        rules.append({**rule, **counts, "_scope": scope})
        report.moved(path, f"limits.rules[{len(rules) - 1}].per", _SCOPE_NOTES[scope])
    scoped = {rule["_scope"] for rule in rules}
    overrides = table.table("overrides")
    if overrides is not None:
        rules.extend(_model_overrides(overrides, counts, "model" in scoped, {rule["name"] for rule in rules}, report))
        overrides.drop_rest(
            "limits for a literal client key or user: llmrelay's match selects relay keys, not client keys or users"
        )
    return rules


_SCOPE_NOTES = {
    "global": 'per = "relay_key": these endpoints take no relay key, so every request shares one counter',
    "provider": 'per = "endpoint": one endpoint per provider',
    "model": 'per = "model", for requests that name a model (model = "?*"), as llm-proxy skips the others',
    "api_key": (
        'per = "header:authorization" on the OpenAI and Groq endpoints, whose clients send their key there; '
        "llm-proxy too counts only an Authorization header (x-api-key, x-goog-api-key and ?key= are not counted)"
    ),
}


def _scope_rule(scope: str, endpoints: dict[str, str]) -> dict[str, Any] | None:
    if scope == "global":
        return {"name": "global", "per": "relay_key"}
    if scope == "provider":
        return {"name": "per-provider", "per": "endpoint"}
    if scope == "model":
        return {"name": "per-model", "match": {"model": "?*"}, "per": "model"}
    if scope == "api_key":
        bearer = [endpoints[name] for name in BEARER_PROVIDERS if name in endpoints]
        return {"name": "per-api-key", "match": {"endpoint": bearer}, "per": "header:authorization"}
    return None


def _model_overrides(
    overrides: SourceTable, counts: dict[str, int], model_scope: bool, taken: set[str], report: Report
) -> list[dict[str, Any]]:
    per_model = overrides.table("per_model")
    if per_model is None:
        return []
    rules: list[dict[str, Any]] = []
    for model, values in per_model.data.items():
        path = per_model.at(model)
        if not model_scope:
            report.dropped(path, "the model scope is not in per: llm-proxy never applies it", changes_behaviour=False)
            continue
        rule = _model_override(model, values, counts, path, report)
        if rule is not None:
            rule["name"] = endpoint_name(f"model-{model}", taken)[:MAX_RULE_NAME]
            taken.add(rule["name"])
            rules.append(rule)
    per_model.drop_rest()
    return rules


def _model_override(model: str, values: object, counts: dict[str, int], path: str, report: Report) -> dict[str, Any] | None:
    """A rule for one model's own limits: exact when each is at most the general one (both rules apply,
    the smaller wins), as llm-proxy's override replaces the general limit for that model."""
    if not isinstance(values, dict):
        report.dropped(path, "expected a table of limits")
        return None
    own = {key: values[source] for source, key in MINUTE_LIMITS.items() if isinstance(values.get(source), int) and values[source] > 0}
    looser = [key for key, value in own.items() if counts.get(key, 0) and value > counts[key]]
    if looser:
        report.dropped(path, f"raises {', '.join(looser)} above the general limit, which still applies to this model in llmrelay")
        return None
    if any(isinstance(values.get(key), int) and values[key] > 0 for key in DAY_LIMITS):
        report.dropped(path, "its per-day limits have no equivalent (see the general ones)")
    if not own:
        return None
    report.moved(path, "limits.rules[*] (match.model)")
    return {"match": {"model": _glob_literal(model)}, "per": "model", **own, "_scope": f"model {model}"}


def _glob_literal(text: str) -> str:
    """A glob matching `text` only (its `*`, `?` and `[` taken literally)."""
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in text)
