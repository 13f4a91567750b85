"""How much CPU other processes used while a benchmark ran.

The machine is shared (tests, builds, other benchmarks): `CpuMeter` takes the CPU time every process
used from /proc/stat over a run, subtracts the benchmark's own (this process, its reaped children
such as wrk, and the processes it names: proxy and mock), and reports the rest as "background CPUs"
(1.0 = one core busy the whole run). Runs with much background load are flagged in the report.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

from bench.targets import cpu_seconds

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def own_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class CpuMeter:
    """Background CPU use between `start()` and `stop()`; `ours` names the other processes we run."""

    def __init__(self, ours: Callable[[], list[int]]) -> None:
        self._ours = ours
        self._started = 0.0
        self._busy = 0.0
        self._mine = 0.0

    def _sample(self) -> tuple[float, float]:
        return machine_busy_seconds(), own_seconds() + cpu_seconds(self._ours())

    def start(self) -> None:
        self._busy, self._mine = self._sample()
        self._started = time.monotonic()

    def stop(self) -> float:
        """CPUs (cores) that processes other than ours kept busy on average since `start()`."""
        busy, mine = self._sample()
        elapsed = time.monotonic() - self._started
        if elapsed <= 0:
            return 0.0
        return max(0.0, (busy - self._busy) - (mine - self._mine)) / elapsed
