"""The shared health view, per endpoint, upstream and provider key, kept by the supervisor.

Sans-IO (`now`, unix time, is always passed in): the board merges what every worker reports about the
requests it relayed (`observe`: passive health through a `Breaker` per upstream; `key_event`: a 429
cools a key down, a 401/403 disables it until reload) and the results of the supervisor's active
checks (`check_result`, through a `CheckVerdict`; a passing check also ends an ejection). `table`
builds the `HealthTable` the supervisor broadcasts, from which every worker decides per request which
upstream and key to use, and which `GET /health` shows. An upstream's state there is the first that
holds of: `unhealthy` (its check's verdict), `ejected` (by its breaker, half-open included until a
success), `disabled` (every key with a weight), `cooling` (every key with a weight cooling or
disabled), `ok`.

Each of those methods answers with an `Update`: the log lines to write (one per change of state,
never a key's value) and whether anything a worker decides on changed, so that the caller broadcasts
the table only then (the periodic broadcast carries the rest: counters, latencies, errors).

`sync` follows a reload: an upstream keeps its passive and check state when its endpoint name, its
own name and its target are unchanged; key disables are always reset (a reload re-reads the keys),
a key's cool-down is kept when the same key value is still configured there.
"""

from __future__ import annotations

import logging

import msgspec

from llmrelay.config.resolved import RelayConfig, ResolvedUpstream, Target, WeightedKey
from llmrelay.control import EndpointHealth, HealthTable, KeyEvent, KeyHealth, UpstreamEvent, UpstreamHealth, WorkerInfo
from llmrelay.io.logsafe import one_line
from supervisor.breaker import Breaker, BreakerState, CheckVerdict, KeyState

ERROR_LIMIT = 200  # characters kept of an error text


class LogLine(msgspec.Struct, frozen=True):
    level: int  # logging.INFO, logging.WARNING
    text: str


class Update(msgspec.Struct):
    """What one report did: the lines to log, and whether to broadcast the table."""

    lines: list[LogLine] = []
    changed: bool = False


def cap(text: str) -> str:
    """An error text fit for the table and a log line: bounded, on one line."""
    return one_line(text[:ERROR_LIMIT])


def count(number: int, noun: str) -> str:
    """`1 failure`, `3 failures`."""
    return f"{number} {noun}" + ("" if number == 1 else "s")


def seconds(value: float) -> str:
    """`1`, `2.5`, `60`: a duration for a log line."""
    return f"{max(value, 0.0):.1f}".rstrip("0").rstrip(".")


class _Key:
    """One provider key of an upstream (its value only to recognise it across a reload)."""

    __slots__ = ("name", "value", "weight", "state", "last_status", "refreshes")

    def __init__(self, key: WeightedKey) -> None:
        self.name = key.name
        self.value = key.key
        self.weight = key.weight
        self.state = KeyState()
        self.last_status = 0
        self.refreshes = 0  # new values its command gave (see `key_refresh`)

    def __repr__(self) -> str:
        return f"_Key(name={self.name!r}, value=<redacted>)"

    def status(self, now: float) -> str:
        if self.state.disabled:
            return "disabled"
        return "cooling" if self.state.cooling_until > now else "ok"


