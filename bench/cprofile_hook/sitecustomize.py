"""cProfile inside llmrelay workers, for `bench/profiling.py --cprofile` (nothing else imports this).

profiling.py puts this directory on PYTHONPATH and sets LLMRELAY_BENCH_CPROFILE to an output
directory. In a process started as `python -m llmrelay.worker`, `PROFILE_ON` (SIGRTMIN+1) then starts
a cProfile profiler and `PROFILE_OFF` (SIGRTMIN+2) stops it and writes `worker-PID.prof` there (SIGUSR1
is the worker's own: it reopens the log files). Other processes are untouched.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from types import FrameType

_OUTPUT = os.environ.get("LLMRELAY_BENCH_CPROFILE", "")
_PROFILER = cProfile.Profile()
PROFILE_ON = signal.SIGRTMIN + 1
PROFILE_OFF = signal.SIGRTMIN + 2


def _start(signum: int, frame: FrameType | None) -> None:
    _PROFILER.enable()


def _stop(signum: int, frame: FrameType | None) -> None:
    _PROFILER.disable()
    _PROFILER.dump_stats(os.path.join(_OUTPUT, f"worker-{os.getpid()}.prof"))


if _OUTPUT and "llmrelay.worker" in getattr(sys, "orig_argv", []):
    signal.signal(PROFILE_ON, _start)
    signal.signal(PROFILE_OFF, _stop)
