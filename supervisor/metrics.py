"""The supervisor's metrics: the workers' deltas summed into totals, its own counters, and the
Prometheus exposition of both.

Workers send `MetricsDelta`s (what their counters and histograms gained since their previous report,
and their gauges' current values). `MetricsTotals.add` sums the increments into totals that belong to
the supervisor, so a worker that exits, is replaced or is killed takes nothing with it that it had
reported; its gauges are per worker (the latest value of each live one, summed) and disappear with it
(`forget`). Every name, kind, label count and bucket count is checked against `observe.catalog`: a
delta that does not fit is dropped (and logged once per metric), so the exposition always holds what
the catalog promises. The number of label sets per metric is bounded (`MAX_SERIES`) even if a worker
misbehaves.

The supervisor's own metrics (`llmrelay_worker_restarts_total`, `llmrelay_reloads_total`) are
counted here too; the ones read from live state (upstream health, workers' RSS, build info) are
given to `MetricsCollector` by its caller at each scrape.

`RecentWindow` keeps the last minute of requests and duration buckets per endpoint and upstream, per
second, for the req/s and p50/p99 that `/status` shows (Prometheus computes its own from the totals).
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, field

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric as MetricFamily,
)

from llmrelay import __version__
from llmrelay.control import MetricsDelta
from llmrelay.observe import catalog
from llmrelay.observe.catalog import Metric

log = logging.getLogger("supervisor")

MAX_SERIES = 10_000  # label sets per metric; beyond, new ones are dropped (a worker gone wrong)
WINDOW = 60  # seconds of recent requests kept for /status

Labels = tuple[str, ...]


class RestartReason(enum.Enum):
    """Why a worker was replaced (the `reason` label of `llmrelay_worker_restarts_total`)."""

    CRASH = "crash"  # it exited (or was killed from outside) without being asked to
    BOOT = "boot"  # it failed to boot, or was not ready in time
    HEARTBEAT = "heartbeat"  # it went silent and was killed
    RSS = "rss"  # its memory grew past server.max_worker_rss
    ROLLING = "rolling"  # SIGUSR2 or POST /restart
    RELOAD = "reload"  # a reload moved the listeners
    SCALE = "scale"  # fewer workers (SIGTTOU, or a reload lowering server.workers)


class ReloadResult(enum.Enum):
    OK = "ok"
    FAILED = "failed"


@dataclass
class HistogramTotal:
    """One histogram series: per-bucket counts (not cumulative; the last is +Inf), sum, count."""

    buckets: list[int]
    sum: float = 0.0
    count: int = 0


@dataclass
class _Second:
    """What one second of deltas added, per (endpoint, upstream)."""

    second: int
    requests: dict[Labels, float] = field(default_factory=dict)
    durations: dict[Labels, list[int]] = field(default_factory=dict)


class RecentWindow:
    """The requests and their duration buckets of the last `WINDOW` seconds."""

    def __init__(self, started: float) -> None:
        self.started = started
        self._seconds: deque[_Second] = deque()

    def _slot(self, now: float) -> _Second:
        second = int(now)
        if not self._seconds or self._seconds[-1].second != second:
            self._seconds.append(_Second(second))
            self._trim(now)
        return self._seconds[-1]

    def _trim(self, now: float) -> None:
        while self._seconds and self._seconds[0].second <= int(now) - WINDOW:
            self._seconds.popleft()

    def add_requests(self, key: Labels, value: float, now: float) -> None:
        slot = self._slot(now).requests
        slot[key] = slot.get(key, 0.0) + value

    def add_durations(self, key: Labels, buckets: Sequence[int], now: float) -> None:
        slot = self._slot(now).durations
        held = slot.get(key)
        if held is None:
            slot[key] = list(buckets)
        else:
            for index, value in enumerate(buckets):
                held[index] += value

    def summary(self, now: float) -> dict[Labels, RecentStats]:
        """Per (endpoint, upstream): requests per second and duration quantiles over the window."""
        self._trim(now)
        span = max(1.0, min(float(WINDOW), now - self.started))
        requests: dict[Labels, float] = {}
        durations: dict[Labels, list[int]] = {}
        for second in self._seconds:
            for key, value in second.requests.items():
                requests[key] = requests.get(key, 0.0) + value
            for key, buckets in second.durations.items():
                held = durations.setdefault(key, [0] * len(buckets))
                for index, count in enumerate(buckets):
                    held[index] += count
        bounds = catalog.REQUEST_DURATION.buckets
        return {
            key: RecentStats(
                requests_per_second=requests.get(key, 0.0) / span,
                p50=quantile(0.5, bounds, durations.get(key, [])),
                p99=quantile(0.99, bounds, durations.get(key, [])),
            )
            for key in requests.keys() | durations.keys()
        }


@dataclass(frozen=True)
class RecentStats:
    requests_per_second: float
    p50: float | None  # seconds; None without observations
    p99: float | None


def quantile(q: float, bounds: Sequence[float], buckets: Sequence[int]) -> float | None:
    """The q-quantile of per-bucket counts (the last one +Inf), interpolated linearly inside its
    bucket as Prometheus' histogram_quantile does; None without observations."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    for index, count in enumerate(buckets):
        if count and cumulative + count >= rank:
            if index >= len(bounds):  # in +Inf: the highest finite bound is all that is known
                return bounds[-1] if bounds else None
            lower = bounds[index - 1] if index > 0 else 0.0
            return lower + (bounds[index] - lower) * (rank - cumulative) / count
        cumulative += count
    return bounds[-1] if bounds else None


