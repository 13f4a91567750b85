"""Worker slots and the table of them.

A `Slot` is a position with its listening sockets, kept for the supervisor's life, and the worker
serving them now. When the slot's worker cannot serve for a while (a boot failure or a crash loop
backs its respawn off), the slot answers its connections with 503 itself (see `fallback`), so no
client waits on a socket nobody accepts from.

The `SlotTable` is what the supervisor runs: its slots, every live worker (serving, starting or
draining), the config and its generation that workers are given, the address they listen on, and
whether the supervisor is stopping (then no worker is started or respawned any more). It binds and
closes sockets; starting and draining workers is the rollout's (see `rollout`).
"""

from __future__ import annotations

import logging
import socket

import trio

from llmrelay.config.resolved import RelayConfig
from supervisor.fallback import answer_unavailable
from supervisor.sockets import BindError, bind_slot_sockets, close_sockets, shared_listeners
from supervisor.workers import WorkerProcess

log = logging.getLogger("supervisor")


class Slot:
    """A worker position: its listening sockets (kept for life) and the worker serving them now."""

    def __init__(self, index: int, sockets: list[socket.socket]) -> None:
        self.index = index
        self.sockets = sockets
        self.worker: WorkerProcess | None = None
        self.removed = False
        self.quick_exits = 0  # workers that died young in a row, after they were ready
        self.boot_failures = 0  # workers that could not boot, in a row
        self._fallback: trio.CancelScope | None = None

    def answer_unavailable(self, nursery: trio.Nursery, tls: list[bool] | None = None) -> None:
        """Answer 503 on the slot's sockets until `worker_ready` (`tls`: which of them are TLS
        listeners, whose connections are closed instead: a plain answer means nothing there)."""
        if self._fallback is not None or self.removed:
            return
        log.warning("slot %d has no worker that can serve: answering 503 on it until one is ready", self.index)
        scope = self._fallback = trio.CancelScope()

        async def run() -> None:
            with scope:
                await answer_unavailable(self.sockets, self.index, tls or [])

        nursery.start_soon(run)

    def worker_ready(self) -> None:
        """The slot's worker is ready: its boot failures are over, and so is the 503 stand-in."""
        self.boot_failures = 0
        if self._fallback is not None:
            self._fallback.cancel()
            self._fallback = None
            log.info("slot %d has a worker again: no longer answering 503", self.index)

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.cancel()
            self._fallback = None
        close_sockets(self.sockets)


class SlotTable:
    """The slots, the live workers, and the config generation that workers are given."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.generation = 1
        self._last_generation = 1
        self.slots: list[Slot] = []
        self.workers: set[WorkerProcess] = set()  # every live worker: serving, starting or draining
        self.listen: list[tuple[str, int]] = [(listener.host, listener.port) for listener in config.listeners]
        self.stopping = False
        self.shared = shared_listeners()  # (macOS) one listening socket per address, a copy per slot

    def bind(self) -> None:
        """One slot per configured worker, each with one socket per listener (in the config's order);
        BindError when an address is taken."""
        per_slot = bind_listeners(self.config, self.config.server.workers, shared=self.shared)
        self.slots = [Slot(index, sockets) for index, sockets in enumerate(per_slot)]
        self.listen = bound_addresses(self.config, per_slot[0])

    def listening_sockets(self) -> dict[tuple[str, int], socket.socket]:
        """A socket of each address listened on (of the first slot that holds them all)."""
        for slot in self.slots:
            if len(slot.sockets) == len(self.listen) and all(sock.fileno() >= 0 for sock in slot.sockets):
                return dict(zip(self.listen, slot.sockets))
        return {}

    def next_generation(self) -> int:
        self._last_generation += 1
        return self._last_generation

    def active(self) -> list[WorkerProcess]:
        """The live workers that are not draining."""
        return [w for w in self.workers if w.active]

    def add(self) -> Slot:
        """One slot more, on a socket that joins the listening address; BindError when it cannot."""
        sockets: list[socket.socket] = []
        existing = self.listening_sockets()
        try:
            for host, port in self.listen:
                sockets += bind_slot_sockets(host, port, 1, join=True, shared=self.shared, existing=existing.get((host, port)))
        except BindError:
            close_sockets(sockets)
            raise
        slot = Slot(max((s.index for s in self.slots), default=-1) + 1, sockets)
        self.slots.append(slot)
        return slot

    def remove(self) -> Slot | None:
        """Take the last slot out (never the only one): its worker's exit is expected from now on."""
        if len(self.slots) <= 1:
            return None
        slot = self.slots.pop()
        slot.removed = True  # its worker's exit is expected: never respawned
        slot.close()  # the worker takes what is queued, then closes the last copy
        return slot

    def stop(self) -> None:
        """No worker is started or respawned from now on, and nothing accepts new connections."""
        self.stopping = True
        self.close()

    def close(self) -> None:
        for slot in self.slots:
            slot.close()


def bind_listeners(
    config: RelayConfig,
    slots: int,
    ours: list[tuple[str, int]] | None = None,
    shared: bool = False,
    existing: dict[tuple[str, int], socket.socket] | None = None,
) -> list[list[socket.socket]]:
    """For each of `slots` slots, one socket per listener of `config` (in order); all or nothing.

    `ours`: addresses this supervisor listens on already (a reload that adds or moves listeners):
    their new sockets join the group that is there instead of finding the address taken (`shared`:
    they are copies of `existing`, the socket listening there).
    """
    per_listener: list[list[socket.socket]] = []
    try:
        for listener in config.listeners:
            address = (listener.host, listener.port)
            join = ours is not None and listener.port != 0 and address in ours
            per_listener.append(
                bind_slot_sockets(
                    listener.host, listener.port, slots, join=join, shared=shared, existing=(existing or {}).get(address)
                )
            )
    except BindError:
        for sockets in per_listener:
            close_sockets(sockets)
        raise
    return [list(sockets) for sockets in zip(*per_listener)]


def bound_addresses(config: RelayConfig, sockets: list[socket.socket]) -> list[tuple[str, int]]:
    """The listeners' addresses with the ports they got (port 0 binds any free port)."""
    return [(listener.host, sock.getsockname()[1]) for listener, sock in zip(config.listeners, sockets)]


def describe_listen(addresses: list[tuple[str, int]]) -> str:
    return ", ".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in addresses)


def listener_addresses(config: RelayConfig) -> list[tuple[str, int]]:
    return [(listener.host, listener.port) for listener in config.listeners]


def worker_count(count: int) -> str:
    return f"{count} worker" if count == 1 else f"{count} workers"
