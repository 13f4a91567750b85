"""The worker's metrics recorder, sans-IO: what a request adds, and the deltas it hands over."""

from __future__ import annotations

from llmrelay.config.schema import MetricsSection
from llmrelay.control import CounterDelta, GaugeValue, MetricsDelta
from llmrelay.observe import catalog
from llmrelay.observe.recorder import MetricsRecorder, ModelLabels, attempt_outcome
from llmrelay.relay.accesslog import AccessRecord


def _record(endpoint: str = "oai", upstream: str = "u1", status: int = 200, duration: float = 0.2, ttfb: float | None = 0.01) -> AccessRecord:
    record = AccessRecord("POST", "/v1/chat/completions", "rid", "127.0.0.1", 100.0)
    record.endpoint, record.upstream, record.status = endpoint, upstream, status
    record.finished = 100.0 + duration
    record.first_byte = None if ttfb is None else 100.0 + ttfb
    record.attempts = 1
    record.attempt_answered(upstream, attempt_outcome(status))
    record.bytes_in, record.bytes_out = 10, 100
    return record


def _counters(delta: MetricsDelta) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(c.name, tuple(c.labels)): c.value for c in delta.counters}


def test_a_request_adds_its_counters_and_histograms_once() -> None:
    recorder = MetricsRecorder()
    recorder.record_request(_record(duration=0.2))
    recorder.record_request(_record(duration=0.03))
    streamed = _record(status=503, duration=7.0)
    streamed.streamed, streamed.events = True, 12
    recorder.record_request(streamed)
    delta = recorder.take_delta(42, [], {})
    assert delta is not None and delta.pid == 42
    counters = _counters(delta)
    assert counters[(catalog.REQUESTS.name, ("oai", "u1", "2xx", "false"))] == 2
    assert counters[(catalog.REQUESTS.name, ("oai", "u1", "5xx", "true"))] == 1
    assert counters[(catalog.STREAM_EVENTS.name, ("oai", "u1"))] == 12
    assert counters[(catalog.UPSTREAM_ATTEMPTS.name, ("oai", "u1", "ok"))] == 2
    assert counters[(catalog.UPSTREAM_ATTEMPTS.name, ("oai", "u1", "status_5xx"))] == 1
    assert counters[(catalog.BYTES.name, ("in",))] == 30
    assert counters[(catalog.BYTES.name, ("out",))] == 300
    durations = [h for h in delta.histograms if h.name == catalog.REQUEST_DURATION.name]
    assert len(durations) == 1 and durations[0].labels == ["oai", "u1"]
    histogram = durations[0]
    assert histogram.count == 3 and abs(histogram.sum - 7.23) < 1e-9
    assert len(histogram.buckets) == len(catalog.DURATION_BUCKETS) + 1 and sum(histogram.buckets) == 3
    bounds = catalog.DURATION_BUCKETS
    assert histogram.buckets[bounds.index(0.05)] == 1  # 0.03 s: le 0.05 (not le 0.025)
    assert histogram.buckets[bounds.index(0.25)] == 1  # 0.2 s
    assert histogram.buckets[bounds.index(10.0)] == 1  # 7 s
    # nothing grew since: no delta at all
    assert recorder.take_delta(42, [], {}) is None


def test_a_bound_is_inclusive_and_past_the_last_is_inf() -> None:
    recorder = MetricsRecorder()
    recorder.record_request(_record(duration=0.1, ttfb=None))
    recorder.record_request(_record(duration=10_000.0, ttfb=None))
    delta = recorder.take_delta(1, [], {})
    assert delta is not None
    (histogram,) = delta.histograms  # no first byte: no TTFB observation
    assert histogram.buckets[catalog.DURATION_BUCKETS.index(0.1)] == 1
    assert histogram.buckets[-1] == 1


