"""The supervisor: binds the slot sockets, runs one worker per slot, and acts on signals.

Signals only wake the one dispatch loop (`trio.open_signal_receiver`); each action is a named method
(`handle_term`, `handle_hup`, `handle_usr2`, ...). Actions that change the set of workers (a rolling
replacement, a reload that moves the listener, one worker more or fewer) run one at a time, in the
background, so the dispatch loop stays responsive: a SIGTERM in the middle of a roll stops everything.

Workers are started with fork+exec, never forked from this running event loop. A successor is
started before its predecessor is drained, and receives the same slot sockets, so nothing queued in
a backlog is lost. A worker that dies unexpectedly is respawned into its slot with exponential
backoff; one that stops sending heartbeats is killed and respawned; one whose memory grows past
`server.max_worker_rss` is replaced like in a rolling restart.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from llmrelay import __version__
from llmrelay.config.errors import ConfigError
from llmrelay.config.load import Overrides, load_config
from llmrelay.config.resolved import RelayConfig
from llmrelay.control import Config, Drain, Heartbeat, Ready, Stopped, UpstreamEvent
from supervisor.health import HealthBoard
from supervisor.pidfile import PidFile
from supervisor.sockets import BindError, bind_slot_sockets
from supervisor.workers import WorkerProcess

log = logging.getLogger("supervisor")

EXIT_OK = 0
EXIT_BOOT_FAILED = 3
STOP_GRACE = 10.0  # beyond the drain timeout, before stragglers are killed
SEND_TIMEOUT = 2.0  # a worker that does not read its control pipe for this long is skipped
HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


class Slot:
    """A worker position: its listening sockets (kept for life) and the worker serving them now."""

    def __init__(self, index: int, sockets: list[socket.socket]) -> None:
        self.index = index
        self.sockets = sockets
        self.worker: WorkerProcess | None = None
        self.quick_exits = 0


class Supervisor:
    def __init__(
        self,
        config: RelayConfig,
        config_path: Path | None,
        overrides: Overrides = Overrides(),
        pid_file: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.pid_file = PidFile(pid_file) if pid_file else None
        self.generation = 1
        self.slots: list[Slot] = []
        self.workers: set[WorkerProcess] = set()  # every live worker: serving, starting or draining
        self.board = HealthBoard()
        self.board.sync_endpoints([e.name for e in config.endpoints])
        self._listen: tuple[str, int] = (config.server.host, config.server.port)
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self._changes: trio.Nursery | None = None
        self._change_lock = trio.Lock()

    # -- lifecycle ----------------------------------------------------------------------------------
    async def run(self) -> int:
        server = self.config.server
        try:
            sockets = bind_slot_sockets(server.host, server.port, server.workers)
        except BindError as exc:
            log.error("%s", exc)
            return EXIT_BOOT_FAILED
        self.slots = [Slot(index, [sock]) for index, sock in enumerate(sockets)]
        self._listen = (server.host, sockets[0].getsockname()[1])
        if self.pid_file:
            self.pid_file.write(os.getpid())
        log.info(
            "llmrelay %s listening on %s:%d with %d workers (config: %s)",
            __version__,
            self._listen[0],
            self._listen[1],
            server.workers,
            self.config.source,
        )
        try:
            with trio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    async with trio.open_nursery() as changes:
                        self._changes = changes
                        for slot in self.slots:
                            slot.worker = await self.start_worker(slot)
                        nursery.start_soon(self._monitor_loop)
                        await self._dispatch(signals)
                        changes.cancel_scope.cancel()
                    await self._stop_workers()
                    nursery.cancel_scope.cancel()
        finally:
            self._close_all_sockets()
            if self.pid_file:
                self.pid_file.remove()
        log.info("supervisor exiting")
        return EXIT_OK

    async def _dispatch(self, signals: AsyncIterator[int]) -> None:
        handlers = {
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_term,
            signal.SIGQUIT: self.handle_quit,
            signal.SIGHUP: self.handle_hup,
            signal.SIGUSR2: self.handle_usr2,
            signal.SIGTTIN: self.handle_ttin,
            signal.SIGTTOU: self.handle_ttou,
        }
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            await handlers[signal.Signals(signum)]()
            if self._stopping:
                return

    def _close_all_sockets(self) -> None:
        for slot in self.slots:
            for sock in slot.sockets:
                sock.close()

    def _in_background(self, action: str, job) -> None:  # type: ignore[no-untyped-def]
        """Run a worker-changing job after any running one; log when it has to wait."""
        assert self._changes is not None
        if self._change_lock.locked():
            log.info("%s queued behind a change in progress", action)

        async def run() -> None:
            async with self._change_lock:
                if not self._stopping:
                    await job()

        self._changes.start_soon(run)

    # -- workers --------------------------------------------------------------------------------------
    async def start_worker(self, slot: Slot) -> WorkerProcess:
        assert self._nursery is not None
        worker = await WorkerProcess.spawn(slot.index, slot.sockets, self.config.server.log_level)
        self.workers.add(worker)
        log.info("started worker slot %d pid %d", slot.index, worker.pid)
        await worker.send(Config(config=self.config, generation=self.generation))
        self._nursery.start_soon(self._watch_worker, worker, slot)
        return worker

    async def _watch_worker(self, worker: WorkerProcess, slot: Slot) -> None:
        while True:
            messages = await worker.messages()
            if messages is None:
                break
            for message in messages:
                if isinstance(message, Heartbeat):
                    worker.last_heartbeat = time.monotonic()
                    worker.stats = message.stats
                elif isinstance(message, UpstreamEvent):
                    change = self.board.observe(message)
                    if change:
                        log.warning("%s", change)
                        await self.broadcast_health()
                elif isinstance(message, Ready):
                    worker.version = message.version
                    worker.last_heartbeat = time.monotonic()
                    worker.ready.set()
                    log.info("worker %d (slot %d) ready, version %s", worker.pid, slot.index, message.version)
                    await self.broadcast_health()
                elif isinstance(message, Stopped):
                    if message.cut:
                        log.warning("worker %d cut %d responses at the drain deadline", worker.pid, message.cut)
                    worker.stopped.set()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(STOP_GRACE):
                await worker.process.wait()
            if worker.process.returncode is None:
                log.warning("worker %d closed its control pipe but did not exit; killing it", worker.pid)
                worker.kill()
                await worker.process.wait()
            await worker.control.aclose()
        self.workers.discard(worker)
        worker.stopped.set()
        worker.exited.set()
        expected = worker.draining or self._stopping
        log_line = log.info if expected else log.error
        log_line("worker %d (slot %d) %s", worker.pid, slot.index, worker.describe_exit())
        if not self._stopping and slot.worker is worker:
            await self._respawn(slot, worker)
        if not self._stopping:
            await self.broadcast_health()

    async def _respawn(self, slot: Slot, worker: WorkerProcess) -> None:
        lived = time.monotonic() - worker.started
        slot.quick_exits = 0 if lived > 30 else slot.quick_exits + 1
        delay = 0.0 if slot.quick_exits <= 1 else min(30.0, 0.5 * 2 ** (slot.quick_exits - 2))
        if slot.quick_exits >= 3:
            log.error("slot %d is crash-looping (%d quick exits in a row)", slot.index, slot.quick_exits)
        log.info("respawning slot %d in %g s", slot.index, delay)
        await trio.sleep(delay)
        if not self._stopping and slot.worker is worker and slot in self.slots:
            slot.worker = await self.start_worker(slot)

    async def _wait_ready(self, worker: WorkerProcess, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:

                async def until(event: trio.Event) -> None:
                    await event.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until, worker.ready)
                nursery.start_soon(until, worker.exited)
        return worker.ready.is_set() and not worker.exited.is_set()

    async def replace_slot(self, slot: Slot, retired_sockets: list[socket.socket] | None = None) -> bool:
        """Start a successor on the slot's sockets, wait for it, then drain the predecessor."""
        successor = await self.start_worker(slot)
        if not await self._wait_ready(successor, self.config.server.worker_ready_timeout):
            old = slot.worker.pid if slot.worker else None
            log.error(
                "successor pid %d for slot %d did not become ready within %g s (%s); keeping pid %s",
                successor.pid,
                slot.index,
                self.config.server.worker_ready_timeout,
                successor.describe_exit(),
                old,
            )
            successor.draining = True
            successor.kill()
            return False
        old_worker, slot.worker = slot.worker, successor
        for sock in retired_sockets or []:
            sock.close()  # the old worker now holds the last copy: it takes its backlog, then closes
        if old_worker is not None:
            await self.drain_worker(old_worker, close_idle=False)
            log.info("slot %d: pid %d replaced by pid %d", slot.index, old_worker.pid, successor.pid)
        await self.broadcast_health()
        return True

    async def drain_worker(self, worker: WorkerProcess, close_idle: bool) -> None:
        worker.draining = True
        await worker.send(Drain(timeout=self.config.server.drain_timeout, close_idle=close_idle))

    async def roll(self, reason: str) -> None:
        """Replace every worker, one slot at a time."""
        log.info("rolling replacement of %d workers (%s)", len(self.slots), reason)
        for slot in list(self.slots):
            if self._stopping:
                return
            if not await self.replace_slot(slot):
                log.error("rolling replacement stopped at slot %d; the remaining workers keep serving", slot.index)
                return
        log.info("rolling replacement done (%s)", reason)

    async def add_slot(self) -> None:
        host, port = self._listen
        try:
            (sock,) = bind_slot_sockets(host, port, 1)
        except BindError as exc:
            log.error("cannot add a worker: %s", exc)
            return
        slot = Slot(max((s.index for s in self.slots), default=-1) + 1, [sock])
        self.slots.append(slot)
        slot.worker = await self.start_worker(slot)
        log.info("worker count %d -> %d", len(self.slots) - 1, len(self.slots))

    async def remove_slot(self) -> None:
        if len(self.slots) <= 1:
            log.warning("cannot go below one worker")
            return
        slot = self.slots.pop()
        for sock in slot.sockets:
            sock.close()  # the worker takes what is queued, then closes the last copy
        if slot.worker is not None:
            await self.drain_worker(slot.worker, close_idle=False)
        await self.broadcast_health()
        log.info("worker count %d -> %d (draining pid %s)", len(self.slots) + 1, len(self.slots), slot.worker and slot.worker.pid)

    async def broadcast_health(self) -> None:
        workers = sorted(self.workers, key=lambda w: (w.slot, w.started))
        table = self.board.table(self.generation, [w.info() for w in workers])
        for worker in workers:
            if worker.ready.is_set():
                with trio.move_on_after(SEND_TIMEOUT):
                    await worker.send(table)

    async def _monitor_loop(self) -> None:
        """Heartbeat deadlines, memory recycling, and the periodic health broadcast."""
        while True:
            await trio.sleep(self.config.server.heartbeat_interval)
            server = self.config.server
            now = time.monotonic()
            for worker in list(self.workers):
                silent = now - worker.last_heartbeat
                if worker.ready.is_set() and not worker.exited.is_set() and silent > server.heartbeat_timeout:
                    log.error(
                        "worker %d (slot %d) sent no heartbeat for %.0f s; killing it", worker.pid, worker.slot, silent
                    )
                    worker.kill()
            if server.max_worker_rss and not self._change_lock.locked():
                for slot in self.slots:
                    stats = slot.worker.stats if slot.worker else None
                    limit = server.max_worker_rss << 20
                    if slot.worker and stats and stats.rss_bytes > limit and not slot.worker.draining:
                        log.warning(
                            "recycling worker %d (slot %d): RSS %d MiB exceeds %d MiB",
                            slot.worker.pid,
                            slot.index,
                            stats.rss_bytes >> 20,
                            server.max_worker_rss,
                        )
                        self._in_background("memory recycling", lambda s=slot: self.replace_slot(s))
                        break
            await self.broadcast_health()

    async def _stop_workers(self) -> None:
        timeout = self.config.server.drain_timeout
        workers = list(self.workers)
        for worker in workers:
            if not worker.exited.is_set():
                worker.draining = True
                await worker.send(Drain(timeout=timeout, close_idle=True))
        with trio.move_on_after(timeout + STOP_GRACE):
            for worker in workers:
                await worker.exited.wait()
        for worker in workers:
            if not worker.exited.is_set():
                log.warning("worker %d did not stop within the drain timeout; killing it", worker.pid)
                worker.kill()

    # -- signal handlers ----------------------------------------------------------------------------
    async def handle_term(self) -> None:
        """Graceful stop: stop accepting, let in-flight requests finish, exit 0."""
        self._stopping = True
        self._close_all_sockets()  # nothing will accept new connections any more: refuse them now
        log.info(
            "graceful stop: draining %d workers (deadline %g s)", len(self.workers), self.config.server.drain_timeout
        )

    async def handle_quit(self) -> None:
        """Immediate stop."""
        self._stopping = True
        for worker in self.workers:
            worker.kill()

    async def handle_usr2(self) -> None:
        """Rolling replacement: successors run the code installed now."""
        self._in_background("rolling replacement", lambda: self.roll("SIGUSR2"))

    async def handle_ttin(self) -> None:
        self._in_background("adding a worker", self.add_slot)

    async def handle_ttou(self) -> None:
        self._in_background("removing a worker", self.remove_slot)

    async def handle_hup(self) -> None:
        """Reload: validate the file again; a bad one is logged and the old config keeps serving."""
        try:
            config = await trio.to_thread.run_sync(load_config, self.config_path, self.overrides)
        except ConfigError as exc:
            log.error("reload rejected (%d errors); still serving the previous config", len(exc.errors))
            for line in exc.errors:
                log.error("  %s", line)
            return
        self._in_background("reload", lambda: self._apply_reload(config))

    async def _apply_reload(self, config: RelayConfig) -> None:
        old, new = self.config.server, config.server
        moved = (old.host, old.port) != (new.host, new.port)
        new_sockets: list[socket.socket] = []
        if moved:
            try:
                new_sockets = bind_slot_sockets(new.host, new.port, len(self.slots))
            except BindError as exc:
                log.error("reload rejected: %s; still serving the previous config", exc)
                return
        before = {e.name: e for e in self.config.endpoints}
        after = {e.name: e for e in config.endpoints}
        changed = sum(1 for name in before.keys() & after.keys() if before[name] != after[name])
        self.config = config
        self.generation += 1
        self.board.sync_endpoints(list(after))
        for worker in list(self.workers):
            if not worker.draining:
                with trio.move_on_after(SEND_TIMEOUT):
                    await worker.send(Config(config=config, generation=self.generation))
        log.info(
            "reload ok (generation %d: %d endpoints added, %d removed, %d changed)",
            self.generation,
            len(after.keys() - before.keys()),
            len(before.keys() - after.keys()),
            changed,
        )
        if moved:
            self._listen = (new.host, new_sockets[0].getsockname()[1])
            log.info("listener moves to %s:%d: rolling every worker onto it", *self._listen)
            for slot, sock in zip(list(self.slots), new_sockets):
                retired, slot.sockets = slot.sockets, [sock]
                if not await self.replace_slot(slot, retired_sockets=retired):
                    slot.sockets = retired
                    sock.close()
        while len(self.slots) < new.workers:
            await self.add_slot()
        while len(self.slots) > new.workers:
            await self.remove_slot()
        await self.broadcast_health()


def run(config: RelayConfig, config_path: Path | None, overrides: Overrides, pid_file: Path | None) -> int:
    return trio.run(Supervisor(config, config_path, overrides, pid_file).run)
