"""The actix llm-proxy's TOML (`[llm.*]`, `[processor.*]`, `[[route]]`, `[server]`) as an llmrelay config.

actix routes by the request's whole path: the first `[[route]]` whose `path_prefix` starts the path
sends it, path unchanged, to its `target_llm`'s `base_url` with the token from `token_env`. Each route
becomes an endpoint (named after its llm) with `paths = [path_prefix]`, the llm's `base_url` as
`target_base` and its `token_env` as written. The route's streaming switches and the llm's
`supports_streaming` become a streaming-gate processor; a processor of type `openai_chat` (the query
rewritten by a chat model before it is sent) becomes `rewrite_with`, pointed at the endpoint of an
OpenAI chat llm.
"""

from __future__ import annotations

from typing import Any

from llmrelay.config.values import is_loopback_host
from llmrelay.importing.formats import Converted, endpoint_name
from llmrelay.importing.formats.source_keys import (
    SourceTable,
    move_log_level,
    positive_number,
    require_some_key,
    require_table,
)
from llmrelay.importing.report import Report
from llmrelay.importing.sources import ImportSourceError

FORMAT_LABEL = "actix llm-proxy TOML"
PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini", "google": "gemini"}
# actix-cors as llm-proxy builds it: these methods and headers, preflights cached an hour
ACTIX_CORS = {"allow_methods": ["GET", "POST"], "allow_headers": ["authorization", "content-type"], "max_age": 3600}


class Route:
    """One `[[route]]` as read, with the llm it targets."""

    def __init__(self, index: int, table: SourceTable, llm_name: str, llm: SourceTable) -> None:
        self.index = index
        self.table = table
        self.llm_name = llm_name
        self.llm = llm
        self.prefix: str = table.take("path_prefix")


def convert(data: dict[str, Any], report: Report) -> Converted:
    for key in ("llm", "processor", "server"):
        require_table(data, key, FORMAT_LABEL)
    if "route" in data and not isinstance(data["route"], list):
        raise ImportSourceError(f"`route` is not an array of [[route]] tables: this is not a {FORMAT_LABEL} file (name the format with --format)")
    require_some_key(data, ("llm", "route"), FORMAT_LABEL)
    root = SourceTable(data, "", report)
    llms = _tables_of(root.table("llm"))
    processors = _tables_of(root.table("processor"))
    server_table = root.table("server")
    comments: dict[str, str] = {}
    routes = _routes(root.take("route") or [], llms, report)
    endpoints: dict[str, Any] = {}
    for route in routes:
        name = endpoint_name(route.llm_name, endpoints)
        endpoints[name] = _endpoint(route, report, name, paths=[route.prefix])
        comments[f"endpoints.{name}"] = f"From route[{route.index}] ({route.prefix}) and llm.{route.llm_name}."
    rewriter = _rewriter(llms, routes, endpoints, report, comments) if _rewrites(routes, processors) else None
    used_processors: set[str] = set()
    for name, route in zip(list(endpoints), routes):
        used_processors |= _processors(route, endpoints[name], name, processors, rewriter[0] if rewriter else None, report)
    server, timeout = _server(server_table, report)
    _apply_to_endpoints(endpoints, server, timeout, report)
    used_llms = {route.llm_name for route in routes} | ({rewriter[1]} if rewriter else set())
    _used_keys(llms, processors, used_llms, used_processors, report)
    root.drop_rest()
    report.note(
        "actix matches path_prefix as a plain string, the first route in the file winning; llmrelay matches "
        "`paths` on path segments, the longest first, and also serves each endpoint as /NAME/..."
    )
    comments["server"] = "From [server]."
    return Converted({"server": server, "endpoints": endpoints}, comments)


def _tables_of(table: SourceTable | None) -> dict[str, SourceTable]:
    if table is None:
        return {}
    named: dict[str, SourceTable] = {}
    for name in list(table.data):
        entry = table.table(name)
        if entry is not None:
            named[name] = entry
    return named


# -- routes -------------------------------------------------------------------------------------------


def _routes(items: list[Any], llms: dict[str, SourceTable], report: Report) -> list[Route]:
    routes: list[Route] = []
    for index, item in enumerate(items):
        path = f"route[{index}]"
        if not isinstance(item, dict):
            report.dropped(path, "not a table")
            continue
        table = SourceTable(item, path, report)
        prefix, target = item.get("path_prefix"), item.get("target_llm")
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            table.drop_rest("the route has no path_prefix starting with /: actix cannot route to it")
            continue
        if target not in llms:
            table.drop_rest(f"target_llm {target!r} names no [llm.*] table: actix refuses it at start")
            continue
        shadow = next((r for r in routes if prefix.startswith(r.prefix)), None)
        if shadow is not None:
            table.drop_rest(f"never reached in actix: route[{shadow.index}] ({shadow.prefix}) matches first", changes_behaviour=False)
            continue
        table.take("target_llm")
        routes.append(Route(index, table, str(target), llms[str(target)]))
    return routes


