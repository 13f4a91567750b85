"""What `GET /health` answers: the supervisor's shared table seen through this worker's config.

Sans-IO: the worker passes its runtime, the last table the supervisor broadcast, and its own info
(used before the first table arrives); this returns the status code and the JSON payload.

An endpoint is usable unless its upstream is `failing` and its last failure is more recent than
`server.failing_retry_interval` (each endpoint has one upstream, so a failing one leaves nothing to
send its requests to; after the interval it is tried again). `status` is `ok` when every endpoint is
ok with no recent failure, `degraded` when some endpoint has recent failures but every one is usable,
and `unavailable` when some endpoint has nothing usable: 200 for the first two, 503 for the last, so
that a load balancer's readiness probe says whether this relay can serve every route it has.
`GET /health?endpoint=NAME` answers for one endpoint: 200 when it is usable, 503 when it has nothing
usable, 404 when there is no such endpoint.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable

import msgspec

from llmrelay import __version__
from llmrelay.control import HealthTable, WorkerInfo
from llmrelay.relay.runtime import RelayRuntime


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
    recent_failures = False
    now = time.time()
    if runtime is not None:
        for name, endpoint in runtime.endpoints.items():
            shared = table.endpoints.get(name) if table else None
            if shared is not None and not shared.usable(now):
                unusable.add(name)
            elif shared is not None and shared.consecutive_failures:
                recent_failures = True
            endpoints[name] = {
                "provider": endpoint.provider,
                "target": str(endpoint.config.target),
                "status": shared.status if shared else "ok",
                "consecutive_failures": shared.consecutive_failures if shared else 0,
                "last_error": shared.last_error if shared else "",
                "usable": name not in unusable,
            }
    overall = "unavailable" if unusable else "degraded" if recent_failures else "ok"
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
    return code, payload


def _endpoint_asked(target: str) -> str | None:
    """NAME from `/health?endpoint=NAME`, else None."""
    _, _, query = target.partition("?")
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == "endpoint":
            return urllib.parse.unquote(value)
    return None
