"""Who owns the counters: the interface the supervisor asks, whether the counters live in its own
memory (`limits.backend = "local"`) or in Redis (`"redis"`, shared by every machine).

A *holder* is whoever holds leased units: on one machine a worker (`"w<pid>"`); in Redis a worker of
one supervisor (`"<instance>:w<pid>"`). Both stores keep the same arithmetic (see `limits.types`).
"""

from __future__ import annotations

from typing import Protocol

from llmrelay.limits.types import CounterAsk, CounterCharge, CounterGrant, CounterId, CounterReturn, CounterState, UsageRow


class StoreUnavailable(Exception):
    """The store could not be reached or answered garbage; the message says what happened (and never
    holds a password)."""


class CounterStore(Protocol):
    async def ask(self, holder: str, asks: list[CounterAsk]) -> list[CounterGrant]:
        """One grant per ask, in order: zero, or at least the ask's `need` (and at most its `want`)."""
        ...

    async def give_back(self, holder: str, returns: list[CounterReturn]) -> None:
        """Units `holder` did not use (concurrency units: the requests that held them ended)."""
        ...

    async def charge(self, charges: list[CounterCharge]) -> None:
        """Token corrections once the real usage is known (may leave a bucket below zero)."""
        ...

    async def drop_holder(self, holder: str) -> None:
        """`holder` is gone (a dead or stopped worker): free the concurrency units it held."""
        ...

    async def touch(self, holders: list[str]) -> None:
        """These holders are alive (their holdings must not expire); a no-op where holders cannot
        outlive the store's owner."""
        ...

    async def states(self) -> list[tuple[CounterId, CounterState]]:
        """Every live counter and where it stands (the admin views)."""
        ...

    def retain(self, versions: set[tuple[str, str]]) -> None:
        """After a reload: forget counters whose (rule, version) is not among `versions`."""
        ...


class UsageStore(Protocol):
    """Usage accounting: sums of `UsageRow`s that outlive workers (and, in Redis, the supervisor)."""

    async def add(self, rows: list[UsageRow]) -> None: ...

    async def rows(self) -> list[UsageRow]: ...


__all__ = ["CounterStore", "StoreUnavailable", "UsageStore"]
