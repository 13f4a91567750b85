"""An endpoint's upstreams as one worker runs them: pools, provider keys, and what the worker knows of
their health, with the choice of the upstream (and key) for each attempt of a request.

The health of every upstream and key is decided by the supervisor from every worker's reports and
broadcast as a `HealthTable`; `apply` copies it onto these objects. A worker also applies what it
learns itself at once (a 429 cools that key, a 401/403 disables it), so its own next request already
avoids it, before the supervisor's table comes back. Choosing is a few comparisons: no I/O, and on
the common path (nothing ejected, no key in trouble) no allocation beyond the selector's.

An ejection past its deadline is half-open: one request at a time (per worker) may probe the upstream
until a result comes back.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmrelay.config.resolved import ResolvedEndpoint, ResolvedUpstream
from llmrelay.control import EndpointHealth, UpstreamHealth
from llmrelay.upstream.balancer import Candidate, Selector, SmoothWeighted
from llmrelay.upstream.pool import UpstreamPool

HALF_OPEN_BRIDGE = 1.0  # seconds a failed probe holds the upstream until the supervisor's verdict arrives


class UpstreamRuntime:
    """One upstream of an endpoint in this worker."""

    __slots__ = (
        "config",
        "name",
        "name_bytes",
        "index",
        "provider",
        "pool",
        "keys",
        "key_oauth",
        "key_names",
        "key_refresh",
        "key_refreshes",
        "_key_rotation",
        "_every_key",
        "key_cooling",
        "key_disabled",
        "_keys_impaired",
        "injects_key",
        "upstream_host",
        "base_path",
        "max_body_size",
        "ejected_until",
        "check_ok",
        "probing",
    )

    def __init__(self, config: ResolvedUpstream, index: int) -> None:
        self.config = config
        self.name = config.name
        self.name_bytes = config.name.encode("ascii", "replace")
        self.index = index
        self.provider = config.provider
        self.pool = UpstreamPool(config)
        self.keys = [key.key for key in config.api_keys]
        self.key_names = [key.name for key in config.api_keys]
        self.key_oauth = [key.oauth for key in config.api_keys]  # Anthropic OAuth tokens: Bearer + their beta
        self.key_refresh = [key.refresh > 0 for key in config.api_keys]  # a 401 asks for a re-run of its command
        self.key_refreshes = [0] * len(self.keys)  # new values each has had (a verdict on an older one is stale)
        self._key_rotation = SmoothWeighted([key.weight for key in config.api_keys])
        self._every_key = [i for i, key in enumerate(config.api_keys) if key.weight > 0]
        self.key_cooling = [0.0] * len(self.keys)  # unix time until which a key is cooling down
        self.key_disabled = [False] * len(self.keys)
        self.injects_key = bool(self._every_key)
        self._keys_impaired = False  # some key is cooling or disabled (else the fast path)
        target = config.target
        self.upstream_host = target.host_header.encode("ascii")
        self.base_path = target.base_path
        self.max_body_size = config.max_body_size
        self.ejected_until = 0.0  # unix time; non-zero while ejected (past it: half-open)
        self.check_ok = True
        self.probing = False  # a half-open probe is under way from this worker

    # -- health ---------------------------------------------------------------------------------
    def usable(self, now: float) -> bool:
        if not self.check_ok:
            return False
        if self.ejected_until and (now < self.ejected_until or self.probing):
            return False
        return not self._keys_impaired or self._has_usable_key(now)

    def _has_usable_key(self, now: float) -> bool:
        disabled, cooling = self.key_disabled, self.key_cooling
        return any(not disabled[i] and now >= cooling[i] for i in self._every_key)

    def usable_from(self, now: float) -> float | None:
        """The soonest unix time this upstream may be usable again, None when no deadline is known
        (failing its active check, every key disabled)."""
        if not self.check_ok:
            return None
        soonest = self.ejected_until if now < self.ejected_until else now
        if self._keys_impaired and self.injects_key:
            deadlines = [self.key_cooling[i] for i in self._every_key if not self.key_disabled[i]]
            if not deadlines:
                return None
            soonest = max(soonest, min(deadlines))
        return soonest

    def pick_key(self, now: float) -> int | None:
        """The index of the provider key for the next attempt (weighted among the usable ones);
        None when the upstream injects no key, or none is usable."""
        if not self.injects_key:
            return None
        every = self._every_key
        if self._keys_impaired:
            every = [i for i in every if not self.key_disabled[i] and now >= self.key_cooling[i]]
        return every[0] if len(every) == 1 else self._key_rotation.pick(every)

    def start_attempt(self, now: float) -> bool:
        """True when this attempt is the half-open probe (call `end_probe` when it ends, however)."""
        if self.ejected_until and now >= self.ejected_until:
            self.probing = True
            return True
        return False

    def end_probe(self) -> None:
        """The probe ended without a verdict (the client went away...): another request may probe."""
        self.probing = False

    def attempt_succeeded(self) -> None:
        self.probing = False
        self.ejected_until = 0.0  # (the supervisor's table confirms it)

    def attempt_failed(self, now: float) -> None:
        if self.probing:
            self.probing = False
            self.ejected_until = max(self.ejected_until, now + HALF_OPEN_BRIDGE)

    def cool_key(self, index: int, until: float) -> None:
        self.key_cooling[index] = max(self.key_cooling[index], until)
        self._keys_impaired = True

    def disable_key(self, index: int) -> bool:
        """A 401/403: True the first time (this worker reports it once)."""
        first = not self.key_disabled[index]
        self.key_disabled[index] = True
        self._keys_impaired = True
        return first

    def refreshed_key(self, index: int, value: str, refreshes: int, now: float) -> None:
        """The supervisor re-ran the key's command and it gave its `refreshes`-th new value: use it, and
        forget what the provider said of the old one (also in a health table made before it)."""
        if refreshes <= self.key_refreshes[index]:
            return  # (not newer than the value in use)
        self.key_refreshes[index] = refreshes
        self.keys[index] = value
        self.key_disabled[index] = False
        self.key_cooling[index] = 0.0
        self._keys_impaired = any(self.key_disabled) or any(t > now for t in self.key_cooling)

    def apply(self, health: UpstreamHealth | None, now: float, keys: bool) -> None:
        """Take the supervisor's view of this upstream; `keys`: of its keys too (a table of this
        config generation). Key states merge with this worker's own: the later cool-down wins."""
        if health is None:
            health = UpstreamHealth()
        if health.ejected_until != self.ejected_until:
            self.probing = False
        self.ejected_until = health.ejected_until
        self.check_ok = health.check_ok
        for i, key in enumerate(health.keys[: len(self.keys)] if keys else ()):
            if key.state == "disabled" and key.refreshes >= self.key_refreshes[i]:
                self.key_disabled[i] = True
            if key.cooling_until > self.key_cooling[i]:
                self.key_cooling[i] = key.cooling_until
        self._keys_impaired = any(self.key_disabled) or any(t > now for t in self.key_cooling)


