"""Which worker serves which slot: starting, replacing, draining and respawning workers.

Workers are started with fork+exec, never forked from this running event loop, and are sent the
table's config at once. Each one is then watched by a task of its own, in the nursery the rollout is
given (the supervisor's main task owns it and cancels it only after the final drain); when a worker
exits, its task logs how, and respawns the slot if the exit was not asked for.

A successor is started before its predecessor is drained, and receives the same slot sockets, so
nothing queued in a backlog is lost; a rolling replacement does that one slot at a time. A worker
that dies unexpectedly is respawned into its slot with exponential backoff; one that could not boot
(exit status EXIT_BOOT_FAILED, or gone before it was ready) is logged as such and backed off from
the first time; while a slot waits for its respawn, it answers its connections with 503 (see
`Slot.answer_unavailable`).
"""

from __future__ import annotations

import logging
import socket
import time

import trio

from llmrelay.control import Config, Drain
from supervisor.metrics import RestartReason
from supervisor.slots import Slot, SlotTable
from supervisor.sockets import BindError, close_sockets
from supervisor.status import Outcome
from supervisor.watcher import Watcher
from supervisor.workers import SEND_TIMEOUT, STOP_GRACE, WorkerProcess

log = logging.getLogger("supervisor")


class Rollout:
    def __init__(self, table: SlotTable, watcher: Watcher, nursery: trio.Nursery) -> None:
        self._table = table
        self._watcher = watcher
        self._nursery = nursery

    # -- one worker -----------------------------------------------------------------------------------
    async def start_worker(self, slot: Slot) -> WorkerProcess:
        # Shielded: a worker that was spawned is always watched (and so reaped), even during a stop.
        with trio.CancelScope(shield=True):
            table = self._table
            worker = await WorkerProcess.spawn(slot.index, slot.sockets, table.config.server.log_level)
            table.workers.add(worker)
            log.info("started worker slot %d pid %d", slot.index, worker.pid)
            with trio.move_on_after(SEND_TIMEOUT):
                await worker.send(Config(config=table.config, generation=table.generation))
            self._nursery.start_soon(self._run, worker, slot)
        return worker

    async def _run(self, worker: WorkerProcess, slot: Slot) -> None:
        """Watch the worker until it is reaped; then say how it ended, and respawn the slot if due."""
        await self._watcher.watch(worker, slot)
        stopping = self._table.stopping
        respawn = not stopping and slot.worker is worker and not slot.removed
        if respawn and worker.boot_failed:
            reason = f": {worker.rejection}" if worker.rejection else ""
            log.error("worker %d (slot %d) failed to boot (%s)%s", worker.pid, slot.index, worker.describe_exit(), reason)
        else:
            expected = worker.draining or stopping
            log_line = log.info if expected else log.error
            log_line("worker %d (slot %d) %s", worker.pid, slot.index, worker.describe_exit())
        if respawn:
            cause = RestartReason.BOOT if worker.boot_failed else worker.kill_reason or RestartReason.CRASH
            self._watcher.totals.restarted(cause)
            await self._respawn(slot, worker)
        if not self._table.stopping:
            await self._watcher.broadcast_health()

    async def _respawn(self, slot: Slot, worker: WorkerProcess) -> None:
        delay = _backoff(slot, worker)
        if delay > 0:
            tls = [listener.tls is not None for listener in self._table.config.listeners]
            slot.answer_unavailable(self._nursery, tls)  # nobody will accept there for a while
        log.info("respawning slot %d in %g s", slot.index, delay)
        await trio.sleep(delay)
        if not self._table.stopping and slot.worker is worker and not slot.removed:
            slot.worker = await self.start_worker(slot)

    async def drain_worker(self, worker: WorkerProcess, close_idle: bool) -> None:
        worker.draining = True
        await worker.send(Drain(timeout=self._table.config.server.drain_timeout, close_idle=close_idle))

    # -- slots ----------------------------------------------------------------------------------------
    async def start_all(self) -> None:
        """A worker for every slot (the first ones; a stop in the meantime ends it)."""
        for slot in self._table.slots:
            if not self._table.stopping:
                slot.worker = await self.start_worker(slot)

    async def replace_slot(
        self,
        slot: Slot,
        retired_sockets: list[socket.socket] | None = None,
        reason: RestartReason = RestartReason.ROLLING,
    ) -> str | None:
        """Start a successor on the slot's sockets, wait for it, then drain the predecessor.

        Returns None when done, else why the successor did not take over (the old worker stays).
        """
        timeout = self._table.config.server.worker_ready_timeout
        successor = await self.start_worker(slot)
        if not await _wait_ready(successor, timeout):
            old = slot.worker.pid if slot.worker else None
            why = (
                f"successor pid {successor.pid} for slot {slot.index} did not become ready within"
                f" {timeout:g} s ({successor.describe_exit()}"
                + (f": {successor.rejection}" if successor.rejection else "")
                + ")"
            )
            log.error("%s; keeping pid %s", why, old)
            successor.draining = True
            successor.kill()
            return why
        old_worker, slot.worker = slot.worker, successor
        slot.worker_ready()
        close_sockets(retired_sockets or [])  # the old worker holds the last copy: it takes its backlog, then closes
        if old_worker is not None:
            self._watcher.totals.restarted(reason)
            await self.drain_worker(old_worker, close_idle=False)
            log.info("slot %d: pid %d replaced by pid %d", slot.index, old_worker.pid, successor.pid)
        await self._watcher.broadcast_health()
        return None

    async def roll(self, reason: str) -> Outcome:
        """Replace every worker, one slot at a time."""
        slots = self._table.slots
        log.info("rolling replacement of %d workers (%s)", len(slots), reason)
        for slot in list(slots):
            if self._table.stopping:
                return Outcome(False, "stopped: the supervisor is stopping")
            why = await self.replace_slot(slot)
            if why is not None:
                log.error("rolling replacement stopped at slot %d; the remaining workers keep serving", slot.index)
                return Outcome(False, f"stopped at slot {slot.index}; the remaining workers keep serving", [why])
        log.info("rolling replacement done (%s)", reason)
        return Outcome(True, f"{len(slots)} workers replaced")

    async def add_slot(self) -> None:
        try:
            slot = self._table.add()
        except BindError as exc:
            log.error("cannot add a worker: %s", exc)
            return
        slot.worker = await self.start_worker(slot)
        count = len(self._table.slots)
        log.info("worker count %d -> %d", count - 1, count)

    async def remove_slot(self) -> None:
        slot = self._table.remove()
        if slot is None:
            log.warning("cannot go below one worker")
            return
        if slot.worker is not None:
            self._watcher.totals.restarted(RestartReason.SCALE)
            await self.drain_worker(slot.worker, close_idle=False)
        await self._watcher.broadcast_health()
        count = len(self._table.slots)
        log.info("worker count %d -> %d (draining pid %s)", count + 1, count, slot.worker and slot.worker.pid)

    # -- every worker, at a stop ------------------------------------------------------------------------
    async def stop_all(self) -> None:
        """Drain every worker, closing idle connections; kill those still running past the deadline."""
        timeout = self._table.config.server.drain_timeout
        workers = list(self._table.workers)
        for worker in workers:
            if not worker.active:
                continue
            worker.draining = True
            with trio.move_on_after(SEND_TIMEOUT):
                await worker.send(Drain(timeout=timeout, close_idle=True))
        with trio.move_on_after(timeout + STOP_GRACE):
            for worker in workers:
                await worker.exited.wait()
        for worker in workers:
            if not worker.exited.is_set():
                log.warning("worker %d did not stop within the drain timeout; killing it", worker.pid)
                worker.kill()

    def kill_all(self) -> None:
        """Kill every worker: their exits end a stop at once."""
        for worker in list(self._table.workers):
            worker.kill()


async def _wait_ready(worker: WorkerProcess, timeout: float) -> bool:
    """Until the worker is ready (True), exits, or `timeout` passes."""
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:

            async def until(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until, worker.ready)
            nursery.start_soon(until, worker.exited)
    return worker.ready.is_set() and not worker.exited.is_set()


def _backoff(slot: Slot, worker: WorkerProcess) -> float:
    """The delay before the slot's next worker, counting boot failures and quick exits in a row."""
    if worker.boot_failed:
        slot.boot_failures += 1
        if slot.boot_failures >= 3:
            log.error("slot %d: %d workers in a row failed to boot", slot.index, slot.boot_failures)
        return min(30.0, 0.5 * 2.0 ** (slot.boot_failures - 1))
    lived = time.monotonic() - worker.started
    slot.quick_exits = 0 if lived > 30 else slot.quick_exits + 1
    if slot.quick_exits >= 3:
        log.error("slot %d is crash-looping (%d quick exits in a row)", slot.index, slot.quick_exits)
    return 0.0 if slot.quick_exits <= 1 else min(30.0, 0.5 * 2.0 ** (slot.quick_exits - 2))
