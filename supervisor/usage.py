"""Usage accounting in the supervisor: the in-memory usage store, and how usage is shown.

`UsageTable` is the `UsageStore` of one machine (`limits.backend = "local"`): it sums the rows every
worker reports (`UsageReport.rows`). It lives in the supervisor, so it outlives any worker, a crash
and a SIGUSR2 rolling replacement alike; it starts empty when the supervisor starts (`since`). With
Redis, the Redis store keeps the sums instead and they outlive the supervisor too.

The views work on rows from any `UsageStore`: `group` folds them by one dimension (`key`, `model`,
`endpoint` or `upstream`), `usage_document` is the JSON of `GET /usage` on the admin listener, and
`render` turns that document (read back over HTTP, so read defensively) into the table that
`llmrelay usage` prints.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from llmrelay.limits.types import UsageRow

# The dimensions usage may be grouped by, and the row field each one keeps.
DIMENSIONS: dict[str, str] = {"key": "relay_key", "model": "model", "endpoint": "endpoint", "upstream": "upstream"}
NAME_FIELDS = ("relay_key", "endpoint", "upstream", "model")
COUNT_FIELDS = ("requests", "input_tokens", "output_tokens", "errors")
MAX_ROWS = 100_000  # distinct rows kept; past it, rows of models not seen yet are summed as OTHER_MODEL
OTHER_MODEL = "other"

_Key = tuple[str, str, str, str]


@runtime_checkable
class CountingSince(Protocol):
    """A usage store that knows when its counting started (unix time)."""

    @property
    def since(self) -> float: ...


class UsageTable:
    """Sums of usage rows by (relay key, endpoint, upstream, model), in memory.

    Each worker already bounds what it reports per second; this bounds what accumulates over the
    supervisor's life (clients choose model names): past `max_rows` distinct rows, the rows of a
    model not seen yet go to `OTHER_MODEL`, so their requests and tokens are still counted."""

    def __init__(self, since: float | None = None, max_rows: int = MAX_ROWS) -> None:
        self._since = time.time() if since is None else since
        self.max_rows = max_rows
        self._rows: dict[_Key, list[int]] = {}

    @property
    def since(self) -> float:
        return self._since

    def add_rows(self, rows: Iterable[UsageRow]) -> None:
        table = self._rows
        for row in rows:
            key = (row.relay_key, row.endpoint, row.upstream, row.model)
            counts = table.get(key)
            if counts is None:
                if len(table) >= self.max_rows:
                    key = (row.relay_key, row.endpoint, row.upstream, OTHER_MODEL)
                    counts = table.get(key)
                if counts is None:
                    counts = table[key] = [0, 0, 0, 0]
            counts[0] += row.requests
            counts[1] += row.input_tokens
            counts[2] += row.output_tokens
            counts[3] += row.errors

    def snapshot(self) -> list[UsageRow]:
        return [UsageRow(*key, *counts) for key, counts in self._rows.items()]

    def by(self, dimension: str | None) -> list[UsageRow]:
        """The rows folded by `dimension` (see `group`); every row as it is with None."""
        return group(self.snapshot(), dimension)

    # -- llmrelay.limits.store.UsageStore -------------------------------------------------------
    async def add(self, rows: list[UsageRow]) -> None:
        self.add_rows(rows)

    async def rows(self) -> list[UsageRow]:
        return self.snapshot()


def group(rows: Iterable[UsageRow], dimension: str | None) -> list[UsageRow]:
    """The rows summed by one dimension (`key`, `model`, `endpoint` or `upstream`): each result keeps
    that dimension's value and "" in the other name fields; with None, rows with the same four names
    are summed (a store may hold them apart). Ordered by tokens, then requests, most first, then by
    name. KeyError for an unknown dimension."""
    keep = NAME_FIELDS if dimension is None else (DIMENSIONS[dimension],)
    sums: dict[_Key, list[int]] = {}
    for row in rows:
        key = (
            row.relay_key if "relay_key" in keep else "",
            row.endpoint if "endpoint" in keep else "",
            row.upstream if "upstream" in keep else "",
            row.model if "model" in keep else "",
        )
        counts = sums.get(key)
        if counts is None:
            counts = sums[key] = [0, 0, 0, 0]
        counts[0] += row.requests
        counts[1] += row.input_tokens
        counts[2] += row.output_tokens
        counts[3] += row.errors
    folded = [UsageRow(*key, *counts) for key, counts in sums.items()]
    folded.sort(key=lambda r: (-(r.input_tokens + r.output_tokens), -r.requests, r.relay_key, r.endpoint, r.upstream, r.model))
    return folded


def totals(rows: Iterable[UsageRow]) -> dict[str, int]:
    sums = dict.fromkeys(COUNT_FIELDS, 0)
    for row in rows:
        sums["requests"] += row.requests
        sums["input_tokens"] += row.input_tokens
        sums["output_tokens"] += row.output_tokens
        sums["errors"] += row.errors
    return sums


def usage_document(rows: list[UsageRow], dimension: str | None, since: float) -> dict[str, object]:
    """The JSON of `GET /usage`: when counting started, the grouping, the rows and their totals.

    A grouped row carries the dimension's field, and null in the name fields it sums over."""
    keep = NAME_FIELDS if dimension is None else (DIMENSIONS[dimension],)
    shown: list[dict[str, object]] = []
    for row in group(rows, dimension):
        entry: dict[str, object] = {name: (getattr(row, name) if name in keep else None) for name in NAME_FIELDS}
        for name in COUNT_FIELDS:
            entry[name] = getattr(row, name)
        shown.append(entry)
    return {"since": since, "by": dimension, "rows": shown, "totals": totals(rows)}