def test_retried_and_failed_attempts_are_counted_on_their_upstream() -> None:
    recorder = MetricsRecorder()
    record = AccessRecord("POST", "/x", "rid", "127.0.0.1", 0.0)
    record.endpoint = "oai"
    record.attempts = 1
    record.attempt_answered("a", attempt_outcome(429))  # retried on b
    record.attempts = 2
    record.attempt_failed("b", "connect_failed")  # retried on c
    record.attempts = 3
    record.attempt_answered("c", attempt_outcome(200))
    record.attempt_failed("c", "timeout")  # the body of the answered attempt failed: the same attempt
    record.upstream, record.status = "c", 200
    recorder.record_request(record)
    delta = recorder.take_delta(1, [], {})
    assert delta is not None
    attempts = {tuple(c.labels): c.value for c in delta.counters if c.name == catalog.UPSTREAM_ATTEMPTS.name}
    assert attempts == {("oai", "a", "status_429"): 1, ("oai", "b", "connect_failed"): 1, ("oai", "c", "timeout"): 1}


def test_tokens_by_model_label() -> None:
    recorder = MetricsRecorder(MetricsSection(models=["gpt-4o*", "claude-*"]))
    for model in ("gpt-4o-mini", "gpt-4o-mini", "llama-3", None):
        record = _record()
        record.model, record.usage = model, {"input": 5, "output": 7}
        recorder.record_request(record)
    delta = recorder.take_delta(1, [], {})
    assert delta is not None
    tokens = {tuple(c.labels): c.value for c in delta.counters if c.name == catalog.TOKENS.name}
    assert tokens == {
        ("oai", "gpt-4o-mini", "input"): 10, ("oai", "gpt-4o-mini", "output"): 14,
        ("oai", "other", "input"): 5, ("oai", "other", "output"): 7,
        ("oai", "unknown", "input"): 5, ("oai", "unknown", "output"): 7,
    }


def test_model_labels_cache_stays_bounded() -> None:
    labels = ModelLabels(["m-*"])
    for index in range(10_000):
        assert labels(f"x-{index}") == catalog.OTHER_MODEL
    assert labels("m-1") == "m-1"
    assert len(labels._cache) <= 4096


def test_gauges_are_sent_when_they_change_and_dropped_lines_as_they_grow() -> None:
    recorder = MetricsRecorder()
    gauges = [(catalog.IN_FLIGHT.name, (), 3.0), (catalog.CONNECTIONS.name, ("127.0.0.1:8811",), 5.0)]
    delta = recorder.take_delta(1, gauges, {"access": 0, "error": 0})
    assert delta is not None and not delta.counters
    assert delta.gauges == [GaugeValue(catalog.IN_FLIGHT.name, [], 3.0), GaugeValue(catalog.CONNECTIONS.name, ["127.0.0.1:8811"], 5.0)]
    assert recorder.take_delta(1, gauges, {"access": 0, "error": 0}) is None
    gauges[0] = (catalog.IN_FLIGHT.name, (), 0.0)
    delta = recorder.take_delta(1, gauges, {"access": 4, "error": 0})
    assert delta is not None
    assert delta.gauges == [GaugeValue(catalog.IN_FLIGHT.name, [], 0.0)]
    assert delta.counters == [CounterDelta(catalog.LOG_LINES_DROPPED.name, ["access"], 4)]
    delta = recorder.take_delta(1, gauges, {"access": 6, "error": 0})
    assert delta is not None and delta.counters == [CounterDelta(catalog.LOG_LINES_DROPPED.name, ["access"], 2)]


def test_disabled_records_and_sends_nothing() -> None:
    recorder = MetricsRecorder(MetricsSection(enabled=False))
    recorder.record_request(_record())
    assert recorder.take_delta(1, [(catalog.IN_FLIGHT.name, (), 1.0)], {"access": 3}) is None
    recorder.configure(MetricsSection(enabled=True))
    recorder.record_request(_record())
    delta = recorder.take_delta(1, [], {})
    assert delta is not None and _counters(delta)[(catalog.REQUESTS.name, ("oai", "u1", "2xx", "false"))] == 1


