"""Reading a source file's tables the way every converter must: each key either taken or reported.

`SourceTable` wraps one table of the source with its path; a converter `take`s the keys it maps
(recording nothing by itself: the converter says where each went), and `drop_rest` reports every key
it did not take as dropped, so a key the converter does not know is never lost silently.
"""

from __future__ import annotations

from typing import Any

from llmrelay.importing.report import Report
from llmrelay.importing.sources import ImportSourceError

UNKNOWN_KEY = "not a key this format is known to have; nothing in the imported config does what it did"
LOG_LEVELS = {"trace": "debug", "debug": "debug", "info": "info", "warn": "warning", "warning": "warning", "error": "error"}


def joined(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


class SourceTable:
    """One table of the source and the keys of it a converter has dealt with."""

    def __init__(self, data: dict[str, Any], path: str, report: Report) -> None:
        self.data = data
        self.path = path
        self.report = report
        self._taken: set[str] = set()

    def at(self, key: str) -> str:
        return joined(self.path, key)

    def take(self, key: str, default: Any = None) -> Any:
        """The key's value (default when absent), marked as dealt with."""
        self._taken.add(key)
        return self.data.get(key, default)

    def has(self, key: str) -> bool:
        return key in self.data

    def table(self, key: str) -> SourceTable | None:
        """The key's value as a table of its own (marked as dealt with), None when absent; a value of
        another type is reported as dropped."""
        value = self.take(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.report.dropped(self.at(key), f"expected a table, found {_kind(value)}; ignored")
            return None
        return SourceTable(value, self.at(key), self.report)

    def drop_rest(self, reason: str = UNKNOWN_KEY, *, changes_behaviour: bool = True) -> None:
        for key in self.data:
            if key not in self._taken:
                self.report.dropped(self.at(key), reason, changes_behaviour=changes_behaviour)
                self._taken.add(key)


def _kind(value: object) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), type(value).__name__)


def require_table(data: dict[str, Any], key: str, format_label: str) -> None:
    """ImportSourceError when `key` is present but not a table: the file is some other format."""
    if key in data and not isinstance(data[key], dict):
        raise ImportSourceError(
            f"`{key}` is {_kind(data[key])}, where {format_label} has a table: this is not a {format_label} file"
            " (name the format with --format)"
        )


def require_some_key(data: dict[str, Any], keys: tuple[str, ...], format_label: str) -> None:
    if not any(key in data for key in keys):
        named = ", ".join(f"`{key}`" for key in keys)
        raise ImportSourceError(f"none of {named} is in the file: this is not a {format_label} file (name the format with --format)")


def log_level(text: object) -> str | None:
    """llmrelay's log level for a source's level name ("INFO", "warn", "TRACE"), None when it has none."""
    return LOG_LEVELS.get(text.lower()) if isinstance(text, str) else None


def move_log_level(table: SourceTable, key: str, server: dict[str, Any], report: Report) -> None:
    """The table's log level `key`, if set, as `server.log_level` (reported either way)."""
    level = table.take(key)
    if level is None:
        return
    mapped = log_level(level)
    if mapped is None:
        report.dropped(table.at(key), f"{level!r} is not a log level llmrelay has", changes_behaviour=False)
    else:
        server["log_level"] = mapped
        report.moved(table.at(key), "server.log_level")


def positive_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return float(value)