class MetricsTotals:
    """Every worker-reported metric summed, and the supervisor's own counters."""

    def __init__(self, now: float) -> None:
        self.counters: dict[str, dict[Labels, float]] = {}
        self.histograms: dict[str, dict[Labels, HistogramTotal]] = {}
        self.gauges: dict[int, dict[str, dict[Labels, float]]] = {}  # per worker pid
        self.restarts = {reason: 0 for reason in RestartReason}
        self.reloads = {result: 0 for result in ReloadResult}
        self.recent = RecentWindow(now)
        self._refused: set[str] = set()

    # -- workers' reports -----------------------------------------------------------------------
    def add(self, delta: MetricsDelta, now: float, pid: int | None = None) -> None:
        """Sum a worker's increments; take its gauge values as its latest (`pid`: the worker's, as the
        supervisor knows it; else the one in the delta)."""
        pid = delta.pid if pid is None else pid
        for counter in delta.counters:
            metric = self._fits(counter.name, "counter", counter.labels)
            if metric is None or not math.isfinite(counter.value) or counter.value < 0:
                continue
            labels = tuple(counter.labels)
            series = self.counters.setdefault(metric.name, {})
            if labels in series or self._room(metric, series):
                series[labels] = series.get(labels, 0.0) + counter.value
                if metric is catalog.REQUESTS:
                    self.recent.add_requests(labels[:2], counter.value, now)
        for histogram in delta.histograms:
            metric = self._fits(histogram.name, "histogram", histogram.labels)
            if metric is None:
                continue
            if len(histogram.buckets) != len(metric.buckets) + 1 or min(histogram.buckets, default=0) < 0:
                self._refuse(metric.name, f"{len(histogram.buckets)} buckets, expected {len(metric.buckets) + 1}")
                continue
            if sum(histogram.buckets) != histogram.count or not math.isfinite(histogram.sum):
                self._refuse(metric.name, "bucket counts that do not add up to its count")
                continue
            labels = tuple(histogram.labels)
            hseries = self.histograms.setdefault(metric.name, {})
            total = hseries.get(labels)
            if total is None:
                if not self._room(metric, hseries):
                    continue
                total = hseries[labels] = HistogramTotal([0] * len(histogram.buckets))
            for index, value in enumerate(histogram.buckets):
                total.buckets[index] += value
            total.sum += histogram.sum
            total.count += histogram.count
            if metric is catalog.REQUEST_DURATION:
                self.recent.add_durations(labels, histogram.buckets, now)
        values = self.gauges.setdefault(pid, {}) if delta.gauges else {}
        for gauge in delta.gauges:
            metric = self._fits(gauge.name, "gauge", gauge.labels)
            if metric is None or not math.isfinite(gauge.value):
                continue
            gseries = values.setdefault(metric.name, {})
            labels = tuple(gauge.labels)
            if labels in gseries or self._room(metric, gseries):
                gseries[labels] = gauge.value

    def forget(self, pid: int) -> None:
        """The worker is gone: its gauges no longer count (its counters and histograms stay)."""
        self.gauges.pop(pid, None)

    def _fits(self, name: str, kind: str, labels: Sequence[str]) -> Metric | None:
        metric = catalog.BY_NAME.get(name)
        if metric is None or metric.kind != kind or metric.source != "worker":
            self._refuse(name[:80], f"not a worker {kind} of the catalog")
            return None
        if len(labels) != len(metric.labels):
            self._refuse(name, f"{len(labels)} label values, expected {len(metric.labels)}")
            return None
        return metric

    def _room(self, metric: Metric, series: Sized) -> bool:
        if len(series) < MAX_SERIES:
            return True
        self._refuse(metric.name, f"more than {MAX_SERIES} label sets")
        return False

    def _refuse(self, name: str, why: str) -> None:
        if name not in self._refused and len(self._refused) < 100:
            self._refused.add(name)
            log.warning("metrics from a worker dropped: %r has %s", name, why)

    # -- the supervisor's own -------------------------------------------------------------------
    def restarted(self, reason: RestartReason) -> None:
        self.restarts[reason] += 1

    def reloaded(self, ok: bool) -> None:
        self.reloads[ReloadResult.OK if ok else ReloadResult.FAILED] += 1

    # -- reading ----------------------------------------------------------------------------------
    def gauge_sum(self, name: str) -> dict[Labels, float]:
        """A worker gauge summed over the live workers."""
        summed: dict[Labels, float] = {}
        for per_worker in self.gauges.values():
            for labels, value in per_worker.get(name, {}).items():
                summed[labels] = summed.get(labels, 0.0) + value
        return summed

    def counter_by(self, metric: Metric, keep: int) -> dict[Labels, float]:
        """A counter summed over all but its first `keep` labels."""
        summed: dict[Labels, float] = {}
        for labels, value in self.counters.get(metric.name, {}).items():
            summed[labels[:keep]] = summed.get(labels[:keep], 0.0) + value
        return summed


