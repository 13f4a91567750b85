"""`GET /usage` on the admin listener and `llmrelay usage`: the admin server of the supervisor, fed a
usage table filled here, answered over a real socket (the document, each grouping, a bad `by`,
auth, a store that cannot be read, the store asked on every request), the command against it (the
table, --by, --json, --admin-key, the address from the config, nothing listening), and the route
on a real `llmrelay serve`."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from relaytest import endpoint_config, free_port

from llmrelay.config.load import load_config
from llmrelay.config.resolved import RelayConfig
from llmrelay.limits.store import StoreUnavailable, UsageStore
from llmrelay.limits.types import UsageRow
from supervisor.admin import Admin, AdminActions
from supervisor.admin_views import AdminViews
from supervisor.health import HealthBoard
from supervisor.metrics import MetricsTotals
from supervisor.slots import SlotTable
from supervisor.status import StatusFile
from supervisor.usage import UsageTable

ADMIN_KEY = "adm-usage-5d1c0e"
ROWS = [
    UsageRow("alice", "oai", "main", "gpt-4o", 3, 3000, 300, 0),
    UsageRow("alice", "oai", "backup", "gpt-4o", 1, 1000, 100, 1),
    UsageRow("bob", "oai", "main", "gpt-4o-mini", 4, 40, 4, 2),
    UsageRow("bob", "ant", "ant#0", "claude-sonnet", 2, 200, 2000, 0),
]
COUNTS = ("requests", "input_tokens", "output_tokens", "errors")


def write_config(tmp_path: Path, port: int = 0, **admin: object) -> Path:
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in admin.items())
    path = tmp_path / "relay.toml"
    path.write_text(f'[server.admin]\nhost = "127.0.0.1"\nport = {port}\n{extra}\n[endpoints.oai]\ntarget_base = "http://127.0.0.1:9/v1"\n')
    os.chmod(path, 0o600)
    return path


class AdminServer:
    """The supervisor's admin object, serving on 127.0.0.1 in this test's trio loop."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    @property
    def url(self) -> str:
        return self.admin.listener.url

    async def get(self, route: str, method: str = "GET", headers: dict[str, str] | None = None) -> httpx.Response:
        url = self.url + route
        return await trio.to_thread.run_sync(lambda: httpx.request(method, url, headers=headers, timeout=10))


async def serve_admin(nursery: trio.Nursery, config: RelayConfig, usage: Callable[[], UsageStore] | None) -> AdminServer:
    table = SlotTable(config)
    status = StatusFile(None, os.getpid())
    views = AdminViews(table, HealthBoard(config), MetricsTotals(time.time()), status)
    admin = Admin(views, table, status, usage=usage)
    await admin.follow(config)
    nursery.start_soon(admin.run, AdminActions(lambda: None, lambda: None))
    with trio.fail_after(10):
        while not admin.listener.url:
            await trio.sleep(0.01)
    return AdminServer(admin)


@pytest.fixture
async def filled(tmp_path: Path) -> AsyncIterator[tuple[AdminServer, UsageTable]]:
    table = UsageTable(since=1_700_000_000.0)
    await table.add(ROWS)
    async with trio.open_nursery() as nursery:
        yield await serve_admin(nursery, load_config(write_config(tmp_path)), lambda: table), table
        nursery.cancel_scope.cancel()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("CONFIG_PATH", "LLMRELAY_ADMIN_KEY", "LLMRELAY_ADMIN")}


async def run_usage(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "llmrelay", "usage", *args],
            cwd=cwd, env={**_env(), **(env or {})}, capture_stdout=True, capture_stderr=True, check=False,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def counts(row: dict[str, Any]) -> tuple[int, ...]:
    return tuple(row[name] for name in COUNTS)