class EndpointUpstreams:
    """The upstreams of one endpoint and the choice among them."""

    __slots__ = ("upstreams", "by_name", "selector", "_single", "_scope_ids")

    def __init__(self, endpoint: ResolvedEndpoint) -> None:
        self.upstreams = [UpstreamRuntime(upstream, i) for i, upstream in enumerate(endpoint.upstreams)]
        self.by_name = {upstream.name: upstream for upstream in self.upstreams}
        key_ids = {key: str(i) for i, key in enumerate(endpoint.auth_keys)}
        self.selector = Selector(
            [
                Candidate(
                    name=u.name,
                    weight=u.weight,
                    priority=u.priority,
                    fallback=u.fallback,
                    scope=None if u.scope is None else frozenset(key_ids[key] for key in u.scope),
                )
                for u in endpoint.upstreams
            ]
        )
        # One upstream for every key, with weight: the choice is only whether it is usable.
        only = endpoint.upstreams[0]
        self._single = len(endpoint.upstreams) == 1 and only.scope is None and (only.weight > 0 or only.fallback)
        self._scope_ids = [str(i) for i in range(len(endpoint.auth_keys))]

    def choose(self, relay_key: int | None, now: float, tried: Sequence[int] = ()) -> UpstreamRuntime | None:
        """The upstream for the next attempt; None when nothing usable is left for this request.

        `relay_key`: the index of the endpoint's relay key the client presented (None without one).
        """
        if self._single:
            upstream = self.upstreams[0]
            return upstream if not tried and upstream.usable(now) else None
        upstreams = self.upstreams
        index = self.selector.choose(
            None if relay_key is None else self._scope_ids[relay_key],
            lambda i: upstreams[i].usable(now),
            tried,
        )
        return None if index is None else upstreams[index]

    def retry_after(self, relay_key: int | None, now: float) -> float:
        """Seconds until something this client may use is expected to be usable again (for the
        `Retry-After` of a 503 when nothing is usable now)."""
        scope = None if relay_key is None else self._scope_ids[relay_key]
        soonest: float | None = None
        for candidate, upstream in zip(self.selector.candidates, self.upstreams):
            if candidate.scope is not None and (scope is None or scope not in candidate.scope):
                continue
            when = upstream.usable_from(now)
            if when is not None and (soonest is None or when < soonest):
                soonest = when
        if soonest is None:  # only active checks or a reload can bring one back
            intervals = [u.config.health_check.interval for u in self.upstreams if u.config.health_check]
            return min(intervals) if intervals else 60.0
        return max(soonest - now, 1.0)

    def apply(self, health: EndpointHealth | None, now: float, keys: bool) -> None:
        shared = health.upstreams if health is not None else {}
        for upstream in self.upstreams:
            upstream.apply(shared.get(upstream.name), now, keys)

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.pool.aclose()
