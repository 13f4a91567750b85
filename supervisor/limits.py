"""The supervisor's side of `[limits]`: it owns the counters (in its memory, or through Redis) and
answers the workers' lease asks.

- `LeaseAsk` → the store grants per counter → `LeaseGrant` back to the worker. When someone is
  refused while other workers were recently granted units of the same counter, those workers get a
  `LeaseRecall` and give back what they hold unused (their next asks find it).
- `LeaseReturn` gives units back; `UsageReport` carries token corrections (charged to the counters)
  and usage accounting rows (summed in the usage store); a worker that exits has its holdings
  dropped, so a dead worker never keeps a concurrency slot.
- With Redis, asks run concurrently (one round trip per ask batch); a Redis that cannot be reached
  makes every grant follow `limits.on_backend_error` ("allow": granted as asked; "deny": refused with
  `backend_error` set, which the worker answers with 503), never silently: a warning at most every
  10 s, `llmrelay_limits_backend_errors_total`, `llmrelay_limits_backend_up 0`, and `/health` and
  `/status` say the limits are degraded. The holders of this machine are touched every few seconds
  so that Redis keeps their concurrency holdings, and only theirs.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

import trio

from llmrelay.config.resolved import ResolvedLimits
from llmrelay.control import LeaseAsk, LeaseGrant, LeaseRecall, LeaseReturn, UsageReport
from llmrelay.limits.local_store import LocalStore
from llmrelay.limits.store import CounterStore, StoreUnavailable, UsageStore
from llmrelay.limits.types import HOLDER_TTL, CounterGrant, CounterId, CounterState, Units, UsageRow
from supervisor.redis_store import RedisStore
from supervisor.usage import UsageTable
from supervisor.workers import SEND_TIMEOUT, WorkerProcess

log = logging.getLogger("supervisor.limits")

WARN_INTERVAL = 10.0  # at most one "limits backend unreachable" warning this often
PENDING_ROWS = 10_000
RECALL_WAIT = 0.2  # how long a refused ask waits for the other workers to give back unused units  # usage rows kept for Redis while it cannot be reached


def holder_of(worker: WorkerProcess) -> str:
    return f"w{worker.pid}"


class LimitsService:
    def __init__(self) -> None:
        self.settings = ResolvedLimits()
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.local_usage = UsageTable()
        self.store: CounterStore = LocalStore()
        self.redis: RedisStore | None = None
        self.backend_errors = 0
        self.degraded = ""  # why the limits backend is not answering ("" when it is)
        self._warned = 0.0
        self._workers: dict[str, WorkerProcess] = {}
        self._pending_rows: list[UsageRow] = []
        self._nursery: trio.Nursery | None = None
        self._recalls: list[tuple[set[str], trio.Event]] = []  # holders still to answer a recall

    # -- config -----------------------------------------------------------------------------------
    def configure(self, settings: ResolvedLimits) -> None:
        """The `[limits]` of the config in service (again on every reload): the counters of rules
        that did not change are kept; a new backend or Redis URL starts a new store."""
        previous = self.settings
        self.settings = settings
        old = self.redis
        if settings.backend == "redis":
            if self.redis is None or previous.backend != "redis" or previous.redis_url != settings.redis_url:
                self.redis = RedisStore(settings.redis_url, self.instance)
                self.store = self.redis
                self.degraded = ""
        elif not isinstance(self.store, LocalStore):
            self.store, self.redis, self.degraded = LocalStore(), None, ""
        if old is not None and old is not self.redis and self._nursery is not None:
            self._nursery.start_soon(old.aclose)  # (the previous Redis connection, closed off the reload's path)
        self.store.retain({(rule.name, rule.version) for rule in settings.rules})

    @property
    def usage(self) -> UsageStore:
        """Where `/usage` reads: Redis when it holds the accounts (every machine's), else this one's."""
        return self.redis if self.redis is not None else self.local_usage

    # -- the workers' messages --------------------------------------------------------------------
    async def run(self, announce: Callable[[], Awaitable[None]]) -> None:
        """Own the tasks of concurrent asks, keep this machine's holders alive in Redis, and
        `announce` (the health table's broadcast) when the limits become degraded or exact again."""
        announced = ""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            touched = time.monotonic()
            while True:
                await trio.sleep(1.0)
                if self.redis is not None and self._workers and time.monotonic() - touched >= HOLDER_TTL / 6:
                    touched = time.monotonic()
                    try:
                        await self.redis.touch([self._redis_holder(h) for h in self._workers])
                    except StoreUnavailable as exc:
                        self._backend_failed(exc)
                if self.degraded != announced:
                    announced = self.degraded
                    await announce()

    async def ask(self, worker: WorkerProcess, message: LeaseAsk) -> None:
        self._workers[holder_of(worker)] = worker
        grants: list[CounterGrant] | None = None
        if self.redis is None:  # in memory: answered at once, unless it waits for a recall
            grants = await self.store.ask(holder_of(worker), message.asks)
            if self._nursery is None or not self._refused(grants):
                await self._send_grant(worker, message, grants, "")
                return
        if self._nursery is None:
            await self._answer(worker, message, grants)
        else:  # (waiting for Redis, or for a recall: never in the worker's message loop)
            self._nursery.start_soon(self._answer, worker, message, grants)

    async def give_back(self, worker: WorkerProcess, message: LeaseReturn) -> None:
        try:
            if message.returns:
                await self.store.give_back(self._holder(worker), message.returns)
        except StoreUnavailable as exc:
            self._backend_failed(exc)
        holder = holder_of(worker)
        for waiting, answered in self._recalls:  # (a recall waits for every worker it asked)
            waiting.discard(holder)
            if not waiting:
                answered.set()

    async def report(self, worker: WorkerProcess, message: UsageReport) -> None:
        if message.rows:
            await self.local_usage.add(message.rows)
        try:
            if message.charges:
                await self.store.charge(message.charges)
            if self.redis is not None:
                rows = self._pending_rows + list(message.rows)
                self._pending_rows = []
                if rows:
                    await self.redis.add(rows)
        except StoreUnavailable as exc:
            if self.redis is not None:
                self._pending_rows = (self._pending_rows + list(message.rows))[-PENDING_ROWS:]
            self._backend_failed(exc)

    async def worker_gone(self, worker: WorkerProcess) -> None:
        holder = holder_of(worker)
        self._workers.pop(holder, None)
        try:
            await self.store.drop_holder(self._holder(worker))
        except StoreUnavailable as exc:
            self._backend_failed(exc)  # (Redis frees its holdings when they expire)

    # -- answering --------------------------------------------------------------------------------
    async def _answer(self, worker: WorkerProcess, message: LeaseAsk, grants: list[CounterGrant] | None = None) -> None:
        """Answer an ask (`grants`: the store's first answer, when it was already asked)."""
        backend_error = ""
        asks = message.asks
        try:
            if grants is None:
                grants = await self.store.ask(self._holder(worker), asks)
            if self.degraded:
                log.warning("limits backend answers again; limits are exact again")
                self.degraded = ""
            refused = self._refused(grants)
            if refused and await self._recall(worker, [asks[index].counter for index in refused]):
                again = await self.store.ask(self._holder(worker), [asks[index] for index in refused])
                for index, grant in zip(refused, again):
                    grants[index] = grant
        except StoreUnavailable as exc:
            self._backend_failed(exc)
            backend_error = str(exc)
            allow = self.settings.on_backend_error == "allow"
            grants = [self._degraded_grant(ask.counter, ask.want if allow else None) for ask in asks]
        await self._send_grant(worker, message, grants, backend_error)

    @staticmethod
    def _refused(grants: list[CounterGrant]) -> list[int]:
        return [index for index, grant in enumerate(grants) if grant.retry_after > 0 and grant.granted == Units()]

    async def _send_grant(self, worker: WorkerProcess, message: LeaseAsk, grants: list[CounterGrant], backend_error: str) -> None:
        with trio.move_on_after(SEND_TIMEOUT):
            await worker.send(LeaseGrant(ask_id=message.ask_id, grants=grants, backend_error=backend_error))

    async def _recall(self, refused: WorkerProcess, counters: list[CounterId]) -> bool:
        """The other workers granted units of these counters lately give back what they do not
        use; True once they all answered (or RECALL_WAIT passed) when there was anyone to ask.
        (Only the local store knows who holds what; across machines, leases lapse by themselves.)"""
        if not isinstance(self.store, LocalStore):
            return False
        now = time.time()
        holders: set[str] = set()
        for counter in counters:
            holders.update(self.store.ledger.recent_holders(counter, now))
        holders.discard(holder_of(refused))
        asked = {h for h in holders if (w := self._workers.get(h)) is not None and w.ready.is_set() and w.active}
        if not asked:
            return False
        waiter = (set(asked), trio.Event())
        self._recalls.append(waiter)
        try:
            for holder in asked:
                with trio.move_on_after(SEND_TIMEOUT):
                    await self._workers[holder].send(LeaseRecall(counters=counters))
            with trio.move_on_after(RECALL_WAIT):
                await waiter[1].wait()
        finally:
            self._recalls.remove(waiter)
        return True

    def _degraded_grant(self, counter: CounterId, granted: Units | None) -> CounterGrant:
        state = CounterState(remaining=Units())
        if granted is None:
            return CounterGrant(counter=counter, granted=Units(), state=state, retry_after=1.0)
        return CounterGrant(counter=counter, granted=granted, state=state)

    def _backend_failed(self, exc: StoreUnavailable) -> None:
        self.backend_errors += 1
        self.degraded = str(exc)
        now = time.monotonic()
        if now - self._warned >= WARN_INTERVAL:
            self._warned = now
            policy = "admitting every request" if self.settings.on_backend_error == "allow" else "refusing requests with 503"
            log.warning("limits backend unreachable (%s): %s until it answers (limits.on_backend_error)", exc, policy)

    def _holder(self, worker: WorkerProcess) -> str:
        holder = holder_of(worker)
        return self._redis_holder(holder) if self.redis is not None else holder

    def _redis_holder(self, holder: str) -> str:
        return f"{self.instance}:{holder}"
