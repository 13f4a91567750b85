"""Active health checks: the supervisor asks each upstream that has a `health_check`, once per machine
(not once per worker), whether it answers, and reports each result into the health board.

`ActiveChecks` owns the checks of one config: one task per checked upstream, in a nursery of its own
that `restart` cancels to start the set of a new config (after a reload). `run` lives in the
supervisor's nursery of changes, so the checks stop when a stop begins and never run during the
final drain.

Each task has a pool of one connection built from the upstream's own config (so a check goes through
its proxy, with its TLS settings and its timeouts), and checks at once, then every `interval`
seconds: the configured method and path (joined with the target's base path), a `host` and a
`user-agent`, the configured headers and body, and the upstream's first key with a weight that is
not disabled, presented the provider's way. It passes iff the status is in `expected_status` within
`timeout` seconds (the body is read, up to `BODY_LIMIT`, so that the answer is complete).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator

import msgspec
import trio

from llmrelay import __version__
from llmrelay.config.resolved import HealthCheck, RelayConfig, ResolvedUpstream
from llmrelay.io.logsafe import describe
from llmrelay.proto.messages import Headers
from llmrelay.relay.providers import inject_key
from llmrelay.relay.routing import join_path
from llmrelay.upstream.errors import UpstreamError
from llmrelay.upstream.pool import UpstreamPool, UpstreamRequest
from supervisor.health import HealthBoard, Update, seconds

log = logging.getLogger("supervisor")

USER_AGENT = f"llmrelay-health-check/{__version__}".encode()
BODY_LIMIT = 64 * 1024  # bytes of an answer read at most
_WITH_LENGTH = frozenset({"POST", "PUT", "PATCH"})  # methods that announce even an empty body

Apply = Callable[[Update], Awaitable[None]]  # log an update's lines, broadcast when it changed


def checked_upstreams(config: RelayConfig) -> Iterator[tuple[str, ResolvedUpstream, HealthCheck]]:
    """Every upstream of `config` that has an active check, with its endpoint's name."""
    for endpoint in config.endpoints:
        for upstream in endpoint.upstreams:
            if upstream.health_check is not None:
                yield endpoint.name, upstream, upstream.health_check


def check_key(upstream: ResolvedUpstream, disabled: set[int]) -> str | None:
    """The key a check presents: the first with a weight that is not disabled (else the first with a
    weight, so the check tells what the provider says of it); None when the upstream has no keys."""
    weighted = [index for index, key in enumerate(upstream.api_keys) if key.weight > 0]
    usable = [index for index in weighted if index not in disabled]
    chosen = usable or weighted
    return upstream.api_keys[chosen[0]].key if chosen else None


def check_request(upstream: ResolvedUpstream, check: HealthCheck, key: str | None) -> UpstreamRequest:
    """The request of one check; configured headers replace the defaults of the same name."""
    body = check.body.encode()
    configured: Headers = [(name.lower().encode("ascii"), value.encode("latin-1")) for name, value in check.headers]
    names = {name for name, _ in configured}
    headers: Headers = [
        (name, value)
        for name, value in ((b"host", upstream.target.host_header.encode("ascii")), (b"user-agent", USER_AGENT))
        if name not in names
    ]
    headers += configured
    if body or check.method in _WITH_LENGTH:
        headers.append((b"content-length", str(len(body)).encode()))
    if key is not None:
        presented: Headers = []
        inject_key(upstream.provider, presented, key, any(entry.oauth for entry in upstream.api_keys if entry.key == key))
        headers += [(name, value) for name, value in presented if name.lower() not in names]
    target = join_path(upstream.target.base_path, check.path)
    return UpstreamRequest(
        method=check.method.encode("ascii"), target=target.encode("ascii"), headers=headers, body=body
    )


def check_pool(upstream: ResolvedUpstream) -> UpstreamPool:
    """A pool of one connection to the upstream, through its own proxy and TLS settings."""
    limits = msgspec.structs.replace(upstream.pool, max_connections=1)
    return UpstreamPool(msgspec.structs.replace(upstream, pool=limits))


async def probe(pool: UpstreamPool, request: UpstreamRequest, check: HealthCheck) -> str | None:
    """Send one check; None when it passed, else why it failed."""
    with trio.move_on_after(check.timeout):
        try:
            async with pool.stream(request) as response:
                received = 0
                while not response.complete and received < BODY_LIMIT:
                    received += len(await response.read_chunk())
                status = response.status
        except UpstreamError as exc:
            return exc.message
        return None if status in check.expected_status else f"status {status}"
    return f"timeout after {seconds(check.timeout)} s"


class ActiveChecks:
    """The checks of the config in force; `run` until cancelled, `restart` on a config change."""

    def __init__(self, board: HealthBoard, apply: Apply, config: RelayConfig) -> None:
        self._board = board
        self._apply = apply
        self._config = config
        self._scope: trio.CancelScope | None = None

    def restart(self, config: RelayConfig) -> None:
        """Cancel the checks under way and start those of `config`."""
        self._config = config
        if self._scope is not None:
            self._scope.cancel()

    def follow_keys(self, config: RelayConfig) -> None:
        """The same config with a refreshed key value: the next checks present it (nothing restarts)."""
        self._config = config

    def _current_keys(self, endpoint: str, upstream: ResolvedUpstream) -> ResolvedUpstream:
        """`upstream` as the config in force has it now (its keys may have been refreshed)."""
        for resolved_endpoint in self._config.endpoints:
            if resolved_endpoint.name == endpoint:
                for current in resolved_endpoint.upstreams:
                    if current.name == upstream.name:
                        return current
        return upstream

    async def run(self) -> None:
        while True:
            config = self._config
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    count = 0
                    for endpoint, upstream, check in checked_upstreams(config):
                        name = f"health check {endpoint}/{upstream.name}"
                        nursery.start_soon(self._watch, endpoint, upstream, check, name=name)
                        count += 1
                    if count:
                        log.info("active health checks: %d upstreams", count)
                    await trio.sleep_forever()

    async def _watch(self, endpoint: str, upstream: ResolvedUpstream, check: HealthCheck) -> None:
        """Check one upstream at once, then every `interval` seconds, until cancelled."""
        pool: UpstreamPool | None = None
        try:
            next_check = trio.current_time()
            while True:
                started = trio.current_time()
                try:
                    if pool is None:
                        pool = check_pool(upstream)
                    current = self._current_keys(endpoint, upstream)
                    key = check_key(current, self._board.disabled_keys(endpoint, upstream.name))
                    error = await probe(pool, check_request(current, check, key), check)
                except Exception as exc:  # (a CA file that no longer loads...): a failed check, never a crash
                    error = describe(exc, 200)
                latency_ms = (trio.current_time() - started) * 1000.0
                passed = error is None
                await self._apply(
                    self._board.check_result(endpoint, upstream.name, passed, latency_ms, error or "", time.time())
                )
                next_check = max(next_check + check.interval, trio.current_time())
                await trio.sleep_until(next_check)
        finally:
            if pool is not None:
                await pool.aclose()
