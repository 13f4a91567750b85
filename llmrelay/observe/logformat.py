"""The two shapes of a log line: "text" (readable, today's) and "json" (one object per line).

A record may carry structured fields: `log.info("...", extra={"fields": {"endpoint": "openai"}})`.
In json they become keys of the line's object (beside `ts`, `level`, `logger`, `pid`, `msg`, which
they never replace); in text they are appended as ` key=value`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import msgspec

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
_BASE_KEYS = ("ts", "level", "logger", "pid", "msg")


def _fallback(value: Any) -> Any:
    return str(value)


_encode = msgspec.json.Encoder(enc_hook=_fallback).encode


class _Timestamps:
    """Timestamps with milliseconds, the part up to the second cached: RFC 3339 UTC by default
    ("2026-01-02T03:04:05.678Z"), or `logging`'s default asctime ("2026-01-02 03:04:05,678", local)."""

    __slots__ = ("_second", "_prefix", "_format", "_convert", "_separator", "_suffix", "_ms", "_text")

    def __init__(self, utc: bool = True) -> None:
        self._second = -1
        self._prefix = ""
        self._ms = -1  # the last timestamp made, to the millisecond (lines come several per millisecond)
        self._text = ""
        self._format = "%Y-%m-%dT%H:%M:%S" if utc else "%Y-%m-%d %H:%M:%S"
        self._convert = time.gmtime if utc else time.localtime
        self._separator, self._suffix = (".", "Z") if utc else (",", "")

    def __call__(self, created: float) -> str:
        second = int(created)
        ms = int((created - second) * 1000)
        if second == self._second:
            if ms == self._ms:
                return self._text
        else:
            self._prefix = time.strftime(self._format, self._convert(second))
            self._second = second
        self._ms = ms
        self._text = text = f"{self._prefix}{self._separator}{ms:03d}{self._suffix}"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level (lower case), logger, pid, msg, then the fields."""

    def __init__(self) -> None:
        super().__init__()
        self._timestamp = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            for key, value in fields.items():
                if key not in entry:
                    entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            return _encode(entry).decode()
        except (TypeError, ValueError, OverflowError):  # (a field msgspec cannot encode even as str)
            return _encode({key: entry[key] for key in _BASE_KEYS}).decode()


class DirectLines:
    """Whole lines of one logger at INFO, in either format, without a `LogRecord` (the access log's
    path: one line per request, where `logging`'s record, caller lookup and handler chain would cost
    more than the line itself). The lines are the same as the formatters would make; a json line's
    object is built by its caller (with `json_ts()`, `logger` and `pid`)."""

    def __init__(self, logger: str) -> None:
        self.logger = logger
        self.pid = os.getpid()
        self._json_ts = _Timestamps()
        self._text_ts = _Timestamps(utc=False)
        self._text_middle = f" INFO [{self.pid}] {logger}: "

    def json_ts(self) -> str:
        """The `ts` of a json line written now."""
        return self._json_ts(time.time())

    def text(self, msg: str) -> bytes:
        """A whole text line (newline included)."""
        return (self._text_ts(time.time()) + self._text_middle + msg + "\n").encode("utf-8", "replace")


class TextFormatter(logging.Formatter):
    """Today's readable line, with the record's fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += "".join(f" {key}={_text_value(value)}" for key, value in fields.items())
        return line


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else _encode(value).decode()
    if not text or any(c in text for c in ' "\n\r\t='):
        return _encode(text).decode()
    return text
