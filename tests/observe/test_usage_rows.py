"""Usage accounting rows: what the worker's `UsageRecorder` makes of ended requests, and how the
supervisor's `UsageTable` sums, groups and shows them."""

from __future__ import annotations

import msgspec

from llmrelay.limits.store import UsageStore
from llmrelay.limits.types import UsageRow
from llmrelay.observe.usage_rows import MAX_ROWS, MODEL_CHARS, UsageRecorder, is_error
from llmrelay.relay.accesslog import AccessRecord
from supervisor.usage import UsageTable, group, render, totals, usage_document


def access(
    endpoint: str = "oai",
    upstream: str = "main",
    model: str | None = "gpt-4o",
    status: int = 200,
    usage: dict[str, int] | None = None,
    outcome: str = "ok",
    relay_key: str | None = None,
) -> AccessRecord:
    record = AccessRecord("POST", f"/{endpoint}/v1/chat/completions", "rid", "127.0.0.1", 0.0)
    record.endpoint, record.upstream, record.model, record.relay_key = endpoint, upstream, model, relay_key
    record.status, record.usage, record.outcome = status, usage, outcome
    return record


def by_key(rows: list[UsageRow]) -> dict[tuple[str, str, str, str], tuple[int, int, int, int]]:
    return {(r.relay_key, r.endpoint, r.upstream, r.model): (r.requests, r.input_tokens, r.output_tokens, r.errors) for r in rows}


def test_requests_tokens_and_errors_add_up_per_row() -> None:
    recorder = UsageRecorder()
    recorder.record(access(usage={"input": 10, "output": 5}, relay_key="alice"))
    recorder.record(access(usage={"input": 7, "output": 3}, relay_key="alice"))
    recorder.record(access(usage={"input": 1}, relay_key="alice"))  # a provider that reported input only
    recorder.record(access(status=429, relay_key="alice"))
    recorder.record(access(model="gpt-4o-mini", usage={"input": 2, "output": 2}, relay_key="alice"))
    recorder.record(access(upstream="backup", usage={"output": 4}, relay_key="bob"))
    recorder.record(access(endpoint="-", upstream="-", model=None, status=404))
    recorder.record(access(status=200, outcome="client_gone", usage={"input": 3}, relay_key="bob"))  # ended early
    recorder.record(access(status=0, outcome="connect_failed", relay_key="bob"))
    rows = recorder.take_rows()
    assert by_key(rows) == {
        ("alice", "oai", "main", "gpt-4o"): (4, 18, 8, 1),
        ("alice", "oai", "main", "gpt-4o-mini"): (1, 2, 2, 0),
        ("bob", "oai", "backup", "gpt-4o"): (1, 0, 4, 0),
        ("-", "-", "-", "unknown"): (1, 0, 0, 1),
        ("bob", "oai", "main", "gpt-4o"): (2, 3, 0, 2),
    }
    assert all(isinstance(row, UsageRow) for row in rows)


def test_take_rows_hands_what_grew_since_the_last_take() -> None:
    recorder = UsageRecorder()
    assert recorder.take_rows() == []
    recorder.record(access(usage={"input": 1, "output": 1}, relay_key="alice"))
    assert by_key(recorder.take_rows()) == {("alice", "oai", "main", "gpt-4o"): (1, 1, 1, 0)}
    assert recorder.take_rows() == [] and len(recorder) == 0
    recorder.record(access(usage={"input": 2, "output": 0}, relay_key="alice"))
    assert by_key(recorder.take_rows()) == {("alice", "oai", "main", "gpt-4o"): (1, 2, 0, 0)}


def test_errors() -> None:
    assert not is_error(200, "ok") and not is_error(304, "ok") and not is_error(204, "cors_preflight")
    assert is_error(400, "ok") and is_error(503, "no_usable_upstream") and is_error(0, "client_gone")
    assert is_error(200, "upstream_error") and is_error(200, "cut_at_drain_deadline")


