"""A config generation as the worker runs it: endpoints with their pools, key rings and router.

When a new config arrives, requests already running keep the generation they started on; the old
generation's pools are closed once its last request has finished.
"""

from __future__ import annotations

import logging

import trio

from llmrelay.config.resolved import RelayConfig, ResolvedEndpoint
from llmrelay.relay.credentials import KeyPicker, KeyRing
from llmrelay.relay.routing import Router
from llmrelay.upstream.pool import UpstreamPool

log = logging.getLogger("llmrelay.runtime")


class EndpointRuntime:
    __slots__ = (
        "config",
        "name",
        "provider",
        "pool",
        "relay_keys",
        "provider_keys",
        "needs_relay_key",
        "injects_key",
        "replaces_credentials",
        "upstream_host",
        "scheme",
        "host",
        "port",
        "base_path",
        "max_body_size",
        "forwarded",
    )

    def __init__(self, config: ResolvedEndpoint) -> None:
        self.config = config
        self.name = config.name
        self.provider = config.provider
        self.pool = UpstreamPool(config)
        self.relay_keys = KeyRing(config.auth_keys)
        self.provider_keys = KeyPicker(config.api_keys)
        # Constants of every request to this endpoint, computed once per config generation.
        self.needs_relay_key = self.relay_keys.required
        self.injects_key = bool(self.provider_keys)
        self.replaces_credentials = self.needs_relay_key or self.injects_key
        target = config.target
        self.upstream_host = target.host_header.encode("ascii")
        self.base_path = target.base_path
        self.max_body_size = config.max_body_size
        self.forwarded = config.forwarded_headers


class RelayRuntime:
    """Everything a request needs from one config generation."""

    def __init__(self, config: RelayConfig, generation: int) -> None:
        self.config = config
        self.generation = generation
        self.endpoints = {e.name: EndpointRuntime(e) for e in config.endpoints}
        self.router: Router[EndpointRuntime] = Router(
            (name, rt.config.hosts, rt) for name, rt in self.endpoints.items()
        )
        self._users = 0
        self._retired = False
        self._closed = trio.Event()

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
                await endpoint.pool.aclose()
        log.debug("config generation %d closed", self.generation)
