"""Reloads (SIGHUP): read the config file again, hand it to every worker, and roll back when one
cannot apply it.

The file is read in a thread (its `$(command)` key sources may take seconds), so the supervisor's
signal loop stays responsive. A valid config is applied in two steps: every serving worker is sent
it and answers whether it could apply it; if one could not (a CA file that no longer loads, ...),
the reload is rejected and, when some had applied it, every worker is sent the previous config again
as a generation of its own, so that all of them serve the same config (and respawned workers get it
too). Only then do listener moves and worker-count changes follow.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import trio

from llmrelay.config.errors import ConfigError
from llmrelay.config.load import load_config
from llmrelay.config.resolved import RelayConfig
from llmrelay.control import Config
from supervisor.sockets import BindError, bind_slot_sockets, close_sockets
from supervisor.status import Outcome
from supervisor.workers import SEND_TIMEOUT, WorkerProcess

if TYPE_CHECKING:
    from supervisor.arbiter import Supervisor

log = logging.getLogger("supervisor")

ANSWER_TIMEOUT = 10.0  # for every worker to say whether it applied a new config


async def reload(supervisor: Supervisor) -> Outcome:
    """Validate the file again; a bad one is logged and the old config keeps serving."""
    try:
        config = await trio.to_thread.run_sync(
            load_config, supervisor.config_path, supervisor.overrides, abandon_on_cancel=True
        )
    except ConfigError as exc:
        log.error("reload rejected (%d errors); still serving the previous config", len(exc.errors))
        for line in exc.errors:
            log.error("  %s", line)
        return Outcome(False, f"{len(exc.errors)} error(s) in {exc.source}", list(exc.errors))
    async with supervisor.changes_one_at_a_time("reload"):
        if supervisor.stopping:
            return Outcome(False, "the supervisor is stopping")
        return await _apply(supervisor, config)


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


async def _apply(supervisor: Supervisor, config: RelayConfig) -> Outcome:
    old, new = supervisor.config.server, config.server
    moved = (old.host, old.port) != (new.host, new.port)
    new_sockets: list[socket.socket] = []
    if moved:
        try:
            new_sockets = bind_slot_sockets(new.host, new.port, len(supervisor.slots))
        except BindError as exc:
            log.error("reload rejected: %s; still serving the previous config", exc)
            return Outcome(False, "the new listener cannot be bound", [str(exc)])
    previous, previous_generation = supervisor.config, supervisor.generation
    generation = supervisor.next_generation()
    supervisor.config, supervisor.generation = config, generation  # workers started from now on get it
    serving = [w for w in supervisor.workers if not w.draining and not w.exited.is_set()]
    answers = await send_config(serving, config, generation)
    rejected = {w: error for w, error in answers.items() if error is not None}
    if rejected:
        supervisor.config, supervisor.generation = previous, previous_generation
        applied = [w for w, error in answers.items() if error is None]
        if applied:  # back to the previous config, as a generation of its own that every worker serves
            supervisor.generation = supervisor.next_generation()
            await send_config(list(answers), previous, supervisor.generation)
        close_sockets(new_sockets)
        errors = [
            f"worker {w.pid} (slot {w.slot}): {error}" for w, error in sorted(rejected.items(), key=lambda i: i[0].slot)
        ]
        log.error(
            "reload rejected: %d of %d workers cannot apply config generation %d; still serving the previous config%s",
            len(rejected),
            len(answers),
            generation,
            f" (rolled back as generation {supervisor.generation})" if applied else "",
        )
        return Outcome(False, f"{len(rejected)} of {len(answers)} workers cannot apply it", errors)
    before = {e.name: e for e in previous.endpoints}
    after = {e.name: e for e in config.endpoints}
    changed = sum(1 for name in before.keys() & after.keys() if before[name] != after[name])
    supervisor.board.sync_endpoints(list(after))
    supervisor.board.retry_interval = new.failing_retry_interval
    summary = (
        f"generation {generation}: {len(after.keys() - before.keys())} endpoints added,"
        f" {len(before.keys() - after.keys())} removed, {changed} changed"
    )
    log.info("reload ok (%s)", summary)
    problems: list[str] = []
    if moved:
        problems += await _move_listener(supervisor, new_sockets)
    while len(supervisor.slots) < new.workers:
        await supervisor.add_slot()
    while len(supervisor.slots) > new.workers:
        await supervisor.remove_slot()
    await supervisor.broadcast_health()
    return Outcome(True, summary, problems)


async def _move_listener(supervisor: Supervisor, new_sockets: list[socket.socket]) -> list[str]:
    """Roll every worker onto the new sockets; a slot whose successor fails keeps the old ones."""
    supervisor.listen = (supervisor.config.server.host, new_sockets[0].getsockname()[1])
    log.info("listener moves to %s:%d: rolling every worker onto it", *supervisor.listen)
    problems: list[str] = []
    for slot, sock in zip(list(supervisor.slots), new_sockets):
        retired, slot.sockets = slot.sockets, [sock]
        why = await supervisor.replace_slot(slot, retired_sockets=retired)
        if why is not None:
            slot.sockets = retired
            sock.close()
            problems.append(why)
    return problems
