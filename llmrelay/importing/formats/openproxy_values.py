"""Reading openproxy's values as openproxy reads them: typed as its serde structs type them, host names
split the way its router splits them, and key values judged by what openproxy does with them.

A value of a type openproxy's serde would refuse (a port that is not a u16, a `tls` that is not a
bool) means openproxy does not load the file at all: it is an ImportSourceError naming the key, not
a setting left behind.
"""

from __future__ import annotations

import re
import shlex
from llmrelay.config.secrets import is_command
from llmrelay.importing.formats.source_keys import SourceTable
from llmrelay.importing.sources import ImportSourceError

FORMAT_LABEL = "openproxy"
_ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_SHELL_OPERATORS = re.compile(r"[|&;<>()`$\\*?\[\]{}]|(?:^|\s)[#~]")
_SINGLE_QUOTED = re.compile(r"'[^']*'")


def refused(path: str, what: str) -> ImportSourceError:
    """The error for a value openproxy itself would not load."""
    return ImportSourceError(f"`{path}` {what}; openproxy would not load this file (is it an {FORMAT_LABEL} file?)")


def kind_of(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "nothing" if value is None else names.get(type(value), type(value).__name__)


def required_text(table: SourceTable, key: str) -> str:
    value = table.take(key)
    if value is None:
        raise refused(table.at(key), "is missing")
    if not isinstance(value, str) or not value:
        raise refused(table.at(key), f"is {kind_of(value)}, where a non-empty string is expected")
    return value


def optional_text(table: SourceTable, key: str) -> str | None:
    value = table.take(key)
    if value is not None and not isinstance(value, str):
        raise refused(table.at(key), f"is {kind_of(value)}, where a string is expected")
    return value


def optional_bool(table: SourceTable, key: str) -> bool | None:
    value = table.take(key)
    if value is not None and not isinstance(value, bool):
        raise refused(table.at(key), f"is {kind_of(value)}, where true or false is expected")
    return value


def optional_int(table: SourceTable, key: str, low: int, high: int | None = None) -> int | None:
    value = table.take(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise refused(table.at(key), f"is {value!r}, where a whole number {bound} is expected")
    return value


def optional_weight(table: SourceTable, key: str) -> float | None:
    value = table.take(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1_000_000:
        raise refused(table.at(key), f"is {value!r}, where a weight from 0 to 1,000,000 is expected")
    return float(value)


def text_list(table: SourceTable, key: str) -> list[str] | None:
    """A list of strings (openproxy's Vec<String>), None when absent."""
    value = table.take(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise refused(table.at(key), f"is {kind_of(value)}, where a list of strings is expected")
    return list(value)


def sub_table(table: SourceTable, key: str) -> SourceTable | None:
    value = table.take(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise refused(table.at(key), f"is {kind_of(value)}, where a mapping is expected")
    return SourceTable(value, table.at(key), table.report)


def split_host_port(text: str) -> tuple[str, int | None]:
    """`host:port` split as openproxy splits it: `[::1]:8080` has a port, an unbracketed IPv6 address
    has none; a port that is not a number counts as none."""
    if "]" in text:
        bracket = text.rfind("]")
        rest = text[bracket + 1 :]
        host = text[: bracket + 1]
        return host, _port_number(rest[1:]) if rest.startswith(":") else None
    if text.count(":") != 1:
        return text, None
    host, _, port = text.partition(":")
    return host, _port_number(port)


def _port_number(text: str) -> int | None:
    return int(text) if text.isdigit() and 0 <= int(text) <= 65535 else None


def unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def shell_difference(command: str) -> str | None:
    """Why `$(command)` may act differently in llmrelay, which splits it into words and runs it without
    a shell, than in openproxy, which hands it to `sh -c`; None when the two run the same thing."""
    try:
        shlex.split(command)
    except ValueError as exc:
        return f"the command cannot be split into words ({exc})"
    outside_quotes = _SINGLE_QUOTED.sub("", command)
    found = _SHELL_OPERATORS.search(outside_quotes)
    if found is None:
        return None
    return (
        f"the command uses shell syntax ({found.group().strip()!r}), which openproxy's `sh -c` interprets and"
        " llmrelay does not (it runs commands without a shell); wrap it as $(sh -c '...') to keep the shell"
    )


def literal_difference(value: str) -> str | None:
    """Why a key openproxy takes as written would be read differently by llmrelay; None when it would not."""
    if is_command(value):
        return "openproxy compares it as written; llmrelay runs it as a command and uses what it prints"
    if _ENV_REFERENCE.search(value):
        return "openproxy takes `${...}` as written; llmrelay reads it from the environment"
    return None
