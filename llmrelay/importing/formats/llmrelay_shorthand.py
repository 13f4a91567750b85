"""llmrelay's own format, as the Rust llm-api-proxy also writes it (`[server]` and `[endpoints.*]` with
`proxy_url` and `target_base`; an endpoint without `target_base` takes `server.target_base`).

Nothing needs translating: every key llmrelay's schema knows is carried over unchanged, at the same
path. The file is checked against the schema (`config.decode`, every error at once); a key it does not
know, or a value it refuses, is left out and reported as a change in behaviour, with the schema's
did-you-mean when it has one, so the written config always loads.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from llmrelay.config.decode import decode
from llmrelay.config.schema import ConfigFile
from llmrelay.importing.formats import Converted
from llmrelay.importing.formats.source_keys import require_some_key, require_table
from llmrelay.importing.report import Report
from llmrelay.importing.sources import ImportSourceError

FORMAT_LABEL = "llmrelay / llm-api-proxy"
MAX_PASSES = 20  # each pass removes at least one key; a section's own check may only show once its keys pass
_INDEX = re.compile(r"\[(\d+)\]")


def convert(data: dict[str, Any], report: Report) -> Converted:
    for key in ("server", "endpoints", "limits"):
        require_table(data, key, FORMAT_LABEL)
    require_some_key(data, ("endpoints", "server"), FORMAT_LABEL)
    kept = copy.deepcopy(data)
    for _ in range(MAX_PASSES):
        errors: list[str] = []
        decode(ConfigFile, kept, errors)
        if not errors:
            break
        for error in errors:
            _drop_refused(kept, error, report)
    else:
        raise ImportSourceError("the file keeps failing llmrelay's schema after its refused keys were left out")
    _report_kept(kept, "", report)
    comments = {f"endpoints.{name}": f"From [endpoints.{name}]." for name in kept.get("endpoints", {})}
    if "server" in kept:
        comments["server"] = "From [server]."
    return Converted(kept, comments)


def _drop_refused(data: dict[str, Any], error: str, report: Report) -> None:
    """Take the key an error names (`endpoints.prod.target_bse: unknown key (...)`) out of `data`."""
    path, _, problem = error.partition(": ")
    if path == "the file":
        raise ImportSourceError(f"the file as a whole does not fit llmrelay's schema: {problem}")
    located = _locate(data, path)
    if located is None:
        raise ImportSourceError(f"llmrelay's schema refuses {error}, and the key cannot be found to leave it out")
    container, key = located
    del container[key]
    reason = problem if problem.startswith("unknown key") else f"refused by llmrelay's schema: {problem}"
    report.dropped(path, reason, changes_behaviour=True)


def _locate(data: Any, path: str) -> tuple[Any, Any] | None:
    """(the dict or list holding the last key of `path`, that key). Keys may hold dots themselves: the
    longest key of each table that starts the rest of the path is taken."""
    rest = path
    container: Any = data
    while True:
        key: str | int | None
        if isinstance(container, dict):
            key = _longest_key(container, rest)
            if key is None:
                return None
            rest = rest[len(key):]
        elif isinstance(container, list):
            match = _INDEX.match(rest)
            if match is None or int(match.group(1)) >= len(container):
                return None
            key = int(match.group(1))
            rest = rest[match.end():]
        else:
            return None
        if not rest:
            return container, key
        container = container[key]
        rest = rest[1:] if rest.startswith(".") else rest


def _longest_key(table: dict[str, Any], rest: str) -> str | None:
    fitting = [key for key in table if isinstance(key, str) and rest.startswith(key) and rest[len(key):len(key) + 1] in ("", ".", "[")]
    return max(fitting, key=len) if fitting else None


def _report_kept(value: Any, path: str, report: Report) -> None:
    """Every key left, as carried over to the same path (tables and lists of tables descended into)."""
    if isinstance(value, dict) and (value or not path):
        for key, item in value.items():
            _report_kept(item, f"{path}.{key}" if path else str(key), report)
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            _report_kept(item, f"{path}[{index}]", report)
    else:
        report.moved(path, path)
