"""The supervisor: binds the slot sockets, runs one worker per slot, and acts on signals.

Signals only wake the one dispatch loop (`trio.open_signal_receiver`); each action is a named method
(`handle_term`, `handle_hup`, `handle_usr2`, ...) that returns at once. Everything slow runs in the
background: a reload reads the config file (and runs its `$(command)` key sources) in a thread;
actions that change the set of workers (a rolling replacement, a reload, one worker more or fewer)
run one at a time. So the dispatch loop always answers the next signal: a SIGTERM in the middle of a
roll stops everything, and a second SIGTERM or SIGINT during a graceful stop, or a SIGQUIT at any
time, stops at once.

Workers are started with fork+exec, never forked from this running event loop. A successor is
started before its predecessor is drained, and receives the same slot sockets, so nothing queued in
a backlog is lost. A worker that dies unexpectedly is respawned into its slot with exponential
backoff; one that could not boot (exit status EXIT_BOOT_FAILED, or gone before it was ready) is
logged as such and backed off from the first time; while a slot has no worker to serve it, the
supervisor answers its connections with 503 (see `fallback`). One that stops sending heartbeats is
killed and respawned; one whose memory grows past `server.max_worker_rss` is replaced like in a
rolling restart.

Reloads live in `reload`, the slot (sockets, worker, 503 stand-in) in `slots`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from llmrelay import __version__
from llmrelay.config.load import Overrides
from llmrelay.config.resolved import RelayConfig
from llmrelay.control import (
    EXIT_BOOT_FAILED,
    EXIT_OK,
    Config,
    ConfigApplied,
    ConfigRejected,
    ControlMessage,
    Drain,
    Heartbeat,
    Ready,
    Stopped,
    UpstreamEvent,
)
from supervisor.health import HealthBoard
from supervisor.pidfile import PidFile, PidFileError
from supervisor.slots import Slot
from supervisor.sockets import BindError, bind_slot_sockets, close_sockets
from supervisor.reload import reload
from supervisor.status import Outcome, StatusFile, status_path
from supervisor.workers import SEND_TIMEOUT, WorkerProcess

log = logging.getLogger("supervisor")

STOP_GRACE = 10.0  # beyond the drain timeout, before stragglers are killed
HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


class Supervisor:
    def __init__(
        self,
        config: RelayConfig,
        config_path: Path | None,
        overrides: Overrides = Overrides(),
        pid_file: Path | None = None,
        pid_file_optional: bool = False,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.pid_file = PidFile(pid_file) if pid_file else None
        self._pid_file_optional = pid_file_optional  # the default ./llmrelay.pid: best effort
        self.status = StatusFile(None, os.getpid())
        self.generation = 1
        self._last_generation = 1
        self.slots: list[Slot] = []
        self.workers: set[WorkerProcess] = set()  # every live worker: serving, starting or draining
        self.board = HealthBoard(config.server.failing_retry_interval)
        self.board.sync_endpoints([e.name for e in config.endpoints])
        self.listen: tuple[str, int] = (config.server.host, config.server.port)
        self.stopping = False
        self._stop_requested = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._changes: trio.Nursery | None = None
        self._change_lock = trio.Lock()
        self._reload_wanted = trio.Event()
        self._on_message: dict[type, Callable[[WorkerProcess, Slot, ControlMessage], Awaitable[None]]] = {
            Heartbeat: self._on_heartbeat,
            UpstreamEvent: self._on_upstream_event,
            Ready: self._on_ready,
            ConfigApplied: self._on_config_applied,
            ConfigRejected: self._on_config_rejected,
            Stopped: self._on_stopped,
        }

    # -- lifecycle ----------------------------------------------------------------------------------
    async def run(self) -> int:
        server = self.config.server
        if not self._take_pid_file():
            return EXIT_BOOT_FAILED
        try:
            try:
                sockets = bind_slot_sockets(server.host, server.port, server.workers)
            except BindError as exc:
                log.error("%s", exc)
                return EXIT_BOOT_FAILED
            self.slots = [Slot(index, [sock]) for index, sock in enumerate(sockets)]
            self.listen = (server.host, sockets[0].getsockname()[1])
            self.status.write()
            log.info(
                "llmrelay %s listening on %s:%d with %s (config: %s)",
                __version__,
                self.listen[0],
                self.listen[1],
                _worker_count(server.workers),
                self.config.source,
            )
            await self._serve()
        finally:
            self._close_all_sockets()
            self.status.remove()
            if self.pid_file:
                self.pid_file.release()
        log.info("supervisor exiting")
        return EXIT_OK

    def _take_pid_file(self) -> bool:
        if self.pid_file is None:
            return True
        try:
            self.pid_file.acquire(os.getpid())
        except PidFileError as exc:
            if not self._pid_file_optional:
                log.error("%s", exc)
                return False
            log.warning("%s; running without a pid file (llmrelay reload needs --pid-file then)", exc)
            self.pid_file = None
            return True
        self.status.path = status_path(self.pid_file.path)
        return True

    async def _serve(self) -> None:
        with trio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._dispatch, signals)
                async with trio.open_nursery() as changes:
                    self._changes = changes
                    changes.start_soon(self._reload_loop)
                    for slot in self.slots:
                        if not self.stopping:
                            slot.worker = await self.start_worker(slot)
                    nursery.start_soon(self._monitor_loop)
                    await self._stop_requested.wait()
                    changes.cancel_scope.cancel()
                await self._stop_workers()
                nursery.cancel_scope.cancel()

    async def _dispatch(self, signals: AsyncIterator[int]) -> None:
        """Every signal, for the supervisor's whole life (a graceful stop included)."""
        handlers: dict[signal.Signals, Callable[[], Awaitable[None]]] = {
            signal.SIGTERM: lambda: self.handle_term(signal.SIGTERM),
            signal.SIGINT: lambda: self.handle_term(signal.SIGINT),
            signal.SIGQUIT: self.handle_quit,
            signal.SIGHUP: self.handle_hup,
            signal.SIGUSR2: self.handle_usr2,
            signal.SIGTTIN: self.handle_ttin,
            signal.SIGTTOU: self.handle_ttou,
        }
        async for signum in signals:
            name = signal.Signals(signum)
            log.info("received %s", name.name)
            await handlers[name]()

    def _close_all_sockets(self) -> None:
        for slot in self.slots:
            slot.close()

    def _in_background(self, action: str, job: Callable[[], Awaitable[object]]) -> None:
        """Run a worker-changing job after any running one."""
        assert self._changes is not None
        if self.stopping:
            log.info("%s ignored: the supervisor is stopping", action)
            return

        async def run() -> None:
            async with self.changes_one_at_a_time(action):
                if not self.stopping:
                    await job()

        self._changes.start_soon(run)

    @asynccontextmanager
    async def changes_one_at_a_time(self, action: str) -> AsyncIterator[None]:
        """Hold the one lock of the jobs that change the set of workers; log when it has to wait."""
        if self._change_lock.locked():
            log.info("%s queued behind a change in progress", action)
        async with self._change_lock:
            yield

    def next_generation(self) -> int:
        self._last_generation += 1
        return self._last_generation

    # -- workers --------------------------------------------------------------------------------------
    async def start_worker(self, slot: Slot) -> WorkerProcess:
        assert self._nursery is not None
        # Shielded: a worker that was spawned is always watched (and so reaped), even during a stop.
        with trio.CancelScope(shield=True):
            worker = await WorkerProcess.spawn(slot.index, slot.sockets, self.config.server.log_level)
            self.workers.add(worker)
            log.info("started worker slot %d pid %d", slot.index, worker.pid)
            with trio.move_on_after(SEND_TIMEOUT):
                await worker.send(Config(config=self.config, generation=self.generation))
            self._nursery.start_soon(self._watch_worker, worker, slot)
        return worker

    async def _watch_worker(self, worker: WorkerProcess, slot: Slot) -> None:
        while True:
            messages = await worker.messages()
            if messages is None:
                break
            for message in messages:
                handler = self._on_message.get(type(message))
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
        self.workers.discard(worker)
        worker.mark_exited()
        expected = worker.draining or self.stopping
        respawn = not self.stopping and slot.worker is worker and not slot.removed
        if respawn and worker.boot_failed:
            reason = f": {worker.rejection}" if worker.rejection else ""
            log.error("worker %d (slot %d) failed to boot (%s)%s", worker.pid, slot.index, worker.describe_exit(), reason)
        else:
            log_line = log.info if expected else log.error
            log_line("worker %d (slot %d) %s", worker.pid, slot.index, worker.describe_exit())
        if respawn:
            await self._respawn(slot, worker)
        if not self.stopping:
            await self.broadcast_health()

    async def _on_heartbeat(self, worker: WorkerProcess, slot: Slot, message: ControlMessage) -> None:
        assert isinstance(message, Heartbeat)
        worker.last_heartbeat = time.monotonic()
        worker.stats = message.stats

    async def _on_upstream_event(self, worker: WorkerProcess, slot: Slot, message: ControlMessage) -> None:
        assert isinstance(message, UpstreamEvent)
        change = self.board.observe(message)
        if change:
            log.warning("%s", change)
            await self.broadcast_health()

    async def _on_ready(self, worker: WorkerProcess, slot: Slot, message: ControlMessage) -> None:
        assert isinstance(message, Ready)
        worker.version = message.version
        worker.last_heartbeat = time.monotonic()
        worker.ready.set()
        log.info("worker %d (slot %d) ready, version %s", worker.pid, slot.index, message.version)
        if slot.worker is worker:
            slot.boot_failures = 0
            slot.serve_again()
        await self.broadcast_health()

    async def _on_config_applied(self, worker: WorkerProcess, slot: Slot, message: ControlMessage) -> None:
        assert isinstance(message, ConfigApplied)
        worker.record_answer(message.generation, None)

    async def _on_config_rejected(self, worker: WorkerProcess, slot: Slot, message: ControlMessage) -> None:
        assert isinstance(message, ConfigRejected)
        log.error(
            "worker %d (slot %d) cannot apply config generation %d: %s",
            worker.pid,
            slot.index,
            message.generation,
            message.error,
        )
        worker.record_answer(message.generation, message.error)

    async def _on_stopped(self, worker: WorkerProcess, slot: Slot, message: ControlMessage) -> None:
        assert isinstance(message, Stopped)
        if message.cut:
            log.warning("worker %d cut %d responses at the drain deadline", worker.pid, message.cut)

    async def _respawn(self, slot: Slot, worker: WorkerProcess) -> None:
        if worker.boot_failed:
            slot.boot_failures += 1
            delay = min(30.0, 0.5 * 2 ** (slot.boot_failures - 1))
            if slot.boot_failures >= 3:
                log.error("slot %d: %d workers in a row failed to boot", slot.index, slot.boot_failures)
        else:
            lived = time.monotonic() - worker.started
            slot.quick_exits = 0 if lived > 30 else slot.quick_exits + 1
            delay = 0.0 if slot.quick_exits <= 1 else min(30.0, 0.5 * 2 ** (slot.quick_exits - 2))
            if slot.quick_exits >= 3:
                log.error("slot %d is crash-looping (%d quick exits in a row)", slot.index, slot.quick_exits)
        if delay > 0:
            assert self._nursery is not None
            slot.answer_unavailable(self._nursery)  # nobody will accept there for a while
        log.info("respawning slot %d in %g s", slot.index, delay)
        await trio.sleep(delay)
        if not self.stopping and slot.worker is worker and not slot.removed:
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

    async def replace_slot(self, slot: Slot, retired_sockets: list[socket.socket] | None = None) -> str | None:
        """Start a successor on the slot's sockets, wait for it, then drain the predecessor.

        Returns None when done, else why the successor did not take over (the old worker stays).
        """
        successor = await self.start_worker(slot)
        if not await self._wait_ready(successor, self.config.server.worker_ready_timeout):
            old = slot.worker.pid if slot.worker else None
            why = (
                f"successor pid {successor.pid} for slot {slot.index} did not become ready within"
                f" {self.config.server.worker_ready_timeout:g} s ({successor.describe_exit()}"
                + (f": {successor.rejection}" if successor.rejection else "")
                + ")"
            )
            log.error("%s; keeping pid %s", why, old)
            successor.draining = True
            successor.kill()
            return why
        old_worker, slot.worker = slot.worker, successor
        slot.boot_failures = 0
        slot.serve_again()
        close_sockets(retired_sockets or [])  # the old worker holds the last copy: it takes its backlog, then closes
        if old_worker is not None:
            await self.drain_worker(old_worker, close_idle=False)
            log.info("slot %d: pid %d replaced by pid %d", slot.index, old_worker.pid, successor.pid)
        await self.broadcast_health()
        return None

    async def drain_worker(self, worker: WorkerProcess, close_idle: bool) -> None:
        worker.draining = True
        await worker.send(Drain(timeout=self.config.server.drain_timeout, close_idle=close_idle))

    async def roll(self, reason: str) -> Outcome:
        """Replace every worker, one slot at a time."""
        log.info("rolling replacement of %d workers (%s)", len(self.slots), reason)
        for slot in list(self.slots):
            if self.stopping:
                return Outcome(False, "stopped: the supervisor is stopping")
            why = await self.replace_slot(slot)
            if why is not None:
                log.error("rolling replacement stopped at slot %d; the remaining workers keep serving", slot.index)
                return Outcome(False, f"stopped at slot {slot.index}; the remaining workers keep serving", [why])
        log.info("rolling replacement done (%s)", reason)
        return Outcome(True, f"{len(self.slots)} workers replaced")

    async def add_slot(self) -> None:
        host, port = self.listen
        try:
            (sock,) = bind_slot_sockets(host, port, 1, join=True)
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
        slot.removed = True  # its worker's exit is expected: never respawned
        slot.close()  # the worker takes what is queued, then closes the last copy
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
        """Heartbeat and boot deadlines, memory recycling, and the periodic health broadcast."""
        while True:
            await trio.sleep(self.config.server.heartbeat_interval)
            server = self.config.server
            now = time.monotonic()
            for worker in list(self.workers):
                if worker.exited.is_set() or worker.draining:
                    continue
                silent = now - worker.last_heartbeat
                if worker.ready.is_set() and silent > server.heartbeat_timeout:
                    log.error(
                        "worker %d (slot %d) sent no heartbeat for %.0f s; killing it", worker.pid, worker.slot, silent
                    )
                    worker.kill()
                elif not worker.ready.is_set() and now - worker.started > server.worker_ready_timeout:
                    log.error(
                        "worker %d (slot %d) not ready after %.0f s; killing it",
                        worker.pid,
                        worker.slot,
                        now - worker.started,
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
                        self._in_background("memory recycling", lambda s=slot: self.replace_slot(s))  # type: ignore[misc]
                        break
            await self.broadcast_health()

    async def _stop_workers(self) -> None:
        timeout = self.config.server.drain_timeout
        workers = list(self.workers)
        for worker in workers:
            if not worker.exited.is_set() and not worker.draining:
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

    def _stop_now(self) -> None:
        """Kill every worker: their exits end the stop at once."""
        self.stopping = True
        self._close_all_sockets()
        for worker in list(self.workers):
            worker.kill()
        self._stop_requested.set()

    # -- signal handlers ----------------------------------------------------------------------------
    async def handle_term(self, signum: signal.Signals = signal.SIGTERM) -> None:
        """Graceful stop: stop accepting, let in-flight requests finish, exit 0. A second one: at once."""
        if self.stopping:
            log.warning("second %s during graceful stop: stopping now", signum.name)
            self._stop_now()
            return
        self.stopping = True
        self._close_all_sockets()  # nothing will accept new connections any more: refuse them now
        log.info(
            "graceful stop: draining %s (deadline %g s; %s again or SIGQUIT stops at once)",
            _worker_count(len(self.workers)),
            self.config.server.drain_timeout,
            signum.name,
        )
        self._stop_requested.set()

    async def handle_quit(self) -> None:
        """Immediate stop, in any state."""
        log.warning("immediate stop: killing %s", _worker_count(len(self.workers)))
        self._stop_now()

    async def handle_usr2(self) -> None:
        """Rolling replacement: successors run the code installed now."""
        self.status.requested(self.status.restart)

        async def job() -> None:
            number = self.status.restart.requested
            if number <= self.status.restart.finished:
                return  # a roll that began after this signal was taken in has covered it
            outcome = await self.roll("SIGUSR2")
            self.status.finished(self.status.restart, number, outcome, ("done", "failed"))

        self._in_background("rolling replacement", job)

    async def handle_ttin(self) -> None:
        self._in_background("adding a worker", self.add_slot)

    async def handle_ttou(self) -> None:
        self._in_background("removing a worker", self.remove_slot)

    async def handle_hup(self) -> None:
        """Reload, in the background: reading the file may run `$(command)` key sources for seconds."""
        self.status.requested(self.status.reload)
        self._reload_wanted.set()

    # -- reload ---------------------------------------------------------------------------------------
    async def _reload_loop(self) -> None:
        """One reload at a time; signals that arrive during one are served by one more."""
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted = trio.Event()
            number = self.status.reload.requested
            outcome = await reload(self)
            self.status.generation = self.generation
            self.status.finished(self.status.reload, number, outcome, ("applied", "rejected"))

def _worker_count(count: int) -> str:
    return f"{count} worker" if count == 1 else f"{count} workers"


def run(
    config: RelayConfig,
    config_path: Path | None,
    overrides: Overrides,
    pid_file: Path | None,
    pid_file_optional: bool = False,
) -> int:
    return trio.run(Supervisor(config, config_path, overrides, pid_file, pid_file_optional).run)
