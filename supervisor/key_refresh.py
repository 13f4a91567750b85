"""Refreshable provider keys: `$(command)` keys with a `refresh_interval`, re-run by the supervisor.

`KeyRefresher` owns the keys of the config in force. Keys written with the same command share one
`Refreshable` (the command runs once for all of them). Each runs its command every `refresh_interval`
seconds, and when a worker asks (`KeyRefreshAsk`, sent on a provider's 401), unless it ran less than
`ASK_INTERVAL` seconds before. A value the provider refused that a run did not replace is tried every
`ASK_INTERVAL` until one does (the worker has disabled the key meanwhile; a new value enables it). A run happens in a thread (the command is bounded by the secrets
module: 10 s, 64 KiB); a new value goes into the config in force (so workers started later, and the
active checks, present it), clears what the health board held against the old one, and reaches every
ready worker as a `KeyUpdate` without a reload. A failing command keeps the last good value: the log
line names the key and the command's error, never a value. An ask always gets an answer, so the
request that asked stops waiting: the run's KeyUpdate, or the current value at once when it is too soon.

`restart` follows a reload (the new config's keys were resolved when it loaded). A KeyUpdate names
the generation in force; a worker applies it to that generation only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import msgspec
import trio

from llmrelay.config.resolved import RelayConfig
from llmrelay.config.secrets import SecretError, resolve_secret
from llmrelay.control import KeyRefreshAsk, KeyUpdate
from supervisor.checks import ActiveChecks
from supervisor.health import HealthBoard, Update
from supervisor.slots import SlotTable
from supervisor.workers import SEND_TIMEOUT, WorkerProcess

log = logging.getLogger("supervisor")

ASK_INTERVAL = 30.0  # seconds: a worker's ask re-runs a command at most this often
Location = tuple[str, str, int]  # (endpoint, upstream, key index)


class Refreshable:
    """One command and every key written with it."""

    __slots__ = ("command", "interval", "value", "locations", "last_run", "running", "asked", "stale", "refreshes")

    def __init__(self, command: str, interval: float, value: str) -> None:
        self.command = command
        self.interval = interval
        self.value = value
        self.locations: list[Location] = []
        self.last_run = -math.inf  # (trio clock) its last run, periodic or asked for
        self.running = False
        self.asked = False  # a worker asked during the run under way: its result is broadcast whatever it is
        self.stale = False  # a 401 found the value refused and no run since gave a new one
        self.refreshes = 0  # new values the command gave (workers and board tell older verdicts by it)

    @property
    def period(self) -> float:
        """Seconds between runs: its interval, or ASK_INTERVAL at most while the provider refuses it."""
        return min(self.interval, ASK_INTERVAL) if self.stale else self.interval

    @property
    def label(self) -> str:
        endpoint, upstream, index = self.locations[0]
        more = f" (and {len(self.locations) - 1} more)" if len(self.locations) > 1 else ""
        return f"upstream {endpoint}/{upstream} key {index}{more}"


def refreshable_keys(config: RelayConfig) -> dict[str, Refreshable]:
    """The config's refreshable keys by command (the shortest interval of a shared command wins)."""
    found: dict[str, Refreshable] = {}
    for endpoint in config.endpoints:
        for upstream in endpoint.upstreams:
            for index, key in enumerate(upstream.api_keys):
                if key.refresh <= 0 or not key.command:
                    continue
                entry = found.get(key.command)
                if entry is None:
                    entry = found[key.command] = Refreshable(key.command, key.refresh, key.key)
                entry.interval = min(entry.interval, key.refresh)
                entry.locations.append((endpoint.name, upstream.name, index))
    return found


def with_key_value(config: RelayConfig, locations: list[Location], value: str) -> RelayConfig:
    """`config` with the keys at `locations` set to `value`."""
    wanted: dict[tuple[str, str], set[int]] = {}
    for endpoint_name, upstream_name, index in locations:
        wanted.setdefault((endpoint_name, upstream_name), set()).add(index)
    endpoints = []
    for endpoint in config.endpoints:
        upstreams = []
        for upstream in endpoint.upstreams:
            indexes = wanted.get((endpoint.name, upstream.name))
            if indexes:
                keys = [msgspec.structs.replace(key, key=value) if i in indexes else key for i, key in enumerate(upstream.api_keys)]
                upstream = msgspec.structs.replace(upstream, api_keys=keys)
            upstreams.append(upstream)
        endpoints.append(msgspec.structs.replace(endpoint, upstreams=upstreams))
    return msgspec.structs.replace(config, endpoints=endpoints)