# -- the table of `llmrelay usage` ----------------------------------------------------------------
_HEADERS = {"relay_key": "key", "endpoint": "endpoint", "upstream": "upstream", "model": "model"}
_COUNT_HEADERS = ("requests", "input tokens", "output tokens", "errors")


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _name(value: object) -> str:
    text = "-" if value is None or value == "" else str(value)
    return "".join(c if c.isprintable() else "?" for c in text)  # (names come from clients: no escapes)


def render(document: dict[str, Any], now: float | None = None) -> list[str]:
    """The /usage document as lines: a heading, one line per row (the grouping's columns left,
    the counts right-aligned), and a totals line."""
    from supervisor.status_table import duration

    now = time.time() if now is None else now
    dimension = document.get("by")
    columns = [DIMENSIONS[dimension]] if isinstance(dimension, str) and dimension in DIMENSIONS else list(NAME_FIELDS)
    since = document.get("since")
    heading = "usage"
    if isinstance(since, (int, float)) and not isinstance(since, bool) and since > 0:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        heading += f" since {started} ({duration(now - since)} ago)"
    if isinstance(dimension, str) and dimension:
        heading += f", by {dimension}"
    raw_rows = document.get("rows")
    rows = [row for row in raw_rows if isinstance(row, dict)] if isinstance(raw_rows, list) else []
    if not rows:
        return [heading, "no requests counted yet"]
    raw_totals = document.get("totals")
    sums = raw_totals if isinstance(raw_totals, dict) else totals([])
    cells = [[_HEADERS[c] for c in columns] + list(_COUNT_HEADERS)]
    for row in rows:
        cells.append([_name(row.get(c)) for c in columns] + [f"{_count(row.get(n)):,}" for n in COUNT_FIELDS])
    cells.append(["total"] + [""] * (len(columns) - 1) + [f"{_count(sums.get(n)):,}" for n in COUNT_FIELDS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    names = len(columns)

    def line(row: list[str]) -> str:
        parts = [cell.ljust(widths[i]) if i < names else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        return "  ".join(parts).rstrip()

    return [heading] + [line(row) for row in cells]


__all__ = ["CountingSince", "DIMENSIONS", "UsageTable", "group", "render", "totals", "usage_document"]
