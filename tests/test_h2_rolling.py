"""SIGUSR2 and SIGHUP while HTTP/2 connections carry streams: every stream completes byte-identical
and no connection sees a reset (a draining worker sends GOAWAY; the client opens a new connection
for what comes next). Over h2c on a plain listener and over TLS (ALPN h2), with real httpx clients
used the way applications use the SDKs (several tasks on one async client, each sending now and then),
and with h2load (nghttp2) keeping many streams open back to back. Load loops are bounded in count
and time; clients do not retry."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from mock_providers import MockProvider
from relaytest import free_port
from test_rolling import health, wait_for_log
from test_tls_listeners import CHAT, Certs, listeners_config

SERVER = "[server]\nkeepalive_timeout = 2.0\ndrain_timeout = 60\nheartbeat_interval = 0.5\nheartbeat_timeout = 3.0\n"
LOOP_SECONDS = 60.0
MAX_STREAMS = 4000


class H2Load:
    """Applications on HTTP/2: each an `httpx.AsyncClient` (one connection) whose tasks each send a
    request now and then, as an asyncio application using the OpenAI SDK does. (A sync client shared
    by threads is not used: httpcore can then send a higher stream id before a lower one, which a
    server must refuse as a protocol error.)"""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.streams_ok = 0
        self.failures: list[str] = []
        self.threads: list[threading.Thread] = []
        self.deadline = time.monotonic() + LOOP_SECONDS

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline and self.ok + self.streams_ok < MAX_STREAMS

    def start(self, make_client, url: str, mock: MockProvider, users: int) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=asyncio.run, args=(self._application(make_client, url, mock, users),), daemon=True)
        thread.start()
        self.threads.append(thread)

    async def _application(self, make_client, url: str, mock: MockProvider, users: int) -> None:  # type: ignore[no-untyped-def]
        async with make_client() as client:
            await asyncio.gather(*(self._user(client, url, mock, index) for index in range(users)))

    async def _user(self, client: httpx.AsyncClient, url: str, mock: MockProvider, index: int) -> None:
        pause = random.Random(index)
        while self.running():
            await self._one(client, url, mock, index % 2 == 0)
            await asyncio.sleep(pause.uniform(0.05, 0.4))

    async def _one(self, client: httpx.AsyncClient, url: str, mock: MockProvider, streamed: bool) -> None:
        request_id = uuid.uuid4().hex
        try:
            if streamed:
                headers = {"x-request-id": request_id, "x-mock-events": "10", "x-mock-delay": "0.03"}
                async with client.stream("POST", url, json={**CHAT, "stream": True}, headers=headers) as response:
                    received = b"".join([chunk async for chunk in response.aiter_raw()])
                    version = response.http_version
                sent = bytes(mock.stream_bodies[mock.index_of(request_id)])
                if version != "HTTP/2" or response.status_code != 200 or received != sent:
                    self.fail(f"stream {request_id}: {version} {response.status_code}, {len(received)} of {len(sent)} bytes")
                    return
                with self.lock:
                    self.streams_ok += 1
            else:
                response = await client.post(url, json=CHAT, headers={"x-request-id": request_id})
                if response.status_code != 200 or response.http_version != "HTTP/2":
                    self.fail(f"request {request_id}: {response.http_version} {response.status_code}")
                    return
                with self.lock:
                    self.ok += 1
        except httpx.HTTPError as exc:
            self.fail(f"{request_id}: {type(exc).__name__}: {exc}")

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def test_sigusr2_and_sighup_lose_no_http2_stream(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = Certs(tmp_path)
    plain, tls_port = free_port(), free_port()
    tls = {"cert_file": str(certs.cert_file), "key_file": str(certs.key_file)}
    config = SERVER + listeners_config(mock.base_url, plain, tls_port, tls)
    relay = start_relay(config, workers=2, port=plain, port_flag=False)
    load = H2Load()
    load.start(lambda: httpx.AsyncClient(http1=False, http2=True, timeout=30), relay.url("/openai/v1/chat/completions"), mock, 8)
    load.start(
        lambda: httpx.AsyncClient(http2=True, verify=certs.client_context(), timeout=30),
        f"https://127.0.0.1:{tls_port}/openai/v1/chat/completions",
        mock,
        8,
    )
    try:
        time.sleep(1.0)
        original = set(relay.worker_pids())
        relay.send_signal(signal.SIGUSR2)
        wait_for_log(relay, "rolling replacement done", 1)
        assert not {w["pid"] for w in health(relay)["workers"] if w["state"] == "serving"} & original
        assert relay.config_path is not None
        relay.config_path.write_text(config + 'idle_timeout = 90\n')
        relay.send_signal(signal.SIGHUP)
        wait_for_log(relay, "reload ok", 1)
        relay.send_signal(signal.SIGUSR2)
        wait_for_log(relay, "rolling replacement done", 2)
        time.sleep(1.0)
    finally:
        load.finish()
    assert load.failures == [], load.failures[:10]
    assert load.ok > 20 and load.streams_ok > 20, (load.ok, load.streams_ok)
    assert relay.stop() == 0


def test_h2load_streams_straddling_a_rolling_replacement_all_complete(mock: MockProvider, start_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A client that never lets the connection idle: the GOAWAY comes with streams open (at the
    latest DRAIN_GOAWAY_AFTER into the drain), every stream it names finishes, the rest move to a new
    connection."""
    if shutil.which("h2load") is None:
        pytest.fail("h2load (nghttp2-client) is required: apt-get install -y nghttp2-client")
    relay = start_relay(SERVER + f'[endpoints.openai]\ntarget_base = "{mock.base_url}/v1"\n', workers=2)
    body = tmp_path / "body.json"
    body.write_text('{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}')
    load = subprocess.Popen(
        ["h2load", "-D", "16", "-c", "2", "-m", "8", "-H", "content-type: application/json", "-H", "x-mock-events: 5",
         "-H", "x-mock-delay: 0.02", "-d", str(body), relay.url("/openai/v1/chat/completions")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        time.sleep(1.5)
        relay.send_signal(signal.SIGUSR2)
        wait_for_log(relay, "rolling replacement done", 1, timeout=40)
        output, _ = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
    summary = next(line for line in output.splitlines() if line.startswith("requests:"))
    done = int(summary.split("requests: ", 1)[1].split(" total")[0])
    assert done > 50, output
    assert " 0 failed, 0 errored, 0 timeout" in summary, output + relay.logs()[-6000:]
    codes = next(line for line in output.splitlines() if line.startswith("status codes:"))
    assert " 0 4xx, 0 5xx" in codes, output
    assert "GOAWAY with" in relay.logs() or "rolling replacement done" in relay.logs()
