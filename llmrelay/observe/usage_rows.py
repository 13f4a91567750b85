"""Usage accounting in the worker: what each relay key, endpoint, upstream and model used.

`UsageRecorder.record` is called once per ended request, with its access record, and only keeps it
(one list append on the hot path); kept records are folded into rows in bulk, every `FOLD_AT` records
and before every take: grouped by row in one pass, then counted and summed by C code. `take_rows()`
hands what grew since the previous call as `UsageRow`s, which the worker sends to the supervisor in
its `UsageReport` (the supervisor sums them in a store that outlives workers).

Every part of a row's key but the model comes from the config (relay key names, endpoint and
upstream names), so only the model can make rows multiply: clients choose it. Model names are cut to
`MODEL_CHARS`, and once `MAX_ROWS` distinct rows grew between two takes, requests naming a model not
seen yet are counted under `OTHER_MODEL`: a flood of made-up model names costs bounded memory and a
bounded report, and their requests and tokens are still counted.
"""

from __future__ import annotations

from collections import Counter
from operator import attrgetter, methodcaller
from typing import TYPE_CHECKING

from llmrelay.limits.types import UsageRow
from llmrelay.observe.grouping import Folding, grouped

if TYPE_CHECKING:
    from llmrelay.relay.accesslog import AccessRecord

NO_RELAY_KEY = "-"  # the request presented no relay key (an endpoint without auth_keys)
UNKNOWN_MODEL = "unknown"  # the relay could not read a model from the request
OTHER_MODEL = "other"  # models past MAX_ROWS distinct rows
MODEL_CHARS = 100
MAX_ROWS = 10_000
FOLD_AT = 512  # kept records are folded into rows at this many (and before every take)
# Outcomes that are not failures although they are not "ok" (a CORS preflight answered 204).
_NOT_FAILURES = frozenset({"ok", "cors_preflight"})

_Key = tuple[str, str, str, str]  # (relay key name, endpoint, upstream, model)
_GROUP = attrgetter("relay_key", "endpoint", "upstream", "model")
_USAGE = attrgetter("usage")
_STATUS_OUTCOME = attrgetter("status", "outcome")
_INPUT = methodcaller("get", "input", 0)
_OUTPUT = methodcaller("get", "output", 0)


def is_error(status: int, outcome: str) -> bool:
    """Whether a request counts as an error: answered >= 400, never answered, or ended by a failure
    (a client gone mid-stream, an upstream cut, a drain deadline) whatever its status line said."""
    return status >= 400 or status == 0 or outcome not in _NOT_FAILURES


class UsageRecorder(Folding["AccessRecord"]):
    """Rows that grew since the last `take_rows`, as [requests, input, output, errors] by key.

    `record(record)`: one request ended: its relay key's name (`record.relay_key`; None: it presented
    none), endpoint, upstream, model, tokens (when the provider reported them) and whether it failed."""

    __slots__ = ("_rows", "max_rows")

    FOLD_AT = FOLD_AT

    def __init__(self, max_rows: int = MAX_ROWS) -> None:
        super().__init__()
        self.max_rows = max_rows
        self._rows: dict[_Key, list[int]] = {}

    record = Folding.keep

    def fold_kept(self, kept: list[AccessRecord]) -> None:
        """Add the kept records to their rows (in the order the rows first appeared)."""
        for (relay_key, endpoint, upstream, model), group in grouped(kept, _GROUP).items():
            counts = self._row(relay_key or NO_RELAY_KEY, endpoint, upstream, model)
            counts[0] += len(group)
            usages = list(filter(None, map(_USAGE, group)))
            if usages:
                counts[1] += sum(map(_INPUT, usages))
                counts[2] += sum(map(_OUTPUT, usages))
            for (status, outcome), count in Counter(map(_STATUS_OUTCOME, group)).items():
                if is_error(status, outcome):
                    counts[3] += count

    def _row(self, relay_key: str, endpoint: str, upstream: str, model: str | None) -> list[int]:
        if model is None or not model:
            model = UNKNOWN_MODEL
        elif len(model) > MODEL_CHARS:
            model = model[:MODEL_CHARS]
        key = (relay_key, endpoint, upstream, model)
        rows = self._rows
        counts = rows.get(key)
        if counts is None:
            if len(rows) >= self.max_rows:
                key = (relay_key, endpoint, upstream, OTHER_MODEL)
                counts = rows.get(key)
            if counts is None:
                counts = rows[key] = [0, 0, 0, 0]
        return counts

    def take_rows(self) -> list[UsageRow]:
        """What grew since the previous call (and forget it: the supervisor keeps the sums)."""
        self.fold()
        if not self._rows:
            return []
        rows = [UsageRow(*key, *counts) for key, counts in self._rows.items()]
        self._rows = {}
        return rows

    def __len__(self) -> int:
        """Rows and kept records not handed over yet."""
        return len(self._rows) + len(self._kept)


__all__ = ["FOLD_AT", "MAX_ROWS", "MODEL_CHARS", "NO_RELAY_KEY", "OTHER_MODEL", "UNKNOWN_MODEL", "UsageRecorder", "is_error"]
