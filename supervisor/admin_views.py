"""What the admin listener shows: `/health` (the workers' table, answered by the supervisor) and
`/status` (the supervisor's overview), built from its live parts.

`/health` is the very document the workers answer (`llmrelay.worker.health.health_view`), computed
from the health board and the config the supervisor holds rather than from a worker's runtime: the
view reads only each endpoint's config and provider, which `_ConfigView` provides.

`/status` (JSON; `llmrelay status` prints it) holds the version, the config generation and when it
was loaded, every worker (slot, pid, state, uptime, connections, in-flight, RSS, requests), every
endpoint and upstream (health from the same view, requests per second and p50/p99 latency over the
last minute from the aggregated metrics, in-flight where the workers report it), and the outcome of
the last reload and the last rolling restart.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, cast

from llmrelay import __version__
from llmrelay.config.resolved import RelayConfig, ResolvedEndpoint
from llmrelay.control import HealthTable, WorkerInfo
from llmrelay.observe import catalog
from llmrelay.relay.runtime import RelayRuntime
from llmrelay.worker.health import health_view
from supervisor.health import HealthBoard
from supervisor.metrics import LiveState, MetricsTotals
from supervisor.limits import LimitsService
from supervisor.slots import SlotTable
from supervisor.status import ActionStatus, StatusFile


@dataclasses.dataclass(frozen=True)
class _EndpointView:
    config: ResolvedEndpoint
    provider: str


@dataclasses.dataclass(frozen=True)
class _ConfigView:
    """The part of a `RelayRuntime` that `health_view` reads."""

    endpoints: dict[str, _EndpointView]
    generation: int


class AdminViews:
    def __init__(
        self, table: SlotTable, board: HealthBoard, totals: MetricsTotals, status: StatusFile, limits: LimitsService | None = None
    ) -> None:
        self.table = table
        self.board = board
        self.totals = totals
        self.status = status
        self.limits = limits if limits is not None else LimitsService()
        self.started = time.time()

    def health_table(self) -> HealthTable:
        workers = sorted(self.table.workers, key=lambda w: (w.slot, w.started))
        return self.board.table(self.table.generation, [w.info() for w in workers], time.time(), self.limits.degraded)

    def health(self, target: str = "/health") -> tuple[int, dict[str, object]]:
        """The status code and payload of `/health` (`/health?endpoint=NAME`)."""
        config: RelayConfig = self.table.config
        view = _ConfigView(
            {e.name: _EndpointView(e, e.provider) for e in config.endpoints},
            self.table.generation,
        )
        table = self.health_table()
        return health_view(cast(RelayRuntime, view), table, lambda: _no_worker(), target)

    def live_state(self, health: dict[str, object] | None = None) -> LiveState:
        """The supervisor-owned gauges now: upstream health from the /health view, each slot's RSS."""
        payload = health if health is not None else self.health()[1]
        healthy: list[tuple[str, str, bool]] = []
        for endpoint, entry in _dict(payload.get("endpoints")).items():
            for upstream, info in _dict(_dict(entry).get("upstreams")).items():
                healthy.append((endpoint, upstream, bool(_dict(info).get("usable"))))
        rss: list[tuple[int, int]] = []
        for slot in self.table.slots:
            worker = slot.worker
            if worker is not None and worker.stats is not None and not worker.exited.is_set():
                rss.append((slot.index, worker.stats.rss_bytes))
        limits = self.limits
        return LiveState(healthy, rss, limits.settings.backend, not limits.degraded, limits.backend_errors)

    def status_document(self) -> dict[str, object]:
        now = time.time()
        code, health = self.health()
        recent = self.totals.recent.summary(now)
        requests = self.totals.counter_by(catalog.REQUESTS, 2)
        workers: list[dict[str, Any]] = []
        for worker in sorted(self.table.workers, key=lambda w: (w.slot, w.started)):
            info, stats = worker.info(), worker.stats
            workers.append(
                {
                    "slot": info.slot,
                    "pid": info.pid,
                    "state": info.state,
                    "uptime": info.uptime,
                    "connections": info.connections,
                    "in_flight": info.in_flight,
                    "rss_bytes": stats.rss_bytes if stats else 0,
                    "requests": info.requests_total,
                    "version": info.version,
                    "generation": info.generation,
                }
            )
        endpoints: dict[str, object] = {}
        upstream_in_flight = self.totals.gauge_sum(catalog.UPSTREAM_IN_FLIGHT.name)
        for name, entry in _dict(health.get("endpoints")).items():
            upstreams: dict[str, object] = {}
            for upstream, info in _dict(_dict(entry).get("upstreams")).items():
                shown = _dict(info)
                stats_now = recent.get((name, upstream))
                upstreams[upstream] = {
                    "state": shown.get("state"),
                    "usable": shown.get("usable"),
                    "consecutive_failures": shown.get("consecutive_failures"),
                    "last_error": shown.get("last_error"),
                    "in_flight": int(upstream_in_flight.get((name, upstream), 0)),
                    "requests": int(requests.get((name, upstream), 0)),
                    "requests_per_second": round(stats_now.requests_per_second, 3) if stats_now else 0.0,
                    "p50_ms": _ms(stats_now.p50 if stats_now else None),
                    "p99_ms": _ms(stats_now.p99 if stats_now else None),
                }
            endpoints[name] = {
                "provider": _dict(entry).get("provider"),
                "usable": _dict(entry).get("usable"),
                "upstreams": upstreams,
            }
        in_flight = self.totals.gauge_sum(catalog.IN_FLIGHT.name).get((), None)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(now - self.started, 3),
            "health": health.get("status"),
            "health_code": code,
            "generation": self.table.generation,
            "loaded_at": self.status.loaded_at,
            "config": self.table.config.source,
            "stopping": self.table.stopping,
            "admin": self.status.admin,
            "in_flight": int(in_flight) if in_flight is not None else sum(w["in_flight"] for w in workers),
            "workers": workers,
            "endpoints": endpoints,
            "last_reload": _action(self.status.reload),
            "last_restart": _action(self.status.restart),
            "limits": self._limits(),
        }

    def _limits(self) -> dict[str, object]:
        limits = self.limits
        return {
            "backend": limits.settings.backend,
            "redis": limits.settings.redacted_url() if limits.settings.backend == "redis" else None,
            "rules": [rule.name for rule in limits.settings.rules],
            "degraded": limits.degraded or None,
            "backend_errors": limits.backend_errors,
        }


def _action(action: ActionStatus) -> dict[str, object] | None:
    if action.finished == 0 and not action.outcome:
        return None
    return dataclasses.asdict(action)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _no_worker() -> WorkerInfo:
    return WorkerInfo(pid=0, slot=-1, state="none", uptime=0.0, connections=0, in_flight=0, requests_total=0, version="", generation=0)