def test_model_names_are_cut_and_rows_are_bounded() -> None:
    recorder = UsageRecorder(max_rows=5)
    recorder.record(access(model="m" * 5000, relay_key="alice"))
    recorder.record(access(model="", relay_key="alice"))  # an empty name is no name
    rows = recorder.take_rows()
    assert {r.model for r in rows} == {"m" * MODEL_CHARS, "unknown"}
    for index in range(20):  # clients choose model names: a flood of them
        recorder.record(access(model=f"made-up-{index}", usage={"input": 1, "output": 2}, relay_key="alice"))
    recorder.record(access(model="made-up-0", usage={"input": 1, "output": 2}, relay_key="alice"))  # seen: its own row
    recorder.record(access(model="made-up-99", usage={"input": 1, "output": 2}, relay_key="bob"))
    rows = recorder.take_rows()
    assert len(rows) == 7  # five distinct ones, then "other" for each (key, endpoint, upstream)
    counted = by_key(rows)
    assert counted[("alice", "oai", "main", "made-up-0")] == (2, 2, 4, 0)
    assert counted[("alice", "oai", "main", "other")] == (15, 15, 30, 0)
    assert counted[("bob", "oai", "main", "other")] == (1, 1, 2, 0)
    assert sum(r.requests for r in rows) == 22  # nothing lost
    assert UsageRecorder().max_rows == MAX_ROWS == 10_000


def test_rows_cross_the_control_pipe() -> None:
    recorder = UsageRecorder()
    recorder.record(access(usage={"input": 3, "output": 4}, relay_key="alice"))
    rows = recorder.take_rows()
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(rows), type=list[UsageRow]) == rows


# -- the supervisor's table --------------------------------------------------------------------------
ROWS = [
    UsageRow("alice", "oai", "main", "gpt-4o", 3, 300, 30, 0),
    UsageRow("alice", "oai", "backup", "gpt-4o", 1, 100, 10, 1),
    UsageRow("alice", "ant", "ant#0", "claude", 2, 50, 500, 0),
    UsageRow("bob", "oai", "main", "gpt-4o-mini", 5, 5, 5, 2),
    UsageRow("-", "oai", "main", "unknown", 1, 0, 0, 1),
]


async def test_the_table_sums_reports_from_many_workers() -> None:
    table = UsageTable(since=1000.0)
    store: UsageStore = table  # (the interface the supervisor and the admin view speak)
    await store.add(ROWS[:2])
    await store.add(ROWS)  # a second worker
    await store.add([UsageRow("alice", "oai", "main", "gpt-4o", 1, 1, 1, 1)])
    counted = by_key(await store.rows())
    assert counted[("alice", "oai", "main", "gpt-4o")] == (7, 601, 61, 1)
    assert counted[("alice", "oai", "backup", "gpt-4o")] == (2, 200, 20, 2)
    assert counted[("bob", "oai", "main", "gpt-4o-mini")] == (5, 5, 5, 2)
    assert len(counted) == 5 and table.since == 1000.0
    assert totals(await store.rows()) == {"requests": 17, "input_tokens": 856, "output_tokens": 586, "errors": 6}


async def test_the_table_is_bounded_and_loses_nothing() -> None:
    table = UsageTable(max_rows=3)
    await table.add([UsageRow("alice", "oai", "main", f"m{i}", 1, 1, 1, 0) for i in range(10)])
    await table.add([UsageRow("alice", "oai", "main", "m0", 1, 1, 1, 0)])
    counted = by_key(await table.rows())
    assert counted == {
        ("alice", "oai", "main", "m0"): (2, 2, 2, 0),
        ("alice", "oai", "main", "m1"): (1, 1, 1, 0),
        ("alice", "oai", "main", "m2"): (1, 1, 1, 0),
        ("alice", "oai", "main", "other"): (7, 7, 7, 0),
    }


def test_group_by_each_dimension() -> None:
    by_relay_key = group(ROWS, "key")
    assert [(r.relay_key, r.requests, r.input_tokens, r.output_tokens, r.errors) for r in by_relay_key] == [
        ("alice", 6, 450, 540, 1),  # most tokens first
        ("bob", 5, 5, 5, 2),
        ("-", 1, 0, 0, 1),
    ]
    assert all(r.endpoint == r.upstream == r.model == "" for r in by_relay_key)
    assert [(r.model, r.requests) for r in group(ROWS, "model")] == [("claude", 2), ("gpt-4o", 4), ("gpt-4o-mini", 5), ("unknown", 1)]
    assert [(r.endpoint, r.requests, r.errors) for r in group(ROWS, "endpoint")] == [("ant", 2, 0), ("oai", 10, 4)]
    assert [(r.upstream, r.requests) for r in group(ROWS, "upstream")] == [("ant#0", 2), ("main", 9), ("backup", 1)]
    # no dimension: rows as they are, the same four names summed
    assert by_key(group(ROWS + ROWS[:1], None)) == {**by_key(ROWS), ("alice", "oai", "main", "gpt-4o"): (6, 600, 60, 0)}
    table = UsageTable()
    table.add_rows(ROWS)
    assert table.by("endpoint") == group(ROWS, "endpoint")


