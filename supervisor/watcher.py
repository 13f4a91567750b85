"""The supervisor's end of every control pipe.

`Watcher.watch` reads one worker's messages until its pipe closes and hands each to the handler
registered for its type (a table, one handler per worker -> supervisor message); a supervisor ->
worker message coming back is logged and ignored. Then it reaps the process: one that closed its
pipe but does not exit within `STOP_GRACE` is killed. What follows an exit (a respawn) is the
caller's (see `rollout`).

The watcher also keeps the shared health view: the workers' passive upstream and key reports are
merged into the `HealthBoard`, `apply` logs what a report changed and broadcasts the table when a
worker's decisions depend on the change, and `broadcast_health` sends the table, with every worker's
state, to the workers that are ready. The workers' `MetricsDelta`s are summed into the supervisor's
`MetricsTotals`; a worker's gauges are forgotten once it is reaped. Lease asks and returns and usage
reports go to the `LimitsService`, which drops a reaped worker's holdings. A worker's ask to re-run a
refreshable key's command goes to the `KeyRefresher`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import trio

from llmrelay.control import (
    ConfigApplied,
    ConfigRejected,
    Heartbeat,
    KeyEvent,
    KeyRefreshAsk,
    LeaseAsk,
    LeaseReturn,
    Message,
    MetricsDelta,
    Ready,
    Stopped,
    UpstreamEvent,
    UsageReport,
)
from supervisor.health import HealthBoard, Update
from supervisor.limits import LimitsService
from supervisor.metrics import MetricsTotals
from supervisor.slots import Slot, SlotTable
from supervisor.workers import SEND_TIMEOUT, STOP_GRACE, WorkerProcess

log = logging.getLogger("supervisor")

M = TypeVar("M", bound=Message)


class KeyRefreshes(Protocol):
    """Who re-runs refreshable keys' commands (in the supervisor: `key_refresh.KeyRefresher`)."""

    async def ask(self, worker: WorkerProcess, message: KeyRefreshAsk) -> None: ...
Handler = Callable[[WorkerProcess, Slot, M], Awaitable[None]]


class Watcher:
    def __init__(self, table: SlotTable, board: HealthBoard, totals: MetricsTotals, limits: LimitsService | None = None) -> None:
        self.table = table
        self.board = board
        self.totals = totals
        self.limits = limits or LimitsService()
        self._handlers: dict[type[Message], Handler[Any]] = {}
        self._on(Heartbeat, self._heartbeat)
        self._on(UpstreamEvent, self._upstream_event)
        self._on(KeyEvent, self._key_event)
        self._on(KeyRefreshAsk, self._key_refresh_ask)
        self.refresher: KeyRefreshes | None = None  # (set by the supervisor once it is built)
        self._on(Ready, self._ready)
        self._on(ConfigApplied, self._config_applied)
        self._on(ConfigRejected, self._config_rejected)
        self._on(Stopped, self._stopped)
        self._on(MetricsDelta, self._metrics)
        self._on(LeaseAsk, self._lease_ask)
        self._on(LeaseReturn, self._lease_return)
        self._on(UsageReport, self._usage_report)

    def _on(self, kind: type[M], handler: Handler[M]) -> None:
        self._handlers[kind] = handler

    async def watch(self, worker: WorkerProcess, slot: Slot) -> None:
        """Handle the worker's messages until its pipe closes; return once the process is reaped."""
        while (messages := await worker.messages()) is not None:
            for message in messages:
                handler = self._handlers.get(type(message))
                if handler is None:  # a supervisor -> worker message: the worker is confused
                    log.warning("worker %d sent an unexpected %s message", worker.pid, type(message).__name__)
                    continue
                await handler(worker, slot, message)
        with trio.CancelScope(shield=True):
            with trio.move_on_after(STOP_GRACE):
                await worker.process.wait()
            if worker.process.returncode is None:
                log.warning("worker %d closed its control pipe but did not exit; killing it", worker.pid)
                worker.kill()
                await worker.process.wait()
            await worker.control.aclose()
        self.table.workers.discard(worker)
        self.totals.forget(worker.pid)
        with trio.CancelScope(shield=True), trio.move_on_after(STOP_GRACE):
            await self.limits.worker_gone(worker)  # its concurrency holdings are freed
        worker.mark_exited()

    async def broadcast_health(self) -> None:
        workers = sorted(self.table.workers, key=lambda w: (w.slot, w.started))
        table = self.board.table(self.table.generation, [w.info() for w in workers], time.time(), self.limits.degraded)
        for worker in workers:
            if worker.ready.is_set():
                with trio.move_on_after(SEND_TIMEOUT):
                    await worker.send(table)

    async def apply(self, update: Update) -> None:
        """Log what a health report changed; broadcast the table when workers decide on the change."""
        for line in update.lines:
            log.log(line.level, "%s", line.text)
        if update.changed:
            await self.broadcast_health()

    # -- one handler per message type -------------------------------------------------------------
    async def _heartbeat(self, worker: WorkerProcess, slot: Slot, message: Heartbeat) -> None:
        worker.last_heartbeat = time.monotonic()
        worker.stats = message.stats

    async def _upstream_event(self, worker: WorkerProcess, slot: Slot, message: UpstreamEvent) -> None:
        await self.apply(self.board.observe(message, time.time()))

    async def _key_event(self, worker: WorkerProcess, slot: Slot, message: KeyEvent) -> None:
        if message.generation != self.table.generation:
            return  # a worker still on another config: its key index may name another key now
        await self.apply(self.board.key_event(message, time.time()))

    async def _key_refresh_ask(self, worker: WorkerProcess, slot: Slot, message: KeyRefreshAsk) -> None:
        if self.refresher is not None:
            await self.refresher.ask(worker, message)

    async def _ready(self, worker: WorkerProcess, slot: Slot, message: Ready) -> None:
        worker.version = message.version
        worker.last_heartbeat = time.monotonic()
        worker.ready.set()
        log.info("worker %d (slot %d) ready, version %s", worker.pid, slot.index, message.version)
        if slot.worker is worker:
            slot.worker_ready()
        await self.broadcast_health()

    async def _config_applied(self, worker: WorkerProcess, slot: Slot, message: ConfigApplied) -> None:
        worker.record_answer(message.generation, None)

    async def _config_rejected(self, worker: WorkerProcess, slot: Slot, message: ConfigRejected) -> None:
        log.error(
            "worker %d (slot %d) cannot apply config generation %d: %s",
            worker.pid,
            slot.index,
            message.generation,
            message.error,
        )
        worker.record_answer(message.generation, message.error)

    async def _metrics(self, worker: WorkerProcess, slot: Slot, message: MetricsDelta) -> None:
        self.totals.add(message, time.time(), worker.pid)

    async def _lease_ask(self, worker: WorkerProcess, slot: Slot, message: LeaseAsk) -> None:
        await self.limits.ask(worker, message)

    async def _lease_return(self, worker: WorkerProcess, slot: Slot, message: LeaseReturn) -> None:
        await self.limits.give_back(worker, message)

    async def _usage_report(self, worker: WorkerProcess, slot: Slot, message: UsageReport) -> None:
        await self.limits.report(worker, message)

    async def _stopped(self, worker: WorkerProcess, slot: Slot, message: Stopped) -> None:
        if message.cut:
            log.warning("worker %d cut %d responses at the drain deadline", worker.pid, message.cut)
