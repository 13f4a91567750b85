"""The Go llm-proxy's YAML (`server:`, `providers:`, `cors:`, `logging:`, `features:`) as an llmrelay config.

llm-proxy serves four providers under fixed path prefixes (`/openai`, `/anthropic`, `/gemini`, `/groq`)
and forwards each request with the client's own credentials; each becomes an llmrelay endpoint of the
same name (so `/openai/v1/chat/completions` keeps working), with `auth_keys = []` so whatever the client
presents passes through untouched. Groq is OpenAI-compatible: provider "openai". Its rate limiting
(`features.rate_limiting`) is converted by `llm_proxy_go_limits`.

llm-proxy's http.Server timeouts bound whole exchanges, where llmrelay's bound silences; each goes to
the nearest llmrelay timeout and the report says how they differ.
"""

from __future__ import annotations

import re
from typing import Any

from llmrelay.importing.formats import Converted, endpoint_name
from llmrelay.importing.formats.llm_proxy_go_limits import limits_section
from llmrelay.importing.formats.source_keys import SourceTable, move_log_level, require_some_key, require_table
from llmrelay.importing.report import Report

FORMAT_LABEL = "llm-proxy (Go)"
# provider name -> (llmrelay provider, the base URL llm-proxy uses when the file names none)
PROVIDERS = {
    "openai": ("openai", "https://api.openai.com"),
    "anthropic": ("anthropic", "https://api.anthropic.com"),
    "gemini": ("gemini", "https://generativelanguage.googleapis.com"),
    "groq": ("openai", "https://api.groq.com/openai"),
}
# llm-proxy's CORS middleware without a `cors:` table (and its defaults for keys a table leaves out)
GO_CORS_METHODS = ["GET", "POST", "PUT", "DELETE", "OPTIONS"]
GO_CORS_HEADERS = ["Content-Type", "Authorization", "Accept", "Cache-Control"]
CORS_KEYS = {
    "allowed_origins": "allow_origins",
    "allowed_methods": "allow_methods",
    "allowed_headers": "allow_headers",
    "exposed_headers": "expose_headers",
    "allow_credentials": "allow_credentials",
    "max_age": "max_age",
}
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def convert(data: dict[str, Any], report: Report) -> Converted:
    for key in ("providers", "server", "features", "cors", "logging"):
        require_table(data, key, FORMAT_LABEL)
    require_some_key(data, ("providers", "features", "server"), FORMAT_LABEL)
    root = SourceTable(data, "", report)
    comments: dict[str, str] = {}
    server, first_byte_timeout = _server(root.table("server"), report)
    endpoints = _endpoints(root.table("providers"), first_byte_timeout, report, comments)
    cors = _cors(root, report)
    if cors is not None:
        server["cors"] = cors
    _logging(root.table("logging"), server, report)
    out: dict[str, Any] = {"server": server, "endpoints": endpoints}
    comments["server"] = "From server:, cors: and logging:."
    features = root.table("features")
    if features is not None:
        limits = limits_section(features.table("rate_limiting"), {name: name for name in endpoints}, report, comments)
        if limits is not None:
            out["limits"] = limits
        _other_features(features, report)
    if root.has("enabled"):
        root.take("enabled")
        report.dropped("enabled", "llm-proxy only logs it; it turns nothing on or off", changes_behaviour=False)
    root.drop_rest()
    return Converted(out, comments)


# -- server ---------------------------------------------------------------------------------------


