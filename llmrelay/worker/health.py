"""What `GET /health` answers: the supervisor's shared table seen through this worker's config.

Sans-IO: the worker passes its runtime, the last table the supervisor broadcast, and its own info
(used before the first table arrives); this returns the status code and the JSON payload. Everything
shown comes from the table (never from this worker's own observations), so every worker answers the
same.

Each endpoint lists its upstreams, and each upstream its provider keys (by name or index, never the
value), with a `state`: an upstream is `unhealthy` (failing its active check), `ejected` (passive
health; past `ejected_until` it is half-open and usable again for a probe), `disabled` (every key
refused with 401/403), `cooling` (every key cooling down after a 429) or `ok`; a key is `ok`,
`cooling` or `disabled`. `status` is `failing` when some endpoint has no usable upstream at all
(answered with 503, so that a load balancer's readiness probe takes this relay out), `degraded` when
some upstream or key is not ok or has failed recently, else `ok`.
`GET /health?endpoint=NAME` answers for one endpoint: 200 when something is usable, 503 when nothing
is, 404 when there is no such endpoint.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable

import msgspec

from llmrelay import __version__
from llmrelay.config.resolved import ResolvedUpstream
from llmrelay.control import HealthTable, KeyHealth, UpstreamHealth, WorkerInfo
from llmrelay.relay.runtime import RelayRuntime

_OK = UpstreamHealth()


def health_view(
    runtime: RelayRuntime | None,
    table: HealthTable | None,
    own_info: Callable[[], WorkerInfo],
    target: str = "/health",
) -> tuple[int, dict[str, object]]:
    """The status code and payload of `GET /health` (or `/health?endpoint=NAME`); `own_info` lists
    this worker alone until the supervisor's first table arrives."""
    endpoints: dict[str, object] = {}
    unusable: set[str] = set()
    degraded = False
    now = time.time()
    if runtime is not None:
        for name, endpoint in runtime.endpoints.items():
            shared = table.endpoints.get(name) if table else None
            upstreams: dict[str, object] = {}
            any_usable = False
            for config in endpoint.config.upstreams:
                health = shared.upstreams.get(config.name, _OK) if shared else _OK
                entry, keys_ok = _upstream_entry(config, health, now)
                upstreams[config.name] = entry
                any_usable |= bool(entry["usable"])
                degraded |= entry["state"] != "ok" or health.consecutive_failures > 0 or not keys_ok
            if not any_usable:
                unusable.add(name)
            endpoints[name] = {"provider": endpoint.provider, "usable": any_usable, "upstreams": upstreams}
    limits_degraded = table.limits_degraded if table else ""
    degraded |= bool(limits_degraded)  # (rate limits not exact: the Redis behind them cannot be asked)
    overall = "failing" if unusable else "degraded" if degraded else "ok"
    code = 503 if unusable else 200
    asked = _endpoint_asked(target)
    if asked is not None:
        code = 404 if asked not in endpoints else 503 if asked in unusable else 200
    workers = table.workers if table else [own_info()]
    payload: dict[str, object] = {
        "status": overall,
        "version": __version__,
        "generation": table.generation if table else (runtime.generation if runtime else 0),
        "endpoints": endpoints,
        "workers": [msgspec.structs.asdict(w) for w in workers],
    }
    if limits_degraded:
        payload["limits"] = {"status": "degraded", "error": limits_degraded}
    return code, payload


def _key_state(key: KeyHealth | None, now: float) -> str:
    if key is None:
        return "ok"
    if key.state == "cooling" and key.cooling_until <= now:
        return "ok"
    return key.state


def _upstream_entry(config: ResolvedUpstream, health: UpstreamHealth, now: float) -> tuple[dict[str, object], bool]:
    """An upstream's entry in the payload, and whether every key it uses is ok."""
    shared_keys = {key.name: key for key in health.keys}
    keys: dict[str, object] = {}
    in_use: list[str] = []  # the states of the keys with weight (the ones requests may get)
    for key in config.api_keys:
        shared = shared_keys.get(key.name)
        state = _key_state(shared, now)
        keys[key.name] = {
            "state": state,
            "weight": key.weight,
            "cooling_until": shared.cooling_until if shared and state == "cooling" else 0.0,
        }
        if key.weight > 0:
            in_use.append(state)
    ejected = health.state == "ejected" and health.ejected_until > 0
    if not health.check_ok:
        state = "unhealthy"
    elif ejected:
        state = "ejected"
    elif in_use and all(s == "disabled" for s in in_use):
        state = "disabled"
    elif in_use and "ok" not in in_use:
        state = "cooling"
    else:
        state = "ok"
    usable = health.check_ok and not (ejected and now < health.ejected_until) and (not in_use or "ok" in in_use)
    entry: dict[str, object] = {
        "provider": config.provider,
        "target": str(config.target),
        "weight": config.weight,
        "priority": config.priority,
        "fallback": config.fallback,
        "state": state,
        "usable": usable,
        "consecutive_failures": health.consecutive_failures,
        "last_error": health.last_error,
        "ejected_until": health.ejected_until if ejected else 0.0,
        "health_check": health.checked,
        "last_check": health.last_check,
        "last_check_ms": health.last_check_ms,
        "last_check_error": health.last_check_error,
        "keys": keys,
    }
    return entry, all(key_state == "ok" for key_state in in_use)


def _endpoint_asked(target: str) -> str | None:
    """NAME from `/health?endpoint=NAME`, else None."""
    _, _, query = target.partition("?")
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == "endpoint":
            return urllib.parse.unquote(value)
    return None
