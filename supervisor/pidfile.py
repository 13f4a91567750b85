"""The pid file: locked with `flock` for the supervisor's whole life, removed on exit.

The lock is what says "a supervisor runs": a second `llmrelay serve` with the same pid file cannot
take it and stops with a clear message, and `llmrelay reload` can tell a live pid file from a stale
one (a stale file is not locked, and its pid may belong to some other process by now). A file that
is not locked but names a live llmrelay process (one that does not lock, or a copy of the file) is
not overwritten either. The descriptor is close-on-exec, so workers never hold the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


class PidFileError(Exception):
    """The pid file is held by a running supervisor, or cannot be written."""


class PidFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pid: int | None = None
        self._fd: int | None = None

    def acquire(self, pid: int) -> None:
        """Lock the file and write `pid` in it; PidFileError if another live supervisor holds it."""
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise PidFileError(f"cannot write pid file {self.path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise PidFileError(
                        f"pid file {self.path} is held by a running llmrelay supervisor"
                        + (f" (pid {holder})" if holder else "")
                        + ": stop it first, or give this one another --pid-file"
                    ) from None
                raise PidFileError(f"cannot lock pid file {self.path}: {exc.strerror or exc}") from None
            if not _same_file(fd, self.path):
                os.close(fd)  # a supervisor that was exiting removed the file under us: take the new one
                continue
            previous = _read_pid(fd)
            if previous is not None and previous != pid and is_llmrelay(previous):
                os.close(fd)
                raise PidFileError(
                    f"pid file {self.path} names process {previous}, a live llmrelay:"
                    " stop it first, or remove the file if it is not a supervisor"
                )
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{pid}\n".encode(), 0)
            self._fd, self._pid = fd, pid
            return
        raise PidFileError(f"pid file {self.path} keeps being replaced; is another supervisor starting?")

    def release(self) -> None:
        """Remove the file (it still names this process: nobody else could lock it), then unlock."""
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def held(path: Path) -> bool:
    """True when a live supervisor holds the pid file at `path` (its lock is taken)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def is_llmrelay(pid: int) -> bool:
    """A live process whose command line mentions llmrelay (a reused pid belongs to something else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"llmrelay" in cmdline.read()
    except OSError:
        return True  # alive, and nothing tells us it is someone else


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 64, 0).decode().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)