def go_duration(value: object) -> float | None:
    """Seconds of a Go duration ("30s", "1m30s", "250ms"; a bare number is seconds), None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    parts = _GO_DURATION.findall(text)
    if "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _GO_UNITS[unit] for number, unit in parts)


def _server(table: SourceTable | None, report: Report) -> tuple[dict[str, Any], float | None]:
    """`[server]`, and the first-byte timeout its write_timeout implies for every endpoint."""
    server: dict[str, Any] = {}
    if table is None or not table.has("host"):
        server["host"] = "0.0.0.0"
        report.note('llm-proxy listens on every interface (":PORT"): server.host = "0.0.0.0"')
    if table is None:
        return server, None
    if table.has("host"):
        server["host"] = table.take("host")
        report.moved(table.at("host"), "server.host")
    port = table.take("port")
    if isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535:
        server["port"] = port
        report.moved(table.at("port"), "server.port", "the PORT environment variable still overrides it")
    elif port is not None:
        report.dropped(table.at("port"), f"{port!r} is not a port number")
    _read_timeout(table, server, report)
    first_byte = _write_timeout(table, server, report)
    idle = _timeout(table, "idle_timeout", report)
    if idle is not None:
        server["keepalive_timeout"] = idle
        report.moved(table.at("idle_timeout"), "server.keepalive_timeout")
    table.drop_rest()
    return server, first_byte


def _timeout(table: SourceTable, key: str, report: Report) -> float | None:
    value = table.take(key)
    if value is None:
        return None
    seconds = go_duration(value)
    if seconds is None:
        report.dropped(table.at(key), f"{value!r} is not a Go duration")
    elif seconds <= 0:
        report.dropped(table.at(key), "0 is no timeout at all in Go; llmrelay always bounds it, so its default applies")
        return None
    return seconds


def _read_timeout(table: SourceTable, server: dict[str, Any], report: Report) -> None:
    seconds = _timeout(table, "read_timeout", report)
    if seconds is None:
        return
    server["header_timeout"] = server["body_idle_timeout"] = seconds
    note = "Go bounds reading the whole request; llmrelay bounds its head, then each silence in its body"
    report.moved(table.at("read_timeout"), "server.header_timeout", note)
    report.moved(table.at("read_timeout"), "server.body_idle_timeout", note)


def _write_timeout(table: SourceTable, server: dict[str, Any], report: Report) -> float | None:
    seconds = _timeout(table, "write_timeout", report)
    if seconds is None:
        return None
    server["write_timeout"] = seconds
    report.moved(
        table.at("write_timeout"), "server.write_timeout",
        "Go cuts any answer still being written after this long, streams included; llmrelay disconnects a "
        "client that reads nothing for this long and never cuts a stream for its length",
    )
    report.moved(
        table.at("write_timeout"), "endpoints.*.first_byte_timeout",
        "an upstream that has not started answering by then fails, as it could not finish in Go",
    )
    return seconds


# -- providers --------------------------------------------------------------------------------------


def _endpoints(
    table: SourceTable | None, first_byte_timeout: float | None, report: Report, comments: dict[str, str]
) -> dict[str, Any]:
    endpoints: dict[str, Any] = {}
    for name, (provider, default_base) in PROVIDERS.items():
        source = table.table(name) if table is not None else None
        endpoint = endpoint_name(name, endpoints)
        base = _base_url(source, default_base, endpoint, report)
        section: dict[str, Any] = {"target_base": base, "provider": provider, "auth_keys": []}
        if first_byte_timeout is not None:
            section["first_byte_timeout"] = first_byte_timeout
        endpoints[endpoint] = section
        origin = f"providers.{name}" if source is not None else f"llm-proxy's built-in {name} provider"
        comments[f"endpoints.{endpoint}"] = f"From {origin}: /{name}/... with the client's own credentials."
        if source is not None:
            _provider_leftovers(source, report)
    if table is not None:
        table.drop_rest("llm-proxy serves only openai, anthropic, gemini and groq; nothing routes to it")
    report.note(
        "every endpoint has auth_keys = [] and no api_key: each client's own credential reaches the provider "
        "untouched, as with llm-proxy"
    )
    return endpoints


def _base_url(source: SourceTable | None, default_base: str, endpoint: str, report: Report) -> str:
    base = source.take("base_url") if source is not None else None
    if source is not None and isinstance(base, str) and base:
        report.moved(source.at("base_url"), f"endpoints.{endpoint}.target_base")
        return base.rstrip("/")
    if source is not None and base is not None:
        report.dropped(source.at("base_url"), f"{base!r} is not a URL; llm-proxy's default {default_base} is used")
    return default_base


def _provider_leftovers(source: SourceTable, report: Report) -> None:
    """The keys of a provider that only feed llm-proxy's cost tracking."""
    for key in ("enabled", "models", "default_limits"):
        if source.has(key):
            source.take(key)
            report.dropped(
                source.at(key),
                "llm-proxy reads it for cost tracking's pricing only (routing and limits ignore it)",
                changes_behaviour=False,
            )
    source.drop_rest()


# -- cors and logging -----------------------------------------------------------------------------


def _cors(root: SourceTable, report: Report) -> dict[str, Any] | None:
    table = root.table("cors")
    if table is None:
        report.note(
            "no cors: table: llm-proxy answers every origin (Access-Control-Allow-Origin: *), "
            'so [server.cors] allows "*" with its methods and headers'
        )
        return {"allow_origins": ["*"], "allow_methods": GO_CORS_METHODS, "allow_headers": GO_CORS_HEADERS}
    if table.take("enabled", True) is False:
        report.moved(table.at("enabled"), "server.cors (left out: no CORS)")
        table.drop_rest("CORS is disabled", changes_behaviour=False)
        return None
    if table.has("enabled"):
        report.moved(table.at("enabled"), "server.cors")
    cors: dict[str, Any] = {"allow_methods": GO_CORS_METHODS, "allow_headers": GO_CORS_HEADERS}
    for source_key, key in CORS_KEYS.items():
        if not table.has(source_key):
            continue
        value = table.take(source_key)
        if key == "max_age":
            value = go_duration(value)
            value = int(value) if value is not None and value >= 0 else None
        if value is None:
            report.dropped(table.at(source_key), "not a value llmrelay can use here")
            continue
        cors[key] = value
        report.moved(table.at(source_key), f"server.cors.{key}")
    table.drop_rest()
    return cors


def _logging(table: SourceTable | None, server: dict[str, Any], report: Report) -> None:
    if table is None:
        return
    move_log_level(table, "level", server, report)
    log_format = table.take("format")
    if log_format in ("json", "text"):
        server["log_format"] = log_format
        report.moved(table.at("format"), "server.log_format")
    elif log_format is not None:
        server["log_format"] = "text"
        report.moved(table.at("format"), "server.log_format", f"{log_format!r} is written as llmrelay's text lines")
    table.drop_rest(changes_behaviour=False)


def _other_features(features: SourceTable, report: Report) -> None:
    for key, what in (
        ("cost_tracking", "cost records (file, DynamoDB, Datadog); llmrelay sums usage per key and model (llmrelay usage) instead"),
        ("api_key_management", "client keys checked against llm-proxy's key store"),
    ):
        table = features.table(key)
        if table is None:
            continue
        enabled = table.data.get("enabled") is True
        reason = f"{what}: no equivalent" + ("" if enabled else " (disabled in the file)")
        report.dropped(features.at(key), reason, changes_behaviour=enabled)
    features.drop_rest()