@dataclass(frozen=True)
class LiveState:
    """What the supervisor-owned gauges show at one scrape."""

    upstream_healthy: list[tuple[str, str, bool]]  # endpoint, upstream, takes traffic
    worker_rss: list[tuple[int, int]]  # slot, bytes
    limits_backend: str = "local"  # "local" or "redis"
    limits_up: bool = True  # the backend answers (limits exact)
    limits_errors: int = 0  # times it could not be asked, since the supervisor started


class MetricsCollector:
    """A `prometheus_client` collector over the totals and the live state of one scrape."""

    def __init__(self, totals: MetricsTotals, live: LiveState) -> None:
        self.totals = totals
        self.live = live

    def collect(self) -> Iterable[MetricFamily]:
        totals = self.totals
        for metric in catalog.CATALOG:
            if metric.source == "worker":
                yield from self._worker_metric(metric)
        restarts = CounterMetricFamily(
            catalog.WORKER_RESTARTS.name, catalog.WORKER_RESTARTS.help, labels=catalog.WORKER_RESTARTS.labels
        )
        for reason, count in totals.restarts.items():
            restarts.add_metric([reason.value], count)
        reloads = CounterMetricFamily(catalog.RELOADS.name, catalog.RELOADS.help, labels=catalog.RELOADS.labels)
        for result, count in totals.reloads.items():
            reloads.add_metric([result.value], count)
        healthy = GaugeMetricFamily(
            catalog.UPSTREAM_HEALTHY.name, catalog.UPSTREAM_HEALTHY.help, labels=catalog.UPSTREAM_HEALTHY.labels
        )
        for endpoint, upstream, usable in self.live.upstream_healthy:
            healthy.add_metric([endpoint, upstream], 1.0 if usable else 0.0)
        rss = GaugeMetricFamily(catalog.WORKER_RSS.name, catalog.WORKER_RSS.help, labels=catalog.WORKER_RSS.labels)
        for slot, value in self.live.worker_rss:
            rss.add_metric([str(slot)], float(value))
        backend_errors = CounterMetricFamily(
            catalog.LIMITS_BACKEND_ERRORS.name, catalog.LIMITS_BACKEND_ERRORS.help, labels=catalog.LIMITS_BACKEND_ERRORS.labels
        )
        backend_errors.add_metric([self.live.limits_backend], float(self.live.limits_errors))
        backend_up = GaugeMetricFamily(
            catalog.LIMITS_BACKEND_UP.name, catalog.LIMITS_BACKEND_UP.help, labels=catalog.LIMITS_BACKEND_UP.labels
        )
        backend_up.add_metric([self.live.limits_backend], 1.0 if self.live.limits_up else 0.0)
        build = GaugeMetricFamily(catalog.BUILD_INFO.name, catalog.BUILD_INFO.help, labels=catalog.BUILD_INFO.labels)
        build.add_metric([__version__], 1.0)
        yield from (healthy, restarts, rss, reloads, backend_errors, backend_up, build)

    def _worker_metric(self, metric: Metric) -> Iterable[MetricFamily]:
        totals = self.totals
        if metric.kind == "counter":
            counter = CounterMetricFamily(metric.name, metric.help, labels=metric.labels)
            for labels, value in sorted(totals.counters.get(metric.name, {}).items()):
                counter.add_metric(list(labels), value)
            yield counter
        elif metric.kind == "histogram":
            histogram = HistogramMetricFamily(metric.name, metric.help, labels=metric.labels)
            bounds = [repr(float(bound)) for bound in metric.buckets] + ["+Inf"]  # (as prometheus_client writes them)
            for labels, total in sorted(totals.histograms.get(metric.name, {}).items()):
                cumulative, running = [], 0
                for bound, value in zip(bounds, total.buckets):
                    running += value
                    cumulative.append((bound, float(running)))
                histogram.add_metric(list(labels), cumulative, total.sum)
            yield histogram
        else:
            gauge = GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)
            summed = totals.gauge_sum(metric.name)
            if not metric.labels and not summed:
                summed = {(): 0.0}  # an unlabelled gauge always has its one sample
            for labels, value in sorted(summed.items()):
                gauge.add_metric(list(labels), value)
            yield gauge


def exposition(totals: MetricsTotals, live: LiveState, accept: str) -> tuple[bytes, str]:
    """The body and Content-Type of a scrape: text format 0.0.4, or OpenMetrics when `accept` asks."""
    encoder, content_type = choose_encoder(accept)
    return encoder(MetricsCollector(totals, live)), content_type
