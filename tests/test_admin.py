"""The admin listener, served by the supervisor: every route, its auth, 404/405, POST /reload and
/restart answering with the outcome, /status and /health, and the listener's life (bind failure,
disabled, moved by a reload, up while every worker is killed)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from relaytest import endpoint_config, free_port, get_health, upstreams_config, wait_until

ADMIN_KEY = "adm-5f0e9c2b7a"
OTHER_KEY = "adm-second-118d"
RELAY_KEY = "sk-relay-admin-4410"


def admin_section(port: int, **keys: object) -> str:
    lines = ["[server.admin]", f"port = {port}"]
    for key, value in keys.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n\n"


def admin_url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


def status_file(relay) -> dict:  # type: ignore[no-untyped-def]
    return json.loads((relay.workdir / "llmrelay.pid.status").read_text())


def test_routes_methods_and_paths(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    relay = start_relay(admin_section(port) + endpoint_config("oai", mock), workers=2)
    with httpx.Client(timeout=10) as client:
        metrics = client.get(admin_url(port, "/metrics"))
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "llmrelay_build_info" in metrics.text
        assert metrics.headers["connection"] == "close"
        health = client.get(admin_url(port, "/health"))
        assert health.status_code == 200 and health.json()["status"] == "ok"
        status = client.get(admin_url(port, "/status"))
        assert status.status_code == 200 and status.headers["content-type"] == "application/json"
        assert len(status.json()["workers"]) == 2
        for path in ("/", "/nope", "/metrics/x", "/health/"):
            assert client.get(admin_url(port, path)).status_code == 404, path
        for method, path, allowed in (("POST", "/metrics", "GET"), ("DELETE", "/status", "GET"), ("GET", "/reload", "POST"), ("PUT", "/restart", "POST")):
            response = client.request(method, admin_url(port, path))
            assert response.status_code == 405, (method, path)
            assert response.headers["allow"] == allowed
        assert client.get(admin_url(port, "/health?endpoint=nope")).status_code == 404
        assert client.get(admin_url(port, "/health?endpoint=oai")).status_code == 200
    assert status_file(relay)["admin"] == f"http://127.0.0.1:{port}"


def test_health_is_the_workers_table(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    dead = free_port()  # nothing listens there
    config = admin_section(port) + upstreams_config(
        "oai",
        [{"name": "good", "target_base": f"{mock.base_url}/v1"}, {"name": "bad", "target_base": f"http://127.0.0.1:{dead}/v1"}],
        provider="openai",
    )
    relay = start_relay(config, workers=2)
    _, from_worker, _ = get_health(relay)
    from_admin = httpx.get(admin_url(port, "/health"), timeout=10).json()
    assert from_admin["endpoints"] == from_worker["endpoints"]
    assert from_admin["generation"] == from_worker["generation"]
    assert {w["pid"] for w in from_admin["workers"]} == set(relay.worker_pids())


def test_auth_keys(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    config = admin_section(port, auth_keys=[ADMIN_KEY, "${ADMIN_KEY_2}"]) + endpoint_config("oai", mock)
    relay = start_relay(config, env={"ADMIN_KEY_2": OTHER_KEY})
    with httpx.Client(timeout=30) as client:
        for method, path in (("GET", "/metrics"), ("GET", "/health"), ("GET", "/status"), ("POST", "/reload"), ("POST", "/restart"), ("GET", "/nope")):
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": ADMIN_KEY}, {"authorization": f"Basic {ADMIN_KEY}"}, {"authorization": f"Bearer {ADMIN_KEY}x"}):
                response = client.request(method, admin_url(port, path), headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert ADMIN_KEY not in response.text
        for key in (ADMIN_KEY, OTHER_KEY):
            good = {"authorization": f"Bearer {key}"}
            assert client.get(admin_url(port, "/status"), headers=good).status_code == 200
            assert client.get(admin_url(port, "/metrics"), headers=good).status_code == 200
            assert client.get(admin_url(port, "/nope"), headers=good).status_code == 404
        assert client.post(admin_url(port, "/reload"), headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
        assert ADMIN_KEY not in client.get(admin_url(port, "/status"), headers={"authorization": f"Bearer {OTHER_KEY}"}).text
    logs = relay.logs()
    assert ADMIN_KEY not in logs and OTHER_KEY not in logs


def test_post_reload_answers_with_the_outcome(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    base = admin_section(port) + endpoint_config("oai", mock)
    relay = start_relay(base, workers=2)
    relay.config_path.write_text(base + endpoint_config("second", mock))
    response = httpx.post(admin_url(port, "/reload"), timeout=60)
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["action"] == "reload" and outcome["ok"] is True and outcome["outcome"] == "applied"
    assert outcome["generation"] == 2 and "1 endpoints added" in outcome["summary"]
    # answered after the reload finished: the new endpoint is served, and /status shows it
    status = httpx.get(admin_url(port, "/status"), timeout=10).json()
    assert status["generation"] == 2 and "second" in status["endpoints"]
    assert status["last_reload"]["outcome"] == "applied"
    assert httpx.get(relay.url("/health?endpoint=second"), timeout=10).status_code == 200
    relay.config_path.write_text(base + "[endpoints.broken]\nprovider = 7\n")
    response = httpx.post(admin_url(port, "/reload"), timeout=60)
    assert response.status_code == 500
    outcome = response.json()
    assert outcome["ok"] is False and outcome["outcome"] == "rejected"
    assert outcome["errors"] and any("broken" in error for error in outcome["errors"])
    status = httpx.get(admin_url(port, "/status"), timeout=10).json()
    assert status["generation"] == 2 and status["last_reload"]["outcome"] == "rejected"
    assert "second" in status["endpoints"]  # the previous config still serves
    metrics = httpx.get(admin_url(port, "/metrics"), timeout=10).text
    assert 'llmrelay_reloads_total{result="ok"} 1.0' in metrics
    assert 'llmrelay_reloads_total{result="failed"} 1.0' in metrics
    assert status_file(relay)["reload"]["finished"] == 2


def test_post_restart_replaces_every_worker(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    relay = start_relay(admin_section(port) + endpoint_config("oai", mock), workers=2)
    before = set(relay.worker_pids())
    response = httpx.post(admin_url(port, "/restart"), timeout=120)
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome == {**outcome, "action": "restart", "ok": True, "outcome": "done"}
    assert "2 workers replaced" in outcome["summary"]
    status = httpx.get(admin_url(port, "/status"), timeout=10).json()
    serving = {w["pid"] for w in status["workers"] if w["state"] == "serving"}
    assert len(serving) == 2 and not serving & before
    assert status["last_restart"]["outcome"] == "done"
    assert wait_until(lambda: not set(relay.worker_pids()) & before, timeout=15)
    metrics = httpx.get(admin_url(port, "/metrics"), timeout=10).text
    assert 'llmrelay_worker_restarts_total{reason="rolling"} 2.0' in metrics


def test_status_shows_every_worker_and_upstream(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    config = (
        "[server]\nheartbeat_interval = 0.5\n"
        + admin_section(port)
        + upstreams_config("oai", [{"name": "one", "target_base": f"{mock.base_url}/v1"}, {"name": "two", "target_base": f"{mock.base_url}/v1"}], provider="openai")
        + endpoint_config("ant", mock, provider="anthropic")
    )
    relay = start_relay(config, workers=3)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=10) as client:
        for _ in range(10):
            assert client.post(relay.url("/oai/v1/chat/completions"), json=body).status_code == 200

    def rss_known() -> dict | None:
        status = httpx.get(admin_url(port, "/status"), timeout=10).json()
        return status if all(w["rss_bytes"] > 0 for w in status["workers"]) else None

    status = wait_until(rss_known, timeout=10)
    assert status, "every worker's RSS arrives with its heartbeat"
    assert status["version"] and status["generation"] == 1 and status["loaded_at"] > 0
    assert sorted(w["slot"] for w in status["workers"]) == [0, 1, 2]
    assert sorted(w["pid"] for w in status["workers"]) == relay.worker_pids()
    for worker in status["workers"]:
        assert worker["state"] == "serving" and worker["uptime"] > 0
        assert {"connections", "in_flight", "requests"} <= worker.keys()
    assert set(status["endpoints"]) == {"oai", "ant"}
    assert set(status["endpoints"]["oai"]["upstreams"]) == {"one", "two"}
    assert set(status["endpoints"]["ant"]["upstreams"]) == {"ant#0"}
    oai = status["endpoints"]["oai"]["upstreams"]

    def served() -> dict | None:
        upstreams = httpx.get(admin_url(port, "/status"), timeout=10).json()["endpoints"]["oai"]["upstreams"]
        return upstreams if sum(u["requests"] for u in upstreams.values()) == 10 else None

    oai = wait_until(served, timeout=10) or oai
    assert sum(u["requests"] for u in oai.values()) == 10
    for upstream in oai.values():
        assert upstream["state"] == "ok" and upstream["usable"] is True
        if upstream["requests"]:
            assert upstream["requests_per_second"] > 0
            assert 0 < upstream["p50_ms"] <= upstream["p99_ms"]
        assert upstream["in_flight"] == 0
    # a stream under way counts at its upstream until it ends
    stream_body = {**body, "stream": True}
    with httpx.Client(timeout=20) as client:
        with client.stream(
            "POST", relay.url("/oai/v1/chat/completions"), json=stream_body, headers={"x-mock-delay": "0.3", "x-mock-events": "12"}
        ) as streaming:
            assert streaming.status_code == 200
            busy = streaming.headers["x-llmrelay-upstream"]

            def counted() -> dict | None:
                upstreams = httpx.get(admin_url(port, "/status"), timeout=10).json()["endpoints"]["oai"]["upstreams"]
                return upstreams if upstreams[busy]["in_flight"] == 1 else None

            assert wait_until(counted, timeout=5), "the stream's upstream shows it in flight"
            streaming.read()

    def idle() -> dict | None:
        upstreams = httpx.get(admin_url(port, "/status"), timeout=10).json()["endpoints"]["oai"]["upstreams"]
        return upstreams if all(u["in_flight"] == 0 for u in upstreams.values()) else None

    assert wait_until(idle, timeout=5)


def test_admin_answers_while_workers_are_killed(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    relay = start_relay(admin_section(port) + endpoint_config("oai", mock), workers=2)
    answered = 0
    with httpx.Client(timeout=5) as client:
        for round_ in range(3):
            for pid in relay.worker_pids():
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                status = client.get(admin_url(port, "/status"))
                assert status.status_code == 200
                assert client.get(admin_url(port, "/metrics")).status_code == 200
                answered += 1
                time.sleep(0.05)
            def serving() -> bool:
                workers = client.get(admin_url(port, "/status")).json()["workers"]
                return len(workers) == 2 and all(w["state"] == "serving" for w in workers)

            assert wait_until(serving, timeout=20)
    assert answered >= 10
    metrics = httpx.get(admin_url(port, "/metrics"), timeout=5).text
    restarts = [line for line in metrics.splitlines() if line.startswith('llmrelay_worker_restarts_total{reason="crash"}')]
    assert restarts and float(restarts[0].split()[-1]) == 6


def test_a_taken_admin_port_does_not_stop_the_relay(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.0.0.1", port))
    taken.listen(1)
    try:
        relay = start_relay(admin_section(port) + endpoint_config("oai", mock))
        assert "admin listener: cannot listen on 127.0.0.1:%d" % port in relay.logs()
        assert httpx.get(relay.url("/health"), timeout=10).status_code == 200
        assert status_file(relay)["admin"] == ""
    finally:
        taken.close()


def test_disabled_admin_has_no_listener(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    relay = start_relay(admin_section(port, enabled=False) + endpoint_config("oai", mock))
    with pytest.raises(httpx.ConnectError):
        httpx.get(admin_url(port, "/status"), timeout=5)
    assert status_file(relay)["admin"] == ""


def test_metrics_disabled_answers_404(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    relay = start_relay(admin_section(port) + "[server.metrics]\nenabled = false\n\n" + endpoint_config("oai", mock))
    assert httpx.get(admin_url(port, "/metrics"), timeout=5).status_code == 404
    assert httpx.get(admin_url(port, "/status"), timeout=5).status_code == 200
    assert relay.process.poll() is None


def test_port_zero_and_a_reload_that_moves_the_listener(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(admin_section(0) + endpoint_config("oai", mock))
    first = wait_until(lambda: status_file(relay)["admin"], timeout=5)
    assert first.startswith("http://127.0.0.1:") and not first.endswith(":0")
    assert httpx.get(first + "/status", timeout=5).status_code == 200
    moved = free_port()
    relay.config_path.write_text(admin_section(moved) + endpoint_config("oai", mock))
    response = httpx.post(first + "/reload", timeout=60)
    assert response.status_code == 200, response.text
    assert wait_until(lambda: status_file(relay)["admin"] == f"http://127.0.0.1:{moved}", timeout=5)
    assert httpx.get(admin_url(moved, "/status"), timeout=5).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(first + "/status", timeout=5)
    relay.config_path.write_text(admin_section(moved, enabled=False) + endpoint_config("oai", mock))
    assert httpx.post(admin_url(moved, "/reload"), timeout=60).status_code == 200
    assert wait_until(lambda: status_file(relay)["admin"] == "", timeout=5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(admin_url(moved, "/status"), timeout=5)


def test_a_strict_small_server(start_relay, mock) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    start_relay(admin_section(port) + endpoint_config("oai", mock))

    def exchange(raw: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(raw)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    assert exchange(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    assert exchange(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431 ")
    assert exchange(b"GET /status HTTP/1.1\nHost: x\n\n").startswith(b"HTTP/1.1 400 ")
    assert exchange(b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n").startswith(b"HTTP/1.1 413 ")
    # a second request on the connection is not read: one request per connection
    answer = exchange(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\nGET /status HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 ") == 1 and b"connection: close" in answer.lower()
    # a client that sends nothing is closed after the read timeout, and others are served meanwhile
    with socket.create_connection(("127.0.0.1", port), timeout=15) as idle:
        assert exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert idle.recv(10) == b""
        assert time.monotonic() - started < 12


def test_default_config_does_not_need_the_admin_port(start_relay, mock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two relays with the default admin address: the second logs the taken port and serves."""
    first = start_relay(endpoint_config("oai", mock))
    second = start_relay(endpoint_config("oai", mock))
    for relay in (first, second):
        assert httpx.get(relay.url("/health"), timeout=10).status_code == 200
    logs = first.logs() + second.logs()
    assert "admin listener on http://127.0.0.1:9811" in logs or "cannot listen on 127.0.0.1:9811" in logs


def test_sigusr1_to_the_supervisor_reaches_every_worker(start_relay, mock, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """logrotate signals the pid in the pid file: the supervisor survives it and has the workers reopen their logs."""
    access = tmp_path / "access.log"
    port = free_port()
    relay = start_relay(f'[server]\naccess_log_file = "{access}"\n' + admin_section(port) + endpoint_config("oai", mock), workers=2)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    workers = relay.worker_pids()
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        assert client.post(relay.url("/oai/v1/chat/completions"), json=body).status_code == 200
        assert wait_until(lambda: access.exists() and access.read_text().strip(), timeout=5)
        access.rename(tmp_path / "access.log.1")
        relay.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        for _ in range(4):
            assert client.post(relay.url("/oai/v1/chat/completions"), json=body).status_code == 200
    assert wait_until(lambda: access.exists() and len(access.read_text().splitlines()) >= 4, timeout=5)
    assert relay.process.poll() is None and relay.worker_pids() == workers
    assert httpx.get(admin_url(port, "/status"), timeout=5).status_code == 200