# -- the route ------------------------------------------------------------------------------------
async def test_usage_document_and_its_groupings(filled: tuple[AdminServer, UsageTable]) -> None:
    server, table = filled
    answer = await server.get("/usage")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    document = answer.json()
    assert document["since"] == 1_700_000_000.0 and document["by"] is None
    assert document["totals"] == {"requests": 10, "input_tokens": 4240, "output_tokens": 2404, "errors": 3}
    assert {(r["relay_key"], r["endpoint"], r["upstream"], r["model"]): counts(r) for r in document["rows"]} == {
        (r.relay_key, r.endpoint, r.upstream, r.model): (r.requests, r.input_tokens, r.output_tokens, r.errors) for r in ROWS
    }
    by_key = (await server.get("/usage?by=key")).json()
    assert by_key["by"] == "key" and by_key["totals"] == document["totals"]
    assert [(r["relay_key"], counts(r)) for r in by_key["rows"]] == [("alice", (4, 4000, 400, 1)), ("bob", (6, 240, 2004, 2))]
    assert all(r["endpoint"] is None and r["upstream"] is None and r["model"] is None for r in by_key["rows"])
    by_model = (await server.get("/usage?by=model")).json()["rows"]
    assert [(r["model"], r["requests"]) for r in by_model] == [("gpt-4o", 4), ("claude-sonnet", 2), ("gpt-4o-mini", 4)]
    by_endpoint = (await server.get("/usage?by=endpoint")).json()["rows"]
    assert [(r["endpoint"], counts(r)) for r in by_endpoint] == [("oai", (8, 4040, 404, 3)), ("ant", (2, 200, 2000, 0))]
    by_upstream = (await server.get("/usage?by=upstream")).json()["rows"]
    assert {r["upstream"]: r["requests"] for r in by_upstream} == {"main": 7, "backup": 1, "ant#0": 2}
    # what workers report next shows at once
    await table.add([UsageRow("carol", "oai", "main", "gpt-4o", 1, 5, 5, 0)])
    assert (await server.get("/usage")).json()["totals"]["requests"] == 11


async def test_bad_requests(filled: tuple[AdminServer, UsageTable]) -> None:
    server, _ = filled
    for query in ("?by=nope", "?by=", "?by=KEY", "?by=key&by=model", "?by=relay_key"):
        answer = await server.get("/usage" + query)
        assert answer.status_code == 400, query
        assert "key, model, endpoint, upstream" in answer.json()["error"]
    assert (await server.get("/usage?other=1")).status_code == 200  # other parameters are not ours to refuse
    answer = await server.get("/usage", method="POST")
    assert answer.status_code == 405 and answer.headers["allow"] == "GET"