def _endpoint(route: Route | None, report: Report, name: str, paths: list[str], llm: SourceTable | None = None) -> dict[str, Any]:
    llm = route.llm if route is not None else llm
    assert llm is not None
    section: dict[str, Any] = {}
    if paths and route is not None:
        section["paths"] = paths
        report.moved(route.table.at("path_prefix"), f"endpoints.{name}.paths")
        report.moved(route.table.at("target_llm"), f"endpoints.{name}")
    base = llm.data.get("base_url")
    if isinstance(base, str) and base:
        section["target_base"] = base.rstrip("/")
        report.moved(llm.at("base_url"), f"endpoints.{name}.target_base")
    provider = PROVIDERS.get(str(llm.data.get("provider", "")).lower())
    if provider is not None:
        section["provider"] = provider
        report.moved(llm.at("provider"), f"endpoints.{name}.provider")
    elif "provider" in llm.data:
        report.moved(llm.at("provider"), f"endpoints.{name}", "not a provider llmrelay knows: told from the target's host")
    token_env = llm.data.get("token_env")
    if isinstance(token_env, str) and token_env:
        section["token_env"] = token_env
        report.moved(llm.at("token_env"), f"endpoints.{name}.token_env")
    return section


# -- processors ---------------------------------------------------------------------------------------


def _streaming_gate(route: Route, name: str, report: Report) -> dict[str, bool] | None:
    """The route's allow_streaming / allow_non_streaming and the llm's supports_streaming as one
    processor table; None when nothing is refused."""
    allow_streaming = route.table.take("allow_streaming", True) is not False
    allow_non_streaming = route.table.take("allow_non_streaming", True) is not False
    supports = route.llm.data.get("supports_streaming", True) is not False
    gate: dict[str, bool] = {}
    if not (allow_streaming and supports):
        gate["allow_streaming"] = False
    if not allow_non_streaming:
        gate["allow_non_streaming"] = False
    destination = f"endpoints.{name}.processors[0]"
    for source, key in ((route.table, "allow_streaming"), (route.table, "allow_non_streaming"), (route.llm, "supports_streaming")):
        if source.has(key):
            report.moved(source.at(key), destination if gate else f"endpoints.{name} (allowed: no processor needed)")
    return gate or None


def _processors(
    route: Route, endpoint: dict[str, Any], name: str, processors: dict[str, SourceTable], rewriter: str | None, report: Report
) -> set[str]:
    """Processor tables for the route's endpoint; the names of the processors it uses."""
    steps: list[dict[str, Any]] = []
    used: set[str] = set()
    gate = _streaming_gate(route, name, report)
    if gate is not None:
        steps.append(gate)
    names = route.table.take("processors") or []
    for index, processor_name in enumerate(names if isinstance(names, list) else [names]):
        path = f"{route.table.at('processors')}[{index}]"
        processor = processors.get(str(processor_name))
        used.add(str(processor_name))
        if processor is None:
            report.dropped(path, f"no [processor.{processor_name}] table: actix cannot build this route")
            continue
        step = _processor_step(processor, rewriter, f"endpoints.{name}.processors[{len(steps)}]", report)
        if step is not None:
            steps.append(step)
            report.moved(path, f"endpoints.{name}.processors[{len(steps) - 1}]")
    if steps:
        endpoint["processors"] = steps
    route.table.drop_rest()
    return used


def _processor_step(processor: SourceTable, rewriter: str | None, destination: str, report: Report) -> dict[str, Any] | None:
    kind = processor.data.get("type")
    if kind == "logger":
        report.dropped(processor.path, "logs each request; llmrelay's access log records every request", changes_behaviour=False)
        return None
    if kind != "openai_chat":
        report.dropped(processor.path, f"a processor of type {kind!r} has no llmrelay equivalent")
        return None
    model = processor.data.get("config_value")
    extra = processor.data.get("additional_config")
    prompt = extra.get("system_prompt") if isinstance(extra, dict) else None
    if rewriter is None or not isinstance(model, str) or not isinstance(prompt, str):
        missing = "no [llm.*] of provider openai and type chat to call" if rewriter is None else "needs config_value (the model) and additional_config.system_prompt"
        report.dropped(processor.path, f"the query rewrite {missing}")
        return None
    report.moved(processor.at("type"), f"{destination}.rewrite_with", f"the rewrite is asked of endpoint {rewriter!r}")
    report.moved(processor.at("config_value"), f"{destination}.rewrite_with.model")
    report.moved(f"{processor.at('additional_config')}.system_prompt", f"{destination}.rewrite_with.prompt")
    return {"rewrite_with": {"endpoint": rewriter, "model": model, "prompt": prompt, "fail_open": False}}