class _Upstream:
    """Everything the board knows about one upstream."""

    __slots__ = ("label", "target", "breaker", "verdict", "keys", "last_check", "last_check_ms", "last_check_error")

    def __init__(self, endpoint: str, upstream: ResolvedUpstream) -> None:
        self.label = f"{endpoint}/{upstream.name}"
        self.target: Target = upstream.target
        self.breaker = Breaker(upstream.unhealthy_threshold)
        self.verdict: CheckVerdict | None = None
        self.keys: list[_Key] = []
        self.last_check = 0.0
        self.last_check_ms = 0.0
        self.last_check_error = ""
        self.follow(upstream)

    def follow(self, upstream: ResolvedUpstream) -> None:
        """Take a (re)loaded config of the same upstream: thresholds, the check, the keys."""
        self.breaker.threshold = upstream.unhealthy_threshold
        check = upstream.health_check
        if check is None:
            self.verdict = None
            self.last_check, self.last_check_ms, self.last_check_error = 0.0, 0.0, ""
        elif self.verdict is None:
            self.verdict = CheckVerdict(check.healthy_threshold, check.unhealthy_threshold)
        else:
            self.verdict.healthy_threshold = check.healthy_threshold
            self.verdict.unhealthy_threshold = check.unhealthy_threshold
        cooling = {key.value: key for key in reversed(self.keys) if key.state.cooling_until}
        self.keys = []
        for weighted in upstream.api_keys:
            key = _Key(weighted)
            before = cooling.get(weighted.key)
            if before is not None:  # the same key value: its cool-down holds (a disable does not)
                key.state.cool(before.state.cooling_until)
                key.last_status = before.last_status
            self.keys.append(key)

    def state(self, now: float) -> str:
        if self.verdict is not None and not self.verdict.ok:
            return "unhealthy"
        if self.breaker.state is not BreakerState.OK:
            return "ejected"
        used = [key.status(now) for key in self.keys if key.weight > 0]
        if used and all(status == "disabled" for status in used):
            return "disabled"
        if used and "ok" not in used:
            return "cooling"
        return "ok"

    def health(self, now: float) -> UpstreamHealth:
        breaker = self.breaker
        return UpstreamHealth(
            state=self.state(now),
            consecutive_failures=breaker.failures,
            last_error=breaker.last_error,
            ejected_until=breaker.until if breaker.state is not BreakerState.OK else 0.0,
            checked=self.verdict is not None,
            check_ok=self.verdict is None or self.verdict.ok,
            last_check=self.last_check,
            last_check_ms=self.last_check_ms,
            last_check_error=self.last_check_error,
            keys=[
                KeyHealth(
                    name=key.name,
                    state=key.status(now),
                    cooling_until=key.state.cooling_until,
                    last_status=key.last_status,
                    refreshes=key.refreshes,
                )
                for key in self.keys
            ],
        )


