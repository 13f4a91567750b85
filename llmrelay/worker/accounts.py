"""The worker's link to the supervisor for limits and usage: the supervisor's lease answers and
recalls reach the worker's `Admissions` here, and what the worker owes goes back at most every
`REPORT_INTERVAL`: leases past their time (`LeaseReturn`), token corrections and usage rows
(`UsageReport`). At the drain, everything still held is given back and the last usage is reported.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from llmrelay.control import LeaseGrant, LeaseRecall, Message, UsageReport
from llmrelay.observe.usage_rows import UsageRecorder
from llmrelay.relay.admission import Admissions

REPORT_INTERVAL = 0.25  # leases are returned and corrections sent this often (a lease lives LEASE_TTL)
ROWS_INTERVAL = 1.0  # usage rows at most once a second


class Accounts:
    def __init__(self) -> None:
        self.admissions = Admissions()
        self.usage = UsageRecorder()
        self._send: Callable[[Message], Awaitable[None]] | None = None

    def attach(self, send: Callable[[Message], Awaitable[None]]) -> None:
        self._send = send
        self.admissions.attach(send)

    def handles(self, message: object) -> bool:
        """Whether `message` is for the limits (then it is handled: a grant wakes its request)."""
        if isinstance(message, LeaseGrant):
            self.admissions.granted(message)
            return True
        return isinstance(message, LeaseRecall)

    async def recall(self, message: LeaseRecall) -> None:
        if self._send is not None:
            await self._send(self.admissions.recalled(message))

    async def run(self) -> None:
        """Give back expired leases and send corrections and usage, until cancelled."""
        ticks = 0
        rows_every = max(1, round(ROWS_INTERVAL / REPORT_INTERVAL))
        async with trio.open_nursery() as nursery:
            self.admissions.nursery = nursery  # (asks ahead of need run here)
            try:
                while True:
                    await trio.sleep(REPORT_INTERVAL)
                    ticks += 1
                    await self.report(with_rows=ticks % rows_every == 0)
            finally:
                self.admissions.nursery = None

    async def report(self, with_rows: bool = True) -> None:
        if self._send is None:
            return
        returned = self.admissions.expired()
        if returned is not None:
            await self._send(returned)
        charges = self.admissions.take_charges()
        rows = self.usage.take_rows() if with_rows else []
        if charges or rows:
            await self._send(UsageReport(charges=charges, rows=rows))

    async def final(self) -> None:
        """The worker stops: give back every lease, send the last corrections and rows."""
        if self._send is None:
            return
        returned = self.admissions.release_all()
        if returned is not None:
            await self._send(returned)
        await self.report()
