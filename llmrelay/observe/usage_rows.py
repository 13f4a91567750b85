"""Usage accounting in the worker: what each relay key, endpoint, upstream and model used.

`UsageRecorder.record` is called once per ended request, from its access record, and costs one dict
update; `take_rows()` hands what grew since the previous call as `UsageRow`s, which the worker sends
to the supervisor in its `UsageReport` (the supervisor sums them in a store that outlives workers).

Every part of a row's key but the model comes from the config (relay key names, endpoint and
upstream names), so only the model can make rows multiply: clients choose it. Model names are cut to
`MODEL_CHARS`, and once `MAX_ROWS` distinct rows grew between two takes, requests naming a model not
seen yet are counted under `OTHER_MODEL`: a flood of made-up model names costs bounded memory and a
bounded report, and their requests and tokens are still counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmrelay.limits.types import UsageRow

if TYPE_CHECKING:
    from llmrelay.relay.accesslog import AccessRecord

NO_RELAY_KEY = "-"  # the request presented no relay key (an endpoint without auth_keys)
UNKNOWN_MODEL = "unknown"  # the relay could not read a model from the request
OTHER_MODEL = "other"  # models past MAX_ROWS distinct rows
MODEL_CHARS = 100
MAX_ROWS = 10_000
# Outcomes that are not failures although they are not "ok" (a CORS preflight answered 204).
_NOT_FAILURES = frozenset({"ok", "cors_preflight"})

_Key = tuple[str, str, str, str]  # (relay key name, endpoint, upstream, model)


def is_error(status: int, outcome: str) -> bool:
    """Whether a request counts as an error: answered >= 400, never answered, or ended by a failure
    (a client gone mid-stream, an upstream cut, a drain deadline) whatever its status line said."""
    return status >= 400 or status == 0 or outcome not in _NOT_FAILURES


class UsageRecorder:
    """Rows that grew since the last `take_rows`, as [requests, input, output, errors] by key."""

    __slots__ = ("_rows", "max_rows")

    def __init__(self, max_rows: int = MAX_ROWS) -> None:
        self.max_rows = max_rows
        self._rows: dict[_Key, list[int]] = {}

    def record(self, record: AccessRecord, relay_key_name: str | None) -> None:
        """One request ended: its relay key's name (None: it presented none), endpoint, upstream,
        model, tokens (when the provider reported them) and whether it failed."""
        model = record.model
        if model is None or not model:
            model = UNKNOWN_MODEL
        elif len(model) > MODEL_CHARS:
            model = model[:MODEL_CHARS]
        key = (relay_key_name or NO_RELAY_KEY, record.endpoint, record.upstream, model)
        rows = self._rows
        counts = rows.get(key)
        if counts is None:
            if len(rows) >= self.max_rows:
                key = (key[0], key[1], key[2], OTHER_MODEL)
                counts = rows.get(key)
            if counts is None:
                counts = rows[key] = [0, 0, 0, 0]
        counts[0] += 1
        usage = record.usage
        if usage is not None:
            counts[1] += usage.get("input", 0)
            counts[2] += usage.get("output", 0)
        status = record.status
        if status >= 400 or status == 0 or record.outcome != "ok" and record.outcome not in _NOT_FAILURES:
            counts[3] += 1  # (is_error, inline: this runs for every request)

    def take_rows(self) -> list[UsageRow]:
        """What grew since the previous call (and forget it: the supervisor keeps the sums)."""
        if not self._rows:
            return []
        rows = [UsageRow(*key, *counts) for key, counts in self._rows.items()]
        self._rows = {}
        return rows

    def __len__(self) -> int:
        return len(self._rows)


__all__ = ["MAX_ROWS", "MODEL_CHARS", "NO_RELAY_KEY", "OTHER_MODEL", "UNKNOWN_MODEL", "UsageRecorder", "is_error"]
