"""The shared health view: upstream status merged from every worker's passive reports.

An endpoint becomes `failing` after `FAILING_AFTER` failures in a row (from any workers) and `ok` again
at the first success reported. A failing endpoint counts as unusable (and `/health` answers 503) for
`server.failing_retry_interval` seconds after its last failure; then it counts as usable again, as a
circuit breaker half-opens, so that a load balancer sends traffic again and a recovered provider can be
noticed (passive health only learns from requests), until the next failure holds it again. The table also lists every worker (pid, slot, state, uptime, in-flight
requests), and the supervisor broadcasts it so that `GET /health` on any worker answers the same.
"""

from __future__ import annotations

import time

from llmrelay.control import EndpointHealth, HealthTable, UpstreamEvent, WorkerInfo

FAILING_AFTER = 3


class HealthBoard:
    def __init__(self, retry_interval: float) -> None:
        self._endpoints: dict[str, EndpointHealth] = {}
        self.retry_interval = retry_interval  # follows server.failing_retry_interval on reload

    def sync_endpoints(self, names: list[str]) -> None:
        """Follow a config change: forget removed endpoints, start new ones as ok."""
        self._endpoints = {name: self._endpoints.get(name, EndpointHealth(status="ok")) for name in names}

    def observe(self, event: UpstreamEvent) -> str | None:
        """Merge one report; return a log line when the endpoint's status changed."""
        current = self._endpoints.get(event.endpoint)
        if current is None:
            return None
        if event.ok:
            if current.status == "ok" and current.consecutive_failures == 0:
                return None
            self._endpoints[event.endpoint] = EndpointHealth(status="ok", last_change=time.time())
            if current.status != "ok":
                return f"endpoint {event.endpoint} recovered"
            return None
        failures = current.consecutive_failures + 1
        status = "failing" if failures >= FAILING_AFTER else current.status
        changed = status != current.status
        now = time.time()
        self._endpoints[event.endpoint] = EndpointHealth(
            status=status,
            consecutive_failures=failures,
            last_error=event.reason[:200],
            last_change=now if changed else current.last_change,
            retry_at=now + self.retry_interval if status == "failing" else 0.0,
        )
        if changed:
            return f"endpoint {event.endpoint} is failing ({failures} failures in a row; last: {event.reason[:200]})"
        return None

    def table(self, generation: int, workers: list[WorkerInfo]) -> HealthTable:
        return HealthTable(generation=generation, endpoints=dict(self._endpoints), workers=workers)
