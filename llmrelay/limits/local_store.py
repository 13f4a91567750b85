"""`limits.backend = "local"`: the counters live in the supervisor's memory (a `Ledger`), exact across
this machine's workers. The async `CounterStore` face over the synchronous ledger, reading the wall
clock once per call; nothing here ever waits, so a supervisor answers an ask at once.
"""

from __future__ import annotations

import time

from llmrelay.limits.ledger import Ledger
from llmrelay.limits.types import CounterAsk, CounterCharge, CounterGrant, CounterId, CounterReturn, CounterState


class LocalStore:
    def __init__(self, ledger: Ledger | None = None) -> None:
        # The ledger is public: the supervisor asks it who was granted units lately (`recent_holders`)
        # to recall them, which only this store can know.
        self.ledger = ledger if ledger is not None else Ledger()

    async def ask(self, holder: str, asks: list[CounterAsk]) -> list[CounterGrant]:
        return self.ledger.ask(holder, asks, time.time())

    async def give_back(self, holder: str, returns: list[CounterReturn]) -> None:
        self.ledger.give_back(holder, returns, time.time())

    async def charge(self, charges: list[CounterCharge]) -> None:
        self.ledger.charge(charges, time.time())

    async def drop_holder(self, holder: str) -> None:
        self.ledger.drop_holder(holder)

    async def touch(self, holders: list[str]) -> None:
        """Holders live as long as the supervisor that owns this memory: nothing to keep alive."""

    async def states(self) -> list[tuple[CounterId, CounterState]]:
        return self.ledger.states(time.time())

    def retain(self, versions: set[tuple[str, str]]) -> None:
        self.ledger.retain(versions)


__all__ = ["LocalStore"]
