"""Log setup shared by the command line, the supervisor and the workers.

Every process logs through the standard `logging` module; this module decides where lines go and in
which shape, and makes sure that writing them never blocks the event loop:

- `server.log_format`: "text" (one readable line) or "json" (one JSON object per line with `ts`,
  `level`, `logger`, `pid`, `msg`, plus the record's structured fields: `log.info(..., extra={"fields":
  {...}})`). When the config does not set it, `LLMRELAY_LOG_FORMAT` decides (the container image sets
  it to json), else "text".
- `server.access_log_file` gets the access lines (logger `llmrelay.access`), `server.error_log_file`
  everything else; both default to stderr.
- A handler only formats the line and appends it to a bounded queue (`sinks.LineSink`); one writer
  thread per output writes it. Past the bound, lines are dropped and counted (`dropped_lines()`, the
  metric `llmrelay_log_lines_dropped_total`), and the writer reports "N log lines dropped" once it has
  caught up.
- `reopen_log_files()` (SIGUSR1, after logrotate renamed the files) asks the writers to reopen their
  files before their next write: it returns at once.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import TYPE_CHECKING

from llmrelay.observe.logformat import TEXT_FORMAT, DirectLines, JsonFormatter, TextFormatter
from llmrelay.observe.sinks import LineSink, LogSetupError, QueueHandler

__all__ = ["LogSetupError", "configure_logging", "reopen_log_files", "dropped_lines", "log_format"]

if TYPE_CHECKING:
    from llmrelay.config.schema import ServerSection

FORMAT = TEXT_FORMAT
FORMAT_ENV = "LLMRELAY_LOG_FORMAT"
ACCESS_LOGGER = "llmrelay.access"
_ACCESS = logging.getLogger(ACCESS_LOGGER)  # (looked up once: getLogger takes a lock)
QUEUE_LINES = 10_000  # per output; past it lines are dropped (and counted), never waited for
QUEUE_ENV = "LLMRELAY_LOG_QUEUE_LINES"  # another bound (memory against lines kept through a stall)

_sinks: dict[str, LineSink] = {}  # by output ("" is stderr)
_streams: dict[str, LineSink] = {}  # "access" / "error" -> its sink
_format = "text"
_exit_hook = False
_direct: tuple[LineSink, DirectLines] | None = None  # the access lines' sink and maker


def effective_format(configured: str | None) -> str:
    """The config's `log_format` when it sets one, else `LLMRELAY_LOG_FORMAT`, else "text"."""
    if configured is not None:
        return configured
    from_env = os.environ.get(FORMAT_ENV, "").strip().lower()
    return from_env if from_env in ("text", "json") else "text"


def _queue_lines() -> int:
    try:
        return max(1, int(os.environ.get(QUEUE_ENV, QUEUE_LINES)))
    except ValueError:
        return QUEUE_LINES


def log_format() -> str:
    """The format the process logs in now ("text" or "json")."""
    return _format


def configure_logging(level: str = "info", server: ServerSection | None = None) -> None:
    """(Re)configure this process's logging: `level`, and from `server` (when given) the format and
    the files; without `server`, the format of `LLMRELAY_LOG_FORMAT` on stderr.

    Called again on a reload: outputs that stay the same keep their writer (and queued lines).
    Raises `LogSetupError` when a log file cannot be opened (the logging in place is kept)."""
    global _format, _exit_hook, _direct
    log_format_setting = server.log_format if server is not None else None
    access_file = (server.access_log_file or "") if server is not None else ""
    error_file = (server.error_log_file or "") if server is not None else ""
    _format = effective_format(log_format_setting)
    formatter: logging.Formatter = JsonFormatter() if _format == "json" else TextFormatter()

    wanted = {access_file, error_file}
    new: dict[str, LineSink] = {}  # (the files are opened first: one that cannot be opened changes nothing)
    try:
        for path in wanted - _sinks.keys():
            new[path] = LineSink(path, stream="error" if path == error_file else "access", max_lines=_queue_lines())
    except LogSetupError:
        for sink in new.values():
            sink.close()
        raise
    for path in list(_sinks):
        if path not in wanted:
            _sinks.pop(path).close()
    for path, sink in new.items():
        _sinks[path] = sink
        sink.start()
    if not _exit_hook:
        atexit.register(flush_logs)
        _exit_hook = True
    for sink in _sinks.values():
        sink.report_formatter = formatter
    _streams["access"] = _sinks[access_file]
    _streams["error"] = _sinks[error_file]

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    error_handler = QueueHandler(_sinks[error_file], "error")
    error_handler.setFormatter(formatter)
    root.addHandler(error_handler)
    root.setLevel(level.upper())

    access = logging.getLogger(ACCESS_LOGGER)
    for handler in list(access.handlers):
        access.removeHandler(handler)
    access_handler = QueueHandler(_sinks[access_file], "access")
    access_handler.setFormatter(formatter)
    access.addHandler(access_handler)
    access.propagate = False
    # Access lines follow `server.access_log`, not the level of the other lines: at "warning" the
    # access log is still written (as nginx's access_log is, whatever error_log's level).
    access.setLevel(logging.INFO)
    _direct = (_sinks[access_file], DirectLines(ACCESS_LOGGER))
    logging.getLogger("hpack").setLevel(logging.WARNING)


def access_lines() -> tuple[LineSink, DirectLines] | None:
    """Where access lines go and how they are made, when this module configured logging and the
    access logger takes INFO; None otherwise (then they go through `logging`)."""
    if _direct is None or not _ACCESS.isEnabledFor(logging.INFO):
        return None
    return _direct


def reopen_log_files() -> None:
    """Reopen every log file before its next line (after logrotate moved it). Never blocks: the
    writer threads reopen. Safe to call from the trio loop, or a signal handler."""
    for sink in list(_sinks.values()):
        sink.reopen()


def dropped_lines() -> dict[str, int]:
    """Lines dropped since the process started, by stream ("access", "error")."""
    counts = {"access": 0, "error": 0}
    for sink in _sinks.values():
        for stream, count in sink.dropped_by_stream.items():
            counts[stream] = counts.get(stream, 0) + count
    return counts


def flush_logs(timeout: float = 2.0) -> None:
    """Wait (at most `timeout` seconds per output) until queued lines are written: at process exit."""
    for sink in list(_sinks.values()):
        sink.flush(timeout)


def shutdown_logging(timeout: float = 2.0) -> None:
    """Write what is queued and stop the writers (the process is about to exit)."""
    flush_logs(timeout)
    for sink in list(_sinks.values()):
        sink.close()
    _sinks.clear()
    _streams.clear()
    global _direct
    _direct = None
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.StreamHandler(sys.stderr))
