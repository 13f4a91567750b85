"""The messages of the control pipe between the supervisor and a worker, and the workers' exit codes.

Messages form one tagged union (`ControlMessage`), so an unknown or malformed frame is a decode error,
never a guess; `channel` carries them.
"""

from __future__ import annotations

import msgspec

from llmrelay.config.resolved import RelayConfig
from llmrelay.limits.types import CounterAsk, CounterId, CounterCharge, CounterGrant, CounterReturn, UsageRow

# Exit statuses of a worker process, read by the supervisor. A worker that could not start serving
# (no config arrived, or it could not apply its first one) exits with EXIT_BOOT_FAILED, so that a
# crash loop at boot is recognised and backed off rather than respawned at full speed. `serve` uses
# the same status when the supervisor itself cannot start (its address is taken).
EXIT_OK = 0
EXIT_BOOT_FAILED = 3


class Message(msgspec.Struct, tag=True, frozen=True):
    pass


# supervisor -> worker
class Config(Message, frozen=True):
    """The config to serve from now on; `generation` increases with every reload."""

    config: RelayConfig
    generation: int


class KeyHealth(msgspec.Struct, frozen=True):
    """One provider key of an upstream, named by its `name` or index (never its value)."""

    name: str
    state: str = "ok"  # "ok", "cooling" (a 429, until `cooling_until`) or "disabled" (a 401/403, until reload)
    cooling_until: float = 0.0  # unix time
    last_status: int = 0  # the provider's answer that cooled or disabled it
    refreshes: int = 0  # new values its command gave (a worker ignores a verdict on an older value)


class UpstreamHealth(msgspec.Struct, frozen=True):
    """The merged view of one upstream: passive health from every worker, active checks, its keys."""

    state: str = "ok"  # "ok", "ejected", "unhealthy" (failing its active check), "cooling" or "disabled" (every key)
    consecutive_failures: int = 0
    last_error: str = ""
    ejected_until: float = 0.0  # unix time; an ejection past it is half-open (the next request is a probe)
    checked: bool = False  # it has an active health check
    check_ok: bool = True  # the check's verdict (after its thresholds)
    last_check: float = 0.0  # unix time of the last check; 0: none yet
    last_check_ms: float = 0.0  # its latency
    last_check_error: str = ""
    keys: list[KeyHealth] = []


class EndpointHealth(msgspec.Struct, frozen=True):
    upstreams: dict[str, UpstreamHealth] = {}


class WorkerInfo(msgspec.Struct, frozen=True):
    pid: int
    slot: int
    state: str  # "starting", "serving", "draining"
    uptime: float
    connections: int
    in_flight: int
    requests_total: int
    version: str
    generation: int


class HealthTable(Message, frozen=True):
    """What every worker answers on GET /health: one shared view, kept by the supervisor."""

    generation: int
    endpoints: dict[str, EndpointHealth]
    workers: list[WorkerInfo]
    limits_degraded: str = ""  # why the limits backend cannot be asked ("" while limits are exact)


class Drain(Message, frozen=True):
    """Stop accepting, finish in-flight requests within `timeout` seconds, then exit.

    `close_idle`: close idle keep-alive connections at once (a full stop, when no successor will
    serve them); otherwise they are kept and their next request is answered with `Connection: close`.
    """

    timeout: float
    close_idle: bool = True


# worker -> supervisor
class Ready(Message, frozen=True):
    pid: int
    version: str


class WorkerStats(msgspec.Struct, frozen=True):
    connections: int
    requests_in_flight: int
    requests_total: int
    generation: int
    rss_bytes: int = 0
    uptime: float = 0.0
    draining: bool = False


class Heartbeat(Message, frozen=True):
    pid: int
    stats: WorkerStats


class UpstreamEvent(Message, frozen=True):
    """A passive health observation: a request to `endpoint`'s `upstream` failed (`ok=False`:
    connect error, reset, timeout, 5xx...) or succeeded after failures."""

    endpoint: str
    upstream: str
    ok: bool
    reason: str = ""


class KeyEvent(Message, frozen=True):
    """A provider key of `endpoint`'s `upstream` (its index in `api_keys`) was refused: `disabled`
    (401/403: until the config is reloaded) or cooling down until `until` (429; unix time). The
    index means a key of config `generation`; a report about another generation is ignored."""

    endpoint: str
    upstream: str
    key: int
    status: int
    generation: int
    disabled: bool = False
    until: float = 0.0


