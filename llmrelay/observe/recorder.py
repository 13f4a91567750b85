"""The worker's metrics: cheap in-process counters and histograms, and the deltas sent to the supervisor.

Each request is recorded once, when it ends, from its access record (`record_request`): the record is
only kept (one list append on the hot path). Kept records are folded into the counters in bulk, every
`FOLD_AT` records and before every delta: grouped by (endpoint, upstream, model) in one pass, then
counted, summed and sorted into histogram buckets by C code (`Counter`, `map`, `sum`, `list.sort`,
`bisect`) rather than by a few hundred bytecodes per request. At most once a second, and once more
when the worker stops, `take_delta()` hands what grew since the previous call as one
`control.MetricsDelta` (None when nothing grew and no gauge changed); the supervisor sums them.

Labels come from the catalog (`observe.catalog`) and are bounded: endpoint and upstream names of the
config ("-" for a request that matched none), status classes, attempt outcomes from a fixed list
(`ATTEMPT_OUTCOMES`), models from `[server.metrics] models` (others "other", none known "unknown").
"""

from __future__ import annotations

import fnmatch
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import chain, compress, repeat
from operator import attrgetter, is_not, methodcaller, sub
from typing import TYPE_CHECKING

from llmrelay.config.schema import MetricsSection
from llmrelay.control import CounterDelta, GaugeValue, HistogramDelta, MetricsDelta
from llmrelay.observe import catalog
from llmrelay.observe.grouping import Folding, grouped

if TYPE_CHECKING:
    from llmrelay.relay.accesslog import AccessRecord

UNKNOWN_MODEL = "unknown"  # the request named no model the relay could read
MODEL_CACHE_SIZE = 4096
FOLD_AT = 512  # kept records are folded into the counters at this many (and before every delta)
# An attempt's outcome: "ok" (answered 1xx-3xx), "status_4xx", "status_429", "status_5xx" (answered
# with that status: retried, or relayed), or why it failed (`UpstreamError.reason`).
ATTEMPT_OUTCOMES = (
    "ok", "status_4xx", "status_429", "status_5xx",
    "connect_failed", "proxy_failed", "bad_response", "timeout", "pool_exhausted", "upstream_error",
)
_STATUS_CLASSES = [catalog.status_class(status) for status in range(600)]
_STREAMED = ("false", "true")
_GROUP = attrgetter("endpoint", "upstream", "model")
_STATUS_STREAMED = attrgetter("status", "streamed")
_STARTED = attrgetter("started")
_FINISHED = attrgetter("finished")
_FIRST_BYTE = attrgetter("first_byte")
_EVENTS = attrgetter("events")
_ATTEMPT_LOG = attrgetter("attempt_log")
_USAGE = attrgetter("usage")
_BYTES_IN = attrgetter("bytes_in")
_BYTES_OUT = attrgetter("bytes_out")


def attempt_outcome(status: int) -> str:
    if status < 400:
        return "ok"
    if status == 429:
        return "status_429"
    return "status_4xx" if status < 500 else "status_5xx"


class _Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe_all(self, values: list[float]) -> None:
        """Add `values` (sorted here, in place): a value goes to the first bucket whose bound is >= it."""
        if not values:
            return
        values.sort()
        counts = self.counts
        total = len(values)
        below = 0  # values <= the previous bound
        for index, bound in enumerate(self.bounds):
            upto = bisect_right(values, bound, below)
            counts[index] += upto - below
            below = upto
            if below == total:
                break
        else:
            counts[-1] += total - below  # past the last bound: +Inf
        self.sum += sum(values)
        self.count += total


class _PairStats:
    """What the requests of one (endpoint, upstream) added since the last delta: one lookup per
    request finds all of it."""

    __slots__ = ("requests", "durations", "ttfb", "events")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}  # (status class, streamed) -> requests
        self.durations = _Histogram(catalog.DURATION_BUCKETS)
        self.ttfb = _Histogram(catalog.TTFB_BUCKETS)
        self.events = 0


class ModelLabels:
    """A model name as a label: itself when one of `[server.metrics] models` globs matches, else "other"."""

    def __init__(self, globs: Iterable[str]) -> None:
        self._globs = tuple(globs)
        self._cache: dict[str, str] = {}

    def __call__(self, model: str | None) -> str:
        if model is None:
            return UNKNOWN_MODEL
        label = self._cache.get(model)
        if label is None:
            matched = any(fnmatch.fnmatchcase(model, glob) for glob in self._globs)
            label = model if matched else catalog.OTHER_MODEL
            if len(self._cache) >= MODEL_CACHE_SIZE:  # (clients choose the names: keep the cache bounded)
                self._cache.clear()
            self._cache[model] = label
        return label


