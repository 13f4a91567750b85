"""The supervisor: binds the slot sockets, runs one worker per slot, and acts on signals.

Signals only wake the one dispatch loop (`trio.open_signal_receiver`); each action is a named method
(`handle_term`, `handle_hup`, ...). Workers are started with fork+exec, never forked from this
running event loop. A worker that dies unexpectedly is respawned into its slot with exponential
backoff, so a crash loop is visible in the log and does not spin the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
import os
import signal
import socket
import time
from pathlib import Path

import msgspec
import trio

from llmrelay import __version__
from llmrelay.config.errors import ConfigError
from llmrelay.config.load import Overrides, load_config
from llmrelay.config.resolved import RelayConfig
from llmrelay.config.schema import ServerSection
from llmrelay.control import Config, Drain, Heartbeat, Ready, Stopped
from supervisor.pidfile import PidFile
from supervisor.sockets import BindError, bind_slot_sockets
from supervisor.workers import WorkerProcess

log = logging.getLogger("supervisor")

EXIT_OK = 0
EXIT_BOOT_FAILED = 3
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
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.pid_file = PidFile(pid_file) if pid_file else None
        self.generation = 1
        self.slots: list[list[socket.socket]] = []
        self.workers: dict[int, WorkerProcess] = {}  # slot -> current worker
        self._failures: dict[int, int] = {}
        self._stopping = False
        self._nursery: trio.Nursery | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    async def run(self) -> int:
        server = self.config.server
        try:
            self.slots = [[sock] for sock in bind_slot_sockets(server.host, server.port, server.workers)]
        except BindError as exc:
            log.error("%s", exc)
            return EXIT_BOOT_FAILED
        port = self.slots[0][0].getsockname()[1]
        if self.pid_file:
            self.pid_file.write(os.getpid())
        log.info(
            "llmrelay %s listening on %s:%d with %d workers (config: %s)",
            __version__,
            server.host,
            port,
            server.workers,
            self.config.source,
        )
        try:
            with trio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for slot in range(len(self.slots)):
                        await self.start_worker(slot)
                    await self._dispatch(signals)
                    nursery.cancel_scope.cancel()
        finally:
            self._close_sockets()
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

    def _close_sockets(self) -> None:
        for sockets in self.slots:
            for sock in sockets:
                sock.close()

    # -- workers --------------------------------------------------------------------------------------
    async def start_worker(self, slot: int) -> WorkerProcess:
        assert self._nursery is not None
        worker = await WorkerProcess.spawn(slot, self.slots[slot], self.config.server.log_level)
        self.workers[slot] = worker
        log.info("started worker slot %d pid %d", slot, worker.pid)
        await worker.send(Config(config=self.config, generation=self.generation))
        self._nursery.start_soon(self._watch_worker, worker)
        return worker

    async def _watch_worker(self, worker: WorkerProcess) -> None:
        while True:
            messages = await worker.messages()
            if messages is None:
                break
            for message in messages:
                if isinstance(message, Ready):
                    worker.ready.set()
                elif isinstance(message, Heartbeat):
                    worker.last_heartbeat = time.monotonic()
                elif isinstance(message, Stopped):
                    if message.cut:
                        log.warning("worker %d cut %d requests at the drain deadline", worker.pid, message.cut)
                    worker.stopped.set()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(STOP_GRACE):
                await worker.process.wait()
            if worker.process.returncode is None:
                log.warning("worker %d closed its control pipe but did not exit; killing it", worker.pid)
                worker.kill()
                await worker.process.wait()
            await worker.control.aclose()
        worker.stopped.set()
        log.info("worker %d (slot %d) %s", worker.pid, worker.slot, worker.describe_exit())
        if self._stopping or worker.draining or self.workers.get(worker.slot) is not worker:
            return
        await self._respawn(worker)

    async def _respawn(self, worker: WorkerProcess) -> None:
        lived = time.monotonic() - worker.started
        failures = 0 if lived > 30 else self._failures.get(worker.slot, 0) + 1
        self._failures[worker.slot] = failures
        delay = 0.0 if failures <= 1 else min(30.0, 0.5 * 2 ** (failures - 2))
        if failures >= 3:
            log.error("slot %d is crash-looping (%d quick exits in a row)", worker.slot, failures)
        log.info("respawning slot %d in %g s", worker.slot, delay)
        await trio.sleep(delay)
        if not self._stopping:
            await self.start_worker(worker.slot)

    async def _drain_all(self, close_idle: bool) -> None:
        timeout = self.config.server.drain_timeout
        workers = list(self.workers.values())
        for worker in workers:
            worker.draining = True
            await worker.send(Drain(timeout=timeout, close_idle=close_idle))
        with trio.move_on_after(timeout + STOP_GRACE):
            for worker in workers:
                await worker.stopped.wait()
        for worker in workers:
            if worker.process.returncode is None and not worker.stopped.is_set():
                log.warning("worker %d did not stop within the drain timeout; killing it", worker.pid)
                worker.kill()

    # -- signal handlers ----------------------------------------------------------------------------
    async def handle_term(self) -> None:
        """Graceful stop: stop accepting, let in-flight requests finish, exit 0."""
        self._stopping = True
        self._close_sockets()  # nothing will accept new connections any more: refuse them now
        log.info("graceful stop: draining %d workers (deadline %g s)", len(self.workers), self.config.server.drain_timeout)
        await self._drain_all(close_idle=True)

    async def handle_quit(self) -> None:
        """Immediate stop."""
        self._stopping = True
        for worker in self.workers.values():
            worker.kill()

    async def handle_hup(self) -> None:
        """Reload: validate the file again; a bad one is logged and the old config keeps serving."""
        try:
            config = load_config(self.config_path, self.overrides)
        except ConfigError as exc:
            log.error("reload rejected (%d errors); still serving the previous config", len(exc.errors))
            for line in exc.errors:
                log.error("  %s", line)
            return
        old, new = self.config.server, config.server
        if (old.host, old.port, old.workers) != (new.host, new.port, new.workers):
            log.warning("reload: listener and worker-count changes take effect after a restart")
            config = _keep_listener(config, old)
        before = {e.name for e in self.config.endpoints}
        after = {e.name for e in config.endpoints}
        self.config = config
        self.generation += 1
        for worker in list(self.workers.values()):
            await worker.send(Config(config=config, generation=self.generation))
        log.info(
            "reload ok (generation %d: %d endpoints added, %d removed)",
            self.generation,
            len(after - before),
            len(before - after),
        )

    async def handle_usr2(self) -> None:
        log.warning("rolling replacement (SIGUSR2) is not supported by this version; ignored")

    async def handle_ttin(self) -> None:
        log.warning("changing the worker count by signal is not supported by this version; ignored")

    async def handle_ttou(self) -> None:
        await self.handle_ttin()


def _keep_listener(config: RelayConfig, old: ServerSection) -> RelayConfig:
    server = msgspec.structs.replace(config.server, host=old.host, port=old.port, workers=old.workers)
    return msgspec.structs.replace(config, server=server)


def run(config: RelayConfig, config_path: Path | None, overrides: Overrides, pid_file: Path | None) -> int:
    return trio.run(Supervisor(config, config_path, overrides, pid_file).run)
