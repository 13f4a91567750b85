"""Reloads, rolling replacement and self-healing under real load: nothing may be lost.

Load loops run in threads, bounded in count and time, without client retries: one keep-alive client
sending back to back, one opening a new connection per request, and clients of long SSE streams whose
bytes are compared with what the mock provider sent.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from mock_providers import MockProvider
from relaytest import ROOT, endpoint_config

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MAX_REQUESTS = 20000
LOOP_SECONDS = 60.0


class Load:
    """Counters shared by the load threads."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.ok = 0
        self.streams_ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.deadline = time.monotonic() + LOOP_SECONDS

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline and self.ok < MAX_REQUESTS

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    def start(self, target, *args) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, args=(self, *args), daemon=True)
        thread.start()
        self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def _one_request(load: Load, label: str, client: httpx.Client, url: str) -> None:
    try:
        response = client.post(url, json=CHAT)
    except httpx.HTTPError as exc:
        load.fail(f"{label}: {type(exc).__name__}: {exc}")
        return
    if response.status_code != 200:
        load.fail(f"{label}: status {response.status_code}")
    else:
        load.ok += 1


def keepalive_client(load: Load, url: str) -> None:
    """Back to back on one keep-alive connection (a new one only when the relay closes it)."""
    with httpx.Client(timeout=10) as client:
        while load.running():
            _one_request(load, "keep-alive", client, url)


def new_connection_client(load: Load, url: str) -> None:
    while load.running():
        with httpx.Client(timeout=10) as client:
            _one_request(load, "new-connection", client, url)


def stream_client(load: Load, url: str, mock: MockProvider, events: int = 30, gap: float = 0.05) -> None:
    with httpx.Client(timeout=20) as client:
        while load.running():
            request_id = uuid.uuid4().hex
            try:
                with client.stream(
                    "POST",
                    url,
                    json={**CHAT, "stream": True},
                    headers={"x-request-id": request_id, "x-mock-events": str(events), "x-mock-delay": str(gap)},
                ) as response:
                    received = b"".join(response.iter_raw())
                sent = bytes(mock.stream_bodies[mock.index_of(request_id)])
                if received != sent:
                    load.fail(f"stream {request_id}: {len(received)} bytes received, {len(sent)} sent")
                else:
                    load.streams_ok += 1
            except httpx.HTTPError as exc:
                load.fail(f"stream: {type(exc).__name__}: {exc}")


def wait_for_log(relay, text: str, count: int = 1, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if relay.logs().count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} x{count} not logged within {timeout} s:\n{relay.logs()[-4000:]}")


def health(relay) -> dict:  # type: ignore[no-untyped-def, type-arg]
    return httpx.get(relay.url("/health"), timeout=5).json()


def serving_pids(relay) -> set[int]:  # type: ignore[no-untyped-def]
    return {w["pid"] for w in health(relay)["workers"] if w["state"] == "serving"}


SERVER = "[server]\nkeepalive_timeout = 2.0\ndrain_timeout = 60\nheartbeat_interval = 0.5\nheartbeat_timeout = 3.0\n"