class MetricsRecorder(Folding["AccessRecord"]):
    """The counters and histograms a worker gained since its last delta, and its gauges' last values."""

    FOLD_AT = FOLD_AT

    def __init__(self, settings: MetricsSection | None = None) -> None:
        super().__init__()
        self.enabled = True
        self.model_label = ModelLabels(())
        self.configure(settings or MetricsSection())
        self._pairs: dict[tuple[str, str], _PairStats] = {}
        self._attempts: dict[tuple[str, str, str], int] = {}
        self._tokens: dict[tuple[str, str, str], int] = {}
        self._bytes_in = 0
        self._bytes_out = 0
        self._dropped_seen: dict[str, int] = {}
        self._refusals_seen: dict[tuple[str, str], int] = {}
        self._gauges_sent: dict[tuple[str, tuple[str, ...]], float] = {}

    def configure(self, settings: MetricsSection) -> None:
        """The `[server.metrics]` section of the config in service (again on every reload)."""
        self.enabled = settings.enabled
        self.model_label = ModelLabels(settings.models)
        if not self.enabled:
            self._kept = []

    # -- the hot path -------------------------------------------------------------------------------
    def record_request(self, record: AccessRecord) -> None:
        """One request ended (answered, failed or refused): keep its record for the next fold."""
        if self.enabled:
            self.keep(record)

    def fold_kept(self, kept: list[AccessRecord]) -> None:
        """Add the kept records to the counters and histograms, a group of alike requests at a time."""
        for (endpoint, upstream, model), group in grouped(kept, _GROUP).items():
            self._fold_group(endpoint, upstream, model, group)
        self._bytes_in += sum(map(_BYTES_IN, kept))
        self._bytes_out += sum(map(_BYTES_OUT, kept))

    def _fold_group(self, endpoint: str, upstream: str, model: str | None, group: list[AccessRecord]) -> None:
        pair = (endpoint, upstream)
        stats = self._pairs.get(pair)
        if stats is None:
            stats = self._pairs[pair] = _PairStats()
        requests = stats.requests
        for (status, streamed), count in Counter(map(_STATUS_STREAMED, group)).items():
            key = (_STATUS_CLASSES[status] if 0 <= status < 600 else "error", _STREAMED[streamed])
            requests[key] = requests.get(key, 0) + count
        stats.durations.observe_all(list(map(sub, map(_FINISHED, group), map(_STARTED, group))))
        answered = list(compress(group, map(is_not, map(_FIRST_BYTE, group), repeat(None))))
        if answered:
            stats.ttfb.observe_all(list(map(sub, map(_FIRST_BYTE, answered), map(_STARTED, answered))))
        stats.events += sum(map(_EVENTS, group))
        attempts = self._attempts
        for (attempt_upstream, outcome), count in Counter(chain.from_iterable(map(_ATTEMPT_LOG, group))).items():
            attempt_key = (endpoint, attempt_upstream, outcome)
            attempts[attempt_key] = attempts.get(attempt_key, 0) + count
        usages = list(filter(None, map(_USAGE, group)))
        if usages:
            label = self.model_label(model)
            tokens = self._tokens
            for kind in set(chain.from_iterable(usages)):
                count = sum(map(methodcaller("get", kind, 0), usages))
                if count:
                    token_key = (endpoint, label, kind)
                    tokens[token_key] = tokens.get(token_key, 0) + count

    # -- the report -----------------------------------------------------------------------------------
    def take_delta(
        self,
        pid: int,
        gauges: Iterable[tuple[str, tuple[str, ...], float]],
        dropped_lines: Mapping[str, int],
        limit_refusals: Mapping[tuple[str, str], int] | None = None,
    ) -> MetricsDelta | None:
        """What grew since the last call, and the gauges that changed; None when there is nothing."""
        if not self.enabled:
            return None
        self.fold()
        counters: list[CounterDelta] = []
        histograms: list[HistogramDelta] = []
        for (endpoint, upstream), stats in self._pairs.items():
            for (status_class, streamed), count in stats.requests.items():
                counters.append(CounterDelta(catalog.REQUESTS.name, [endpoint, upstream, status_class, streamed], count))
            if stats.events:
                counters.append(CounterDelta(catalog.STREAM_EVENTS.name, [endpoint, upstream], stats.events))
            for name, histogram in ((catalog.REQUEST_DURATION.name, stats.durations), (catalog.TIME_TO_FIRST_BYTE.name, stats.ttfb)):
                if histogram.count:
                    histograms.append(HistogramDelta(name, [endpoint, upstream], histogram.counts, histogram.sum, histogram.count))
        for labels3, value in self._attempts.items():
            counters.append(CounterDelta(catalog.UPSTREAM_ATTEMPTS.name, list(labels3), value))
        for labels3, value in self._tokens.items():
            counters.append(CounterDelta(catalog.TOKENS.name, list(labels3), value))
        if self._bytes_in:
            counters.append(CounterDelta(catalog.BYTES.name, ["in"], self._bytes_in))
        if self._bytes_out:
            counters.append(CounterDelta(catalog.BYTES.name, ["out"], self._bytes_out))
        for stream, total in dropped_lines.items():
            grown = total - self._dropped_seen.get(stream, 0)
            if grown > 0:
                counters.append(CounterDelta(catalog.LOG_LINES_DROPPED.name, [stream], grown))
                self._dropped_seen[stream] = total
        for pair, total in (limit_refusals or {}).items():  # (cumulative counts, by endpoint and rule)
            grown = total - self._refusals_seen.get(pair, 0)
            if grown > 0:
                counters.append(CounterDelta(catalog.LIMIT_REFUSALS.name, list(pair), grown))
                self._refusals_seen[pair] = total
        changed: list[GaugeValue] = []
        for name, gauge_labels, gauge in gauges:
            if self._gauges_sent.get((name, gauge_labels)) != gauge:
                self._gauges_sent[(name, gauge_labels)] = gauge
                changed.append(GaugeValue(name, list(gauge_labels), gauge))
        self._pairs, self._attempts, self._tokens = {}, {}, {}
        self._bytes_in = self._bytes_out = 0
        if not (counters or histograms or changed):
            return None
        return MetricsDelta(pid=pid, counters=counters, histograms=histograms, gauges=changed)
