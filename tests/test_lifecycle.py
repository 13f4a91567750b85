"""Processes and signals: several workers, graceful stop with a stream in flight, client disconnects,
pid files, PORT, the embedded default, and no orphaned workers."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from relaytest import BackgroundStream, endpoint_config, free_port
from mock_providers import MockProvider

STREAM_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_all_workers_serve(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock), workers=4)
    pids = set()
    for _ in range(200):
        with httpx.Client(timeout=5) as client:  # a new connection each time
            pids.add(int(client.get(relay.url("/health")).headers["x-llmrelay-worker"]))
        if len(pids) == 4:
            break
    assert len(pids) >= 3, pids
    assert pids <= set(relay.worker_pids())


def test_sigterm_lets_a_stream_in_flight_complete(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pid_file = tmp_path / "relay.pid"
    relay = start_relay(endpoint_config("oai", mock), "--pid-file", str(pid_file))
    assert int(pid_file.read_text()) == relay.pid
    stream = BackgroundStream(relay, delay=0.3, events=8)
    assert stream.started.wait(10)
    relay.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):
        httpx.get(relay.url("/health"), timeout=2)  # no longer accepting
    stream.join(20)
    events = stream.events
    assert events[-1] == "data: [DONE]"
    assert len(events) == 1 + 8 + 1 + 1  # role, 8 words, finish, [DONE]
    assert relay.process.wait(20) == 0
    assert not pid_file.exists()
    logs = relay.logs()
    assert "graceful stop" in logs and "supervisor exiting" in logs


def test_sigterm_with_idle_keepalive_connections_exits_promptly(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock))
    client = httpx.Client(timeout=5)
    assert client.get(relay.url("/oai/v1/models")).status_code == 200  # leaves an idle keep-alive connection
    started = time.monotonic()
    relay.send_signal(signal.SIGTERM)
    assert relay.process.wait(10) == 0
    assert time.monotonic() - started < 5
    client.close()


def test_client_disconnect_mid_stream_closes_the_upstream(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock))
    with httpx.stream(
        "POST",
        relay.url("/oai/v1/chat/completions"),
        json=STREAM_BODY,
        headers={"x-mock-delay": "0.5", "x-mock-events": "40"},
        timeout=10,
    ) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        left_at = time.monotonic()
    assert mock.wait_for_disconnect(2.0), "the upstream request was not closed after the client left"
    assert time.monotonic() - left_at < 1.0
    assert wait_until(lambda: "outcome=client_gone" in relay.logs(), 3)
    assert httpx.get(relay.url("/oai/v1/models"), timeout=5).status_code == 200


def test_client_disconnect_before_first_byte_closes_the_upstream(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            relay.url("/oai/v1/chat/completions"), json=STREAM_BODY, headers={"x-mock-hang": "1"}, timeout=0.5
        )
    assert mock.wait_for_disconnect(2.0)


def test_supervisor_killed_leaves_no_worker_behind(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock), workers=2)
    workers = relay.worker_pids()
    assert len(workers) == 2
    relay.process.kill()
    relay.process.wait(5)
    assert wait_until(lambda: not any(pid_alive(pid) for pid in workers), 10), "orphaned workers"


def test_killed_worker_is_respawned(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("oai", mock), workers=2)
    victim = relay.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    # The supervisor logs the death, then starts a successor in the same slot.
    assert wait_until(lambda: f"worker {victim} (slot 0) exited with signal 9" in relay.logs(), 10), relay.logs()
    assert wait_until(lambda: relay.logs().count("started worker slot 0 pid") == 2, 10), relay.logs()
    assert wait_until(lambda: len(relay.worker_pids()) == 2 and victim not in relay.worker_pids(), 10)
    for _ in range(10):
        assert httpx.get(relay.url("/oai/v1/models"), timeout=5).status_code == 200


def test_port_environment_variable(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    start_relay(endpoint_config("oai", mock), env={"PORT": str(port)}, port=port, port_flag=False)
    assert httpx.get(f"http://127.0.0.1:{port}/oai/v1/models", timeout=5).status_code == 200


def test_embedded_default_without_a_config_file(start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(None)
    health = httpx.get(relay.url("/health"), timeout=5).json()
    assert set(health["endpoints"]) == {"openai", "anthropic", "gemini", "groq"}
    assert health["endpoints"]["openai"]["upstreams"]["openai#0"]["target"] == "https://api.openai.com/v1"
    assert "config: <embedded default>" in relay.logs()


def test_local_config_file_is_found(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "llmrelay.toml").write_text(endpoint_config("local_file", mock))
    relay = start_relay(None)
    assert httpx.get(relay.url("/local_file/v1/models"), timeout=5).status_code == 200


def test_sighup_reload_adds_an_endpoint_and_rejects_a_broken_file(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(endpoint_config("one", mock), workers=2)
    assert relay.config_path is not None
    relay.config_path.write_text("[server\nbroken")
    relay.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload rejected" in relay.logs(), 5)
    assert httpx.get(relay.url("/one/v1/models"), timeout=5).status_code == 200
    relay.config_path.write_text(endpoint_config("one", mock) + endpoint_config("two", mock))
    relay.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload ok" in relay.logs(), 5)
    time.sleep(1.0)  # every worker switches within a second
    for _ in range(20):
        with httpx.Client(timeout=5) as client:  # new connections reach both workers
            assert client.get(relay.url("/two/v1/models")).status_code == 200


def test_bind_failure_exits_with_a_clear_error(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        relay = start_relay(endpoint_config("oai", mock), port=port, wait=False)
        assert relay.process.wait(20) == 3
    assert f"cannot listen on 127.0.0.1:{port}" in relay.logs()