def test_sigusr2_and_sighup_under_load_lose_nothing(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(SERVER + endpoint_config("oai", mock), workers=3)
    url = relay.url("/oai/v1/chat/completions")
    load = Load()
    load.start(keepalive_client, url)
    load.start(new_connection_client, url)
    load.start(stream_client, url, mock)
    load.start(stream_client, url, mock, 20, 0.1)
    try:
        time.sleep(1.0)
        original = set(relay.worker_pids())
        relay.send_signal(signal.SIGUSR2)
        wait_for_log(relay, "rolling replacement done", 1)
        assert not serving_pids(relay) & original, "a worker survived SIGUSR2"
        assert relay.config_path is not None
        relay.config_path.write_text(SERVER + endpoint_config("oai", mock) + endpoint_config("extra", mock))
        relay.send_signal(signal.SIGHUP)
        wait_for_log(relay, "reload ok", 1)
        relay.send_signal(signal.SIGUSR2)
        wait_for_log(relay, "rolling replacement done", 2)
        relay.send_signal(signal.SIGHUP)
        wait_for_log(relay, "reload ok", 2)
        time.sleep(1.0)
    finally:
        load.finish()
    assert load.failures == [], load.failures[:10]
    assert load.ok > 100 and load.streams_ok >= 4, (load.ok, load.streams_ok)
    assert httpx.get(relay.url("/extra/v1/models"), timeout=5).status_code == 200
    assert relay.stop() == 0


def test_sigkill_of_a_worker_refuses_no_connection(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(SERVER + endpoint_config("oai", mock), workers=2)
    load = Load()
    load.start(new_connection_client, relay.url("/oai/v1/chat/completions"))
    try:
        time.sleep(0.5)
        victim = relay.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for_log(relay, f"worker {victim} (slot 0) exited", 1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(relay.worker_pids()) < 2 or victim in relay.worker_pids()):
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        load.finish()
    refused = [f for f in load.failures if "ConnectError" in f]
    assert refused == []
    assert len(load.failures) <= 1, load.failures  # at most the killed worker's request in flight
    assert len(relay.worker_pids()) == 2 and victim not in relay.worker_pids()
    assert "exited with signal 9" in relay.logs()


def test_drain_keeps_idle_streams_alive_and_the_deadline_cuts_them_honestly(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    config = (
        "[server]\ndrain_timeout = 2.5\ndrain_keepalive_interval = 0.4\n"
        + endpoint_config("oai", mock)
        + endpoint_config("claude", mock, "anthropic", "")
    )
    relay = start_relay(config)
    results: dict[str, list[bytes]] = {}
    errors: dict[str, str] = {}
    started = threading.Barrier(3)

    def stream(name: str, path: str) -> None:
        lines: list[bytes] = []
        results[name] = lines
        try:
            with httpx.stream(
                "POST",
                relay.url(path),
                json={**CHAT, "stream": True, "max_tokens": 5},
                headers={"x-mock-events": "10", "x-mock-delay": "1.0"},
                timeout=20,
            ) as response:
                started.wait(10)
                for line in response.iter_lines():
                    lines.append(line.encode())
        except httpx.HTTPError as exc:
            errors[name] = type(exc).__name__

    threads = [
        threading.Thread(target=stream, args=("openai", "/oai/v1/chat/completions")),
        threading.Thread(target=stream, args=("anthropic", "/claude/v1/messages")),
    ]
    for thread in threads:
        thread.start()
    started.wait(10)
    time.sleep(0.2)
    relay.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(20)
    assert relay.process.wait(20) == 0
    for name in ("openai", "anthropic"):
        assert b": keepalive" in results[name], results[name]  # quiet streams were kept alive
        assert errors.get(name) == "RemoteProtocolError"  # then cut, never ended cleanly
    assert any(b'"code":"stream_cut"' in line for line in results["openai"])
    assert b"data: [DONE]" not in results["openai"]
    assert b"event: error" in results["anthropic"]
    assert any(b"overloaded_error" in line for line in results["anthropic"])
    assert "cutting 2 responses" in relay.logs() or "cutting" in relay.logs()


def install_copy(where: Path) -> Path:
    """A copy of the packages on a PYTHONPATH of its own: an installation a test may upgrade."""
    for package in ("llmrelay", "supervisor"):
        shutil.copytree(ROOT / package, where / package, ignore=shutil.ignore_patterns("__pycache__"))
    return where


def test_upgrade_by_rolling_replacement_runs_the_new_code(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    installed = install_copy(tmp_path / "site")
    relay = start_relay(SERVER + endpoint_config("oai", mock), workers=2, env={"PYTHONPATH": str(installed)})
    old_version = health(relay)["version"]
    init = installed / "llmrelay" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{old_version}"', '__version__ = "9.9.9-upgraded"'))
    relay.send_signal(signal.SIGUSR2)
    wait_for_log(relay, "rolling replacement done")
    versions = {w["version"] for w in health(relay)["workers"] if w["state"] == "serving"}
    assert versions == {"9.9.9-upgraded"}
    assert health(relay)["version"] == "9.9.9-upgraded"


def test_worker_count_signals(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(SERVER + endpoint_config("oai", mock), workers=2)
    load = Load()
    load.start(new_connection_client, relay.url("/oai/v1/chat/completions"))
    try:
        relay.send_signal(signal.SIGTTIN)
        wait_for_log(relay, "worker count 2 -> 3")
        deadline = time.monotonic() + 10
        while len(serving_pids(relay)) != 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(serving_pids(relay)) == 3
        relay.send_signal(signal.SIGTTOU)  # signals of one kind coalesce: one at a time
        wait_for_log(relay, "worker count 3 -> 2")
        relay.send_signal(signal.SIGTTOU)
        wait_for_log(relay, "worker count 2 -> 1")
        relay.send_signal(signal.SIGTTOU)
        wait_for_log(relay, "cannot go below one worker")
        time.sleep(3.0)  # the retired workers drain (keep-alive timeout 2 s) and exit
    finally:
        load.finish()
    assert load.failures == [], load.failures[:10]
    assert len(relay.worker_pids()) == 1


def test_a_silent_worker_is_killed_and_replaced(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(SERVER + endpoint_config("oai", mock), workers=2)
    victim = relay.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        wait_for_log(relay, f"worker {victim} (slot 0) sent no heartbeat", 1, timeout=15)
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "sent no heartbeat" in relay.logs()
    deadline = time.monotonic() + 10
    while (len(relay.worker_pids()) != 2 or victim in relay.worker_pids()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert victim not in relay.worker_pids() and len(relay.worker_pids()) == 2


def test_workers_over_their_memory_limit_are_recycled(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay("[server]\nheartbeat_interval = 0.3\nheartbeat_timeout = 5\nmax_worker_rss = 1\n" + endpoint_config("oai", mock))
    first = relay.worker_pids()
    wait_for_log(relay, "recycling worker", 1, timeout=15)
    wait_for_log(relay, "slot 0: pid", 1, timeout=15)
    assert httpx.get(relay.url("/oai/v1/models"), timeout=5).status_code == 200
    assert set(relay.worker_pids()) - set(first)


def test_health_is_one_shared_view(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    dead = (
        f'[endpoints.dead]\ntarget_base = "http://127.0.0.1:{_closed_port()}/v1"\nprovider = "openai"\n'
        "health_check = { interval = 1, timeout = 1, unhealthy_threshold = 1 }\n"
    )
    relay = start_relay(SERVER + endpoint_config("oai", mock) + dead, workers=3, wait=False)
    relay.wait_ready(workers=3, statuses=(200, 503))  # (the first check may already have failed)
    wait_for_log(relay, "upstream dead/dead#0 unhealthy: 1 failed check")
    time.sleep(1.0)  # the broadcast reaches every worker
    with httpx.Client(timeout=5) as client:
        refused = client.post(relay.url("/dead/v1/chat/completions"), json=CHAT)
    assert refused.status_code == 503 and "retry-after" in refused.headers  # nothing usable: at once
    seen_by: dict[int, dict] = {}  # type: ignore[type-arg]
    for _ in range(60):
        with httpx.Client(timeout=5) as client:
            response = client.get(relay.url("/health"))
        assert response.status_code == 503  # an endpoint has nothing usable: not ready
        seen_by[int(response.headers["x-llmrelay-worker"])] = response.json()
    assert httpx.get(relay.url("/health?endpoint=dead"), timeout=5).status_code == 503
    assert httpx.get(relay.url("/health?endpoint=oai"), timeout=5).status_code == 200
    assert len(seen_by) >= 2
    tables = []
    for view in seen_by.values():
        assert view["status"] == "failing"
        dead_view = view["endpoints"]["dead"]
        assert dead_view["usable"] is False and dead_view["upstreams"]["dead#0"]["state"] == "unhealthy"
        assert view["endpoints"]["oai"]["upstreams"]["oai#0"]["state"] == "ok"
        assert sorted((w["slot"], w["pid"]) for w in view["workers"]) == sorted(
            (w["slot"], w["pid"]) for w in next(iter(seen_by.values()))["workers"]
        )
        for worker in view["workers"]:
            assert set(worker) >= {"pid", "slot", "uptime", "in_flight", "state"}
        tables.append({name: {u: {k: v for k, v in entry.items() if k not in ("last_check", "last_check_ms")} for u, entry in ep["upstreams"].items()} for name, ep in view["endpoints"].items()})
    assert all(table == tables[0] for table in tables)  # the same table, whichever worker answers


def test_reload_that_moves_the_listener(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    from relaytest import free_port

    old_port, new_port = free_port(), free_port()
    server = "[server]\nport = {}\nkeepalive_timeout = 1.0\n"
    relay = start_relay(server.format(old_port) + endpoint_config("oai", mock), workers=2, port=old_port, port_flag=False)
    load = Load()
    load.start(keepalive_client, f"http://127.0.0.1:{old_port}/oai/v1/chat/completions")
    try:
        time.sleep(0.5)
        assert relay.config_path is not None
        relay.config_path.write_text(server.format(new_port) + endpoint_config("oai", mock))
        relay.send_signal(signal.SIGHUP)
        wait_for_log(relay, f"listeners move to 127.0.0.1:{new_port}")
        wait_for_log(relay, "slot 1: pid")
        assert httpx.get(f"http://127.0.0.1:{new_port}/oai/v1/models", timeout=5).status_code == 200
        time.sleep(2.5)  # the old workers finish their keep-alive connections and exit
    finally:
        load.stop.set()
        for thread in load.threads:
            thread.join(30)
    # The keep-alive client was told `Connection: close` and then found the old port closed.
    assert all("ConnectError" in failure for failure in load.failures), load.failures[:5]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{old_port}/oai/v1/models", timeout=5)
    assert len(relay.worker_pids()) == 2


def test_reload_and_restart_commands(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pid_file = tmp_path / "relay.pid"
    relay = start_relay(SERVER + endpoint_config("oai", mock), "--pid-file", str(pid_file), workers=2)
    env = {k: v for k, v in os.environ.items() if k != "LLMRELAY_PID_FILE"}
    result = subprocess.run(
        [sys.executable, "-m", "llmrelay", "reload", "--pid-file", str(pid_file)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0 and "SIGHUP" in result.stdout and "reload applied: generation 2" in result.stdout
    assert "reload ok" in relay.logs()  # the command returned once the reload was done
    before = set(relay.worker_pids())
    result = subprocess.run(
        [sys.executable, "-m", "llmrelay", "restart", "--pid-file", str(pid_file)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0 and "SIGUSR2" in result.stdout and "restart done" in result.stdout
    assert "rolling replacement done" in relay.logs()
    assert not serving_pids(relay) & before
    missing = subprocess.run(
        [sys.executable, "-m", "llmrelay", "reload", "--pid-file", str(tmp_path / "none.pid")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert missing.returncode == 1 and "no pid file" in missing.stderr


def test_a_successor_that_cannot_start_leaves_the_old_worker_serving(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    installed = install_copy(tmp_path / "site")
    relay = start_relay(SERVER + endpoint_config("oai", mock), env={"PYTHONPATH": str(installed)})
    before = relay.worker_pids()
    (installed / "llmrelay" / "worker" / "__main__.py").write_text("raise SystemExit('broken upgrade')\n")
    relay.send_signal(signal.SIGUSR2)
    wait_for_log(relay, "did not become ready")
    wait_for_log(relay, "rolling replacement stopped at slot 0")
    assert "failed to boot" not in relay.logs()  # a successor that is given up on is not respawned
    assert relay.worker_pids() == before
    assert httpx.get(relay.url("/oai/v1/models"), timeout=5).status_code == 200


def _closed_port() -> int:
    from relaytest import free_port

    return free_port()


@pytest.fixture(autouse=True)
def _no_pid_file_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMRELAY_PID_FILE", raising=False)
