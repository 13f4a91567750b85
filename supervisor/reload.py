"""Reloads (SIGHUP): read the config file again, hand it to every worker, and roll back when one
cannot apply it.

`Reloads` is a background job of its own: `request` (the SIGHUP handler) only counts the signal in
the status file and wakes `run`, which does one reload at a time; signals that arrive during one are
served by one more. The file is read in a thread (its `$(command)` key sources may take seconds), so
the supervisor's signal loop stays responsive; applying it then waits for any other change of the
workers to finish (see `jobs`). A valid config is applied in two steps: every serving worker is sent
it and answers whether it could apply it; if one could not (a CA file that no longer loads, ...),
the reload is rejected and, when some had applied it, every worker is sent the previous config again
as a generation of its own, so that all of them serve the same config (and respawned workers get it
too). Only then do listener moves and worker-count changes follow.

A reload sees the rest of the supervisor through three narrow interfaces: `Fleet` (replace a slot's
worker, add or remove a slot), `Health` (the health board and its broadcast) and `Checks` (the
active health checks). An applied config is followed by the board (an upstream whose endpoint, name
and target are unchanged keeps its health) and the checks restart with it; a rejected one changes
neither.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from llmrelay.config.errors import ConfigError
from llmrelay.config.resolved import RelayConfig
from llmrelay.config.schema import ServerSection
from llmrelay.control import Config
from llmrelay.logs import LogSetupError, configure_logging
from supervisor.health import HealthBoard
from supervisor.jobs import Jobs
from supervisor.metrics import MetricsTotals, RestartReason
from supervisor.notify import Notifier
from supervisor.slots import Slot, SlotTable, bind_listeners, bound_addresses, describe_listen, listener_addresses
from supervisor.sockets import BindError, close_sockets
from supervisor.status import Outcome, StatusFile
from supervisor.workers import SEND_TIMEOUT, WorkerProcess

log = logging.getLogger("supervisor")

ANSWER_TIMEOUT = 10.0  # for every worker to say whether it applied a new config


class Fleet(Protocol):
    """The workers, as a reload changes them (in the supervisor: `rollout.Rollout`)."""

    async def replace_slot(
        self, slot: Slot, retired_sockets: list[socket.socket] | None = None, reason: RestartReason = ...
    ) -> str | None: ...

    async def add_slot(self) -> None: ...

    async def remove_slot(self) -> None: ...


class Health(Protocol):
    """The shared health view (in the supervisor: `watcher.Watcher`)."""

    board: HealthBoard

    async def broadcast_health(self) -> None: ...


class Checks(Protocol):
    """The active health checks (in the supervisor: `checks.ActiveChecks`)."""

    def restart(self, config: RelayConfig) -> None: ...


@dataclass(eq=False)
class Reloads:
    load: Callable[[], RelayConfig]  # reads and validates the config file; ConfigError when it is bad
    table: SlotTable
    jobs: Jobs
    fleet: Fleet
    health: Health
    status: StatusFile
    checks: Checks
    totals: MetricsTotals  # counts reloads by result
    follow_admin: Callable[[RelayConfig], Awaitable[None]]  # the admin listener takes an applied config
    notify: Notifier = field(default_factory=Notifier)  # systemd: RELOADING=1, then READY=1
    describe: Callable[[SlotTable], str] = field(default=lambda table: f"config generation {table.generation}")
    _wanted: trio.Event = field(default_factory=trio.Event, init=False)

    def request(self) -> None:
        """Count the signal in the status file and wake `run`; returns at once."""
        self.status.requested(self.status.reload)
        self._wanted.set()

    async def run(self) -> None:
        """One reload at a time; signals that arrive during one are served by one more."""
        status = self.status
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            number = status.reload.requested
            self.notify.reloading()
            outcome = await self.reload()
            self.notify.ready(self.describe(self.table) + ("" if outcome.ok else "; last reload rejected"))
            status.generation = self.table.generation
            self.totals.reloaded(outcome.ok)
            if outcome.ok:
                status.loaded_at = time.time()
                await self.follow_admin(self.table.config)
            status.finished(status.reload, number, outcome, ("applied", "rejected"))

    async def reload(self) -> Outcome:
        """Validate the file again; a bad one is logged and the old config keeps serving."""
        try:
            config = await trio.to_thread.run_sync(self.load, abandon_on_cancel=True)
        except ConfigError as exc:
            log.error("reload rejected (%d errors); still serving the previous config", len(exc.errors))
            for line in exc.errors:
                log.error("  %s", line)
            return Outcome(False, f"{len(exc.errors)} error(s) in {exc.source}", list(exc.errors))
        async with self.jobs.one_at_a_time("reload"):
            if self.table.stopping:
                return Outcome(False, "the supervisor is stopping")
            return await self._apply(config)

    async def _apply(self, config: RelayConfig) -> Outcome:
        table = self.table
        new = config.server
        moved = listener_addresses(table.config) != listener_addresses(config)
        new_sockets: list[list[socket.socket]] = []
        if moved:
            try:
                new_sockets = bind_listeners(
                    config, len(table.slots), ours=table.listen, shared=table.shared, existing=table.listening_sockets()
                )
            except BindError as exc:
                log.error("reload rejected: %s; still serving the previous config", exc)
                return Outcome(False, "the new listener cannot be bound", [str(exc)])
        previous, previous_generation = table.config, table.generation
        generation = table.next_generation()
        table.config, table.generation = config, generation  # workers started from now on get it
        answers = await send_config(table.active(), config, generation)
        if any(error is not None for error in answers.values()):
            outcome = await self._roll_back(previous, previous_generation, generation, answers)
            for sockets in new_sockets:
                close_sockets(sockets)
            return outcome
        before = {e.name: e for e in previous.endpoints}
        after = {e.name: e for e in config.endpoints}
        changed = sum(1 for name in before.keys() & after.keys() if before[name] != after[name])
        self.health.board.sync(config)
        self.checks.restart(config)
        _follow_log_settings(previous.server, new)
        summary = (
            f"generation {generation}: {len(after.keys() - before.keys())} endpoints added,"
            f" {len(before.keys() - after.keys())} removed, {changed} changed"
        )
        log.info("reload ok (%s)", summary)
        problems: list[str] = []
        if moved:
            problems += await self._move_listener(new_sockets)
        while len(table.slots) < new.workers:
            await self.fleet.add_slot()
        while len(table.slots) > new.workers:
            await self.fleet.remove_slot()
        await self.health.broadcast_health()
        return Outcome(True, summary, problems)

    async def _roll_back(
        self, previous: RelayConfig, previous_generation: int, generation: int, answers: dict[WorkerProcess, str | None]
    ) -> Outcome:
        """Some workers could not apply `generation`: the table, and every worker, go back to `previous`."""
        table = self.table
        table.config, table.generation = previous, previous_generation
        rejected = {w: error for w, error in answers.items() if error is not None}
        applied = [w for w, error in answers.items() if error is None]
        if applied:  # back to the previous config, as a generation of its own that every worker serves
            table.generation = table.next_generation()
            await send_config(list(answers), previous, table.generation)
        errors = [
            f"worker {w.pid} (slot {w.slot}): {error}" for w, error in sorted(rejected.items(), key=lambda i: i[0].slot)
        ]
        log.error(
            "reload rejected: %d of %d workers cannot apply config generation %d; still serving the previous config%s",
            len(rejected),
            len(answers),
            generation,
            f" (rolled back as generation {table.generation})" if applied else "",
        )
        return Outcome(False, f"{len(rejected)} of {len(answers)} workers cannot apply it", errors)

    async def _move_listener(self, new_sockets: list[list[socket.socket]]) -> list[str]:
        """Roll every worker onto the new sockets; a slot whose successor fails keeps the old ones."""
        table = self.table
        table.listen = bound_addresses(table.config, new_sockets[0])
        log.info("listeners move to %s: rolling every worker onto them", describe_listen(table.listen))
        problems: list[str] = []
        for slot, sockets in zip(list(table.slots), new_sockets):
            retired, slot.sockets = slot.sockets, sockets
            why = await self.fleet.replace_slot(slot, retired_sockets=retired, reason=RestartReason.RELOAD)
            if why is not None:
                slot.sockets = retired
                close_sockets(sockets)
                problems.append(why)
        return problems


def _follow_log_settings(old: ServerSection, new: ServerSection) -> None:
    """The supervisor's own lines follow a reload's log level, format and files (a file that cannot
    be opened is logged, and the lines keep going where they went)."""
    if (old.log_level, old.log_format, old.access_log_file, old.error_log_file) == (
        new.log_level, new.log_format, new.access_log_file, new.error_log_file
    ):
        return
    try:
        configure_logging(new.log_level, new)
    except LogSetupError as exc:
        log.error("%s; the supervisor logs where it did", exc)


async def send_config(
    workers: list[WorkerProcess], config: RelayConfig, generation: int
) -> dict[WorkerProcess, str | None]:
    """Send a config to `workers`; what each answered (None: applied; workers that exited are left out)."""
    for worker in workers:
        with trio.move_on_after(SEND_TIMEOUT):
            await worker.send(Config(config=config, generation=generation))
    with trio.move_on_after(ANSWER_TIMEOUT):
        for worker in workers:
            await worker.wait_answer(generation)
    answers: dict[WorkerProcess, str | None] = {}
    for worker in workers:
        if generation in worker.answers:
            answers[worker] = worker.answers[generation]
        elif not worker.exited.is_set():
            log.warning("worker %d (slot %d) did not answer config generation %d", worker.pid, worker.slot, generation)
    return answers
