"""Logs of real relays: JSON lines through a whole lifecycle, the access line's fields (client address
behind trusted proxies, relay key label, model), SIGUSR1 after logrotate's rename, and a log pipe
nobody reads that must not stall requests."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mock_providers import MockProvider
from relaytest import endpoint_config, free_port, wait_until

from llmrelay.observe.requestinfo import relay_key_label

RELAY_KEY = "sk-relay-Secret-0123456789abcdef"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ACCESS_FIELDS = {
    "request_id", "method", "endpoint", "upstream", "attempts", "model", "status", "bytes_in", "bytes_out",
    "duration_ms", "ttfb_ms", "streamed", "events", "client_ip", "relay_key", "user_agent",
}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def _config(mock: MockProvider, extra: str = "") -> str:
    return (
        f'[server]\ntrusted_proxies = ["127.0.0.0/8"]\n{extra}\n'
        + endpoint_config("oai", mock, auth_keys=[RELAY_KEY])
        + endpoint_config("gem", mock, provider="gemini", base="/v1beta", auth_keys=[RELAY_KEY])
    )


def _json_lines(text: str) -> list[dict[str, object]]:
    lines = []
    for line in text.splitlines():
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict), line
        assert TS.match(str(entry["ts"])), line
        assert entry["level"] in ("debug", "info", "warning", "error", "critical"), line
        assert isinstance(entry["logger"], str) and isinstance(entry["pid"], int) and isinstance(entry["msg"], str), line
        lines.append(entry)
    return lines


def _access(lines: list[dict[str, object]], request_id: str) -> dict[str, object]:
    found = [e for e in lines if e["logger"] == "llmrelay.access" and e.get("request_id") == request_id]
    assert len(found) == 1, (request_id, found)
    assert ACCESS_FIELDS <= found[0].keys(), found[0]
    return found[0]


def _requests(relay, tag: str) -> None:  # type: ignore[no-untyped-def]
    auth = {"authorization": f"Bearer {RELAY_KEY}", "user-agent": "logs-test/1.0"}
    with httpx.Client(timeout=10) as client:
        response = client.post(
            relay.url("/oai/v1/chat/completions"), json=CHAT,
            headers={**auth, "x-request-id": f"{tag}-chat", "x-forwarded-for": "203.0.113.7, 127.0.0.9"},
        )
        assert response.status_code == 200, response.text
        response = client.post(
            relay.url("/oai/v1/chat/completions"), json={**CHAT, "stream": True},
            headers={**auth, "x-request-id": f"{tag}-stream", "x-mock-events": "3"},
        )
        assert response.status_code == 200
        response = client.post(
            relay.url("/gem/v1beta/models/gemini-2.0-flash:generateContent"), json=GEMINI,
            headers={"x-goog-api-key": RELAY_KEY, "x-request-id": f"{tag}-gemini"},
        )
        assert response.status_code == 200, response.text
        response = client.post(relay.url("/oai/v1/chat/completions"), json=CHAT, headers={"x-request-id": f"{tag}-nokey"})
        assert response.status_code == 401


def test_json_logs_through_a_lifecycle(mock: MockProvider, start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(_config(mock), env={"LLMRELAY_LOG_FORMAT": "json"}, workers=2)
    _requests(relay, "one")
    relay.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload ok" in relay.logs(), 10), relay.logs()[-3000:]
    relay.send_signal(signal.SIGUSR2)
    assert wait_until(lambda: "rolling replacement done" in relay.logs(), 20), relay.logs()[-3000:]
    serving = [w["pid"] for w in httpx.get(relay.url("/health"), timeout=5).json()["workers"] if w["state"] == "serving"]
    victim = serving[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: f"worker {victim} (slot" in relay.logs(), 15)
    assert wait_until(lambda: relay.logs().count("ready (pid") >= 5, 15), relay.logs()[-3000:]
    _requests(relay, "two")
    time.sleep(0.3)  # (the access lines of the last requests leave the writer threads)
    assert relay.stop() == 0
    text = relay.log_path.read_text()
    assert RELAY_KEY not in text
    lines = _json_lines(text)
    assert {"llmrelay.access", "llmrelay.worker"} <= {str(e["logger"]) for e in lines}
    assert any("exited with signal 9" in str(e["msg"]) for e in lines)
    assert len({e["pid"] for e in lines}) >= 6  # the supervisor, two workers, two successors, one respawn
    for tag in ("one", "two"):
        chat = _access(lines, f"{tag}-chat")
        assert chat["client_ip"] == "203.0.113.7"  # the peer (127.0.0.1) and 127.0.0.9 are trusted proxies
        assert chat["relay_key"] == relay_key_label(RELAY_KEY) and len(str(chat["relay_key"])) == 8
        assert chat["model"] == "gpt-4o-mini" and chat["status"] == 200 and chat["method"] == "POST"
        assert chat["endpoint"] == "oai" and chat["upstream"] == "oai#0" and chat["attempts"] == 1
        assert chat["user_agent"] == "logs-test/1.0" and chat["streamed"] is False and "error" not in chat
        assert int(str(chat["bytes_in"])) == len(json.dumps(CHAT).encode()) or int(str(chat["bytes_in"])) > 0
        assert isinstance(chat["duration_ms"], float) and isinstance(chat["ttfb_ms"], float)
        assert chat["usage"] == {"input": 1, "output": 4}  # the mock's usage: "hi", and 4 words
        stream = _access(lines, f"{tag}-stream")
        assert stream["streamed"] is True and int(str(stream["events"])) >= 4 and stream["client_ip"] == "127.0.0.1"
        gemini = _access(lines, f"{tag}-gemini")
        assert gemini["model"] == "gemini-2.0-flash" and gemini["endpoint"] == "gem"
        refused = _access(lines, f"{tag}-nokey")
        assert refused["status"] == 401 and refused["error"] == "bad_relay_key" and refused["relay_key"] is None


def test_sigusr1_reopens_the_access_log_after_a_rename(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    access = tmp_path / "access.log"
    config = _config(mock, f'log_format = "json"\naccess_log_file = "{access}"')
    relay = start_relay(config, workers=2)
    _requests(relay, "before")
    assert wait_until(lambda: access.exists() and access.read_text().count("\n") >= 4, 5)
    rotated = tmp_path / "access.log.1"
    access.rename(rotated)
    for pid in relay.worker_pids():
        os.kill(pid, signal.SIGUSR1)
    time.sleep(0.5)
    for _ in range(3):  # whichever worker answers writes to the new file
        _requests(relay, f"after{_}")
    assert wait_until(lambda: access.exists() and access.read_text().count("\n") >= 12, 5)
    old, new = _json_lines(rotated.read_text()), _json_lines(access.read_text())
    old = [e for e in old if e["path"] != "/health"]  # (the readiness checks of the test harness)
    assert {e["request_id"] for e in old} == {f"before-{kind}" for kind in ("chat", "stream", "gemini", "nokey")}
    assert len(new) == 12 and all(str(e["request_id"]).startswith("after") for e in new)
    assert all(e["logger"] == "llmrelay.access" for e in old + new)
    assert "llmrelay.access" not in relay.logs()  # the other lines stay on stderr
    assert RELAY_KEY not in relay.logs() + rotated.read_text() + access.read_text()
    assert all(pid in relay.worker_pids() for pid in {int(str(e["pid"])) for e in new})  # nobody died of SIGUSR1


def _health_ok(relay) -> bool:  # type: ignore[no-untyped-def]
    try:
        return httpx.get(relay.url("/health"), timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_access_lines_follow_access_log_not_the_log_level(mock: MockProvider, start_relay, tmp_path: Path, log_format: str) -> None:  # type: ignore[no-untyped-def]
    # log_level = "warning" quiets the info lines (a reload's "reload ok"), never the access log.
    access = tmp_path / "access.log"
    config = _config(mock, f'log_level = "warning"\nlog_format = "{log_format}"\naccess_log_file = "{access}"')
    relay = start_relay(config, workers=1, wait=False)  # (no "ready" info line to wait for)
    assert wait_until(lambda: _health_ok(relay), 20), relay.logs()
    _requests(relay, f"quiet-{log_format}")
    assert wait_until(lambda: access.exists() and access.read_text().count(f"quiet-{log_format}-") >= 4, 5), (
        access.read_text() if access.exists() else "no file"
    )
    relay.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert "reload ok" not in relay.logs()  # (an info line of the supervisor)
    if log_format == "json":
        lines = _json_lines(access.read_text())
        assert _access(lines, f"quiet-{log_format}-chat")["status"] == 200
    else:
        assert f"rid=quiet-{log_format}-nokey" in access.read_text() and "status=401" in access.read_text()


F_SETPIPE_SZ = 1031


def test_a_log_pipe_nobody_reads_does_not_stall_requests(mock: MockProvider, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(endpoint_config("oai", mock))
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)  # a small pipe, full after a dozen lines
    process = subprocess.Popen(
        [sys.executable, "-m", "llmrelay", "serve", "--config", str(config), "--port", str(port), "--workers", "2"],
        cwd=tmp_path, stdout=write_end, stderr=write_end, env={**os.environ, "LLMRELAY_LOG_FORMAT": "json", "LLMRELAY_LOG_QUEUE_LINES": "50"},
    )
    os.close(write_end)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(url + "/health", timeout=2).json()["workers"].__len__() == 2
            except (httpx.HTTPError, ValueError, KeyError):
                return False

        assert wait_until(ready, 20)
        slowest = 0.0
        started = time.monotonic()
        with httpx.Client(timeout=5) as client:
            for _ in range(400):  # ~400 access lines: 40 times what the pipe and the queues hold
                begun = time.monotonic()
                assert client.post(url + "/oai/v1/chat/completions", json=CHAT).status_code == 200
                slowest = max(slowest, time.monotonic() - begun)
        assert time.monotonic() - started < 30
        assert slowest < 1.0, slowest
        # the pipe is read at last: the writers catch up and report what they dropped
        text = b""
        deadline = time.monotonic() + 10
        while b"log lines dropped" not in text and time.monotonic() < deadline:
            ready_to_read, _, _ = select.select([read_end], [], [], 0.2)
            if ready_to_read:
                text += os.read(read_end, 65536)
        assert b"log lines dropped" in text
        dropped = [json.loads(line) for line in text.splitlines() if b"log lines dropped" in line]
        assert all(int(entry["dropped"]) > 0 and entry["level"] == "warning" for entry in dropped)
    finally:
        process.send_signal(signal.SIGQUIT)
        deadline = time.monotonic() + 15
        while process.poll() is None and time.monotonic() < deadline:  # (keep the pipe drained meanwhile)
            if select.select([read_end], [], [], 0.1)[0]:
                os.read(read_end, 65536)
        if process.poll() is None:
            process.kill()
        process.wait(5)
        os.close(read_end)