class CounterDelta(msgspec.Struct, frozen=True, array_like=True):
    """How much a counter (`observe.catalog` name, label values in the catalog's order) grew."""

    name: str
    labels: list[str]
    value: float


class HistogramDelta(msgspec.Struct, frozen=True, array_like=True):
    """Observations added to a histogram: per bucket (not cumulative; the last one is +Inf), their
    sum and their count."""

    name: str
    labels: list[str]
    buckets: list[int]
    sum: float
    count: int


class GaugeValue(msgspec.Struct, frozen=True, array_like=True):
    """A gauge's current value in this worker (the supervisor sums the live workers' values)."""

    name: str
    labels: list[str]
    value: float


class MetricsDelta(Message, frozen=True):
    """What a worker's metrics gained since its previous report (sent at most once a second, and
    once more when it stops): the supervisor adds it to totals that outlive the worker."""

    pid: int
    counters: list[CounterDelta] = []
    histograms: list[HistogramDelta] = []
    gauges: list[GaugeValue] = []


class LeaseAsk(Message, frozen=True):
    """worker -> supervisor: units of these counters for a request waiting now (`CounterAsk.need`)
    and for those to come (`want`). Answered by one `LeaseGrant` with the same `ask_id`."""

    ask_id: int
    asks: list[CounterAsk]


class LeaseGrant(Message, frozen=True):
    """supervisor -> worker: the answer to `LeaseAsk` `ask_id`, one grant per ask, in order.
    `backend_error`: the counters' owner (Redis) could not be asked; the grants follow
    `limits.on_backend_error` (everything granted, or nothing with `retry_after`)."""

    ask_id: int
    grants: list[CounterGrant]
    backend_error: str = ""


class LeaseReturn(Message, frozen=True):
    """worker -> supervisor: units given back unused (a lease past its TTL, a recall, a drain)."""

    returns: list[CounterReturn]


class LeaseRecall(Message, frozen=True):
    """supervisor -> worker: give back now the unused units of these counters (another worker was
    refused while this one holds some)."""

    counters: list[CounterId]


class UsageReport(Message, frozen=True):
    """worker -> supervisor, at most once a second: token corrections for the limits' counters (the
    real usage against what was taken) and the usage accounting rows that grew."""

    charges: list[CounterCharge] = []
    rows: list[UsageRow] = []


class ConfigApplied(Message, frozen=True):
    """The worker serves `generation` from now on (the answer to every `Config`)."""

    generation: int


class ConfigRejected(Message, frozen=True):
    """The worker could not apply `generation` (building its runtime failed: a CA file that does not
    load, ...): it keeps serving the generation it had, or, at boot, exits with EXIT_BOOT_FAILED."""

    generation: int
    error: str


class Stopped(Message, frozen=True):
    """The worker finished draining; `cut` streams were still running at the deadline."""

    pid: int
    cut: int


class KeyRefreshAsk(Message, frozen=True):
    """(worker -> supervisor) The provider answered 401 to a key whose `$(command)` may be re-run:
    run it now, unless it ran less than 30 s ago; a KeyUpdate answers either way."""

    generation: int
    endpoint: str
    upstream: str
    key: int


class KeyUpdate(Message, frozen=True):
    """(supervisor -> worker) A refreshable key's current value, after its command ran (`changed`: the
    value is new) or in answer to an ask that came too soon after the last run."""

    generation: int
    endpoint: str
    upstream: str
    key: int
    value: str
    changed: bool
    refreshes: int = 0  # new values the command has given in this generation, this one included

    def __repr__(self) -> str:
        return (
            f"KeyUpdate(generation={self.generation}, endpoint={self.endpoint!r}, upstream={self.upstream!r}, "
            f"key={self.key}, value=<redacted>, changed={self.changed}, refreshes={self.refreshes})"
        )


ControlMessage = (
    Config
    | KeyRefreshAsk
    | KeyUpdate
    | HealthTable
    | Drain
    | Ready
    | Heartbeat
    | UpstreamEvent
    | KeyEvent
    | MetricsDelta
    | LeaseAsk
    | LeaseGrant
    | LeaseReturn
    | LeaseRecall
    | UsageReport
    | ConfigApplied
    | ConfigRejected
    | Stopped
)
