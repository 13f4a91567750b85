"""The arbiter: the supervisor's signal loop, one named handler per signal.

Signals only wake this loop (`trio.open_signal_receiver`), and every handler returns at once (none
of them is async): what takes time runs as a background job (see `jobs`, `reload`), one change of
the workers at a time. So the loop always answers the next signal: a SIGTERM in the middle of a roll
stops everything, and a second SIGTERM or SIGINT during a graceful stop, or a SIGQUIT at any time,
stops at once. A stop is carried out by the supervisor's main task (see `main`), which waits for
`stop_requested`.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import trio

from llmrelay.logs import reopen_log_files
from supervisor.jobs import Jobs
from supervisor.reload import Reloads
from supervisor.rollout import Rollout
from supervisor.slots import SlotTable, worker_count
from supervisor.status import StatusFile

log = logging.getLogger("supervisor")

SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR2,
    signal.SIGUSR1,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


@dataclass(eq=False)
class Arbiter:
    table: SlotTable
    rollout: Rollout
    jobs: Jobs
    reloads: Reloads
    status: StatusFile
    stop_requested: trio.Event = field(default_factory=trio.Event, init=False)

    async def run(self, signals: AsyncIterator[int]) -> None:
        """Every signal in `SIGNALS`, for the supervisor's whole life (a graceful stop included)."""
        handlers: dict[signal.Signals, Callable[[], None]] = {
            signal.SIGTERM: functools.partial(self.handle_term, signal.SIGTERM),
            signal.SIGINT: functools.partial(self.handle_term, signal.SIGINT),
            signal.SIGQUIT: self.handle_quit,
            signal.SIGHUP: self.handle_hup,
            signal.SIGUSR2: self.handle_usr2,
            signal.SIGUSR1: self.handle_usr1,
            signal.SIGTTIN: self.handle_ttin,
            signal.SIGTTOU: self.handle_ttou,
        }
        async for signum in signals:
            name = signal.Signals(signum)
            log.info("received %s", name.name)
            handlers[name]()

    def handle_term(self, signum: signal.Signals) -> None:
        """Graceful stop: stop accepting, let in-flight requests finish, exit 0. A second one: at once."""
        if self.table.stopping:
            log.warning("second %s during graceful stop: stopping now", signum.name)
            self._stop_now()
            return
        self.table.stop()  # nothing will accept new connections any more: refuse them now
        log.info(
            "graceful stop: draining %s (deadline %g s; %s again or SIGQUIT stops at once)",
            worker_count(len(self.table.workers)),
            self.table.config.server.drain_timeout,
            signum.name,
        )
        self.stop_requested.set()

    def handle_quit(self) -> None:
        """Immediate stop, in any state."""
        log.warning("immediate stop: killing %s", worker_count(len(self.table.workers)))
        self._stop_now()

    def handle_hup(self) -> None:
        """Reload, in the background: reading the file may run `$(command)` key sources for seconds."""
        self.reloads.request()

    def handle_usr2(self) -> None:
        """Rolling replacement: successors run the code installed now."""
        self.status.requested(self.status.restart)
        self.jobs.submit("rolling replacement", self._restart)

    def handle_usr1(self) -> None:
        """Reopen the log files (after logrotate renamed them): the supervisor's, and every worker's."""
        reopen_log_files()
        for worker in list(self.table.workers):
            try:
                os.kill(worker.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass

    def handle_ttin(self) -> None:
        """One worker more."""
        self.jobs.submit("adding a worker", self.rollout.add_slot)

    def handle_ttou(self) -> None:
        """One worker fewer."""
        self.jobs.submit("removing a worker", self.rollout.remove_slot)

    def _stop_now(self) -> None:
        """Kill every worker: their exits end the stop at once."""
        self.table.stop()
        self.rollout.kill_all()
        self.stop_requested.set()

    async def _restart(self) -> None:
        """SIGUSR2's job; the status file records its outcome."""
        restart = self.status.restart
        number = restart.requested
        if number <= restart.finished:
            return  # a roll that began after this signal was taken in has covered it
        outcome = await self.rollout.roll("SIGUSR2")
        self.status.finished(restart, number, outcome, ("done", "failed"))