def _rewriter(
    llms: dict[str, SourceTable], routes: list[Route], endpoints: dict[str, Any], report: Report, comments: dict[str, str]
) -> tuple[str, str] | None:
    """The endpoint a rewrite processor calls: that of the first llm (in file order) of provider openai
    and type chat, given an endpoint of its own (no paths) when no route targets it."""
    chosen = next((name for name, llm in llms.items() if _openai_chat(llm)), None)
    if chosen is None:
        return None
    for endpoint, route in zip(endpoints, routes):
        if route.llm_name == chosen:
            report.note(f"openai_chat processors rewrite through endpoint {endpoint!r} (llm.{chosen}, the first OpenAI chat llm)")
            return endpoint, chosen
    endpoint = endpoint_name(chosen, endpoints)
    endpoints[endpoint] = _endpoint(None, report, endpoint, paths=[], llm=llms[chosen])
    comments[f"endpoints.{endpoint}"] = f"From llm.{chosen}: called by the query rewrite only (no route sends to it)."
    report.note(f"openai_chat processors rewrite through endpoint {endpoint!r}, made for llm.{chosen} (no route targets it)")
    return endpoint, chosen


def _rewrites(routes: list[Route], processors: dict[str, SourceTable]) -> bool:
    """Whether some route uses an `openai_chat` processor (which needs an endpoint to rewrite through)."""
    for route in routes:
        names = route.table.data.get("processors")
        for name in names if isinstance(names, list) else []:
            processor = processors.get(str(name))
            if processor is not None and processor.data.get("type") == "openai_chat":
                return True
    return False


def _openai_chat(llm: SourceTable) -> bool:
    return str(llm.data.get("provider", "")).lower() == "openai" and str(llm.data.get("type", "")).lower() == "chat"


def _used_keys(
    llms: dict[str, SourceTable], processors: dict[str, SourceTable], used_llms: set[str], used_processors: set[str], report: Report
) -> None:
    """Report what is left of each llm and processor: those nothing uses, and their keys without a place."""
    for name, llm in llms.items():
        if name not in used_llms:
            llm.drop_rest("no route sends to this llm", changes_behaviour=False)
            continue
        for key in ("provider", "base_url", "token_env", "supports_streaming"):
            llm.take(key)
        if llm.has("type"):
            llm.take("type")
            report.dropped(llm.at("type"), "the kind of API it serves: llmrelay forwards whatever path the route takes", changes_behaviour=False)
        if llm.take("additional_config"):
            report.dropped(llm.at("additional_config"), "provider settings llmrelay has no place for")
        llm.drop_rest()
    for name, processor in processors.items():
        if name not in used_processors:
            processor.drop_rest("no route uses this processor", changes_behaviour=False)
            continue
        processor.take("type")
        processor.take("config_value")
        extra = processor.take("additional_config")
        rewrite = processor.data.get("type") == "openai_chat"
        for key in extra if isinstance(extra, dict) else []:
            if not (rewrite and key == "system_prompt"):
                report.dropped(f"{processor.at('additional_config')}.{key}", "no equivalent in llmrelay's rewrite_with")
        processor.drop_rest()


# -- server -------------------------------------------------------------------------------------------


def _server(table: SourceTable | None, report: Report) -> tuple[dict[str, Any], float | None]:
    server: dict[str, Any] = {}
    if table is None:
        return server, None
    for key in ("host", "port"):
        if table.has(key):
            server[key] = str(table.take(key)) if key == "host" else table.take(key)
            report.moved(table.at(key), f"server.{key}")
    origins = table.take("cors_allowed_origins")
    if isinstance(origins, list) and origins:
        server["cors"] = {"allow_origins": origins, **ACTIX_CORS}
        report.moved(table.at("cors_allowed_origins"), "server.cors.allow_origins", "with actix's methods (GET, POST), headers and max_age")
    elif origins is not None:
        report.moved(table.at("cors_allowed_origins"), "server.cors (left out: no origin allowed)")
    move_log_level(table, "log_level", server, report)
    timeout = positive_number(table.take("request_timeout_secs"))
    if timeout is not None:
        report.moved(
            table.at("request_timeout_secs"), "endpoints.*.first_byte_timeout",
            "actix bounds the whole upstream call; llmrelay bounds the wait for its first byte, then each silence (idle_timeout)",
        )
    table.drop_rest()
    return server, timeout


def _apply_to_endpoints(endpoints: dict[str, Any], server: dict[str, Any], timeout: float | None, report: Report) -> None:
    open_listener = not is_loopback_host(str(server.get("host", "127.0.0.1")).strip("[]"))
    for section in endpoints.values():
        if timeout is not None:
            section["first_byte_timeout"] = timeout
        if open_listener and "token_env" in section:
            section["public"] = True
    if open_listener and any("token_env" in section for section in endpoints.values()):
        report.note(
            f"actix asks no key of its clients: on {server['host']} the endpoints inject their tokens for anyone "
            "(public = true); add auth_keys to require a relay key"
        )