def test_a_refused_request_has_the_error_class() -> None:
    recorder = MetricsRecorder()
    record = AccessRecord("-", "-", "-", "127.0.0.1", 0.0)
    recorder.record_request(record)  # status 0: the connection ended without an answer
    delta = recorder.take_delta(1, [], {})
    assert delta is not None and _counters(delta) == {(catalog.REQUESTS.name, ("-", "-", "error", "false")): 1}


def _naive_delta(records: list[AccessRecord]) -> tuple[dict[tuple[str, tuple[str, ...]], float], dict[tuple[str, tuple[str, ...]], tuple[list[int], int]]]:
    """What the records add, request by request (the arithmetic the bulk fold must reproduce)."""
    from bisect import bisect_left

    counters: dict[tuple[str, tuple[str, ...]], float] = {}
    histograms: dict[tuple[str, tuple[str, ...]], tuple[list[int], int]] = {}

    def add(name: str, labels: tuple[str, ...], value: float) -> None:
        if value:
            counters[(name, labels)] = counters.get((name, labels), 0) + value

    def observe(name: str, labels: tuple[str, ...], bounds: tuple[float, ...], value: float) -> None:
        buckets, count = histograms.get((name, labels), ([0] * (len(bounds) + 1), 0))
        buckets[bisect_left(bounds, value)] += 1
        histograms[(name, labels)] = (buckets, count + 1)

    for r in records:
        pair = (r.endpoint, r.upstream)
        add(catalog.REQUESTS.name, (*pair, catalog.status_class(r.status), "true" if r.streamed else "false"), 1)
        add(catalog.STREAM_EVENTS.name, pair, r.events)
        observe(catalog.REQUEST_DURATION.name, pair, catalog.DURATION_BUCKETS, r.finished - r.started)
        if r.first_byte is not None:
            observe(catalog.TIME_TO_FIRST_BYTE.name, pair, catalog.TTFB_BUCKETS, r.first_byte - r.started)
        for upstream, outcome in r.attempt_log:
            add(catalog.UPSTREAM_ATTEMPTS.name, (r.endpoint, upstream, outcome), 1)
        for kind, count in (r.usage or {}).items():
            add(catalog.TOKENS.name, (r.endpoint, r.model or "unknown", kind), count)
        add(catalog.BYTES.name, ("in",), r.bytes_in)
        add(catalog.BYTES.name, ("out",), r.bytes_out)
    return counters, histograms


def test_the_bulk_fold_adds_exactly_what_each_request_would() -> None:
    import random

    from llmrelay.observe.recorder import FOLD_AT

    rng = random.Random(7)
    recorder = MetricsRecorder(MetricsSection(models=["*"]))
    records = []
    for index in range(FOLD_AT * 2 + 37):  # folded twice on the way, and the rest by the delta
        record = _record(
            endpoint=rng.choice(["oai", "ant"]),
            upstream=rng.choice(["u1", "u2", "-"]),
            status=rng.choice([200, 200, 201, 404, 429, 502, 0]),
            duration=rng.choice([0.005, 0.0051, 0.3, 600.0, 601.0, rng.random()]),
            ttfb=rng.choice([None, 0.001, 0.0025, rng.random() / 10]),
        )
        record.model = rng.choice(["gpt-4o", "claude", None])
        record.streamed = rng.random() < 0.3
        record.events = rng.randrange(5) if record.streamed else 0
        record.usage = rng.choice([None, {"input": rng.randrange(100), "output": rng.randrange(50)}, {"input": 3}])
        if rng.random() < 0.1:
            record.attempt_failed("u9", "timeout")
        record.bytes_in, record.bytes_out = rng.randrange(1000), rng.randrange(5000)
        records.append(record)
        recorder.record_request(record)
        assert len(recorder._kept) < FOLD_AT
    delta = recorder.take_delta(1, [], {})
    assert delta is not None
    counters, histograms = _naive_delta(records)
    assert _counters(delta) == counters
    assert {(h.name, tuple(h.labels)): (h.buckets, h.count) for h in delta.histograms} == histograms
    durations = sum(h.sum for h in delta.histograms if h.name == catalog.REQUEST_DURATION.name)
    assert abs(durations - sum(r.finished - r.started for r in records)) < 1e-6
