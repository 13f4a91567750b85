"""The shared health view: upstream status merged from every worker's passive reports.

An endpoint becomes `failing` after `FAILING_AFTER` failures in a row (from any workers) and `ok` again
at the first success reported. The table also lists every worker (pid, slot, state, uptime, in-flight
requests), and the supervisor broadcasts it so that `GET /health` on any worker answers the same.
"""

from __future__ import annotations

import time

from llmrelay.control import EndpointHealth, HealthTable, UpstreamEvent, WorkerInfo

FAILING_AFTER = 3


class HealthBoard:
    def __init__(self) -> None:
        self._endpoints: dict[str, EndpointHealth] = {}

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
        self._endpoints[event.endpoint] = EndpointHealth(
            status=status,
            consecutive_failures=failures,
            last_error=event.reason[:200],
            last_change=time.time() if changed else current.last_change,
        )
        if changed:
            return f"endpoint {event.endpoint} is failing ({failures} failures in a row; last: {event.reason[:200]})"
        return None

    def table(self, generation: int, workers: list[WorkerInfo]) -> HealthTable:
        return HealthTable(generation=generation, endpoints=dict(self._endpoints), workers=workers)