def test_the_document() -> None:
    document = usage_document(ROWS, "model", 1234.5)
    assert document["since"] == 1234.5 and document["by"] == "model"
    assert document["totals"] == {"requests": 12, "input_tokens": 455, "output_tokens": 545, "errors": 4}
    rows = document["rows"]
    assert isinstance(rows, list)
    assert rows[0] == {
        "relay_key": None, "endpoint": None, "upstream": None, "model": "claude",
        "requests": 2, "input_tokens": 50, "output_tokens": 500, "errors": 0,
    }
    full = usage_document(ROWS, None, 1.0)
    assert full["by"] is None
    assert {"relay_key": "bob", "endpoint": "oai", "upstream": "main", "model": "gpt-4o-mini", "requests": 5, "input_tokens": 5, "output_tokens": 5, "errors": 2} in full["rows"]  # type: ignore[operator]
    assert usage_document([], "key", 1.0) == {"since": 1.0, "by": "key", "rows": [], "totals": {"requests": 0, "input_tokens": 0, "output_tokens": 0, "errors": 0}}


def test_render_the_table() -> None:
    document = usage_document(ROWS + [UsageRow("carol", "oai", "main", "gpt-4o", 1200, 1_234_567, 89_000, 0)], "key", 1000.0)
    lines = render(document, now=1000.0 + 192)
    assert lines[0].startswith("usage since ") and lines[0].endswith("(3m12s ago), by key")
    assert lines[1].split() == ["key", "requests", "input", "tokens", "output", "tokens", "errors"]
    assert lines[2].split() == ["carol", "1,200", "1,234,567", "89,000", "0"]
    assert lines[3].split() == ["alice", "6", "450", "540", "1"]
    assert lines[-1].split() == ["total", "1,212", "1,235,022", "89,545", "4"]
    assert len({len(line) for line in lines[1:]}) == 1  # aligned: counts right-aligned to the header
    full = render(usage_document(ROWS, None, 1000.0), now=1000.0)
    assert full[1].split()[:4] == ["key", "endpoint", "upstream", "model"]
    assert ["alice", "ant", "ant#0", "claude", "2", "50", "500", "0"] in [line.split() for line in full]
    assert render(usage_document([], None, 1000.0), now=1000.0)[1] == "no requests counted yet"


def test_render_reads_a_document_defensively() -> None:
    assert render({})[0] == "usage" and render({"rows": "nope", "since": "x"})[1] == "no requests counted yet"
    lines = render({"by": "key", "rows": [{"relay_key": "a\x1b[2Jb", "requests": "7"}, 3], "totals": None})
    assert lines[2].split() == ["a?[2Jb", "0", "0", "0", "0"]  # (no escape sequence reaches the terminal)
    assert lines[-1].split() == ["total", "0", "0", "0", "0"]


def test_the_bulk_fold_counts_exactly_what_each_request_would() -> None:
    import random

    from llmrelay.observe.usage_rows import FOLD_AT

    rng = random.Random(11)
    recorder = UsageRecorder()
    expected: dict[tuple[str, str, str, str], list[int]] = {}
    for _ in range(FOLD_AT * 3 + 5):
        record = access(
            endpoint=rng.choice(["oai", "ant"]),
            upstream=rng.choice(["main", "backup"]),
            model=rng.choice(["gpt-4o", "", None, "x" * 150]),
            status=rng.choice([200, 200, 400, 503, 0]),
            usage=rng.choice([None, {}, {"input": rng.randrange(90)}, {"input": 5, "output": rng.randrange(40)}]),
            outcome=rng.choice(["ok", "ok", "client_gone", "cors_preflight"]),
            relay_key=rng.choice(["alice", "bob", None]),
        )
        recorder.record(record)
        model = (record.model or "unknown")[:MODEL_CHARS]
        row = expected.setdefault((record.relay_key or "-", record.endpoint, record.upstream, model), [0, 0, 0, 0])
        usage = record.usage or {}
        row[0] += 1
        row[1] += usage.get("input", 0)
        row[2] += usage.get("output", 0)
        row[3] += is_error(record.status, record.outcome)
    assert by_key(recorder.take_rows()) == {key: tuple(row) for key, row in expected.items()}
    assert len(recorder) == 0