async def test_auth(tmp_path: Path) -> None:
    table = UsageTable()
    await table.add(ROWS)
    async with trio.open_nursery() as nursery:
        server = await serve_admin(nursery, load_config(write_config(tmp_path, auth_keys=[ADMIN_KEY])), lambda: table)
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": ADMIN_KEY}):
            answer = await server.get("/usage?by=key", headers=headers)
            assert answer.status_code == 401 and ADMIN_KEY not in answer.text
        for query in ("?by=nope", ""):  # refused before the query is looked at
            assert (await server.get("/usage" + query)).status_code == 401
        answer = await server.get("/usage?by=key", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert answer.status_code == 200 and answer.json()["totals"]["requests"] == 10
        # the command: the key from the option, the environment, or the config it reads
        code, out, err = await run_usage("--admin", server.url, cwd=tmp_path)
        assert code == 1 and out == "" and "401" in err and ADMIN_KEY not in err
        assert len(err.strip().splitlines()) == 1
        code, out, _ = await run_usage("--admin", server.url, "--admin-key", ADMIN_KEY, cwd=tmp_path)
        assert code == 0 and out.splitlines()[-1].split()[:2] == ["total", "10"]
        code, out, _ = await run_usage("--admin", server.url, "--json", cwd=tmp_path, env={"LLMRELAY_ADMIN_KEY": ADMIN_KEY})
        assert code == 0 and json.loads(out)["totals"]["requests"] == 10
        nursery.cancel_scope.cancel()


class UnreachableStore:
    """A usage store whose backend cannot be reached (Redis down)."""

    async def add(self, rows: list[UsageRow]) -> None:
        raise StoreUnavailable("redis at 127.0.0.1:6379: connection refused")

    async def rows(self) -> list[UsageRow]:
        raise StoreUnavailable("redis at 127.0.0.1:6379: connection refused")


class PlainStore:
    """A usage store that does not say when its counting started."""

    async def add(self, rows: list[UsageRow]) -> None:
        pass

    async def rows(self) -> list[UsageRow]:
        return list(ROWS[:1])


async def test_the_store_is_asked_on_every_request(tmp_path: Path) -> None:
    first = UsageTable(since=100.0)
    await first.add(ROWS)
    stores: list[UsageStore] = [first]
    async with trio.open_nursery() as nursery:
        server = await serve_admin(nursery, load_config(write_config(tmp_path)), lambda: stores[-1])
        assert (await server.get("/usage")).json()["since"] == 100.0
        stores.append(UnreachableStore())  # (a reload moved the accounts to a Redis that is down)
        answer = await server.get("/usage?by=key")
        assert answer.status_code == 503 and "connection refused" in answer.json()["error"]
        code, _, err = await run_usage("--admin", server.url, cwd=tmp_path)
        assert code == 1 and "503" in err
        stores.append(PlainStore())
        document = (await server.get("/usage")).json()
        assert document["since"] == pytest.approx(server.admin.views.started)  # counted since the supervisor started
        assert document["totals"]["requests"] == 3
        nursery.cancel_scope.cancel()


async def test_without_a_store_the_table_is_empty(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        server = await serve_admin(nursery, load_config(write_config(tmp_path)), None)
        document = (await server.get("/usage?by=model")).json()
        assert document["rows"] == [] and document["totals"]["requests"] == 0 and document["since"] > 0
        code, out, _ = await run_usage("--admin", server.url, "--by", "model", cwd=tmp_path)
        assert code == 0 and out.splitlines()[1] == "no requests counted yet"
        nursery.cancel_scope.cancel()


# -- the command ----------------------------------------------------------------------------------
async def test_command_table_by_and_json(filled: tuple[AdminServer, UsageTable], tmp_path: Path) -> None:
    server, _ = filled
    code, out, err = await run_usage("--admin", server.url, cwd=tmp_path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("usage since ") and "ago" in lines[0]
    assert lines[1].split() == ["key", "endpoint", "upstream", "model", "requests", "input", "tokens", "output", "tokens", "errors"]
    assert lines[2].split() == ["alice", "oai", "main", "gpt-4o", "3", "3,000", "300", "0"]  # most tokens first
    assert ["bob", "ant", "ant#0", "claude-sonnet", "2", "200", "2,000", "0"] in [line.split() for line in lines]
    assert lines[-1].split() == ["total", "10", "4,240", "2,404", "3"]
    assert len(lines) == 2 + len(ROWS) + 1
    for by, first in (("key", "alice"), ("model", "gpt-4o"), ("endpoint", "oai"), ("upstream", "main")):
        code, out, err = await run_usage("--admin", server.url, "--by", by, cwd=tmp_path)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].endswith(f", by {by}") and lines[1].split()[0] == by
        assert lines[2].split()[0] == first and lines[-1].split()[:2] == ["total", "10"]
    code, out, _ = await run_usage("--admin", server.url, "--by", "endpoint", "--json", cwd=tmp_path)
    assert code == 0 and json.loads(out) == (await server.get("/usage?by=endpoint")).json()
    code, _, err = await run_usage("--admin", server.url, "--by", "nope", cwd=tmp_path)
    assert code == 2 and "nope" in err  # refused by the command line itself


async def test_command_finds_the_listener_in_the_config(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, port=port)
    table = UsageTable()
    await table.add(ROWS)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with trio.open_nursery() as nursery:
        server = await serve_admin(nursery, load_config(path), lambda: table)
        assert server.url == f"http://127.0.0.1:{port}"
        code, out, err = await run_usage("--config", str(path), "--by", "key", cwd=elsewhere)
        assert code == 0, err
        assert out.splitlines()[-1].split()[:2] == ["total", "10"]
        code, out, _ = await run_usage("--json", cwd=elsewhere, env={"CONFIG_PATH": str(path)})
        assert code == 0 and json.loads(out)["totals"]["requests"] == 10
        nursery.cancel_scope.cancel()


async def test_command_with_nothing_listening(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, port=port)
    for args in (("--config", str(path)), ("--admin", f"http://127.0.0.1:{port}"), ("--config", str(path), "--json", "--by", "key")):
        code, out, err = await run_usage(*args, cwd=tmp_path)
        assert code == 1 and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("llmrelay usage: no llmrelay admin listener at "), err
        assert "Traceback" not in err


# -- on a real relay ------------------------------------------------------------------------------
def test_usage_route_on_a_running_relay(start_relay, mock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    relay = start_relay(f"[server.admin]\nport = {port}\n\n" + endpoint_config("oai", mock), workers=2)
    body = {"model": "gpt-mock", "messages": [{"role": "user", "content": "hello there"}]}
    for _ in range(3):
        assert httpx.post(relay.url("/oai/v1/chat/completions"), json=body, timeout=10).status_code == 200
    admin = f"http://127.0.0.1:{port}"
    document = httpx.get(admin + "/usage", timeout=10).json()
    assert document["by"] is None and 0 < document["since"] <= time.time()
    assert set(document["totals"]) == set(COUNTS)
    for row in document["rows"]:
        assert set(row) == {"relay_key", "endpoint", "upstream", "model", *COUNTS}
    assert httpx.get(admin + "/usage?by=upstream", timeout=10).json()["by"] == "upstream"
    assert httpx.get(admin + "/usage?by=user", timeout=10).status_code == 400
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "llmrelay", "usage", "--config", str(relay.config_path), "--by", "endpoint"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage since ") and ", by endpoint" in done.stdout.splitlines()[0]