class HealthBoard:
    def __init__(self, config: RelayConfig | None = None) -> None:
        self._endpoints: dict[str, dict[str, _Upstream]] = {}
        if config is not None:
            self.sync(config)

    def sync(self, config: RelayConfig) -> None:
        """Follow a config (at start, and after every reload that was applied)."""
        before = self._endpoints
        after: dict[str, dict[str, _Upstream]] = {}
        for endpoint in config.endpoints:
            tracks = after[endpoint.name] = {}
            for upstream in endpoint.upstreams:
                track = before.get(endpoint.name, {}).get(upstream.name)
                if track is not None and track.target == upstream.target:
                    track.follow(upstream)
                else:
                    track = _Upstream(endpoint.name, upstream)
                tracks[upstream.name] = track
        self._endpoints = after

    def _find(self, endpoint: str, upstream: str) -> _Upstream | None:
        return self._endpoints.get(endpoint, {}).get(upstream)

    def disabled_keys(self, endpoint: str, upstream: str) -> set[int]:
        """The indexes of the upstream's keys that are disabled (an active check presents another)."""
        track = self._find(endpoint, upstream)
        return {index for index, key in enumerate(track.keys) if key.state.disabled} if track else set()

    def observe(self, event: UpstreamEvent, now: float) -> Update:
        """A worker's passive report: a request to the upstream failed, or succeeded after failures."""
        track = self._find(event.endpoint, event.upstream)
        if track is None:  # an upstream of another config generation
            return Update()
        breaker = track.breaker
        if event.ok:
            had_failures = breaker.failures > 0
            if breaker.success():
                return Update([LogLine(logging.INFO, f"upstream {track.label} recovered")], True)
            return Update(changed=had_failures)  # the table no longer shows failures
        breaker.usable(now)  # an ejection past its deadline is half-open: this failure was its probe
        was, until, failures = breaker.state, breaker.until, breaker.failures
        reason = cap(event.reason)
        breaker.failure(now, reason)
        if breaker.state is BreakerState.EJECTED and was is not BreakerState.EJECTED:
            line = (
                f"upstream {track.label} ejected for {seconds(breaker.cooldown)} s: "
                f"{count(breaker.failures, 'failure')} in a row, last: {reason}"
            )
            return Update([LogLine(logging.WARNING, line)], True)
        return Update(changed=breaker.until != until or failures == 0)

    def key_event(self, event: KeyEvent, now: float) -> Update:
        """A worker's report that the provider refused one of the upstream's keys."""
        track = self._find(event.endpoint, event.upstream)
        if track is None or not 0 <= event.key < len(track.keys):
            return Update()
        key = track.keys[event.key]
        where = f"upstream {track.label} key {key.name}"
        if event.disabled:
            if not key.state.disable():
                return Update()
            key.last_status = event.status
            lines = [LogLine(logging.WARNING, f"{where} disabled until reload: the provider answered {event.status}")]
            used = [other for other in track.keys if other.weight > 0]
            if key.weight > 0 and all(other.state.disabled for other in used):
                text = f"upstream {track.label} has no usable key left: all disabled until reload"
                lines.append(LogLine(logging.WARNING, text))
            return Update(lines, True)
        if key.state.disabled or event.until <= max(now, key.state.cooling_until):
            return Update()  # nothing changes: disabled already, or a deadline no later than the one held
        was_cooling = key.state.cooling_until > now
        key.state.cool(event.until)
        key.last_status = event.status
        if was_cooling:
            return Update(changed=True)
        line = f"{where} cooling down for {seconds(event.until - now)} s: the provider answered {event.status}"
        return Update([LogLine(logging.INFO, line)], True)

    def key_refreshed(self, endpoint: str, upstream: str, index: int, value: str, refreshes: int) -> Update:
        """A refreshable key's command gave its `refreshes`-th new value: what the provider said of the
        old one no longer holds (a disabled key is usable again)."""
        track = self._find(endpoint, upstream)
        if track is None or not 0 <= index < len(track.keys):
            return Update()
        key = track.keys[index]
        key.value = value
        key.refreshes = refreshes
        was_disabled = key.state.disabled
        key.state = KeyState()
        key.last_status = 0
        if not was_disabled:
            return Update(changed=True)
        line = f"upstream {track.label} key {key.name} usable again: its command gave a new value"
        return Update([LogLine(logging.INFO, line)], True)

    def check_result(self, endpoint: str, upstream: str, ok: bool, latency_ms: float, error: str, now: float) -> Update:
        """One active check of the upstream passed (`ok`) or failed with `error`."""
        track = self._find(endpoint, upstream)
        if track is None or track.verdict is None:
            return Update()
        verdict = track.verdict
        track.last_check, track.last_check_ms = now, latency_ms
        track.last_check_error = "" if ok else cap(error)
        update = Update()
        if verdict.result(ok):
            update.changed = True
            if ok:
                text = f"upstream {track.label} healthy again: {count(verdict.passes, 'passed check')}"
                update.lines.append(LogLine(logging.INFO, text))
            else:
                failed = count(verdict.failures, "failed check")
                text = f"upstream {track.label} unhealthy: {failed}, last: {track.last_check_error}"
                update.lines.append(LogLine(logging.WARNING, text))
        if ok and track.breaker.state is not BreakerState.OK:  # (a passing check does not hide passive failures)
            track.breaker.success()
            update.changed = True
            update.lines.append(LogLine(logging.INFO, f"upstream {track.label} recovered: its health check passed"))
        return update

    def table(self, generation: int, workers: list[WorkerInfo], now: float, limits_degraded: str = "") -> HealthTable:
        endpoints = {
            name: EndpointHealth(upstreams={upstream: track.health(now) for upstream, track in tracks.items()})
            for name, tracks in self._endpoints.items()
        }
        return HealthTable(generation=generation, endpoints=endpoints, workers=workers, limits_degraded=limits_degraded)
