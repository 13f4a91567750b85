"""The status file next to the pid file: how `llmrelay reload` and `restart` learn what happened.

A signal carries no answer, so the supervisor writes `<pid file>.status` (JSON, replaced atomically)
whenever a SIGHUP or SIGUSR2 is received and when the action it asked for has finished:

    {"pid": 1234, "generation": 3,
     "reload":  {"requested": 2, "finished": 2, "outcome": "applied", "generation": 3,
                 "summary": "...", "errors": []},
     "restart": {"requested": 0, "finished": 0, "outcome": "", "generation": 0, "summary": "", "errors": []}}

`requested` counts the signals the supervisor has taken in; an action records in `finished` the
count it had taken in when it began (signals that arrive while it runs are served by one more run).
A command reads `requested`, sends its signal, and waits until `finished` is beyond what it read.
The file also holds `admin`, the admin listener's effective URL ("" when there is none), and
`loaded_at`, when the config generation served was loaded; the admin listener's POST /reload and
/restart wait for `finished` in the process itself (`wait_finished`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

log = logging.getLogger("supervisor")


def status_path(pid_file: Path) -> Path:
    return pid_file.with_name(pid_file.name + ".status")


@dataclass
class Outcome:
    """How one reload or rolling replacement ended."""

    ok: bool
    summary: str
    errors: list[str] = field(default_factory=list)


@dataclass
class ActionStatus:
    requested: int = 0
    finished: int = 0
    outcome: str = ""  # "applied" / "rejected" for reloads, "done" / "failed" for restarts
    generation: int = 0
    summary: str = ""
    errors: list[str] = field(default_factory=list)
    finished_at: float = 0.0  # unix time


class StatusFile:
    def __init__(self, path: Path | None, pid: int) -> None:
        self.path = path
        self.pid = pid
        self.generation = 1
        self.loaded_at = time.time()
        self.admin = ""
        self.reload = ActionStatus()
        self.restart = ActionStatus()
        self._finished = trio.Event()

    def requested(self, action: ActionStatus) -> None:
        action.requested += 1
        self.write()

    def finished(self, action: ActionStatus, number: int, outcome: Outcome, words: tuple[str, str]) -> None:
        action.finished = max(action.finished, number)
        action.outcome = words[0] if outcome.ok else words[1]
        action.generation = self.generation
        action.summary = outcome.summary
        action.errors = outcome.errors
        action.finished_at = time.time()
        self.write()
        self._finished.set()
        self._finished = trio.Event()

    async def wait_finished(self, action: ActionStatus, number: int) -> None:
        """Until `action` has finished the run that serves request `number`; bound it with a timeout."""
        while action.finished < number:
            await self._finished.wait()

    def admin_bound(self, url: str) -> None:
        self.admin = url
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        data = {
            "pid": self.pid,
            "generation": self.generation,
            "loaded_at": self.loaded_at,
            "admin": self.admin,
            "reload": asdict(self.reload),
            "restart": asdict(self.restart),
        }
        temporary = self.path.with_name(f".{self.path.name}.{self.pid}.tmp")
        try:
            temporary.write_text(json.dumps(data) + "\n")
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("cannot write status file %s: %s", self.path, exc.strerror or exc)

    def remove(self) -> None:
        if self.path is None:
            return
        try:
            if json.loads(self.path.read_text()).get("pid") == self.pid:
                self.path.unlink()
        except (OSError, ValueError, AttributeError):
            pass


def read_status(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
