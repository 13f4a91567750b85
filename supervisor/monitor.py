"""The periodic check of the workers, every `server.heartbeat_interval`.

A ready worker silent past `server.heartbeat_timeout`, or one not ready `server.worker_ready_timeout`
after it started, is killed (its slot is then respawned like after a crash). A worker whose memory
grows past `server.max_worker_rss` is replaced like in a rolling restart, one at a time and only
when no other change runs. Every round ends with a broadcast of the health table.
"""

from __future__ import annotations

import functools
import logging
import time

import trio

from supervisor.jobs import Jobs
from supervisor.metrics import RestartReason
from supervisor.rollout import Rollout
from supervisor.slots import SlotTable
from supervisor.watcher import Watcher

log = logging.getLogger("supervisor")


async def monitor(table: SlotTable, jobs: Jobs, rollout: Rollout, watcher: Watcher) -> None:
    while True:
        await trio.sleep(table.config.server.heartbeat_interval)
        _kill_silent(table)
        if table.config.server.max_worker_rss and not jobs.busy:
            _recycle_one(table, jobs, rollout)
        await watcher.broadcast_health()


def _kill_silent(table: SlotTable) -> None:
    """Heartbeat and boot deadlines."""
    server = table.config.server
    now = time.monotonic()
    for worker in table.active():
        silent = now - worker.last_heartbeat
        if worker.ready.is_set() and silent > server.heartbeat_timeout:
            log.error("worker %d (slot %d) sent no heartbeat for %.0f s; killing it", worker.pid, worker.slot, silent)
            worker.kill_reason = RestartReason.HEARTBEAT
            worker.kill()
        elif not worker.ready.is_set() and now - worker.started > server.worker_ready_timeout:
            log.error("worker %d (slot %d) not ready after %.0f s; killing it", worker.pid, worker.slot, now - worker.started)
            worker.kill_reason = RestartReason.BOOT
            worker.kill()


def _recycle_one(table: SlotTable, jobs: Jobs, rollout: Rollout) -> None:
    """Replace the first worker found over `server.max_worker_rss`, in the background."""
    limit_mib = table.config.server.max_worker_rss
    for slot in table.slots:
        worker = slot.worker
        stats = worker.stats if worker else None
        if worker and stats and stats.rss_bytes > limit_mib << 20 and not worker.draining:
            log.warning(
                "recycling worker %d (slot %d): RSS %d MiB exceeds %d MiB",
                worker.pid,
                slot.index,
                stats.rss_bytes >> 20,
                limit_mib,
            )
            jobs.submit("memory recycling", functools.partial(rollout.replace_slot, slot, reason=RestartReason.RSS))
            return
