"""systemd's service notifications (`Type=notify`), spoken over the datagram socket directly.

When systemd starts the supervisor with `NOTIFY_SOCKET` set, the supervisor tells it:
- `READY=1` (with a `STATUS=` line) once every first worker is serving (or its boot timed out: the
  supervisor serves then, with 503 stand-ins for the slots still booting);
- `RELOADING=1` with `MONOTONIC_USEC=` when a SIGHUP reload starts, and `READY=1` when it is over
  (applied or rejected: the supervisor serves either way);
- `STATUS=` lines (workers serving, config generation, the last reload's outcome) and `STOPPING=1`
  when a stop begins;
- `WATCHDOG=1` every half `WATCHDOG_USEC`, from a task of the supervisor's own event loop: when the
  loop is stuck, the pings stop and systemd restarts the service.

The variables are read once and removed from the environment (as `sd_notify(unset_environment=1)`
does), so that no worker or `$(command)` key source speaks for the supervisor. A notification that
cannot be sent (no listener, a full socket buffer) is dropped and logged once; it never blocks or
fails the supervisor. SIGUSR2 replaces workers under the same supervisor, so systemd's MAINPID stays
right across an upgrade.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping

import trio

log = logging.getLogger("supervisor")


class Notifier:
    """Notifications to systemd; every method does nothing when `address` is None."""

    def __init__(self, address: str | None = None, watchdog_usec: int = 0) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """`NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (taken out of the environment)."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) or None
        usec_text = env.pop("WATCHDOG_USEC", "")
        pid_text = env.pop("WATCHDOG_PID", "")
        watchdog = 0
        if usec_text.isdigit() and (not pid_text or pid_text == str(os.getpid())):
            watchdog = int(usec_text)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    # -- what the supervisor says -----------------------------------------------------------------
    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}", "STATUS=reloading")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: draining workers")

    async def watchdog(self) -> None:
        """`WATCHDOG=1` every half `WATCHDOG_USEC`, for as long as this event loop runs its tasks."""
        if not self.enabled or self.watchdog_usec <= 0:
            return
        interval = self.watchdog_usec / 2_000_000
        while True:
            self.send("WATCHDOG=1")
            await trio.sleep(interval)

    # -- the wire ---------------------------------------------------------------------------------
    def send(self, *fields: str) -> None:
        """One datagram of `KEY=value` lines; dropped (and logged once) when it cannot be sent."""
        if self.address is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address  # (@: abstract)
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(fields).encode("utf-8", "replace"), target)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("systemd notification to %s failed (%s); further failures are not logged", self.address, exc.strerror or exc)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
