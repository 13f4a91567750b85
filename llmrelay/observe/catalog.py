"""Every Prometheus metric llmrelay exposes: its name, kind, help text, labels and (histograms)
buckets. Shared by the workers, which record increments and send them to the supervisor
(`control.MetricsDelta`), and by the supervisor, which sums them and serves `/metrics`.

Labels are bounded by construction: endpoint and upstream names come from the config, status classes
and outcomes from short fixed lists, models from `[server.metrics] models` (anything else is
"other"). No key, path or client address is ever a label.
"""

from __future__ import annotations

from typing import Literal

import msgspec

MetricKind = Literal["counter", "gauge", "histogram"]
# seconds; LLM calls run from milliseconds (a cached refusal) to many minutes (a long stream)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OTHER_MODEL = "other"


class Metric(msgspec.Struct, frozen=True):
    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histograms: upper bounds, +Inf implied
    source: Literal["worker", "supervisor"] = "worker"  # who records it


REQUESTS = Metric(
    "llmrelay_requests_total", "counter", "Requests answered, by endpoint, upstream, status class and streaming.",
    ("endpoint", "upstream", "status_class", "streamed"),
)
REQUEST_DURATION = Metric(
    "llmrelay_request_duration_seconds", "histogram", "Time from the request's head to the end of its response.",
    ("endpoint", "upstream"), DURATION_BUCKETS,
)
TIME_TO_FIRST_BYTE = Metric(
    "llmrelay_time_to_first_byte_seconds", "histogram", "Time from the request's head to the first response byte.",
    ("endpoint", "upstream"), TTFB_BUCKETS,
)
STREAM_EVENTS = Metric("llmrelay_stream_events_total", "counter", "Server-sent events relayed.", ("endpoint", "upstream"))
IN_FLIGHT = Metric("llmrelay_in_flight_requests", "gauge", "Requests being served now, over every worker.")
UPSTREAM_IN_FLIGHT = Metric(
    "llmrelay_upstream_in_flight_requests", "gauge", "Attempts under way at each upstream, over every worker.",
    ("endpoint", "upstream"),
)
UPSTREAM_ATTEMPTS = Metric(
    "llmrelay_upstream_attempts_total", "counter", "Attempts sent to an upstream, by outcome.",
    ("endpoint", "upstream", "outcome"),
)
TOKENS = Metric("llmrelay_tokens_total", "counter", "Tokens reported by providers' usage, by kind (input, output).", ("endpoint", "model", "kind"))
BYTES = Metric("llmrelay_bytes_total", "counter", "Body bytes relayed, by direction (in: from clients, out: to clients).", ("direction",))
CONNECTIONS = Metric("llmrelay_connections", "gauge", "Client connections open, by listener address.", ("listener",))
LOG_LINES_DROPPED = Metric("llmrelay_log_lines_dropped_total", "counter", "Log lines dropped because the log output fell behind.", ("stream",))
LIMIT_REFUSALS = Metric(
    "llmrelay_limit_refusals_total", "counter", "Requests refused by a [limits] rule (429), by endpoint and rule.",
    ("endpoint", "rule"),
)
UPSTREAM_HEALTHY = Metric(
    "llmrelay_upstream_healthy", "gauge", "1 when the upstream takes traffic (the supervisor's merged view), else 0.",
    ("endpoint", "upstream"), source="supervisor",
)
WORKER_RESTARTS = Metric("llmrelay_worker_restarts_total", "counter", "Workers replaced, by reason.", ("reason",), source="supervisor")
WORKER_RSS = Metric("llmrelay_worker_rss_bytes", "gauge", "Resident memory of each slot's worker.", ("slot",), source="supervisor")
RELOADS = Metric("llmrelay_reloads_total", "counter", "Config reloads, by result.", ("result",), source="supervisor")
LIMITS_BACKEND_ERRORS = Metric(
    "llmrelay_limits_backend_errors_total", "counter", "Times the limits backend (Redis) could not be asked.",
    ("backend",), source="supervisor",
)
LIMITS_BACKEND_UP = Metric(
    "llmrelay_limits_backend_up", "gauge", "1 while the limits backend answers (limits exact), 0 while degraded.",
    ("backend",), source="supervisor",
)
BUILD_INFO = Metric("llmrelay_build_info", "gauge", "Always 1; the running version as a label.", ("version",), source="supervisor")

CATALOG: tuple[Metric, ...] = (
    REQUESTS, REQUEST_DURATION, TIME_TO_FIRST_BYTE, STREAM_EVENTS, IN_FLIGHT, UPSTREAM_IN_FLIGHT, UPSTREAM_ATTEMPTS, TOKENS, BYTES,
    CONNECTIONS, LOG_LINES_DROPPED, LIMIT_REFUSALS, UPSTREAM_HEALTHY, WORKER_RESTARTS, WORKER_RSS, RELOADS,
    LIMITS_BACKEND_ERRORS, LIMITS_BACKEND_UP, BUILD_INFO,
)
BY_NAME = {metric.name: metric for metric in CATALOG}


def status_class(status: int) -> str:
    """"2xx" for 200..299 and so on; "error" when no status was sent (the connection was cut)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "error"