class KeyRefresher:
    def __init__(
        self, table: SlotTable, board: HealthBoard, checks: ActiveChecks, apply: Callable[[Update], Awaitable[None]]
    ) -> None:
        self._table = table
        self._board = board
        self._checks = checks
        self._apply = apply
        self._config = table.config  # the config whose keys are refreshed (the table's, unless a reload is under way)
        self._by_command: dict[str, Refreshable] = {}
        self._by_location: dict[Location, Refreshable] = {}
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None

    def restart(self, config: RelayConfig) -> None:
        """A reload applied `config`: refresh its keys from now on (runs under way are abandoned)."""
        self._config = config
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        while True:
            with trio.CancelScope() as scope:
                self._scope = scope
                self._by_command = refreshable_keys(self._config)
                self._by_location = {loc: entry for entry in self._by_command.values() for loc in entry.locations}
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for entry in self._by_command.values():
                        nursery.start_soon(self._every_interval, entry, name=f"key refresh {entry.label}")
                    if self._by_command:
                        log.info("refreshable keys: %d command(s)", len(self._by_command))
                    await trio.sleep_forever()

    async def ask(self, worker: WorkerProcess, message: KeyRefreshAsk) -> None:
        """A worker's ask after a 401: run the command now, or answer at once when it ran too recently."""
        location = (message.endpoint, message.upstream, message.key)
        entry = self._by_location.get(location) if message.generation == self._table.generation else None
        if entry is None or self._nursery is None:  # another generation's key: nothing to run
            await self._send(worker, KeyUpdate(message.generation, *location, value="", changed=False))
            return
        if entry.running:
            entry.asked = True  # the run under way answers everyone
            return
        since = trio.current_time() - entry.last_run
        if since < ASK_INTERVAL:
            log.info("%s: the provider answered 401; its command ran %.0f s ago, not again before %.0f s", entry.label, since, ASK_INTERVAL)
            await self._send(worker, KeyUpdate(message.generation, *location, value=entry.value, changed=False))
            return
        log.info("%s: the provider answered 401; re-running its command", entry.label)
        entry.running = True  # (before the task starts: a second ask waits for this run)
        self._nursery.start_soon(self._run, entry, True)

    async def _every_interval(self, entry: Refreshable) -> None:
        """Run the command `period` seconds after its last run, asked or not (the config's load ran it
        first). The wait is judged again at least every ASK_INTERVAL: a key that a 401 found stale is
        tried sooner than its interval."""
        loaded = trio.current_time()
        while True:
            now = trio.current_time()
            due = max(entry.last_run, loaded) + entry.period
            if entry.running or now < due:
                await trio.sleep_until(min(max(due, now + 0.25), now + ASK_INTERVAL))
                continue
            entry.running = True
            await self._run(entry, False)

    async def _run(self, entry: Refreshable, asked: bool) -> None:
        entry.last_run = trio.current_time()
        changed = False
        try:
            value = await trio.to_thread.run_sync(resolve_secret, entry.command, abandon_on_cancel=True)
        except SecretError as exc:
            log.warning("%s: re-running its command failed (%s); keeping the last value", entry.label, exc)
        else:
            changed = value != entry.value
            if changed:
                entry.value = value
                entry.refreshes += 1
                await self._install(entry)
            log.info("%s: command re-run%s: %s", entry.label, " (asked after a 401)" if asked else "", "new value" if changed else "same value")
        finally:
            entry.running = False
            asked, entry.asked = asked or entry.asked, False
            entry.stale = not changed and (asked or entry.stale)
        if changed or asked:
            for endpoint, upstream, index in entry.locations:
                update = KeyUpdate(
                    self._table.generation, endpoint, upstream, index, value=entry.value, changed=changed, refreshes=entry.refreshes
                )
                await self._broadcast(update)

    async def _install(self, entry: Refreshable) -> None:
        """The new value into the config in force (for workers started later and the active checks)
        and the health board (what was held against the old value is forgotten)."""
        if self._table.config is self._config:  # (else a reload is under way: its config was just loaded)
            self._config = self._table.config = with_key_value(self._config, entry.locations, entry.value)
            self._checks.follow_keys(self._config)
        for endpoint, upstream, index in entry.locations:
            await self._apply(self._board.key_refreshed(endpoint, upstream, index, entry.value, entry.refreshes))

    async def _broadcast(self, message: KeyUpdate) -> None:
        for worker in list(self._table.workers):
            if worker.ready.is_set():
                await self._send(worker, message)

    async def _send(self, worker: WorkerProcess, message: KeyUpdate) -> None:
        with trio.move_on_after(SEND_TIMEOUT):
            await worker.send(message)
