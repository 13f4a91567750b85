"""A config generation as the worker runs it: endpoints with their upstreams, key rings and router.

When a new config arrives, requests already running keep the generation they started on; the old
generation's pools are closed once its last request has finished.
"""

from __future__ import annotations

import logging

import trio

from llmrelay.config.resolved import RelayConfig, ResolvedEndpoint
from llmrelay.control import HealthTable, KeyUpdate
from llmrelay.observe.requestinfo import TrustedProxies, relay_key_label
from llmrelay.relay.credentials import KeyRing
from llmrelay.relay.policy.endpoint import build_policy
from llmrelay.relay.routing import Router
from llmrelay.relay.upstreams import EndpointUpstreams

log = logging.getLogger("llmrelay.runtime")


class EndpointRuntime:
    __slots__ = (
        "config",
        "name",
        "provider",
        "relay_keys",
        "needs_relay_key",
        "upstreams",
        "max_body_size",
        "forwarded",
        "retries",
        "retry_deadline",
        "retry_body_limit",
        "generation",
        "relay_key_labels",
        "policy",
    )

    def __init__(self, config: ResolvedEndpoint, generation: int) -> None:
        self.config = config
        self.generation = generation
        self.name = config.name
        self.provider = config.provider
        self.relay_keys = KeyRing(config.auth_keys)
        self.needs_relay_key = self.relay_keys.required
        # what the access log, the usage rows and the limits call each key: its name, else its label
        self.relay_key_labels = list(config.auth_key_names) or [relay_key_label(key) for key in config.auth_keys]
        self.upstreams = EndpointUpstreams(config)
        self.policy = build_policy(config)  # CORS and processors; None: neither (nothing to pay)
        # Constants of every request to this endpoint, computed once per config generation.
        self.max_body_size = config.max_body_size
        self.forwarded = config.forwarded_headers
        self.retries = config.retries
        self.retry_deadline = config.retry_deadline
        self.retry_body_limit = config.retry_body_limit


class RelayRuntime:
    """Everything a request needs from one config generation."""

    def __init__(self, config: RelayConfig, generation: int) -> None:
        self.config = config
        self.generation = generation
        self.endpoints = {e.name: EndpointRuntime(e, generation) for e in config.endpoints}
        self.trusted_proxies = TrustedProxies(config.server.trusted_proxies)
        self.router: Router[EndpointRuntime] = Router(
            ((name, rt.config.hosts, rt) for name, rt in self.endpoints.items()),
            [(prefix, rt) for rt in self.endpoints.values() for prefix in rt.config.paths],
        )
        self._users = 0
        self._retired = False
        self._closed = trio.Event()

    def apply_health(self, table: HealthTable | None, now: float) -> None:
        """Take the supervisor's view of every upstream and key (see `upstreams`); the keys only from a
        table of this generation (another generation's key indexes may name other keys)."""
        keys = table is not None and table.generation == self.generation
        for name, endpoint in self.endpoints.items():
            endpoint.upstreams.apply(table.endpoints.get(name) if table else None, now, keys)

    def refreshed_key(self, update: KeyUpdate, now: float) -> None:
        """A refreshable key's new value (see `supervisor.key_refresh`), when it is this generation's."""
        if update.generation != self.generation:
            return
        endpoint = self.endpoints.get(update.endpoint)
        upstream = endpoint.upstreams.by_name.get(update.upstream) if endpoint is not None else None
        if upstream is not None and 0 <= update.key < len(upstream.keys):
            upstream.refreshed_key(update.key, update.value, update.refreshes, now)

    def acquire(self) -> None:
        self._users += 1

    def release(self) -> bool:
        """One request less; True when this generation is retired and now unused (call `aclose`)."""
        self._users -= 1
        return self._retired and self._users == 0 and not self._closed.is_set()

    async def retire(self) -> None:
        """No new request will use this generation; close it once the running ones finish."""
        self._retired = True
        if self._users == 0:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with trio.CancelScope(shield=True):
            for endpoint in self.endpoints.values():
                await endpoint.upstreams.aclose()
        log.debug("config generation %d closed", self.generation)
