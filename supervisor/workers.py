"""One worker process as the supervisor sees it: its slot, its process, its end of the control pipe."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

import trio

from llmrelay.control import (
    EXIT_BOOT_FAILED,
    ControlChannel,
    ControlMessage,
    FrameError,
    WorkerInfo,
    WorkerStats,
)
from supervisor.metrics import RestartReason

log = logging.getLogger("supervisor")

SEND_TIMEOUT = 2.0  # a worker that does not read its control pipe for this long is skipped
STOP_GRACE = 10.0  # beyond the drain timeout before stragglers are killed; also for a worker whose pipe closed to exit


class WorkerProcess:
    def __init__(self, slot: int, process: trio.Process, control: trio.SocketStream) -> None:
        self.slot = slot
        self.process = process
        self.pid = process.pid
        self.control = ControlChannel(control)
        self.started = time.monotonic()
        self.ready = trio.Event()
        self.exited = trio.Event()
        self.last_heartbeat = time.monotonic()
        self.draining = False
        self.version = ""
        self.stats: WorkerStats | None = None
        self.answers: dict[int, str | None] = {}  # config generation -> None (applied) or the error
        self.rejection = ""  # the last config error it reported
        self.kill_reason: RestartReason | None = None  # why the supervisor killed it, if it did
        self._answered = trio.Event()

    @classmethod
    async def spawn(cls, slot: int, listen_sockets: list[socket.socket], log_level: str) -> WorkerProcess:
        """fork+exec `python -P -m llmrelay.worker` with the slot's sockets and a fresh control pipe.

        `-P`: the working directory is not put in front of the import path, so a folder named
        `llmrelay` (or `trio`, ...) where `serve` was started cannot replace the installed code.
        """
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        listen_fds = [s.fileno() for s in listen_sockets]
        argv = [sys.executable, "-P", "-m", "llmrelay.worker", "--control-fd", str(child_end.fileno()), "--slot", str(slot)]
        argv += [arg for fd in listen_fds for arg in ("--listen-fd", str(fd))]
        argv += ["--log-level", log_level]
        try:
            process = await trio.lowlevel.open_process(
                argv,
                pass_fds=(child_end.fileno(), *listen_fds),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # terminal signals reach the supervisor only
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(parent_end))
        return cls(slot, process, stream)

    @property
    def active(self) -> bool:
        """Alive and not draining: it serves, or is starting to."""
        return not self.draining and not self.exited.is_set()

    @property
    def state(self) -> str:
        if self.draining:
            return "draining"
        return "serving" if self.ready.is_set() else "starting"

    def info(self) -> WorkerInfo:
        stats = self.stats
        return WorkerInfo(
            pid=self.pid,
            slot=self.slot,
            state=self.state,
            uptime=round(time.monotonic() - self.started, 3),
            connections=stats.connections if stats else 0,
            in_flight=stats.requests_in_flight if stats else 0,
            requests_total=stats.requests_total if stats else 0,
            version=self.version,
            generation=stats.generation if stats else 0,
        )

    async def send(self, message: object) -> bool:
        return await self.control.send(message)

    async def messages(self) -> list[ControlMessage] | None:
        """The next messages from the worker; None once its pipe closed or broke, or it sent garbage."""
        try:
            return await self.control.receive()
        except FrameError as exc:
            log.error("worker %d sent a bad control frame: %s", self.pid, exc)
            return None

    def record_answer(self, generation: int, error: str | None) -> None:
        """The worker applied (`error` None) or rejected a config generation."""
        self.answers[generation] = error
        if error is not None:
            self.rejection = error
        self._wake_waiters()

    async def wait_answer(self, generation: int) -> None:
        """Until the worker answered for `generation` (see `answers`) or exited; bound it with a timeout."""
        while generation not in self.answers and not self.exited.is_set():
            await self._answered.wait()

    def mark_exited(self) -> None:
        self.exited.set()
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        self._answered.set()
        self._answered = trio.Event()

    @property
    def boot_failed(self) -> bool:
        """It exited with the boot-failure status, or before it was ever ready."""
        return self.process.returncode == EXIT_BOOT_FAILED or not self.ready.is_set()

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def describe_exit(self) -> str:
        code = self.process.returncode
        if code is None:
            return "is still running"
        if code < 0:
            return f"exited with signal {-code}"
        if code == EXIT_BOOT_FAILED:
            return f"exited with status {code} (boot failed)"
        return f"exited with status {code}"
