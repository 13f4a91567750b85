"""The supervisor process from start to exit: take the pid file, bind the slots' sockets, run the
parts until a stop, then release everything.

The parts, and the nurseries that own their tasks:

- `SlotTable` (`slots`): the slots, the live workers, the config generation they are given;
- `Watcher` (`watcher`): every worker's control pipe, the health board and its broadcast;
- `ActiveChecks` (`checks`): the upstreams' active health checks, reported into the health board;
- `KeyRefresher` (`key_refresh`): re-runs refreshable `$(command)` keys and pushes new values;
- `Rollout` (`rollout`): starting, replacing, draining and respawning workers;
- `Jobs` (`jobs`): the background jobs that change the set of workers, one at a time;
- `Reloads` (`reload`): SIGHUP's job; `monitor`: heartbeats, boot deadlines, memory recycling;
- `Arbiter` (`arbiter`): the signal loop, one handler per signal;
- `MetricsTotals` (`metrics`): the workers' metrics summed, and the supervisor's own;
- `Admin` (`admin`): the admin listener (metrics, health, status, reload, restart).

The outer nursery lives until every worker is gone: the signal loop, one task per worker, the 503
stand-ins, the monitor and the admin listener run there, so signals are still answered, and metrics
and status served, during a graceful stop. The inner
one holds the jobs, the reload loop, the active health checks and the key refreshes, and is cancelled when a stop
begins; then every worker is drained, and what is left is cancelled.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

import trio

from llmrelay import __version__
from llmrelay.config.load import Overrides, load_config
from llmrelay.config.resolved import RelayConfig
from llmrelay.control import EXIT_BOOT_FAILED, EXIT_OK
from supervisor.admin import Admin, AdminActions
from supervisor.admin_views import AdminViews
from supervisor.arbiter import SIGNALS, Arbiter
from supervisor.checks import ActiveChecks
from supervisor.key_refresh import KeyRefresher
from supervisor.health import HealthBoard
from supervisor.jobs import Jobs
from supervisor.limits import LimitsService
from supervisor.metrics import MetricsTotals
from supervisor.monitor import monitor
from supervisor.notify import Notifier
from supervisor.pidfile import PidFile, PidFileError
from supervisor.reload import Reloads
from supervisor.rollout import Rollout
from supervisor.slots import SlotTable, describe_listen, worker_count
from supervisor.sockets import BindError
from supervisor.status import StatusFile, status_path
from supervisor.watcher import Watcher

log = logging.getLogger("supervisor")


def run(
    config: RelayConfig,
    config_path: Path | None,
    overrides: Overrides,
    pid_file: Path | None,
    pid_file_optional: bool = False,
) -> int:
    """Serve until stopped; the exit status (EXIT_BOOT_FAILED when the pid file or address is taken).

    `pid_file_optional`: the default ./llmrelay.pid, taken if possible, else run without one.
    """
    return trio.run(serve, config, config_path, overrides, pid_file, pid_file_optional)


async def serve(
    config: RelayConfig,
    config_path: Path | None,
    overrides: Overrides,
    pid_file_path: Path | None,
    pid_file_optional: bool,
) -> int:
    notifier = Notifier.from_environment()  # (before any child starts: none of them inherits it)
    try:
        pid_file = _take_pid_file(pid_file_path, pid_file_optional)
    except PidFileError as exc:
        log.error("%s", exc)
        return EXIT_BOOT_FAILED
    status = StatusFile(status_path(pid_file.path) if pid_file else None, os.getpid())
    table = SlotTable(config)
    try:
        try:
            table.bind()
        except BindError as exc:
            log.error("%s", exc)
            return EXIT_BOOT_FAILED
        status.write()
        count = worker_count(config.server.workers)
        where = describe_listen(table.listen)
        log.info("llmrelay %s listening on %s with %s (config: %s)", __version__, where, count, config.source)
        await _run_parts(table, status, config_path, overrides, notifier)
    finally:
        notifier.close()
        table.close()
        status.remove()
        if pid_file:
            pid_file.release()
    log.info("supervisor exiting")
    return EXIT_OK


def _take_pid_file(path: Path | None, optional: bool) -> PidFile | None:
    """The pid file, locked; None without one. PidFileError when it is required and cannot be taken."""
    if path is None:
        return None
    pid_file = PidFile(path)
    try:
        pid_file.acquire(os.getpid())
    except PidFileError as exc:
        if not optional:
            raise
        log.warning("%s; running without a pid file (llmrelay reload needs --pid-file then)", exc)
        return None
    return pid_file


def describe_state(table: SlotTable) -> str:
    """The STATUS line systemd shows: workers serving and the config generation."""
    serving = sum(1 for slot in table.slots if slot.worker is not None and slot.worker.ready.is_set())
    return f"{serving} of {len(table.slots)} workers serving, config generation {table.generation}"


async def _announce_ready(table: SlotTable, notifier: Notifier) -> None:
    """READY=1 once every first worker serves, or when their boot time is up (the supervisor serves
    then anyway: a slot still booting answers 503 until its worker is ready)."""
    with trio.move_on_after(table.config.server.worker_ready_timeout):
        for slot in table.slots:
            if slot.worker is not None:
                await slot.worker.ready.wait()
    notifier.ready(describe_state(table))


async def _run_parts(
    table: SlotTable, status: StatusFile, config_path: Path | None, overrides: Overrides, notifier: Notifier | None = None
) -> None:
    notifier = notifier or Notifier()
    board = HealthBoard(table.config)
    totals = MetricsTotals(time.time())
    limits = LimitsService()
    limits.configure(table.config.limits)
    watcher = Watcher(table, board, totals, limits)
    admin = Admin(AdminViews(table, board, totals, status, limits), table, status, usage=lambda: limits.usage)
    checks = ActiveChecks(board, watcher.apply, table.config)
    refresher = KeyRefresher(table, board, checks, watcher.apply)
    watcher.refresher = refresher
    load = functools.partial(load_config, config_path, overrides)
    with trio.open_signal_receiver(*SIGNALS) as signals:
        async with trio.open_nursery() as nursery:  # signals, worker tasks, 503 stand-ins: past the final drain
            rollout = Rollout(table, watcher, nursery)
            async with trio.open_nursery() as changes:  # jobs, reloads, checks: cancelled when a stop begins
                jobs = Jobs(table, changes)

                async def follow(config: RelayConfig) -> None:  # (a reload applied: the parts that read the config)
                    limits.configure(config.limits)
                    refresher.restart(config)
                    await admin.follow(config)

                reloads = Reloads(load, table, jobs, rollout, watcher, status, checks, totals, follow, notifier, describe_state)
                arbiter = Arbiter(table, rollout, jobs, reloads, status)
                nursery.start_soon(arbiter.run, signals)
                nursery.start_soon(limits.run, watcher.broadcast_health)
                await admin.follow(table.config)
                nursery.start_soon(admin.run, AdminActions(reloads.request, arbiter.handle_usr2))
                changes.start_soon(reloads.run)
                changes.start_soon(checks.run)
                changes.start_soon(refresher.run)
                await rollout.start_all()
                nursery.start_soon(monitor, table, jobs, rollout, watcher)
                changes.start_soon(_announce_ready, table, notifier)
                nursery.start_soon(notifier.watchdog)
                await arbiter.stop_requested.wait()
                notifier.stopping()
                changes.cancel_scope.cancel()
            await rollout.stop_all()
            nursery.cancel_scope.cancel()
