"""Log outputs that never make the logging thread wait: a bounded line queue per output, drained by
one writer thread.

`LineSink.offer` appends a finished line (bytes ending in a newline; or drops it and counts it when the
queue is full: a slow disk or a pipe nobody reads must not stall requests). The writer thread writes lines in batches of at
most PIPE_BUF bytes, so that lines of several processes sharing a pipe or an O_APPEND file never
interleave; it reopens its file when asked (`reopen`, after logrotate renamed it), and once it has
caught up after dropping lines it writes one "N log lines dropped" line (at most once a second).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections import deque

DEFAULT_QUEUE_LINES = 10_000
BATCH_BYTES = 4096  # PIPE_BUF on Linux: a write of at most this much to a pipe is atomic
REPORT_INTERVAL = 1.0
LINGER = 0.01  # under a steady flow of lines, the writer waits this long after a wake-up to gather a batch
URGENT_WAIT = 0.05  # a warning or error waits at most this long for an idle writer to write it (a loaded host)
FILE_BATCH_BYTES = 65536  # a regular file opened O_APPEND takes a larger write whole
STDERR = ""


class LogSetupError(Exception):
    """A log file could not be opened."""


class LineSink:
    """One output (a file path, or "" for stderr) and the thread that writes to it."""

    def __init__(self, path: str, stream: str = "error", max_lines: int = DEFAULT_QUEUE_LINES) -> None:
        self.path = path
        self.stream = stream  # its first user's name, for its own messages
        self.max_lines = max_lines
        self.dropped_by_stream: dict[str, int] = {}  # written only by the offering threads
        self.report_formatter: logging.Formatter = logging.Formatter("%(message)s")
        self._lines: deque[bytes] = deque()  # whole lines, newline included
        self._wake = threading.Event()
        self._written = threading.Event()  # set when the writer has written everything queued
        self._urgent = False
        self._idle = False
        self._writing = False
        self._closed = False
        self._reopen = False
        self._reported = 0
        self._last_report = 0.0
        self._last_write = 0.0
        self._write_started = 0.0
        self._fd = self._open() if path else 2
        self._batch_bytes = self._batch_limit()
        self._thread = threading.Thread(target=self._run, name=f"log-writer {path or 'stderr'}", daemon=True)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise LogSetupError(f"cannot open log file {self.path}: {exc.strerror or exc}") from None

    def _batch_limit(self) -> int:
        try:
            return FILE_BATCH_BYTES if stat.S_ISREG(os.fstat(self._fd).st_mode) else BATCH_BYTES
        except OSError:
            return BATCH_BYTES

    def start(self) -> None:
        self._thread.start()

    # -- the logging side (any thread; the event loop's in practice) --------------------------------
    def offer(self, line: bytes, stream: str) -> None:
        """Queue `line` (bytes ending in a newline), or count it dropped under `stream`."""
        if len(self._lines) >= self.max_lines or self._closed:
            self.dropped_by_stream[stream] = self.dropped_by_stream.get(stream, 0) + 1
            return
        self._lines.append(line)
        if self._idle:
            self._wake.set()

    def offer_urgent(self, line: bytes, stream: str) -> None:
        """A warning or an error: wait a moment (`URGENT_WAIT` at most) for the line to be written,
        so that it is out before the response it explains; when the output is stuck (a write under
        way for longer than that), only queue it, like any line."""
        if self._writing and time.monotonic() - self._write_started > URGENT_WAIT:
            self.offer(line, stream)  # (the output is stuck: never wait for it)
            return
        self._written.clear()
        self._urgent = True
        self.offer(line, stream)
        self._wake.set()
        self._written.wait(URGENT_WAIT)

    def reopen(self) -> None:
        if self.path:
            self._reopen = True
            self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if not self._thread.is_alive() and self.path and self._fd > 2:  # (never started)
            os.close(self._fd)
            self._fd = -1

    def flush(self, timeout: float) -> None:
        """Wait until every queued line is written (or `timeout` passes, or the writer is stuck)."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while (self._lines or self._writing) and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.005)

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_stream.values())

    # -- the writer thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            if not self._lines:
                if self._closed:
                    break
                self._wake.clear()
                self._idle = True
                if not self._lines and not self._reopen:
                    self._wake.wait(REPORT_INTERVAL)
                self._idle = False
                if self._lines and not self._closed and not self._urgent and time.monotonic() - self._last_write < LINGER:
                    self._wake.clear()  # lines keep coming: let a batch gather (one wake-up, a few writes),
                    self._wake.wait(LINGER)  # unless a warning or an error wants out
                self._urgent = False
            if self._reopen:
                self._do_reopen()
            if self._lines:
                self._write_batch()
                if not self._lines:
                    self._written.set()
            elif self.dropped > self._reported:
                self._report_drops()
        if self.path and self._fd > 2:
            os.close(self._fd)

    def _write_batch(self) -> None:
        self._write_started = time.monotonic()
        self._writing = True
        try:
            parts: list[bytes] = []
            size = 0
            lines = self._lines
            limit = self._batch_bytes
            while lines and size < limit:
                line = lines[0]
                if parts and size + len(line) > limit:
                    break
                lines.popleft()
                parts.append(line)
                size += len(line)
            self._write(b"".join(parts))
        finally:
            self._writing = False
            self._last_write = time.monotonic()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:  # (someone made the shared descriptor non-blocking)
                time.sleep(0.01)
                continue
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.EBADF, errno.ENOSPC, errno.EIO):
                    raise
                return  # the output is gone or full: these lines are lost, the next may pass
            view = view[written:]

    def _do_reopen(self) -> None:
        self._reopen = False
        try:
            fd = self._open()
        except LogSetupError as exc:
            self._write(f"{exc}; still writing to the previous file\n".encode())
            return
        old, self._fd = self._fd, fd
        self._batch_bytes = self._batch_limit()
        if old > 2:
            os.close(old)

    def _report_drops(self) -> None:
        now = time.monotonic()
        if now - self._last_report < REPORT_INTERVAL:
            return
        total = self.dropped
        count, self._reported, self._last_report = total - self._reported, total, now
        record = logging.LogRecord(
            "llmrelay.logs", logging.WARNING, __file__, 0,
            "%d log lines dropped (the log output fell behind)", (count,), None,
        )
        record.fields = {"dropped": count, "streams": dict(self.dropped_by_stream)}
        self._write((self.report_formatter.format(record) + "\n").encode("utf-8", "replace"))


class QueueHandler(logging.Handler):
    """Formats a record in the caller's thread and hands the line to its sink; never waits."""

    def __init__(self, sink: LineSink, stream: str) -> None:
        super().__init__()
        self.sink = sink
        self.stream = stream

    def handle(self, record: logging.LogRecord) -> bool:
        # (no handler lock: formatting is per record, and the sink's queue is thread-safe)
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.sink.offer_urgent(line, self.stream)
        else:
            self.sink.offer(line, self.stream)
